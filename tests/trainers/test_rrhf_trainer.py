"""RRHFTrainer on CPU with the tiny Llama: trains, its loss is RRHF's from plain logits, model card, `trl-pro rrhf`."""

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import trl_pro.cli.commands as cli
from trl_pro import rrhf_loss
from trl_pro.trainers.rrhf_config import RRHFConfig
from trl_pro.trainers.rrhf_trainer import RRHFTrainer


REPO = Path(__file__).resolve().parents[2]


def scored_rows(n=6):
    """Rankings of 2-4 candidates with scores in no particular order, a tie, and an SFT index that is not the best."""
    rows = []
    for i in range(n):
        length = 2 + i % 3
        scores = [float((7 * i + 3 * j) % 5) for j in range(length)]
        if length == 4:
            scores[3] = scores[1]  # a tie: no pair between these two
        rows.append(
            {
                "prefix": [[f"Question {i}:"]] * length,
                "suffix": [f" answer {j} of {i}" * (1 + j % 2) for j in range(length)],
                "reward": scores,
                "sft_index": length - 1,
            }
        )
    return rows


def test_rrhf_trains_the_tiny_model(tokenizer, tiny_model, make_config, tmp_path):
    dataset = Dataset.from_list(scored_rows(8))
    trainer = RRHFTrainer(
        tiny_model,
        args=make_config(RRHFConfig, max_steps=2),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)  # every parameter, LM head included, moved
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all(math.isfinite(log["loss"]) for log in logs)
    for key in ("loss/rank_1", "loss/sft", "ranking/pairwise_accuracy", "ranking/kendall_tau", "scores/rank_1"):
        assert key in logs[0] and math.isfinite(logs[0][key]), key
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and 0 <= metrics["eval_ranking/pairwise_accuracy"] <= 1
    trainer.create_model_card(model_name="tiny-rrhf")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "RRHF" in card and "2304.05302" in card and "yuan2023rrhf" in card and "song2024preference" not in card


def test_loss_is_rrhf_from_plain_logits(tokenizer, tiny_model, make_config):
    """rrhf_weight * pairs by reward (ties: no pair) on sum / len ** length_penalty, + mean NLL of the best candidate
    (not the data's `sft_index`), computed here from the model's logits."""
    # The reference reads one row per candidate: the plain layout (the default layout equals it:
    # tests/loss_core/test_shared_prompt.py)
    trainer = RRHFTrainer(
        tiny_model,
        args=make_config(RRHFConfig, rrhf_weight=3.0, length_penalty=0.5, shared_prompt=False),
        train_dataset=Dataset.from_list(scored_rows(6)),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].float()
    sums, lengths = (logprobs * mask).sum(1), mask.sum(1)
    p = sums / lengths**0.5
    offsets, rewards = batch["ranking_offsets"].tolist(), batch["rewards"]
    expected = []
    for b in range(6):
        start, end = offsets[b], offsets[b + 1]
        rank = sum(
            max(0.0, p[i] - p[j]) for j in range(start, end) for i in range(start, end) if rewards[j] > rewards[i]
        )
        best = max(range(start, end), key=lambda c: rewards[c])  # sorted: the first
        assert best == start
        expected.append(3.0 * rank - sums[best] / lengths[best])
        torch.testing.assert_close(rrhf_loss(p[None, start:end], rewards[None, start:end])[0], torch.as_tensor(rank))
    assert len({tuple(r) for r in (trainer.train_dataset[i]["scores"] for i in range(6)) if len(set(r)) < len(r)})
    torch.testing.assert_close(
        loss.detach(), torch.stack([torch.as_tensor(e) for e in expected]).mean(), rtol=1e-5, atol=1e-5
    )


def test_cli_rrhf_quick_run(tmp_path, capsys):
    """`trl-pro rrhf` is registered and its script trains with the RRHF quickstart recipe's settings (plain-script
    form, on a small local dataset folder with train and test splits)."""
    from trl_pro.scripts import rrhf

    assert "rrhf" in {command.name for command in cli.get_commands()}
    assert "--rrhf_weight" in rrhf.make_parser().format_help()
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "prompt": f"Question {i}:",
            "completions": [f" good answer {i}", f" bad {i}", " no"],
            "scores": [1.0, 0.5, -1.0],
        }
        for i in range(24)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:16]))
    (data / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[16:]))
    out = tmp_path / "run"
    rrhf.cli_main(
        [
            "--config",
            str(REPO / "recipes" / "rrhf" / "quickstart.yaml"),
            "--dataset_name",
            str(data),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--disable_tqdm",
            "true",
            "--rrhf_weight",
            "2.0",
            "--output_dir",
            str(out),
        ]
    )
    stdout = capsys.readouterr().out
    assert "before -> after training" in stdout
    assert "rrhf_weight * ranking loss + SFT NLL" in stdout and f"saved to {out}" in stdout
    record = json.loads((out / "eval_before_after.json").read_text())
    assert record["num_rows"] == 8 and math.isfinite(record["after"]["eval_loss"])
    assert record["after"]["eval_loss"] != record["before"]["eval_loss"]


def test_bad_value_is_a_one_line_rrhf_error(tmp_path, capsys):
    from trl_pro.scripts import rrhf

    with pytest.raises(SystemExit) as exit_info:
        rrhf.cli_main(["--rrhf_weight", "-1", "--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert exit_info.value.code != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trl-pro")]
    assert len(lines) == 1 and lines[0].startswith("trl-pro rrhf: error:") and "rrhf_weight" in lines[0]


@pytest.mark.parametrize("name", ["rrhf_weight", "length_penalty"])
def test_config_rejects_negative_values(name):
    with pytest.raises(ValueError, match=name):
        RRHFConfig("out", use_cpu=True, **{name: -0.5})

import json
import math

import pytest

from trl_pro.assets import build_tiny_llama, load_hh_rlhf_slice
from trl_pro.cli import training
from trl_pro.trainers.bootstrapping import split_into_parts
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


def test_split_into_parts():
    assert [list(p) for p in split_into_parts(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="bootstrap_rounds=5 is more than the 4 training rows"):
        split_into_parts(4, 5)


def test_config_needs_a_reward_model(tmp_path):
    with pytest.raises(ValueError, match="bootstrap_reward_model_name_or_path"):
        PROConfig(output_dir=str(tmp_path), bootstrap_rounds=2, use_cpu=True, bf16=False)


def _bootstrap_config(make_config, reward_model_dir, **overrides):
    kwargs = dict(
        bootstrap_rounds=2,
        bootstrap_reward_model_name_or_path=str(reward_model_dir),
        bootstrap_reward_prompt_format="plain",
        bootstrap_max_completion_length=8,
        bootstrap_temperature=1.0,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=4,
    )
    kwargs.update(overrides)
    return make_config(**kwargs)


@pytest.fixture(scope="module")
def rows():
    return load_hh_rlhf_slice("train").select(range(16))


def test_bootstrap_rounds_sample_score_insert_and_train(make_config, tiny_reward_model_dir, tokenizer, rows):
    args = _bootstrap_config(make_config, tiny_reward_model_dir)
    trainer = PROTrainer(model=build_tiny_llama(seed=0), args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    history = trainer.bootstrap_history
    assert [record["round"] for record in history] == [1, 2] and [r["rows"] for r in history] == [8, 8]
    for record in history:
        assert record["samples"] + record["empty_samples_dropped"] <= record["samples_asked"] == 8
        assert record["samples"] >= 1
        assert sum(record["sample_rank_histogram"]) == record["samples"]
        assert record["sample_rank_histogram"][0] == 0  # footnote 6: a sample never takes the top-1 place
        assert math.isfinite(record["sample_reward_mean"]) and math.isfinite(record["dataset_reward_mean"])
        assert record["generation_seconds"] > 0 and record["training_seconds"] > 0
    # each part is one Trainer.train(), whose state starts afresh: the last part's state holds its round's log
    [logged] = [log for log in trainer.state.log_history if "bootstrap/round" in log]
    assert logged["bootstrap/round"] == 2.0 and logged["bootstrap/sample_rank_1"] == 0.0
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(loss) for loss in losses)
    # the last part trained on rankings that include the samples: more than the 2 raw candidates per row
    lengths = [len(ids) for ids in trainer.train_dataset["completion_ids"]]
    assert len(lengths) == 8 and max(lengths) == 3


def test_bootstrap_with_peft_and_gradient_checkpointing(make_config, tiny_reward_model_dir, tokenizer, rows):
    from peft import LoraConfig

    args = _bootstrap_config(
        make_config,
        tiny_reward_model_dir,
        gradient_checkpointing=True,
        bootstrap_keep_top1=False,
        bootstrap_num_generations=2,
    )
    trainer = PROTrainer(
        model=build_tiny_llama(seed=0),
        args=args,
        train_dataset=rows.select(range(8)),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    trainer.train()
    assert trainer.model.base_model.model.is_gradient_checkpointing  # switched off for generate only
    assert len(trainer.bootstrap_history) == 2
    assert all(record["samples_asked"] == 8 for record in trainer.bootstrap_history)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(loss) for loss in losses)


def _bootstrap_run(make_config, reward_model_dir, tokenizer, rows, output_dir, resume=None, **overrides):
    args = _bootstrap_config(
        make_config,
        reward_model_dir,
        output_dir=str(output_dir),
        save_strategy="steps",
        save_steps=1,
        seed=3,
        **overrides,
    )
    trainer = PROTrainer(model=build_tiny_llama(seed=0), args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_each_round_keeps_its_checkpoints_and_rankings(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path):
    from trl_pro.pipeline.rankings import dataset_rankings
    from trl_pro.trainers.bootstrapping import ROUND_COMPLETE, round_dir

    _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "run")
    for number in (1, 2):
        folder = round_dir(tmp_path / "run", number)
        # 8 rows per part, batch 4: two steps a round, counted on across rounds (1-2, then 3-4)
        steps = [2 * number - 1, 2 * number]
        assert sorted(p.name for p in folder.glob("checkpoint-*")) == [f"checkpoint-{step}" for step in steps]
        ranked = [json.loads(line) for line in (folder / "rankings.jsonl").read_text().splitlines()]
        expected = dataset_rankings(rows.select(range(8 * number - 8, 8 * number)))
        assert [row["prompt"] for row in ranked] == [r["prompt"] for r in expected]  # the part's rows, in order
        assert any("policy" in row["sources"] for row in ranked)
        record = json.loads((folder / ROUND_COMPLETE).read_text())
        assert record["statistics"]["round"] == number and record["checkpoint"].endswith(f"checkpoint-{steps[-1]}")
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.parametrize("interrupted", ["mid-round", "before-first-checkpoint"])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(
    make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path, interrupted
):
    """An interruption in round 2 is left behind by deleting what round 2 would not have written yet: the resumed run
    ends with the same weights, optimizer state and round-2 rankings as the uninterrupted one."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from trl_pro.trainers.bootstrapping import ROUND_COMPLETE, round_dir

    # Bit for bit needs a deterministic backward: on CPU the shared-prompt layout's sdpa backward (a custom 4D mask)
    # differs from run to run in the last bits, so this compares the plain layout
    plain = {"shared_prompt": False}
    whole = _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "whole", **plain)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    round_2 = round_dir(cut, 2)
    (round_2 / ROUND_COMPLETE).unlink()
    shutil.rmtree(round_2 / "checkpoint-4")  # round 2's second step (the step count goes on across rounds)
    if interrupted == "before-first-checkpoint":
        shutil.rmtree(round_2)  # killed while sampling: not even the rankings were written
    resumed = _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, cut, resume=True, **plain)

    assert [r["round"] for r in resumed.bootstrap_history] == [1, 2]
    assert (round_2 / "rankings.jsonl").read_text() == (
        round_dir(tmp_path / "whole", 2) / "rankings.jsonl"
    ).read_text()
    final_whole = round_dir(tmp_path / "whole", 2) / "checkpoint-4"
    final_cut = round_2 / "checkpoint-4"
    for name, tensor in load_file(final_whole / "model.safetensors").items():
        assert torch.equal(load_file(final_cut / "model.safetensors")[name], tensor), name
    optimizer_whole = torch.load(final_whole / "optimizer.pt", weights_only=True)["state"]
    optimizer_cut = torch.load(final_cut / "optimizer.pt", weights_only=True)["state"]
    for key in optimizer_whole:
        for field, value in optimizer_whole[key].items():
            assert torch.equal(optimizer_cut[key][field], value), (key, field)
    for name, param in whole.model.named_parameters():
        assert torch.equal(dict(resumed.model.named_parameters())[name], param), name


def test_resume_needs_a_round_with_a_checkpoint(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path):
    with pytest.raises(ValueError, match="No self-bootstrapping round with a complete checkpoint"):
        _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="pass resume_from_checkpoint=True"):
        _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "empty", resume="ckpt")


def test_bootstrap_recipe_end_to_end_on_cpu(tiny_reward_model_dir, rows, tmp_path):
    """recipes/pro/hh_rlhf_bootstrap_llama7b_qlora.yaml with the tiny models: 4 rounds on 16 rows, 1 step each."""
    from pathlib import Path

    data = tmp_path / "train.jsonl"
    rows.to_json(data)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "pro" / "hh_rlhf_bootstrap_llama7b_qlora.yaml"
    trainer = training.train(
        *training.parse_args(
            training.make_method_parser(training.PRO),
            [
                "--config",
                str(recipe),
                "--dataset_name",
                str(data),
                "--model_name_or_path",
                "trl-pro/tiny-llama",
                "--dtype",
                "float32",
                "--load_in_4bit",
                "false",
                "--lora_target_modules",
                "q_proj",
                "v_proj",
                "--bf16",
                "false",
                "--use_cpu",
                "true",
                "--gradient_checkpointing",
                "false",
                "--bootstrap_reward_model_name_or_path",
                str(tiny_reward_model_dir),
                "--bootstrap_reward_prompt_format",
                "plain",
                "--bootstrap_max_completion_length",
                "8",
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "4",
                "--gradient_accumulation_steps",
                "1",
                "--max_length",
                "128",
                "--max_prompt_length",
                "64",
                "--logging_steps",
                "1",
                "--eval_strategy",
                "no",
                "--output_dir",
                str(tmp_path / "out"),
                "--disable_tqdm",
                "true",
                "--dataset_num_proc",
                "1",
            ],
        )
    )
    assert [record["round"] for record in trainer.bootstrap_history] == [1, 2, 3, 4]
    assert all(record["rows"] == 4 and record["samples_asked"] == 4 for record in trainer.bootstrap_history)
    assert all((tmp_path / "out" / f"bootstrap-round-{i}" / "round_complete.json").is_file() for i in range(1, 5))
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()  # QLoRA's adapter (here LoRA on fp32)


def test_a_new_run_replaces_the_round_folders_of_an_earlier_one(
    make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path
):
    """Stale checkpoints of an earlier, longer run in the same output_dir would be taken for the new run's by a
    resume: a round that starts afresh replaces its folder."""
    from trl_pro.trainers.bootstrapping import bootstrap_resume_point, round_dir

    _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "run", num_train_epochs=2)
    assert (round_dir(tmp_path / "run", 2) / "checkpoint-8").is_dir()  # 4 steps a round
    _bootstrap_run(make_config, tiny_reward_model_dir, tokenizer, rows, tmp_path / "run")
    for number in (1, 2):
        assert sorted(p.name for p in round_dir(tmp_path / "run", number).glob("checkpoint-*")) == [
            f"checkpoint-{2 * number - 1}",
            f"checkpoint-{2 * number}",
        ]
    assert bootstrap_resume_point(tmp_path / "run", 2) == (2, None)


@pytest.mark.parametrize(
    "resume, message",
    [
        ("true", "no self-bootstrapping round with a complete checkpoint in"),
        ("out/checkpoint-2", "with self-bootstrapping pass `true`"),
    ],
)
def test_cli_resume_errors_are_one_line(tiny_reward_model_dir, rows, tmp_path, capsys, resume, message):

    data = tmp_path / "train.jsonl"
    rows.to_json(data)
    with pytest.raises(SystemExit) as exit_info:
        training.cli_main(
            [
                "--model_name_or_path",
                "trl-pro/tiny-llama",
                "--dataset_name",
                str(data),
                "--use_cpu",
                "true",
                "--bf16",
                "false",
                "--bootstrap_rounds",
                "2",
                "--report_to",
                "none",
                "--output_dir",
                str(tmp_path / "out"),
                "--bootstrap_reward_model_name_or_path",
                str(tiny_reward_model_dir),
                "--resume_from_checkpoint",
                resume,
            ]
        )
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trl-pro")]
    assert len(lines) == 1 and lines[0].startswith("trl-pro pro: error:") and message in lines[0]

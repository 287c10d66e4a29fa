"""PROTrainer end to end on CPU with a tiny Llama: every data format, eval, save/reload, LoRA, ragged batches."""

import math
import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_pro import pro_loss
from trl_pro.assets import load_hh_rlhf_slice
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


def ranked_rows(n=8):
    rows = []
    for i in range(n):
        length = 2 + i % 3
        rows.append(
            {
                "prompt": f"Question {i}:",
                "completions": [f" answer {j} of {i}" for j in range(length)],
                "scores": [float(length - j) for j in range(length)],
            }
        )
    return rows


def conversational_rows(n=8):
    return [
        {
            "prompt": [{"role": "user", "content": f"Say something nice {i}"}],
            "completions": [
                [{"role": "assistant", "content": "You are great."}],
                [{"role": "assistant", "content": "Whatever."}],
                [{"role": "assistant", "content": "Go away."}],
            ],
        }
        for i in range(n)
    ]


def authors_rows(n=8):
    return [
        {
            "prefix": [[f"<|prompter|>Tell me about {i}<|assistant|>"]] * 3,
            "suffix": ["It is a number.", "No idea.", "Stop asking."],
            "reward": [0.9, 0.2, -1.0],
            "sft_index": 0,
        }
        for i in range(n)
    ]


DATASETS = {
    "ranked": lambda: Dataset.from_list(ranked_rows()),
    "pairwise_explicit": lambda: Dataset.from_list(
        [{"prompt": f"Q{i}:", "chosen": " yes indeed", "rejected": " no"} for i in range(8)]
    ),
    "pairwise_implicit_hh_rlhf": lambda: load_hh_rlhf_slice("test").select(range(8)),
    "conversational": lambda: Dataset.from_list(conversational_rows()),
    "authors": lambda: Dataset.from_list(authors_rows()),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_trains_on_every_format(name, tokenizer, tiny_model, make_config):
    dataset = DATASETS[name]()
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)  # every parameter, LM head included, moved
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all(math.isfinite(log["loss"]) for log in logs)
    for key in (
        "loss/rank_1",
        "loss/sft",
        "ranking/top1_accuracy",
        "ranking/pairwise_accuracy",
        "ranking/kendall_tau",
        "scores/rank_1",
        "scores/rank_2",
        "num_tokens",
    ):
        assert key in logs[0], key
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and 0 <= metrics["eval_ranking/pairwise_accuracy"] <= 1


def test_conversational_uses_chat_template(tokenizer, tiny_model, make_config):
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=DATASETS["conversational"](), processing_class=tokenizer
    )
    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["prompt_ids"]).endswith("\n\nAssistant:")
    assert tokenizer.decode(row["completion_ids"][0]).strip() == "You are great."


def test_authors_format_keeps_prompt_and_sft_index(tokenizer, tiny_model, make_config):
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=DATASETS["authors"](), processing_class=tokenizer
    )
    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["prompt_ids"]) == "\n\nHuman: Tell me about 0\n\nAssistant:"
    assert tokenizer.decode(row["completion_ids"][0]) == " It is a number.</s>"
    assert row["scores"] == [0.9, 0.2, -1.0] and row["sft_index"] == 0


def test_loss_is_pro_objective_with_paper_sft_weight(tokenizer, tiny_model, make_config):
    """The trainer's loss equals pro_loss + 0.05 (n-1)^2 * summed NLL of the best candidate, from plain logits."""

    rows = ranked_rows(3)
    # The reference reads one row per candidate: the plain layout (the default layout equals it:
    # tests/loss_core/test_shared_prompt.py)
    trainer = PROTrainer(
        tiny_model,
        args=make_config(shared_prompt=False),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(trainer.model, batch)
    expected = []
    offsets = batch["ranking_offsets"].tolist()
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].float()
    sums = (logprobs * mask).sum(1)
    scores = sums / mask.sum(1)
    for b in range(3):
        start, end = offsets[b], offsets[b + 1]
        n = end - start
        rank = pro_loss(scores[None, start:end], batch["rewards"][None, start:end])[0]
        expected.append(rank + 0.05 * (n - 1) ** 2 * -sums[start])
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_temperature", [True, False])
def test_mixed_ranking_lengths_equal_rows_one_at_a_time(use_temperature, tokenizer, tiny_model, make_config):
    rows = ranked_rows(6)  # lengths 2, 3, 4, 2, 3, 4
    trainer = PROTrainer(
        tiny_model,
        args=make_config(use_temperature=use_temperature),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    examples = [trainer.train_dataset[i] for i in range(6)]
    with torch.no_grad():
        together = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
        alone = [trainer.compute_loss(trainer.model, trainer.data_collator([e])) for e in examples]
    torch.testing.assert_close(together, torch.stack(alone).mean(), rtol=1e-5, atol=1e-6)


def test_ablations_change_the_loss(tokenizer, tiny_model, make_config):
    rows = ranked_rows(6)
    losses = {}
    for name, overrides in {
        "full": {},
        "no_sft": {"sft_weight": 0.0},
        "no_temperature": {"use_temperature": False},
        "first_term_only": {"rank_loss_terms": "first"},
        "mean_sft": {"sft_loss_reduction": "mean"},
        "unscaled_sft": {"scale_sft_weight": False},
    }.items():
        trainer = PROTrainer(
            tiny_model,
            args=make_config(**overrides),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
        with torch.no_grad():
            losses[name] = trainer.compute_loss(trainer.model, batch).item()
    assert len(set(losses.values())) == len(losses), losses
    assert losses["no_sft"] < losses["full"] and losses["first_term_only"] < losses["full"]


def test_save_and_reload(tokenizer, tiny_model, make_config, tmp_path):
    trainer = PROTrainer(
        tiny_model,
        args=make_config(save_strategy="steps", save_steps=3),
        train_dataset=DATASETS["ranked"](),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Preference Ranking Optimization" in card and "song2024preference" in card
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), reloaded.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    # resume_from_checkpoint works as in TRL
    resumed = PROTrainer(
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "final")),
        args=make_config(max_steps=4),
        train_dataset=DATASETS["ranked"](),
        processing_class=tokenizer,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.state.global_step == 4


def test_model_as_local_path_string(tokenizer, tiny_model, make_config, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    trainer = PROTrainer(str(tmp_path / "model"), args=make_config(), train_dataset=DATASETS["ranked"]())
    trainer.train()
    assert trainer.state.global_step == 3


def test_lora(tokenizer, tiny_model, make_config):
    from peft import LoraConfig

    trainer = PROTrainer(
        tiny_model,
        args=make_config(gradient_checkpointing=True),
        train_dataset=DATASETS["ranked"](),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lm_head" in n for n in frozen)  # the LM head stays frozen and adapter-free
    trainer.train()
    assert all(not torch.equal(p, trainable[n]) for n, p in trainer.model.named_parameters() if n in trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)


def test_lora_on_lm_head_is_rejected(tokenizer, tiny_model, make_config):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="lm_head"):
        PROTrainer(
            tiny_model,
            args=make_config(),
            train_dataset=DATASETS["ranked"](),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
        )


def _synthetic_rankings(n_rows, seed):
    # A learnable ranking: the more "good" words a candidate has, the better it ranks, whatever the prompt
    rng = random.Random(seed)
    nouns = ["cat", "dog", "tree", "river", "house", "cloud", "stone", "bird", "road", "lamp"]
    rows = []
    for _ in range(n_rows):
        prompt = "Describe the " + " ".join(rng.sample(nouns, 2)) + ":"
        completions = [" " + " ".join(["good"] * (3 - j) + ["bad"] * j + [rng.choice(nouns)]) for j in range(3)]
        rows.append({"prompt": prompt, "completions": completions})
    return Dataset.from_list(rows)


def test_learnable_ranking_task_rises_above_chance(tokenizer, tiny_model, make_config):
    train, held_out = _synthetic_rankings(64, seed=0), _synthetic_rankings(32, seed=1)
    trainer = PROTrainer(
        tiny_model,
        args=make_config(max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3, sft_weight=0.0),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
    )
    before = trainer.evaluate()["eval_ranking/pairwise_accuracy"]
    trainer.train()
    after = trainer.evaluate()["eval_ranking/pairwise_accuracy"]
    assert after >= 0.9 and after > before + 0.2, (before, after)


DPO_SCRIPT = """
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model = AutoModelForCausalLM.from_pretrained(MODEL_PATH)
tokenizer = AutoTokenizer.from_pretrained(MODEL_PATH)
train_dataset = load_dataset("json", data_files=DATA_PATH, split="train")

training_args = DPOConfig(output_dir=OUTPUT_DIR, logging_steps=1, max_steps=2, per_device_train_batch_size=2,
                          report_to="none", bf16=False, use_cpu=True)
trainer = DPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=train_dataset)
trainer.train()
"""


def test_typical_dpo_script_runs_with_class_names_changed(tokenizer, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "pairs.jsonl"
    Dataset.from_list([{"prompt": f"Q{i}:", "chosen": " yes", "rejected": " no"} for i in range(4)]).to_json(data)
    names = {"MODEL_PATH": str(tmp_path / "model"), "DATA_PATH": str(data)}
    pro_script = (
        DPO_SCRIPT.replace("DPOConfig", "PROConfig")
        .replace("DPOTrainer", "PROTrainer")
        .replace("from trl import", "from trl_pro import")
    )
    for script, out in ((DPO_SCRIPT, "dpo"), (pro_script, "pro")):
        namespace = {**names, "OUTPUT_DIR": str(tmp_path / out)}
        exec(compile(script, f"{out}_script.py", "exec"), namespace)
        assert namespace["trainer"].state.global_step == 2
    assert type(namespace["trainer"]) is PROTrainer and isinstance(namespace["training_args"], PROConfig)


def test_peft_model_instance(tokenizer, tiny_model, make_config):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = PROTrainer(model, args=make_config(), train_dataset=DATASETS["ranked"](), processing_class=tokenizer)
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    # LoRA B starts at zero; any change proves the PRO loss reached the adapter through PeftModel's forward
    assert all(not torch.equal(p, lora_b[n]) for n, p in trainer.model.named_parameters() if n in lora_b)


@pytest.mark.parametrize("use_temperature", [True, False])
def test_torch_and_triton_loss_cores_agree_in_the_trainer(use_temperature, tokenizer, make_config):
    """Same loss and gradients whichever loss core runs (Triton in its interpreter on CPU)."""
    pytest.importorskip("triton")
    from trl_pro.assets import build_tiny_llama

    results = {}
    for implementation in ("torch", "triton"):
        model = build_tiny_llama(seed=0)
        trainer = PROTrainer(
            model,
            args=make_config(loss_implementation=implementation, use_temperature=use_temperature),
            train_dataset=Dataset.from_list(ranked_rows(6)),
            processing_class=tokenizer,
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results[implementation] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["torch"][0], results["triton"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(grad, results["triton"][1][name], rtol=1e-4, atol=1e-6, msg=name)

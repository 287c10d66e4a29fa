"""`ListDPOTrainer`: TRL's DPO at n = 2, the reference model's three sources, `precompute_ref_log_probs` (equal to
on the fly, resumable, never stale), both layouts, resume, the model card."""

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_pro import ListDPOConfig, ListDPOTrainer
from trl_pro.assets import build_tiny_llama


def _rankings(num_rows=8, scores=True):
    rows = []
    for i in range(num_rows):
        n = 4 if i % 2 == 0 else 3  # ragged: one batch mixes lengths 4 and 3
        completions = [f" answer {i} is good.", f" answer {i} is fine", f" meh {i}", " no"][:n]
        row = {"prompt": f"Human: question {i}?\n\nAssistant:", "completions": completions}
        if scores:
            row["scores"] = [3.0, 2.0, 1.0, 0.0][:n]
        rows.append(row)
    return Dataset.from_list(rows)


def _config(make_config, **overrides):
    return make_config(ListDPOConfig, **{"learning_rate": 1e-3, **overrides})


def _batch_loss(trainer, rows=4):
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(rows)]))
    return trainer.compute_loss(trainer.model, batch), batch


def test_pairs_give_trl_dpo_loss(make_config, tokenizer, layout):
    """One batch of pairs, the same policy and the same (different) reference model: ListDPOTrainer's default loss
    (plackett_luce) is TRL DPOTrainer's sigmoid loss, from the same token ids."""
    rows = [
        {"prompt": f"Human: question {i}?\n\nAssistant:", "chosen": f" a good answer {i}.", "rejected": f" bad {i}"}
        for i in range(4)
    ]
    dataset = Dataset.from_list(rows)
    list_dpo = ListDPOTrainer(
        build_tiny_llama(seed=0),
        ref_model=build_tiny_llama(seed=1),
        args=_config(make_config, shared_prompt=layout),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    dpo_args = DPOConfig(
        output_dir=list_dpo.args.output_dir + "-dpo",
        per_device_train_batch_size=4,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        max_length=128,
    )
    dpo = DPOTrainer(
        build_tiny_llama(seed=0),
        ref_model=build_tiny_llama(seed=1),
        args=dpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    for i in range(4):  # the same tokens: prompt ids, then completion ids with EOS
        ours, theirs = list_dpo.train_dataset[i], dpo.train_dataset[i]
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        assert ours["completion_ids"] == [theirs["chosen_ids"], theirs["rejected_ids"]]
    dpo_batch = dpo._prepare_inputs(dpo.data_collator([dpo.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        dpo_loss = dpo.compute_loss(dpo.model, dpo_batch)
        ours, _ = _batch_loss(list_dpo)
    assert ours.item() == pytest.approx(dpo_loss.item(), rel=1e-5)
    assert abs(ours.item() - math.log(2)) > 1e-3  # the two models differ: r_i != 0


def test_peft_adapter_at_initialisation_costs_log_n_factorial(make_config, tokenizer):
    """LoRA starts at B = 0: the policy is the reference (the base with the adapter disabled), every r_i = 0, and
    Plackett-Luce costs log(n!) per ranking, here rankings of 4 and 3."""
    from peft import LoraConfig

    trainer = ListDPOTrainer(
        build_tiny_llama(seed=0),
        args=_config(make_config),
        train_dataset=_rankings(scores=False),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.ref_model is None  # no copy: the adapter is disabled for the reference pass
    with torch.no_grad():
        loss, _ = _batch_loss(trainer)
    expected = (math.log(math.factorial(4)) + math.log(math.factorial(3))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]


def test_frozen_copy_is_the_reference_without_peft(make_config, tokenizer):
    trainer = ListDPOTrainer(
        build_tiny_llama(seed=0), args=_config(make_config), train_dataset=_rankings(), processing_class=tokenizer
    )
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    with torch.no_grad():
        loss, _ = _batch_loss(trainer)
    assert loss.item() == pytest.approx((math.log(24) + math.log(6)) / 2, rel=1e-6)  # policy == reference
    trainer.train()
    for name, p in trainer.ref_model.named_parameters():
        torch.testing.assert_close(p, initial[name], rtol=0, atol=0)
    assert any(not torch.equal(p, initial[name]) for name, p in trainer.model.named_parameters())


def test_ref_model_by_path(make_config, tokenizer, tiny_policy_dir):
    trainer = ListDPOTrainer(
        build_tiny_llama(seed=3),  # tiny_policy_dir holds seed 0
        ref_model=str(tiny_policy_dir),
        args=_config(make_config),
        train_dataset=_rankings(),
        processing_class=tokenizer,
    )
    with torch.no_grad():
        loss, batch = _batch_loss(trainer)
        ref = trainer.compute_ref_log_probs(batch)
        policy = trainer.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            ranking_inputs={
                "completion_mask": batch["completion_mask"],
                "segment_ids": batch.get("segment_ids"),
                "layout": trainer._layout(batch),
            },
        ).logprob_sums
    assert not torch.allclose(ref, policy)  # another model
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss_type", ["plackett_luce", "lipo_lambda"])
def test_precomputed_reference_gives_the_on_the_fly_loss(make_config, tokenizer, layout, loss_type):
    losses = {}
    for precompute in (False, True):
        args = _config(
            make_config,
            loss_type=loss_type,
            shared_prompt=layout,
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=3,  # another padding than the training batches
            output_dir=str(make_config().output_dir) + f"-{precompute}",
        )
        trainer = ListDPOTrainer(
            build_tiny_llama(seed=0), args=args, train_dataset=_rankings(), processing_class=tokenizer
        )
        assert ("ref_logps" in trainer.train_dataset.column_names) == precompute
        assert (trainer.ref_model is None) == precompute  # the initial policy itself precomputed them
        trainer.train()
        losses[precompute] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses[True]) == 3 and len(set(losses[True])) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_precompute_resumes_and_never_reads_a_stale_cache(make_config, tokenizer, caplog):
    args = _config(make_config, precompute_ref_log_probs=True, precompute_ref_batch_size=2)
    dataset = _rankings()

    def build(seed):
        return ListDPOTrainer(
            build_tiny_llama(seed=seed), args=args, train_dataset=dataset, processing_class=tokenizer
        )

    first = build(0).train_dataset["ref_logps"]
    (cache,) = Path(args.output_dir, "ref_logps").glob("train.*.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == len(dataset)
    # Interrupted after two batches: the rerun computes only the rest, and gets the same values
    cache.write_text("\n".join(lines[:4]) + "\n")
    again = build(0).train_dataset["ref_logps"]
    assert again == first
    assert len(cache.read_text().splitlines()) == len(dataset)
    # Another reference model (seed): the cached values are stale, recomputed, and differ
    other = build(1).train_dataset["ref_logps"]
    assert other != first
    assert any("stale" in record.getMessage() for record in caplog.records)
    assert [json.loads(line)["ref_logps"] for line in cache.read_text().splitlines()] != [
        json.loads(line)["ref_logps"] for line in lines
    ]


@pytest.mark.parametrize("loss_type", ["plackett_luce", "lipo_lambda", "all_pairs"])
def test_layouts_give_the_same_loss_and_gradients(make_config, tokenizer, loss_type):
    results = {}
    for shared_prompt in ("auto", False):
        trainer = ListDPOTrainer(
            build_tiny_llama(seed=0),
            ref_model=build_tiny_llama(seed=1),
            args=_config(make_config, loss_type=loss_type, shared_prompt=shared_prompt, sft_weight=0.5),
            train_dataset=_rankings(),
            processing_class=tokenizer,
        )
        assert ("segment_ids" in trainer.data_collator([trainer.train_dataset[0]])) == (shared_prompt == "auto")
        loss, _ = _batch_loss(trainer)
        loss.backward()
        results[shared_prompt] = loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    (loss_a, grads_a), (loss_b, grads_b) = results["auto"], results[False]
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_resume_from_a_checkpoint_continues_the_run(make_config, tokenizer):
    def run(output_dir, **kwargs):
        args = _config(
            make_config, output_dir=output_dir, max_steps=4, save_strategy="steps", save_steps=2, shared_prompt=False
        )
        trainer = ListDPOTrainer(
            build_tiny_llama(seed=0), args=args, train_dataset=_rankings(), processing_class=tokenizer
        )
        trainer.train(**kwargs)
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    base = str(make_config().output_dir)
    full = run(base + "-full")
    resumed = run(base + "-full", resume_from_checkpoint=base + "-full/checkpoint-2")
    assert len(full) == 4 and resumed == full  # the checkpoint's log history, then steps 3 and 4 again


@pytest.mark.parametrize(
    ("loss_type", "citation"), [("plackett_luce", "rafailov2023direct"), ("lipo_lambda", "liu2024lipo")]
)
def test_model_card_cites_the_paper(make_config, tokenizer, loss_type, citation):
    trainer = ListDPOTrainer(
        build_tiny_llama(seed=0),
        args=_config(make_config, loss_type=loss_type, max_steps=1),
        train_dataset=_rankings(num_rows=4),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert citation in card and "list-dpo" in card

"""The shared trainer machinery behaves like a TRL trainer in the cases a DPO user hits: filtered datasets,
compute_metrics, MoE aux loss, gradient accumulation, metric gathering, PEFT checkpointing, vision data, reward scale."""

import logging
import math

import pytest
import torch
from datasets import Dataset

from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


def scored_rows(n=6):
    """Rankings of lengths 2, 3, 4, 2, 3, 4, ... with distinct rewards (gaps of 1)."""
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


# Filtered and re-selected datasets ----------------------------------------------------------------------------------


def test_drop_invalid_rows_with_scored_data_reads_the_filtered_rows(tokenizer, tiny_model, make_config):
    rows = scored_rows(6)
    rows[1]["completions"][0] = "   "  # empty completion: invalid
    rows[1]["scores"] = [5.0, 5.0, 5.0]  # and all tied: read through a stale table, the tie warning would count it
    trainer = PROTrainer(
        tiny_model,
        args=make_config(drop_invalid_rows=True, max_steps=1),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == 5
    assert [len(row["completion_ids"]) for row in trainer.train_dataset] == [2, 4, 2, 3, 4]
    trainer.train()
    assert trainer.state.global_step == 1


def test_prepared_dataset_after_select_reads_the_selected_rows(tokenizer, tiny_model, make_config):
    # A prepared dataset passed back in (e.g. a `select`ed eval split) is read through its indices mapping too
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=Dataset.from_list(scored_rows(6)), processing_class=tokenizer
    )
    trainer._longest_ranking = 0
    trainer._note_ranking_lengths(trainer.train_dataset.select([0, 3]))  # rankings of 2 only
    assert trainer._longest_ranking == 2


# Gradient accumulation ----------------------------------------------------------------------------------------------


def _one_sgd_step(tokenizer, make_config, **overrides):
    from trl_pro.assets import build_tiny_llama

    config = make_config(
        max_steps=1,
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        **overrides,
    )
    trainer = PROTrainer(
        build_tiny_llama(seed=0),
        args=config,
        train_dataset=Dataset.from_list(scored_rows(6)),
        processing_class=tokenizer,
    )
    trainer.train()
    loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}, loss


def test_gradient_accumulation_weighs_every_prompt_of_the_step_equally(tokenizer, make_config, layout):
    """Batch 6 in one step == micro-batches of 4 and 2 (rankings of lengths 2-4) accumulated: same SGD update."""
    full, full_loss = _one_sgd_step(tokenizer, make_config, per_device_train_batch_size=6, shared_prompt=layout)
    accumulated, accumulated_loss = _one_sgd_step(
        tokenizer, make_config, per_device_train_batch_size=4, gradient_accumulation_steps=2, shared_prompt=layout
    )
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-5)  # the logged loss is the step's per-prompt mean
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=0, atol=1e-5, msg=name)


# compute_metrics ----------------------------------------------------------------------------------------------------


def _user_ranking_metrics(prediction):
    """What a user writes: metrics of their own from the scores and reference ranks, -100 marking padding."""
    scores, ranks = torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids)
    mask = ranks >= 0
    assert torch.all(scores[~mask] == -100)
    others = scores[:, 1:].masked_fill(~mask[:, 1:], float("-inf"))
    best = ranks[:, 0] == 0
    return {
        "my_top1": (scores[:, 0] > others.amax(dim=1)).float().mean().item(),
        "num_prompts": len(scores),
        "all_ranked_first_is_best": bool(best.all()),
        "max_rank": int(ranks.max()),
    }


def test_compute_metrics_gets_scores_and_reference_ranks(tokenizer, tiny_model, make_config):
    rows = scored_rows(7)  # 7 prompts in batches of 4 and 3, rankings of 2 to 4 candidates
    rows[2]["scores"] = [3.0, 3.0, 1.0, 0.0]  # a tie at the top: candidates 0 and 1 share rank 0
    trainer = PROTrainer(
        tiny_model,
        args=make_config(),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        compute_metrics=_user_ranking_metrics,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_num_prompts"] == 7 and metrics["eval_max_rank"] == 3
    assert metrics["eval_all_ranked_first_is_best"]
    assert metrics["eval_my_top1"] == pytest.approx(metrics["eval_ranking/top1_accuracy"])
    _, scores, ranks = trainer.prediction_step(
        trainer.model, trainer.data_collator([trainer.eval_dataset[2]]), prediction_loss_only=False
    )
    assert ranks.tolist() == [[0, 0, 2, 3]] and scores.dtype == torch.float32


# Metrics gathered over prompts and processes ------------------------------------------------------------------------


def test_eval_metrics_are_means_over_prompts_for_a_partial_last_batch(tokenizer, tiny_model, make_config, layout):
    rows = scored_rows(5)  # eval batches of 2, 2 and 1 prompts
    trainer = PROTrainer(
        tiny_model,
        args=make_config(per_device_eval_batch_size=2, shared_prompt=layout),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    trainer.model.eval()
    losses, best_scores, sft = [], [], []
    with torch.no_grad():
        for row in trainer.eval_dataset:
            loss, output = trainer.compute_loss(trainer.model, trainer.data_collator([row]), return_outputs=True)
            losses.append(loss.item())
            best_scores.append(output.scores[0].item())
            sft.append(output.sft_nll[0].item())
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / 5, rel=1e-5)
    assert metrics["eval_scores/rank_1"] == pytest.approx(sum(best_scores) / 5, rel=1e-5)
    assert metrics["eval_loss/sft"] == pytest.approx(sum(sft) / 5, rel=1e-5)


@pytest.mark.multiprocess
def test_eval_metrics_on_two_processes_count_every_prompt_once(tokenizer, tiny_model, make_config, tmp_path):
    """5 prompts on 2 processes with eval batch 2: accelerate pads the last step with 3 duplicate prompts, which
    `gather_for_metrics` drops. Every metric equals the single-process one."""
    import json
    import socket
    import sys
    from pathlib import Path

    from helpers.launching import run_launcher

    rows = scored_rows(5)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    worker = Path(__file__).resolve().parents[1] / "helpers" / "eval_worker.py"
    run_launcher(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(worker),
            str(tmp_path / "rows.json"),
            str(tmp_path / "result.json"),
            str(tmp_path / "two"),
        ],
        timeout=240,
    )
    two = json.loads((tmp_path / "result.json").read_text())

    sys.path.insert(0, str(worker.parent))
    from helpers.eval_worker import top1_and_count

    trainer = PROTrainer(
        tiny_model,
        args=make_config(per_device_eval_batch_size=2),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        compute_metrics=top1_and_count,
    )
    one = trainer.evaluate()
    assert two["num_processes"] == 2 and two["eval_num_prompts"] == one["eval_num_prompts"] == 5
    for key in (
        "eval_loss",
        "eval_ranking/top1_accuracy",
        "eval_ranking/pairwise_accuracy",
        "eval_scores/rank_1",
        "eval_scores/rank_4",
        "eval_loss/rank_1",
        "eval_loss/sft",
        "eval_my_top1",
    ):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


# MoE, vision data, ZeRO-3 + PEFT ------------------------------------------------------------------------------------


def _tiny_mixtral(tokenizer, router_aux_loss_coef=0.5):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_aux_loss_coef=router_aux_loss_coef,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config)


def test_moe_router_aux_loss_is_added_and_logged(tokenizer, make_config):
    model = _tiny_mixtral(tokenizer)
    # The reference is the model's own forward on one row per candidate: the plain layout (the default layout's aux
    # loss equals it: tests/loss_core/test_moe_and_dispatch.py)
    trainer = PROTrainer(
        model,
        args=make_config(max_steps=1, shared_prompt=False),
        train_dataset=Dataset.from_list(scored_rows(6)),
        processing_class=tokenizer,
    )
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.5  # the model config's coefficient
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        loss, output = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        # The model's own causal-LM forward computes the same load-balancing loss
        reference = trainer.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True
        ).aux_loss
    assert reference > 0
    torch.testing.assert_close(output.aux_loss, reference)
    torch.testing.assert_close(loss, output.loss + 0.5 * reference)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all(math.isfinite(log["aux_loss"]) and log["aux_loss"] > 0 for log in logs)

    # router_aux_loss_coef=0.0 turns it off; on a dense model a coefficient is an error, as in DPOTrainer
    off = PROTrainer(
        _tiny_mixtral(tokenizer),
        args=make_config(router_aux_loss_coef=0.0),
        train_dataset=Dataset.from_list(scored_rows(2)),
        processing_class=tokenizer,
    )
    assert not off.aux_loss_enabled
    from trl_pro.assets import build_tiny_llama

    with pytest.raises(ValueError, match="not a Mixture-of-Experts"):
        PROTrainer(
            build_tiny_llama(0),
            args=make_config(router_aux_loss_coef=0.1),
            train_dataset=Dataset.from_list(scored_rows(2)),
            processing_class=tokenizer,
        )


def test_vision_dataset_is_rejected_at_init(tokenizer, tiny_model, make_config):
    rows = [{**row, "images": []} for row in scored_rows(2)]
    with pytest.raises(ValueError, match="'images' column.*vision dataset"):
        PROTrainer(tiny_model, args=make_config(), train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    image_rows = [{**row, "image": None} for row in scored_rows(2)]
    with pytest.raises(ValueError, match="eval dataset has an 'image' column"):
        PROTrainer(
            tiny_model,
            args=make_config(),
            train_dataset=Dataset.from_list(scored_rows(2)),
            eval_dataset=Dataset.from_list(image_rows),
            processing_class=tokenizer,
        )


def test_zero3_peft_adapter_dtype_and_reentrant_checkpointing_as_dpo(tokenizer, make_config, caplog):
    """Under ZeRO-3 (a real accelerate DeepSpeedPlugin; DeepSpeed itself is not installed on CPU), PEFT adapters keep
    the base model's dtype and gradient checkpointing is forced to be reentrant, as DPOTrainer does."""
    from accelerate.utils import DeepSpeedPlugin
    from peft import LoraConfig, get_peft_model

    from trl_pro.assets import build_tiny_llama
    from trl_pro.trainers.ranking_trainer import _get_peft_model_kwargs, _use_reentrant_checkpointing_for_zero3_peft

    config = make_config(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    assert _get_peft_model_kwargs(config, is_quantized=False) == {}
    peft_model = get_peft_model(build_tiny_llama(0), LoraConfig(r=4, target_modules=["q_proj"]))
    _use_reentrant_checkpointing_for_zero3_peft(config, peft_model)  # no ZeRO-3: the user's choice stands
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}

    config.deepspeed_plugin = DeepSpeedPlugin(zero_stage=3)
    bf16_model = build_tiny_llama(0).to(torch.bfloat16)
    kwargs = _get_peft_model_kwargs(config, is_quantized=False)
    adapters = [
        p
        for n, p in get_peft_model(bf16_model, LoraConfig(r=4, target_modules=["q_proj"]), **kwargs).named_parameters()
        if "lora_" in n
    ]
    assert adapters and all(p.dtype == torch.bfloat16 for p in adapters)  # PEFT's default would upcast to fp32
    assert _get_peft_model_kwargs(config, is_quantized=True) == {}  # QLoRA keeps its own bf16 cast

    _use_reentrant_checkpointing_for_zero3_peft(config, build_tiny_llama(0))  # not a PEFT model: unchanged
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}
    with caplog.at_level(logging.WARNING):
        _use_reentrant_checkpointing_for_zero3_peft(config, peft_model)
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": True}
    assert "use_reentrant` is forced to `True`" in caplog.text


# The reward scale ---------------------------------------------------------------------------------------------------


def test_warns_once_when_the_median_reward_gap_is_far_from_one(tokenizer, tiny_model, make_config, caplog):
    small = [{**row, "scores": [s / 50 for s in row["scores"]]} for row in scored_rows(6)]  # 0-1 rewards, gaps 0.02
    with caplog.at_level(logging.WARNING):
        PROTrainer(
            tiny_model,
            args=make_config(),
            train_dataset=Dataset.from_list(small),
            eval_dataset=Dataset.from_list(small),
            processing_class=tokenizer,
        )
    warnings = [r.getMessage() for r in caplog.records if "median gap between adjacent rewards" in r.getMessage()]
    assert len(warnings) == 1 and "train dataset is 0.02." in warnings[0] and "reward_scale` (e.g. 50)" in warnings[0]

    no_warning = ((scored_rows(6), {}), (small, {"reward_scale": 50.0}), (small, {"use_temperature": False}))
    for rows, overrides in no_warning:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            PROTrainer(
                tiny_model,
                args=make_config(**overrides),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
        assert "median gap" not in caplog.text, overrides


def test_reward_scale_multiplies_the_rewards(tokenizer, tiny_model, make_config):
    small = [{**row, "scores": [s / 50 for s in row["scores"]]} for row in scored_rows(6)]
    small[0]["scores"] = [0.3, 0.01]  # uneven gaps, so that the scale is not the only difference
    large = [{**row, "scores": [s * 50 for s in row["scores"]]} for row in small]
    losses = []
    for rows, scale in ((small, 50.0), (large, 1.0), (small, 1.0)):
        trainer = PROTrainer(
            tiny_model,
            args=make_config(reward_scale=scale),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, trainer.data_collator(list(trainer.train_dataset))))
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(losses[0], losses[2])
    with pytest.raises(ValueError, match="reward_scale"):
        PROConfig(output_dir="unused", reward_scale=0.0)

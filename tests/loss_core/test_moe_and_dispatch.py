"""The MoE router load-balancing loss under both batch layouts, and the registry of loss implementations."""

import math

import pytest
import torch
from datasets import Dataset

from trl_pro.data.collator import DataCollatorForRanking
from trl_pro.trainers.pro_trainer import PROTrainer


def _rows(n=6):
    """Rankings of lengths 2, 3, 4, ... with prompts of different lengths (so the plain rows repeat them unevenly)."""
    return [
        {
            "prompt": f"Question {i}:" + " and then?" * (i % 3),
            "completions": [f" answer {j} of {i}" * (1 + j % 2) for j in range(2 + i % 3)],
            "scores": [float(-j) for j in range(2 + i % 3)],
        }
        for i in range(n)
    ]


def _tiny_mixtral(tokenizer, attention="sdpa"):
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
        router_aux_loss_coef=0.5,
        max_position_embeddings=256,
    )
    config._attn_implementation = attention
    torch.manual_seed(0)
    return MixtralForCausalLM(config)


@pytest.mark.parametrize("shared_prompt", ["auto", False])
def test_moe_trainer_step_logs_the_aux_loss(tokenizer, make_config, shared_prompt):
    # router_aux_loss_coef > 0 in the model config: the trainer requests the router logits
    trainer = PROTrainer(
        _tiny_mixtral(tokenizer),
        args=make_config(max_steps=1, shared_prompt=shared_prompt),
        train_dataset=Dataset.from_list(_rows()),
        processing_class=tokenizer,
    )
    assert trainer.aux_loss_enabled and trainer.data_collator.shared_prompt is (shared_prompt == "auto")
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all(
        math.isfinite(log["loss"]) and math.isfinite(log["aux_loss"]) and log["aux_loss"] > 0 for log in logs
    )


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss, output = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), output, grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_aux_loss_equals_the_plain_layout(tokenizer, make_config, attention):
    """The packed row routes every real token the plain rows route, from the same context; the plain rows route each
    prompt once per candidate, so the shared layout weighs prompt tokens by the ranking's length: same aux loss,
    same total loss, same gradients."""
    trainer = PROTrainer(
        _tiny_mixtral(tokenizer, attention),
        args=make_config(shared_prompt="auto"),
        train_dataset=Dataset.from_list(_rows()),
        processing_class=tokenizer,
    )
    assert trainer.data_collator.shared_prompt
    examples = [trainer.train_dataset[i] for i in range(4)]
    shared = trainer.data_collator(examples)
    plain = DataCollatorForRanking(pad_token_id=trainer.data_collator.pad_token_id)(examples)
    assert "segment_ids" in shared and "segment_ids" not in plain
    trainer.model.train()
    shared_loss, shared_out, shared_grads = _loss_and_grads(trainer, shared)
    plain_loss, plain_out, plain_grads = _loss_and_grads(trainer, plain)
    with torch.no_grad():  # the model's own causal-LM forward on the plain rows
        reference = trainer.model(
            input_ids=plain["input_ids"], attention_mask=plain["attention_mask"], output_router_logits=True
        ).aux_loss
    assert reference > 0
    torch.testing.assert_close(plain_out.aux_loss, reference)
    torch.testing.assert_close(shared_out.aux_loss, plain_out.aux_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert shared_grads.keys() == plain_grads.keys() and any("gate" in name for name in plain_grads)
    for name, grad in plain_grads.items():
        error = (shared_grads[name] - grad).norm() / grad.norm().clamp_min(1e-30)
        assert error <= 1e-5, f"{name}: relative error {error:.2e}"


# Registry of loss implementations ------------------------------------------------------------------------------------


def test_registry_lists_the_fused_implementations_in_auto_order():
    from trl_pro.loss_core import fused, torch_path
    from trl_pro.loss_core.common import FUSED_IMPLEMENTATIONS

    assert FUSED_IMPLEMENTATIONS == ("auto", *(entry.name for entry in fused.LOSS_IMPLEMENTATIONS))
    assert fused._ops("torch") == (torch_path.token_forward, torch_path.token_backward)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it
    assert fused.resolve_implementation("auto", cpu) == "torch"
    assert fused.resolve_implementation("auto", cuda) == ("triton" if fused.triton_importable() else "torch")


def test_triton_entry_says_why_it_cannot_run(monkeypatch):
    from trl_pro.loss_core import fused

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(fused, "triton_importable", lambda: True)
    assert fused.resolve_implementation("triton", cuda) == "triton"
    monkeypatch.setattr(fused, "triton_kernels_interpreted", lambda: True)
    assert fused.resolve_implementation("triton", cpu) == "triton"
    assert fused.resolve_implementation("auto", cpu) == "torch"  # the interpreter is for tests: "auto" never picks it
    monkeypatch.setattr(fused, "triton_kernels_interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        fused.resolve_implementation("triton", cpu)
    monkeypatch.setattr(fused, "triton_importable", lambda: False)
    with pytest.raises(ImportError, match="needs the optional dependency Triton"):
        fused.resolve_implementation("triton", cuda)
    assert fused.resolve_implementation("auto", cuda) == "torch"
    with pytest.raises(ValueError, match="implementation must be one of"):
        fused.resolve_implementation("cuda", cpu)
    with pytest.raises(ValueError, match="only available through"):
        fused.resolve_implementation("trl", cpu)


@pytest.mark.parametrize(
    "implementation, softcapping, expected",
    [
        ("trl", None, "trl"),
        ("torch", 30.0, "trl"),
        ("auto", 30.0, "trl"),
        ("auto", None, "fused"),
        ("torch", None, "fused"),
        ("triton", None, "fused"),
    ],
)
def test_dispatchers_route_each_call(monkeypatch, implementation, softcapping, expected):
    from trl_pro.data.layout import RankingLayout
    from trl_pro.loss_core import dispatch

    calls = []
    monkeypatch.setattr(dispatch, "trl_ranking_loss_from_hidden", lambda *a, **k: calls.append(("trl", a, k)))
    monkeypatch.setattr(dispatch, "fused_ranking_loss", lambda *a, **k: calls.append(("fused", a, k)))
    hidden, weight, bias = torch.ones(3, 2), torch.ones(5, 2), torch.ones(5)
    layout = RankingLayout(torch.tensor([0, 1, 3]), torch.tensor([0, 2]), torch.tensor([0]))
    dispatch.ranking_loss_from_hidden(
        hidden,
        weight,
        bias,
        torch.zeros(3, dtype=torch.long),
        layout,
        sft_weight=0.5,
        implementation=implementation,
        logit_scale=2.0,
        final_logit_softcapping=softcapping,
    )
    [(name, args, kwargs)] = calls
    assert name == expected and args[4] is layout and kwargs["sft_weight"] == 0.5
    if expected == "trl":  # TRL's kernel applies the scale and the softcapping itself
        assert args[0] is hidden and args[2] is bias
        assert kwargs["logit_scale"] == 2.0 and kwargs["final_logit_softcapping"] == softcapping
    else:  # the fused core gets the scale folded into the head's inputs
        assert torch.equal(args[0], 2 * hidden) and torch.equal(args[2], 2 * bias)
        assert kwargs["implementation"] == implementation and "logit_scale" not in kwargs


def test_logit_scale_gives_the_same_loss_through_both_dispatchers():
    from trl_pro.data.layout import RankingLayout
    from trl_pro.loss_core.dispatch import ranking_loss_from_hidden

    torch.manual_seed(0)
    layout = RankingLayout(torch.tensor([0, 2, 3, 6, 8, 10]), torch.tensor([0, 2, 5]), torch.tensor([0, 2]))
    inputs = [torch.randn(10, 8), torch.randn(17, 8), torch.randn(17)]
    targets, rewards = torch.randint(0, 17, (10,)), torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0])
    results = {}
    for implementation in ("torch", "trl"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        out = ranking_loss_from_hidden(
            *leaves, targets, layout, rewards, sft_weight=0.3, logit_scale=1.7, implementation=implementation
        )
        out.loss.backward()
        results[implementation] = [out.loss.detach()] + [x.grad for x in leaves]
    for fused, trl in zip(results["torch"], results["trl"]):
        torch.testing.assert_close(fused, trl, rtol=1e-5, atol=1e-6)

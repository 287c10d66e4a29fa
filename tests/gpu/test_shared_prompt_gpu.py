"""The shared-prompt layout on a GPU, with sdpa (boolean 4D mask) and flex_attention (a `BlockMask`, compiled
flex-attention kernels that skip the blocks between candidates), against the plain layout: same loss, scores, SFT
terms and gradients. The CPU version is tests/loss_core/test_shared_prompt.py.

The plain layout runs on sdpa for both: it is the layout-independent reference (one row per candidate, a 2D padding
mask), so the flex case checks the BlockMask path and the packed rows at once. The tiny Llama is fp32 and TF32 is off
(torch's default), so the backends differ by summation order only: relative errors within 1e-4 (CPU: 1e-5; a wrong
mask or position id gives O(1)).
"""

import pytest
import torch
from helpers.rankings import hh_ranking_examples

from trl_pro.assets import build_tiny_llama
from trl_pro.data.collator import DataCollatorForRanking
from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.head import add_ranking_loss_head


pytestmark = pytest.mark.gpu
DEVICE = "cuda"

RTOL = 1e-4


@pytest.fixture(scope="module")
def examples(tokenizer):
    return hh_ranking_examples(tokenizer, max_length=96, max_prompt_length=64)


def _collate(examples, shared):
    batch = DataCollatorForRanking(pad_token_id=0, shared_prompt=shared)(examples)
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _model(attention):
    model = build_tiny_llama(seed=0).to(DEVICE)
    model.config._attn_implementation = attention  # as loaded with attn_implementation=...
    add_ranking_loss_head(model)
    model.train()
    return model


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    layout = RankingLayout(batch["token_offsets"], batch["ranking_offsets"], batch["sft_candidate"])
    output = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        ranking_inputs={
            "completion_mask": batch["completion_mask"],
            "segment_ids": batch.get("segment_ids"),
            "layout": layout,
            "rewards": batch["rewards"],
            "sft_weight": 0.1,
            "implementation": "torch",  # the layout is under test here; the kernels in test_kernels_gpu.py
        },
    )
    output.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return output, grads


def _assert_close(actual, expected, name):
    error = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()
    assert error <= RTOL, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("attention", ["sdpa", "flex_attention"])
def test_shared_layout_equals_plain_layout(examples, attention):
    if attention == "flex_attention":
        pytest.importorskip("torch.nn.attention.flex_attention", reason="flex_attention needs torch >= 2.5")
    plain_out, plain_grads = _loss_and_grads(_model("sdpa"), _collate(examples, False))
    model = _model(attention)
    shared_batch = _collate(examples, True)
    assert shared_batch["input_ids"].shape[0] == len(examples)  # one packed row per ranking
    shared_out, shared_grads = _loss_and_grads(model, shared_batch)
    assert torch.isfinite(plain_out.loss) and plain_out.loss != 0
    _assert_close(shared_out.loss, plain_out.loss, "loss")
    _assert_close(shared_out.scores, plain_out.scores, "scores")
    _assert_close(shared_out.sft_nll, plain_out.sft_nll, "sft_nll")
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    for name in plain_grads:
        assert plain_grads[name].norm() > 0, name
        _assert_close(shared_grads[name], plain_grads[name], name)

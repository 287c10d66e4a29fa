"""Numerics at the edges: every loss-core implementation against an fp64 reference.

Implementations: "torch" (the torch twin, the CPU path), "triton" (the fused kernels; on CPU in Triton's interpreter,
so its cases stay small) and "trl" (TRL's chunked LM head + the torch cascade, the baseline). Edge cases:
- logits of +-1e4 (hidden states and LM head in fp32, bf16, fp16);
- completions of 4,096 tokens (torch and trl; the interpreter would take minutes);
- a ranking of 16 candidates;
- reward gaps of 1e-6 and 1e3, and every candidate tied (dynamic temperature).

The reference is `eager_ranking_loss_from_hidden` in float64 on the *same* (already rounded) inputs: the error measured
is the implementation's, not the input dtype's. Loss and gradients must be finite and within:
- loss: |loss - ref| <= LOSS_RTOL * |ref| + LOSS_ATOL (fp32 accumulation of up to 2 x 4,096 log-probs of magnitude
  up to ~1e4: relative error ~1e-6); for the "trl" baseline in bf16/fp16, TRL_HALF_LOSS_RTOL (it rounds the logits to
  the input dtype);
- gradients: max |g - g_ref| <= GRAD_RTOL[dtype] * max |g_ref| (as in test_kernels.py: the gradient of a bf16/fp16
  input is rounded to that dtype, 8 or 11 mantissa bits).
`ERRORS` keeps the largest error of every case; `pytest -s` prints them (benchmarks/results/reliability.md).
"""

import os

import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from trl_pro.data.layout import RankingLayout  # noqa: E402
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden  # noqa: E402
from trl_pro.loss_core.reference import eager_ranking_loss_from_hidden  # noqa: E402


LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-5
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# The "trl" baseline (TRL's chunked LM head) computes the logits in the input dtype: a bf16/fp16 logit of 1e4 is off by
# up to half a unit in the last place (32 / 4), so its loss is only as good as the dtype; the fused cores round nothing
# and its gradients carry that rounding into the logits-gradient (measured up to 13% of max |g| in bf16 at logits of
# 1e4): a baseline bound, documented, not a goal
TRL_HALF_LOSS_RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
TRL_HALF_GRAD_RTOL = {torch.bfloat16: 0.25, torch.float16: 0.05}
ERRORS: dict[str, dict[str, float]] = {}
HIDDEN, VOCAB = 16, 64


def _implementation(name: str) -> str:
    if name == "triton":
        pytest.importorskip("triton")
        from trl_pro.loss_core.fused import triton_kernels_interpreted

        if not torch.cuda.is_available():
            assert triton_kernels_interpreted(), "TRITON_INTERPRET=1 must be set before trl_pro's kernels are imported"
    return name


def make_case(lengths, tokens_per_candidate, dtype, *, max_logit=None, rewards=None, seed=0):
    """Inputs in `dtype` for rankings of `lengths`; `max_logit` rescales the hidden states so that the largest |logit|
    is that value (computed in fp64 from the rounded LM head)."""
    g = torch.Generator().manual_seed(seed)
    counts = tokens_per_candidate if isinstance(tokens_per_candidate, list) else [tokens_per_candidate] * sum(lengths)
    token_offsets = torch.tensor([0] + counts).cumsum(0)
    ranking_offsets = torch.tensor([0] + list(lengths)).cumsum(0)
    layout = RankingLayout(token_offsets, ranking_offsets, ranking_offsets[:-1].clone())
    num_tokens = int(token_offsets[-1])
    hidden = torch.randn(num_tokens, HIDDEN, generator=g, dtype=torch.float64)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64) / HIDDEN**0.5).to(dtype)
    bias = torch.randn(VOCAB, generator=g, dtype=torch.float64).to(dtype)
    if max_logit is not None:
        logits = hidden @ weight.double().T
        hidden = hidden * (max_logit / logits.abs().amax(dim=1, keepdim=True))  # every token reaches +-max_logit
    hidden = hidden.to(dtype)
    targets = torch.randint(0, VOCAB, (num_tokens,), generator=g)
    if rewards is not None:
        rewards = torch.tensor(rewards, dtype=torch.float32)
    return dict(hidden=hidden, weight=weight, bias=bias, targets=targets, layout=layout, rewards=rewards)


def run(case, implementation: str, sft_weight: float = 0.1):
    leaves = {name: case[name].detach().clone().requires_grad_() for name in ("hidden", "weight", "bias")}
    args = (leaves["hidden"], leaves["weight"], leaves["bias"], case["targets"], case["layout"], case["rewards"])
    if implementation == "fp64":
        leaves = {name: leaf.detach().double().requires_grad_() for name, leaf in leaves.items()}
        args = (
            leaves["hidden"],
            leaves["weight"],
            leaves["bias"],
            *args[3:5],
            None if case["rewards"] is None else case["rewards"].double(),
        )
        out = eager_ranking_loss_from_hidden(*args, sft_weight=sft_weight)
    else:
        out = ranking_loss_from_hidden(*args, sft_weight=sft_weight, implementation=implementation)
    out.loss.backward()
    return out.loss.detach(), {name: leaf.grad for name, leaf in leaves.items()}


def check(name: str, case, implementation: str) -> None:
    dtype = case["hidden"].dtype
    loss, grads = run(case, implementation)
    ref_loss, ref_grads = run(case, "fp64")
    assert torch.isfinite(loss), f"{name}: loss {loss}"
    loss_error = abs(loss.double() - ref_loss).item()
    errors = {
        "loss_abs": loss_error,
        "loss_rel": loss_error / max(abs(ref_loss.item()), 1e-30),
        "ref_loss": ref_loss.item(),
    }
    rtol = TRL_HALF_LOSS_RTOL.get(dtype, LOSS_RTOL) if implementation == "trl" else LOSS_RTOL
    assert loss_error <= rtol * abs(ref_loss.item()) + LOSS_ATOL, f"{name}: loss {loss} vs fp64 {ref_loss}"
    for key, grad in grads.items():
        assert grad is not None and grad.dtype == dtype and torch.isfinite(grad).all(), f"{name}: d/d{key}"
        ref = ref_grads[key]
        scale = ref.abs().max().item()
        error = (grad.double() - ref).abs().max().item()
        errors[f"grad_{key}_rel"] = error / scale if scale else error
        grad_rtol = TRL_HALF_GRAD_RTOL.get(dtype, GRAD_RTOL[dtype]) if implementation == "trl" else GRAD_RTOL[dtype]
        assert error <= grad_rtol * scale + 1e-12, f"{name}: d/d{key} error {error:.3g} vs max {scale:.3g}"
    ERRORS[f"{name} [{implementation}]"] = errors


IMPLEMENTATIONS = ["torch", "triton", "trl"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("sign", [1, -1], ids=["+1e4", "-1e4"])
def test_logits_of_1e4(implementation, dtype, sign):
    # the target's logit is +-1e4 too for some tokens: log-probs of 0 and of -2e4 in one batch
    case = make_case([3, 2], [3, 5, 2, 4, 3], dtype, max_logit=1e4)
    case["hidden"] = case["hidden"] * sign
    case["targets"] = (case["hidden"].double() @ case["weight"].double().T).argmax(dim=1)
    case["targets"][::2] = (case["hidden"][::2].double() @ case["weight"].double().T).argmin(dim=1)
    check(f"logits +-1e4, {str(dtype).split('.')[-1]}, sign {sign}", case, _implementation(implementation))


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["torch", "trl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_completions_of_4096_tokens(implementation, dtype):
    check(
        f"2 completions of 4096 tokens, {str(dtype).split('.')[-1]}",
        make_case([2], 4096, dtype, max_logit=30.0),
        implementation,
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rewards", [None, "distinct"])
def test_ranking_of_16(implementation, rewards):
    r = None if rewards is None else [float(16 - i) for i in range(16)]
    case = make_case([16], [2 + i % 3 for i in range(16)], torch.float32, max_logit=20.0, rewards=r)
    check(f"ranking of 16, rewards {rewards}", case, _implementation(implementation))


REWARDS = {
    "gaps 1e-6": [3e-6, 2e-6, 1e-6, 0.0],
    "gaps 1e3": [3e3, 2e3, 1e3, 0.0],
    "all tied": [1.0, 1.0, 1.0, 1.0],
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("rewards", list(REWARDS))
def test_reward_gaps(implementation, dtype, rewards):
    case = make_case([4, 4], 3, dtype, max_logit=20.0, rewards=REWARDS[rewards] * 2)
    check(f"rewards {rewards}, {str(dtype).split('.')[-1]}", case, _implementation(implementation))
    if rewards == "all tied":  # every term is the constant log(n - k + 1): only the SFT term has a gradient
        ranking_only = dict(case, rewards=case["rewards"])
        loss, grads = run(ranking_only, implementation, sft_weight=0.0)
        expected = 2 * sum(torch.log(torch.tensor(float(n))).item() for n in (4, 3, 2)) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert all(g.abs().max() == 0 for g in grads.values())


def test_report_largest_errors():
    """Runs last in this file: prints the largest error of each case (`pytest -s`) for the reliability report."""
    print("\nlargest errors against fp64:")
    for name, errors in ERRORS.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()))
    assert ERRORS

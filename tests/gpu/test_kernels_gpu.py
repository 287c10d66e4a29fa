"""The compiled Triton loss core on a GPU against the torch path and the eager [T, V] reference.

tests/loss_core/test_kernels.py holds the kernels to the reference in Triton's interpreter on small shapes; here they
are compiled (no `TRITON_INTERPRET`) and run at real sizes: hidden size 4096, vocabularies 32003 and 151936 (neither a
multiple of the vocabulary tile or chunk), ragged rankings of 2 to 8 candidates with 1 to 37 tokens each, trainable
and frozen (LoRA/QLoRA) LM heads, with and without bias, in fp32, bf16 and fp16, with the default GPU tiles
(`DEFAULT_TILES`, vocabulary splits chosen from the SM count). PRO runs both Triton kernels (token level and ranking
level); RRHF runs the Triton token level under its torch ranking level.

Every case computes the loss and gradients three ways: the eager reference (`upcast=True`: exact products, fp32 sums),
the torch path and the Triton path, and checks both paths against the reference and Triton against torch (same
tolerances).

Tolerances (as in tests/loss_core/test_kernels.py, errors relative to the largest magnitude of the expected tensor:
|actual - expected| <= rtol * max|expected|):
- forward values (loss, scores, rank_terms, sft_nll), every dtype: 1e-4. On CPU 1e-5 holds; on a GPU the hidden
  size 4096 is summed in other orders by tensor cores / FMA tiles and cuBLAS (and tensor cores may truncate while
  they accumulate), which by estimate (not yet measured on a GPU) moves the logits by ~1e-5 absolute; a wrong
  kernel moves them by O(1).
- gradients: bf16 2e-2 and fp16 4e-3, the CPU values (the logits-gradient tile is rounded to the input dtype before
  the two gradient GEMMs); fp32 1e-4 (CPU: 1e-5), for the summation orders above.
fp32 runs with TF32 off (torch's default, `torch.backends.cuda.matmul.allow_tf32 = False`, which conftest.py's
`no_tf32` fixture makes sure of): the Triton kernels then use IEEE fp32 dots, like cuBLAS and the reference.
"""

import pytest
import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.fused import fused_ranking_loss
from trl_pro.loss_core.reference import eager_ranking_loss_from_hidden
from trl_pro.objectives.rrhf import RRHFObjective


pytestmark = pytest.mark.gpu
DEVICE = "cuda"

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
FORWARD_RTOL = 1e-4
GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}
HIDDEN = 4096

# Ragged rankings of up to 8 candidates; 1 to 37 tokens per candidate (single-token candidates included), a few
# hundred tokens per batch: several token tiles (block_t 64), one token chunk
CASES = {
    # vocabulary 32003 (no multiple of 128 or 4096), bias, trainable head, distinct rewards, beta per prompt
    "v32003-bias-trainable": dict(
        lengths=[2, 8, 3, 5],
        vocab=32003,
        bias=True,
        frozen=False,
        rewards="distinct",
        sft_weight=[0.1, 1.0, 0.0, 0.5],
        sft_loss_reduction="sum",
        rank_loss_terms="all",
    ),
    # Qwen's 151936, no bias, frozen head (LoRA/QLoRA): hidden gradient only; ties and a fully tied ranking
    "v151936-frozen": dict(
        lengths=[8, 2, 4, 3],
        vocab=151936,
        bias=False,
        frozen=True,
        rewards="ties",
        sft_weight=0.3,
        sft_loss_reduction="mean",
        rank_loss_terms="all",
    ),
    # 151936 with a trainable head, no rewards (T = 1), only the first cascade term
    "v151936-trainable-first": dict(
        lengths=[3, 8, 2],
        vocab=151936,
        bias=False,
        frozen=False,
        rewards=None,
        sft_weight=0.05,
        sft_loss_reduction="sum",
        rank_loss_terms="first",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    pytest.importorskip("triton", reason="the Triton kernels need Triton (the `triton` extra)")
    from trl_pro.loss_core.fused import triton_kernels_interpreted

    # This tier is about the compiled kernels: TRITON_INTERPRET=1 in the environment would test the interpreter
    assert not triton_kernels_interpreted(), "TRITON_INTERPRET is set: unset it to test the compiled kernels"


def make_case(lengths, vocab, dtype, *, bias, frozen, rewards, seed, scale=2.0):
    """Random hidden states [T, 4096], LM head [vocab, 4096] (+ bias), targets and rewards, on CUDA."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    num_candidates = sum(lengths)
    token_counts = [1 + (13 * c + seed) % 37 for c in range(num_candidates)]
    token_counts[0] = 1  # a single-token candidate (the SFT candidate of the first prompt)
    token_offsets = torch.tensor([0] + token_counts).cumsum(0)
    ranking_offsets = torch.tensor([0] + list(lengths)).cumsum(0)
    layout = RankingLayout(token_offsets, ranking_offsets, ranking_offsets[:-1].clone()).to(DEVICE)
    num_tokens = int(token_offsets[-1])
    hidden = torch.randn(num_tokens, HIDDEN, generator=g, device=DEVICE)
    weight = torch.randn(vocab, HIDDEN, generator=g, device=DEVICE) * (scale / HIDDEN**0.5)
    b = torch.randn(vocab, generator=g, device=DEVICE) if bias else None
    targets = torch.randint(0, vocab, (num_tokens,), generator=g, device=DEVICE)
    cpu = torch.Generator().manual_seed(seed)
    if rewards == "distinct":
        r = torch.cat([torch.sort(torch.randn(n, generator=cpu) * 2, descending=True).values for n in lengths])
    elif rewards == "ties":
        parts = [torch.full((lengths[0],), 1.5)]  # every candidate tied: constant terms, no gradient
        for n in lengths[1:]:
            parts.append(torch.sort(torch.randint(0, 3, (n,), generator=cpu).float(), descending=True).values)
        r = torch.cat(parts)
    else:
        r = None

    def leaf(x, trainable=True):
        return None if x is None else x.to(dtype).requires_grad_(trainable)

    return dict(
        hidden=leaf(hidden),
        weight=leaf(weight, not frozen),
        bias=leaf(b, not frozen),
        targets=targets,
        layout=layout,
        rewards=None if r is None else r.to(DEVICE),
    )


def run(case, implementation, **kwargs):
    """(output, {name: grad or None}) after backward of the loss; "reference" is the eager [T, V] reference."""
    params = {k: case[k] for k in ("hidden", "weight", "bias") if case[k] is not None}
    for p in params.values():
        p.grad = None
    args = (case["hidden"], case["weight"], case["bias"], case["targets"], case["layout"], case["rewards"])
    if implementation == "reference":
        out = eager_ranking_loss_from_hidden(*args, **kwargs)
    else:
        out = fused_ranking_loss(*args, implementation=implementation, **kwargs)  # default (GPU) tiles
        assert out.implementation == implementation
    out.loss.backward()
    grads = {k: (None if p.grad is None else p.grad.clone()) for k, p in params.items()}
    for p in params.values():
        p.grad = None
    return out, grads


def assert_close(actual, expected, rtol, name=""):
    """|actual - expected| <= rtol * max|expected| (tests/loss_core/test_kernels.py)."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"{name}: not finite"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    bound = rtol * max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (rtol {rtol} of max |expected|)"


def compare_all(case, **kwargs):
    """Reference, torch and Triton: both paths against the reference, and Triton against torch."""
    dtype = case["hidden"].dtype
    results = {name: run(case, name, **kwargs) for name in ("reference", "torch", "triton")}
    ref, ref_grads = results["reference"]
    for implementation, expected, expected_grads in (
        ("torch", ref, ref_grads),
        ("triton", ref, ref_grads),
        ("triton", *results["torch"]),
    ):
        out, grads = results[implementation]
        label = f"{implementation} vs {'reference' if expected is ref else 'torch'}"
        assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
        for name in ("loss", "scores", "rank_terms", "sft_nll"):
            assert_close(getattr(out, name), getattr(expected, name), FORWARD_RTOL, f"{label}: {name}")
        assert grads.keys() == expected_grads.keys()
        for name, g in grads.items():
            assert (g is None) == (expected_grads[name] is None), f"{label}: grad {name}"
            if g is not None:
                assert g.dtype == case[name].dtype, f"{label}: grad {name} dtype"
                assert_close(g, expected_grads[name], GRAD_RTOL[dtype], f"{label}: grad {name}")
    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case_id", list(CASES))
def test_pro_kernels_match_torch_path(case_id, dtype):
    spec = CASES[case_id]
    seed = list(CASES).index(case_id)
    case = make_case(
        spec["lengths"],
        spec["vocab"],
        dtype,
        bias=spec["bias"],
        frozen=spec["frozen"],
        rewards=spec["rewards"],
        seed=seed,
    )
    sft_weight = spec["sft_weight"]
    results = compare_all(
        case,
        sft_weight=torch.tensor(sft_weight) if isinstance(sft_weight, list) else sft_weight,
        sft_loss_reduction=spec["sft_loss_reduction"],
        rank_loss_terms=spec["rank_loss_terms"],
    )
    _, grads = results["triton"]
    assert grads["hidden"] is not None and grads["hidden"].abs().max() > 0
    if spec["frozen"]:
        assert grads["weight"] is None and grads.get("bias") is None  # a frozen head gets no gradient
    else:
        assert grads["weight"] is not None and grads["weight"].abs().max() > 0
    out, _ = results["triton"]
    assert out.rank_terms.shape == (len(spec["lengths"]), max(spec["lengths"]) - 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case_id", ["v32003-bias-trainable", "v151936-frozen"])
def test_rrhf_objective_on_triton_token_level(case_id, dtype):
    """RRHF: the Triton token level under the objective's torch ranking level matches the torch path and the
    reference."""
    spec = CASES[case_id]
    case = make_case(
        spec["lengths"],
        spec["vocab"],
        dtype,
        bias=spec["bias"],
        frozen=spec["frozen"],
        rewards=spec["rewards"],
        seed=10 + list(CASES).index(case_id),
    )
    objective = RRHFObjective(rrhf_weight=2.0, length_penalty=0.5)
    results = compare_all(case, sft_weight=1.0, objective=objective)
    out, grads = results["triton"]
    assert out.rank_terms.shape[0] == len(spec["lengths"])
    assert grads["hidden"] is not None and grads["hidden"].abs().max() > 0
    # Same token level as PRO: RRHF's scores are sum / len ** 0.5 where PRO's are sum / len
    pro, _ = run(case, "triton", sft_weight=1.0)
    counts = case["layout"].token_counts().to(out.scores)
    assert_close(out.scores, pro.scores * counts / counts**0.5, FORWARD_RTOL, "scores")

"""No [T, V] buffer under bf16 autocast: the peak CUDA memory of the fused loss core's forward and backward stays far
below one fp32 [T, V] logits tensor.

Shape: T = 8192 tokens (64 rankings of 4 candidates of 32 tokens), V = 32000, H = 256, fp32 leaves (the master
weights of a bf16 mixed-precision run) under `torch.autocast("cuda", torch.bfloat16)`, trainable LM head, default GPU
tiles. An fp32 [T, V] buffer is T * V * 4 = 1.05 GB (bf16: 524 MB); what the core is allowed, with T and V at these
sizes: the gradients (weight [V, H] fp32 33 MB, hidden [T, H] fp32 8 MB), O(T) vectors, bf16 copies of operand chunks,
and one [token_chunk, vocab_chunk] = [2048, 4096] tile with its temporaries (Triton: one bf16 logits-gradient buffer,
17 MB; torch twin: an fp32 logits tile, 34 MB, and up to two same-size temporaries of the log-sum-exp). The bound,
a quarter of the fp32 [T, V] buffer (262 MB), leaves room for the allocator's rounding but not for any [T, V] tensor
(even bf16).
"""

import math

import pytest
import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.fused import fused_ranking_loss


pytestmark = pytest.mark.gpu
DEVICE = "cuda"

PROMPTS, CANDIDATES, TOKENS_PER_CANDIDATE = 64, 4, 32
VOCAB, HIDDEN = 32000, 256


@pytest.mark.parametrize("implementation", ["triton", "torch"])
def test_no_fp32_logits_buffer_under_bf16_autocast(implementation):
    if implementation == "triton":
        pytest.importorskip("triton", reason="the Triton loss core needs Triton (the `triton` extra)")
    device = torch.device(DEVICE)
    g = torch.Generator(device=device).manual_seed(0)
    num_candidates = PROMPTS * CANDIDATES
    num_tokens = num_candidates * TOKENS_PER_CANDIDATE
    token_offsets = torch.arange(num_candidates + 1) * TOKENS_PER_CANDIDATE
    ranking_offsets = torch.arange(PROMPTS + 1) * CANDIDATES
    layout = RankingLayout(token_offsets, ranking_offsets, ranking_offsets[:-1].clone()).to(device)
    hidden = torch.randn(num_tokens, HIDDEN, generator=g, device=device).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, generator=g, device=device) / HIDDEN**0.5).requires_grad_()
    targets = torch.randint(0, VOCAB, (num_tokens,), generator=g, device=device)
    rewards = torch.arange(CANDIDATES, 0, -1, device=device, dtype=torch.float32).repeat(PROMPTS)
    # Compile the kernels (and warm cuBLAS) outside the measurement
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        warm = fused_ranking_loss(
            hidden[:64], weight, None, targets[:64], _small_layout(device), rewards[:4], implementation=implementation
        )
    warm.loss.backward()
    hidden.grad = weight.grad = None
    del warm

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = fused_ranking_loss(
            hidden, weight, None, targets, layout, rewards, sft_weight=0.1, implementation=implementation
        )
    out.loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline

    assert out.implementation == implementation
    assert math.isfinite(out.loss.item())
    assert hidden.grad is not None and weight.grad is not None
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32  # gradients of the fp32 leaves
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    fp32_logits = num_tokens * VOCAB * 4
    assert peak < fp32_logits / 4, (
        f"{implementation}: peak {peak / 2**20:.0f} MiB above the inputs; an fp32 [T, V] buffer is "
        f"{fp32_logits / 2**20:.0f} MiB, the bound {fp32_logits / 4 / 2**20:.0f} MiB"
    )


def _small_layout(device):
    """Two rankings of 2 candidates of 16 tokens (64 tokens): the warm-up batch."""
    return RankingLayout(torch.arange(5) * 16, torch.tensor([0, 2, 4]), torch.tensor([0, 2])).to(device)

"""Pieces shared by every implementation of the loss core: the output type, the tile sizes, fp32-accumulating GEMMs.

Nothing here imports Triton, so `import trl_pro.loss_core` works without it (Triton is an optional extra).
"""

import functools
import importlib.util
from dataclasses import dataclass

import torch


@dataclass
class RankingLossOutput:
    """What the loss core returns.

    Attributes:
        loss: scalar, mean over prompts of L_PRO (the selected cascade terms) + beta_b * L_SFT (Eq. 7).
        scores: [C] fp32, r(x, y^c): mean token log-prob of each candidate (Eq. 6), detached.
        rank_terms: [B, n_max - 1] fp32, every cascade term (also those left out by rank_loss_terms="first"), detached.
        sft_nll: [B] fp32, L_SFT of each prompt before beta, detached.
        aux_loss: the load-balancing loss of a mixture-of-experts model (unweighted, not in `loss`), set by the patched
            forward (`trl_pro.loss_core.head`) when asked for router logits; None otherwise.
        implementation: the token-level path that ran ("triton", "torch" or "trl"), what "auto" resolved to.
        logprob_sums: [C] fp32, the summed token log-probs of each candidate, detached (a reference model's pass reads
            them: `ref_logps` of the objectives that use a reference).
    """

    loss: torch.Tensor
    scores: torch.Tensor
    rank_terms: torch.Tensor
    sft_nll: torch.Tensor
    aux_loss: torch.Tensor | None = None
    implementation: str | None = None
    logprob_sums: torch.Tensor | None = None


@dataclass(frozen=True)
class TileConfig:
    """Tile and chunk sizes of the fused loss core. The defaults are for a GPU; tests pass small ones.

    Triton kernels (`token_logprob.py`):
        block_t: tokens per program tile (rows of a logits tile).
        block_v: vocabulary entries per logits tile (columns); the last tile of a vocabulary that is not a multiple
            is masked.
        block_h: slice of the hidden size reduced per `tl.dot`.
        vocab_splits: number of programs sharing the vocabulary of one token tile in the forward kernel (their
            partial log-sum-exps are merged afterwards); `None` picks enough to fill the GPU (1 in the interpreter).
        num_warps: warps per program of the logits-tile kernels.

    Chunked loops (torch twin: every tile; Triton backward: the logits-gradient buffer handed to the GEMMs):
        token_chunk: tokens per chunk.
        vocab_chunk: vocabulary entries per chunk. The largest temporary is one [token_chunk, vocab_chunk] tile.

    Ranking level:
        segment_block: tokens summed per step when per-token log-probs are reduced into per-candidate sums.
    """

    # 64 x 128 x 32 with 8 warps: the logits-tile kernels compile for sm_80 and sm_90 without register spills in
    # bf16, fp16 and fp32-tf32 (and <= 44 B in fp32-ieee); 64 x 128 x 64 with 4 warps spilled 0.5-1.4 KB per thread
    # (benchmarks/kernel_resources.py, benchmarks/results/loss_core_kernels_static.md). Speed: not measured on GPU.
    block_t: int = 64
    block_v: int = 128
    block_h: int = 32
    vocab_splits: int | None = None
    num_warps: int = 8
    token_chunk: int = 2048
    vocab_chunk: int = 4096
    segment_block: int = 256


DEFAULT_TILES = TileConfig()
# On CPU the torch twin's tiles should stay cache-friendly rather than feed tensor cores
DEFAULT_CPU_TILES = TileConfig(token_chunk=1024, vocab_chunk=4096)

FUSED_IMPLEMENTATIONS = ("auto", "triton", "torch")  # "auto", then the names of `fused.LOSS_IMPLEMENTATIONS`
IMPLEMENTATIONS = FUSED_IMPLEMENTATIONS + ("trl",)  # "trl": the baseline, through `ranking_loss_from_hidden` only


@functools.cache
def triton_importable() -> bool:
    """Whether Triton is installed and imports (an optional extra of trl-pro)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as missing
        return False
    return True


def accumulation_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 inputs (gradcheck of the torch twin) keep fp64."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def _cuda_mm_out_dtype(a: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    # `torch.mm(..., out_dtype=torch.float32)` from bf16/fp16 operands (`dtype`, default a's): CUDA, torch >= 2.8
    dtype = a.dtype if dtype is None else dtype
    return a.is_cuda and dtype in (torch.float16, torch.bfloat16) and hasattr(torch.ops.aten.mm, "dtype")


def gemm_operand(x: torch.Tensor, compute_dtype: torch.dtype, acc_dtype: torch.dtype) -> torch.Tensor:
    """`x` rounded to the compute dtype, in the dtype `mm_acc` / `addmm_acc_` consume without a further copy.

    On CUDA, half operands stay half (cuBLAS writes fp32); elsewhere they are upcast once to the accumulation dtype
    (exact), so that a chunked loop converts each operand once rather than once per GEMM.
    """
    x = x.to(compute_dtype)
    return x if acc_dtype == torch.float32 and _cuda_mm_out_dtype(x) else x.to(acc_dtype)


def round_to_compute_(x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """An fp32 tile rounded to the compute dtype, as a GEMM operand (see `gemm_operand`); in place off CUDA."""
    if x.dtype == compute_dtype:
        return x
    if _cuda_mm_out_dtype(x, compute_dtype):
        return x.to(compute_dtype)
    return x.copy_(x.to(compute_dtype))


def mm_acc(a: torch.Tensor, b: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    """`a @ b` with products and sums in `acc_dtype` (fp32), without first rounding the result to the inputs' dtype.

    On CUDA with half inputs this is one cuBLAS call with an fp32 output; elsewhere the operands are upcast (exact for
    bf16/fp16 values), so every implementation computes the same numbers as a GPU with fp32 accumulation.
    """
    if acc_dtype == torch.float32 and _cuda_mm_out_dtype(a):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.to(acc_dtype), b.to(acc_dtype))


def addmm_acc_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`acc += a @ b` for an fp32 (or fp64) `acc`, accumulating in acc's dtype.

    Rounding every vocabulary chunk's product to bf16 before summing the chunks would bias the gradient; TRL's chunked
    log-prob kernel makes the same choice.
    """
    if acc.dtype == torch.float32 and _cuda_mm_out_dtype(a):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def lm_head_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grad_logits_tile,
    *,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    need_bias_grad: bool,
    tiles: TileConfig,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Chunked backward of the LM head, shared by both implementations: d hidden, d weight, d bias (None if unneeded).

    `grad_logits_tile(t0, t1, v0, v1, h, w)` returns the logits gradient dz of tokens t0:t1 and vocabulary v0:v1,
    rounded to the compute dtype and given as a GEMM operand (`gemm_operand`); `h` and `w` are the operands of the
    hidden and weight chunks. This function does the GEMMs, accumulating in fp32:
        d hidden[t0:t1] += dz @ w,      d weight[v0:v1] += dz.T @ h,      d bias[v0:v1] += column sums of dz.
    Loop order: with a weight gradient, vocabulary chunks are outer, so the fp32 weight gradient exists one chunk at a
    time (the fp32 hidden gradient is [T, H]: O(tokens)); without one (frozen LM head), token chunks are outer and the
    fp32 hidden gradient exists one chunk at a time too. The weight GEMM runs only when the weight gradient is needed.
    """
    if not (need_hidden_grad or need_weight_grad or need_bias_grad):
        return None, None, None
    acc_dtype = accumulation_dtype(compute_dtype)
    device = hidden.device
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    token_chunks = [(t0, min(t0 + tiles.token_chunk, num_tokens)) for t0 in range(0, num_tokens, tiles.token_chunk)]
    vocab_chunks = [(v0, min(v0 + tiles.vocab_chunk, vocab)) for v0 in range(0, vocab, tiles.vocab_chunk)]
    h = gemm_operand(hidden, compute_dtype, acc_dtype)
    grad_hidden = None
    grad_weight = torch.empty_like(weight) if need_weight_grad else None
    grad_bias = torch.zeros(vocab, device=device, dtype=acc_dtype) if need_bias_grad else None

    if need_weight_grad:
        grad_hidden_acc = torch.zeros(hidden.shape, device=device, dtype=acc_dtype) if need_hidden_grad else None
        for v0, v1 in vocab_chunks:
            w = gemm_operand(weight[v0:v1], compute_dtype, acc_dtype)
            grad_w = torch.zeros(w.shape, device=device, dtype=acc_dtype)
            for t0, t1 in token_chunks:
                dz = grad_logits_tile(t0, t1, v0, v1, h[t0:t1], w)
                if grad_bias is not None:
                    grad_bias[v0:v1] += dz.sum(dim=0, dtype=acc_dtype)
                if grad_hidden_acc is not None:
                    addmm_acc_(grad_hidden_acc[t0:t1], dz, w)
                addmm_acc_(grad_w, dz.t(), h[t0:t1])
                del dz  # before the next tile is allocated
            grad_weight[v0:v1] = grad_w
            del w, grad_w
        if grad_hidden_acc is not None:
            grad_hidden = grad_hidden_acc.to(hidden.dtype)
    else:
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        for t0, t1 in token_chunks:
            grad_h = None
            if need_hidden_grad:
                grad_h = torch.zeros(t1 - t0, hidden.shape[1], device=device, dtype=acc_dtype)
            for v0, v1 in vocab_chunks:
                w = gemm_operand(weight[v0:v1], compute_dtype, acc_dtype)
                dz = grad_logits_tile(t0, t1, v0, v1, h[t0:t1], w)
                if grad_bias is not None:
                    grad_bias[v0:v1] += dz.sum(dim=0, dtype=acc_dtype)
                if grad_h is not None:
                    addmm_acc_(grad_h, dz, w)
                del w, dz  # before the next chunk is allocated
            if grad_hidden is not None:
                grad_hidden[t0:t1] = grad_h
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias

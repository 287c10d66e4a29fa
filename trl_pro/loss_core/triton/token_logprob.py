"""Token level of the fused PRO loss core in Triton: per-token log-probs through the LM head without [T, V] logits.

Imports Triton at module level: import it only through `fused_ranking_loss._ops("triton")`. Triton reads
`TRITON_INTERPRET` when `@triton.jit` decorates, so to run these kernels on CPU tensors set `TRITON_INTERPRET=1`
before this module is first imported (`IS_INTERPRETED` records which mode it got).

Forward (`token_forward`), two kernels:
    `_lse_forward_kernel`, grid (token tiles, vocabulary splits). A program owns `block_t` tokens and one contiguous
    split of the vocabulary. For each [block_t, block_v] tile it computes the logits `hidden_tile @ weight_tile.T`
    with `tl.dot` over `block_h` slices of the hidden size (fp32 accumulator, whatever the input dtype), adds the bias,
    masks the vocabulary past the end (sizes such as 32001 or 151936 need no padding), and folds the tile into an
    online, max-shifted log-sum-exp (running max m, running sum s of exp(z - m)); the target logit is picked from the
    tile that holds it. It writes one partial lse and one partial target logit per token and split.
    `_finalize_kernel`, one program per candidate: merges the splits of each of its tokens into lse_t (max-shifted),
    stores lse_t (the only per-token tensor kept for the backward), and sums log p_t = z_t[y_t] - lse_t over the
    candidate's contiguous token range. No atomics: the per-candidate sums are deterministic.

Backward (`token_backward`):
    `_grad_logits_kernel`, grid (token tiles, vocabulary tiles) of one [token_chunk, vocab_chunk] chunk: recomputes the
    logits tile and writes dz = g_t * (1[v == y_t] - exp(z - lse_t)) (g_t = d loss / d log p_t) into a chunk-sized
    buffer in the compute dtype. Two cuBLAS GEMMs with fp32 accumulation then add dz @ W_chunk to d hidden and, only
    when the LM head requires grad, dz.T @ h_chunk to d weight (and column sums of dz to d bias); these loops are
    `_common.lm_head_backward`, shared with the torch twin. The buffer is the only [tokens x vocab]-shaped tensor, and
    it is one chunk.

Interpreter (CPU) notes: the interpreter's `tl.dot` mishandles bf16 operands and its fp32 -> bf16 casts truncate
instead of rounding to nearest even, so under `TRITON_INTERPRET=1` the operands are upcast to fp32 before `tl.dot`
(exact: products of bf16/fp16 values are exact in fp32, and the accumulation is fp32 either way), operands whose dtype
differs from the compute dtype are rounded in torch first, and the logits-gradient buffer is kept in fp32 and rounded
in torch. The numbers are those of the compiled kernel on a GPU, up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trl_pro.loss_core.common import TileConfig, lm_head_backward, round_to_compute_


_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _logits_tile(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    H,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """fp32 logits tile [BLOCK_T, BLOCK_V] = hidden[rows] @ weight[cols].T (+ bias[cols]); masked entries are 0."""
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        a = tl.load(
            hidden_ptr + rows[:, None] * stride_h + hk[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0
        )
        b = tl.load(
            weight_ptr + cols[:, None] * stride_w + hk[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0
        )
        a = a.to(COMPUTE_DTYPE)
        b = b.to(COMPUTE_DTYPE)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _lse_forward_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    part_lse_ptr,  # [num_splits, T] fp32: log-sum-exp of each token over one vocabulary split
    part_target_ptr,  # [num_splits, T] fp32: target logit if the target is in the split, else 0
    T,
    V,
    H,
    stride_h,
    stride_w,
    vocab_per_split,
    HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
    v_begin = pid_s * vocab_per_split
    v_end = tl.minimum(v_begin + vocab_per_split, V)

    m = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)  # running max
    s = tl.zeros((BLOCK_T,), dtype=tl.float32)  # running sum of exp(z - m)
    target_logit = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_mask = cols < v_end
        z = _logits_tile(
            hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
            HAS_BIAS, BLOCK_T, BLOCK_V, BLOCK_H, COMPUTE_DTYPE, DOT_FP32, INPUT_PRECISION,
        )  # fmt: skip
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every tile has a real column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), axis=1)
    out = pid_s.to(tl.int64) * T + rows
    tl.store(part_lse_ptr + out, m + tl.log(s), mask=row_mask)
    tl.store(part_target_ptr + out, target_logit, mask=row_mask)


@triton.jit
def _finalize_kernel(
    part_lse_ptr,
    part_target_ptr,
    token_offsets_ptr,
    lse_ptr,  # [T] fp32 out
    sums_ptr,  # [C] fp32 out: sum of the token log-probs of each candidate
    T,
    num_splits,
    BLOCK: tl.constexpr,
):
    c = tl.program_id(0)
    start = tl.load(token_offsets_ptr + c)
    end = tl.load(token_offsets_ptr + c + 1)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for t0 in range(start, end, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        mask = t < end
        m = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BLOCK,), dtype=tl.float32)
        target_logit = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in range(0, num_splits):
            x = tl.load(part_lse_ptr + j * T + t, mask=mask, other=0.0)
            m_new = tl.maximum(m, x)
            s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
            m = m_new
            target_logit += tl.load(part_target_ptr + j * T + t, mask=mask, other=0.0)
        lse = m + tl.log(s)
        tl.store(lse_ptr + t, lse, mask=mask)
        acc += tl.where(mask, target_logit - lse, 0.0)
    tl.store(sums_ptr + c, tl.sum(acc, axis=0))


@triton.jit
def _grad_logits_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    lse_ptr,
    token_grad_ptr,  # [T] fp32: d loss / d log p_t
    dz_ptr,  # [>= n_tokens, stride_dz] buffer: d loss / d logits of this chunk
    t_begin,
    n_tokens,
    v_begin,
    n_vocab,
    H,
    stride_h,
    stride_w,
    stride_dz,
    HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    local_rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    local_cols = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = local_rows < n_tokens
    col_mask = local_cols < n_vocab
    rows = t_begin + local_rows
    cols = v_begin + local_cols
    z = _logits_tile(
        hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
        HAS_BIAS, BLOCK_T, BLOCK_V, BLOCK_H, COMPUTE_DTYPE, DOT_FP32, INPUT_PRECISION,
    )  # fmt: skip
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(token_grad_ptr + rows, mask=row_mask, other=0.0)
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
    p = tl.exp(z - lse[:, None])  # softmax, max-shifted by lse >= max z
    onehot = tl.where(cols[None, :] == targets[:, None], 1.0, 0.0)
    dz = g[:, None] * (onehot - p)
    out = dz_ptr + local_rows[:, None] * stride_dz + local_cols[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


IS_INTERPRETED = not isinstance(_lse_forward_kernel, triton.runtime.JITFunction)


def _check_dtype(compute_dtype: torch.dtype) -> None:
    if compute_dtype not in _TL_DTYPES:
        raise TypeError(f"The Triton loss core supports fp32, bf16 and fp16 inputs, got {compute_dtype}.")


def _input_precision(compute_dtype: torch.dtype) -> str:
    # fp32 inputs: TF32 tensor cores only where torch itself would use them for matmuls
    return "tf32" if compute_dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _prepare(hidden, weight, compute_dtype):
    """Contiguous rows; in the interpreter, mixed-dtype operands are rounded to the compute dtype in torch first."""
    if IS_INTERPRETED:
        hidden = hidden.to(compute_dtype)
        weight = weight.to(compute_dtype)
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    return hidden, weight


def _tile_kwargs(tiles: TileConfig, compute_dtype: torch.dtype, has_bias: bool) -> dict:
    return dict(
        HAS_BIAS=has_bias,
        BLOCK_T=tiles.block_t,
        BLOCK_V=tiles.block_v,
        BLOCK_H=tiles.block_h,
        COMPUTE_DTYPE=_TL_DTYPES[compute_dtype],
        DOT_FP32=IS_INTERPRETED or compute_dtype == torch.float32,
        INPUT_PRECISION=_input_precision(compute_dtype),
        num_warps=tiles.num_warps,
    )


def _num_splits(tiles: TileConfig, num_token_tiles: int, vocab: int, device: torch.device) -> int:
    max_splits = triton.cdiv(vocab, tiles.block_v)
    if tiles.vocab_splits is not None:
        return max(1, min(tiles.vocab_splits, max_splits))
    if IS_INTERPRETED or device.type != "cuda":
        return 1
    # Enough programs for two waves over the SMs, each split keeping at least 8 vocabulary tiles
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(2 * num_sms, num_token_tiles)
    return max(1, min(wanted, triton.cdiv(vocab, 8 * tiles.block_v)))


def token_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    token_offsets: torch.Tensor,
    token_candidate: torch.Tensor,
    *,
    tiles: TileConfig,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-sum-exp [T] fp32 and per-candidate sums of token log-probs [C] fp32 (twin: `torch_twin`)."""
    _check_dtype(compute_dtype)
    hidden, weight = _prepare(hidden, weight, compute_dtype)
    num_tokens, hidden_size = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    num_token_tiles = triton.cdiv(num_tokens, tiles.block_t)
    num_splits = _num_splits(tiles, num_token_tiles, vocab, device)
    vocab_per_split = triton.cdiv(triton.cdiv(vocab, num_splits), tiles.block_v) * tiles.block_v
    num_splits = triton.cdiv(vocab, vocab_per_split)  # no empty split

    part_lse = torch.empty(num_splits, num_tokens, device=device, dtype=torch.float32)
    part_target = torch.empty(num_splits, num_tokens, device=device, dtype=torch.float32)
    _lse_forward_kernel[(num_token_tiles, num_splits)](
        hidden,
        weight,
        bias if bias is not None else hidden,  # dummy pointer, never read without HAS_BIAS
        targets,
        part_lse,
        part_target,
        num_tokens,
        vocab,
        hidden_size,
        hidden.stride(0),
        weight.stride(0),
        vocab_per_split,
        **_tile_kwargs(tiles, compute_dtype, bias is not None),
    )
    num_candidates = token_offsets.numel() - 1
    lse = torch.empty(num_tokens, device=device, dtype=torch.float32)
    sums = torch.empty(num_candidates, device=device, dtype=torch.float32)
    _finalize_kernel[(num_candidates,)](
        part_lse, part_target, token_offsets, lse, sums, num_tokens, num_splits, BLOCK=tiles.segment_block
    )
    return lse, sums


def token_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    token_grad: torch.Tensor,
    *,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    need_bias_grad: bool,
    tiles: TileConfig,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. hidden, weight, bias (None where not needed) of sum_t token_grad[t] * log p_t.

    `_grad_logits_kernel` fills a [token_chunk, vocab_chunk] buffer per chunk; `lm_head_backward` runs the chunk
    loops and the cuBLAS GEMMs (fp32 accumulation), skipping the weight GEMM for a frozen LM head.
    """
    if not (need_hidden_grad or need_weight_grad or need_bias_grad):
        return None, None, None
    _check_dtype(compute_dtype)
    kernel_hidden, kernel_weight = _prepare(hidden, weight, compute_dtype)
    num_tokens, hidden_size = hidden.shape
    vocab = weight.shape[0]
    token_grad = token_grad.float().contiguous()
    # One chunk-sized buffer, reused: the only [tokens x vocab]-shaped tensor
    buffer_dtype = torch.float32 if IS_INTERPRETED else compute_dtype
    dz_buffer = torch.empty(
        min(tiles.token_chunk, num_tokens), min(tiles.vocab_chunk, vocab), device=hidden.device, dtype=buffer_dtype
    )
    kwargs = _tile_kwargs(tiles, compute_dtype, bias is not None)

    def grad_logits_tile(t0, t1, v0, v1, h, w):
        grid = (triton.cdiv(t1 - t0, tiles.block_t), triton.cdiv(v1 - v0, tiles.block_v))
        _grad_logits_kernel[grid](
            kernel_hidden,
            kernel_weight,
            bias if bias is not None else kernel_hidden,
            targets,
            lse,
            token_grad,
            dz_buffer,
            t0,
            t1 - t0,
            v0,
            v1 - v0,
            hidden_size,
            kernel_hidden.stride(0),
            kernel_weight.stride(0),
            dz_buffer.stride(0),
            **kwargs,
        )
        # Interpreter: fp32 buffer, rounded to nearest even here, in place (see module doc)
        return round_to_compute_(dz_buffer[: t1 - t0, : v1 - v0], compute_dtype)

    return lm_head_backward(
        hidden,
        weight,
        bias,
        grad_logits_tile,
        need_hidden_grad=need_hidden_grad,
        need_weight_grad=need_weight_grad,
        need_bias_grad=need_bias_grad,
        tiles=tiles,
        compute_dtype=compute_dtype,
    )

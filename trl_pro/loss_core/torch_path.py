"""Torch twin of the fused PRO loss core: the same chunked algorithm as the Triton kernels, in plain torch.

It is the CPU path of `ranking_loss_from_hidden` and the readable version of the kernels; `FusedRankingLossFunction`
(`fused_ranking_loss.py`) calls the three functions below exactly where it calls their Triton counterparts.

Token level (`token_forward`, `token_backward`, twins of `token_logprob.py`):
    The logits of T tokens over a vocabulary of V entries are never materialized. Tokens and vocabulary are cut into
    chunks; for one [token_chunk, vocab_chunk] tile the logits are `hidden_chunk @ weight_chunk.T (+ bias)` with fp32
    accumulation, and an online log-sum-exp folds the vocabulary tiles of every token left to right:

        lse' = logaddexp(lse, logsumexp_v z_v) = M + log(exp(lse - M) + sum_v exp(z_v - M)),  M = max(lse, max_v z_v)

    (the Triton kernel carries the same state as a running max and a running sum of exp(z - max)), while the logit of
    the target token is picked from the tile that holds it. log p_t = z_t[y_t] - lse_t, and the per-token log-probs
    are summed per candidate. Only lse [T] is kept for the backward. Operands are rounded to the compute dtype and,
    off CUDA, upcast once to fp32 (exact), so the GEMMs give the numbers of fp32-accumulating tensor cores.
    The backward recomputes each tile and turns it into the logits gradient
        dz_tv = g_t * (1[v == y_t] - exp(z_tv - lse_t)),      g_t = d loss / d log p_t = d loss / d sum_{c(t)},
    rounds it to the compute dtype, and accumulates d hidden += dz @ W_chunk and d weight_chunk += dz.T @ h_chunk
    in fp32 (d bias_chunk += column sums of dz); `_common.lm_head_backward` holds these loops and GEMMs for both
    implementations. The weight (and bias) gradient work runs only when asked for: a frozen LM head (LoRA/QLoRA) costs
    one GEMM less per tile, and its loops keep only one token chunk of fp32 hidden gradient.

Ranking level (`ranking_forward`, the counterpart of `ranking.py` for every objective):
    From the per-candidate sums, the objective's loss (`trl_pro.objectives.base.RankingObjective`; for PRO the scores
    r = sum / n_tokens of Eq. 6, the cascade of Eq. 8/9 with the dynamic temperature of Eq. 10/11 and the SFT term) and
    its gradient d loss / d sum of every candidate by autograd, both in the forward pass: the loss is a scalar, so the
    backward only has to scale that gradient by the incoming one.
"""

import contextlib

import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.common import (
    TileConfig,
    accumulation_dtype,
    gemm_operand,
    lm_head_backward,
    mm_acc,
    round_to_compute_,
)
from trl_pro.objectives.base import RankingObjective


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
    """Per-token log-sum-exp [T] and per-candidate sums of token log-probs [C], both in the accumulation dtype.

    Vocabulary chunks are the outer loop (each weight chunk is read and converted once); the running log-sum-exp and
    target logit of every token are carried across them.
    """
    acc_dtype = accumulation_dtype(compute_dtype)
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    h = gemm_operand(hidden, compute_dtype, acc_dtype)
    lse = torch.full((num_tokens,), float("-inf"), device=hidden.device, dtype=acc_dtype)
    target_logit = torch.zeros(num_tokens, device=hidden.device, dtype=acc_dtype)
    for v0 in range(0, vocab, tiles.vocab_chunk):
        v1 = min(v0 + tiles.vocab_chunk, vocab)
        w = gemm_operand(weight[v0:v1], compute_dtype, acc_dtype)
        for t0 in range(0, num_tokens, tiles.token_chunk):
            t1 = min(t0 + tiles.token_chunk, num_tokens)
            z = mm_acc(h[t0:t1], w.t(), acc_dtype)  # [t, v] logits tile
            if bias is not None:
                z += bias[v0:v1].to(acc_dtype)
            # Online log-sum-exp: fold this tile's (max-shifted) log-sum-exp into the running one, max-shifted too
            lse[t0:t1] = torch.logaddexp(lse[t0:t1], torch.logsumexp(z, dim=1))
            tgt = targets[t0:t1]
            in_tile = (tgt >= v0) & (tgt < v1)
            picked = z.gather(1, (tgt - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
            target_logit[t0:t1] += torch.where(in_tile, picked, torch.zeros_like(picked))
    num_candidates = token_offsets.numel() - 1
    sums = torch.zeros(num_candidates, device=hidden.device, dtype=acc_dtype)
    sums.index_add_(0, token_candidate, target_logit - lse)
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
    """Gradients of sum_t token_grad[t] * log p_t w.r.t. hidden, weight and bias (None where not needed).

    `lm_head_backward` runs the chunk loops and the GEMMs; the tile below is the twin of `_grad_logits_kernel`.
    """
    acc_dtype = accumulation_dtype(compute_dtype)
    g_all = token_grad.to(acc_dtype)

    def grad_logits_tile(t0, t1, v0, v1, h, w):
        dz = mm_acc(h, w.t(), acc_dtype)  # recomputed logits tile
        if bias is not None:
            dz += bias[v0:v1].to(acc_dtype)
        g = g_all[t0:t1]
        # dz = g * (onehot(y) - softmax(z)), in place on the tile
        dz.sub_(lse[t0:t1, None]).exp_().mul_(-g[:, None])
        tgt = targets[t0:t1]
        rows = ((tgt >= v0) & (tgt < v1)).nonzero().squeeze(1)
        dz[rows, tgt[rows] - v0] += g[rows]
        # Rounded to the compute dtype, as the Triton kernel stores it
        return round_to_compute_(dz, compute_dtype)

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


def ranking_forward(
    sums: torch.Tensor,
    layout: RankingLayout,
    rewards: torch.Tensor | None,
    sft_weight: torch.Tensor,
    objective: RankingObjective,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranking level: (scores [C], terms [B, n_max-1], per-prompt loss [B], sft_nll [B], d loss / d sums [C]).

    The loss is the mean over prompts of the per-prompt loss; `d loss / d sums` already includes the 1/B. The values
    are the objective's own torch definition (`RankingObjective.ranking_level`) and the gradient is autograd's: the
    ranking level is [B, n]-sized, so a hand-written gradient would buy no speed.
    """
    leaf = sums.detach()
    differentiable = not torch.is_inference_mode_enabled()  # (no graph can be recorded under inference mode)
    with torch.enable_grad() if differentiable else contextlib.nullcontext():
        leaf.requires_grad_(differentiable)
        scores, terms, prompt_loss, sft_nll = objective.ranking_level(leaf, layout, rewards, sft_weight, ref_logps)
        grad_sums = None
        if differentiable:
            (grad_sums,) = torch.autograd.grad(prompt_loss.mean(), leaf, allow_unused=True)
    if grad_sums is None:
        grad_sums = torch.zeros_like(sums)
    return scores.detach(), terms.detach(), prompt_loss.detach(), sft_nll.detach(), grad_sums

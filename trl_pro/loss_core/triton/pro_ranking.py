"""Ranking level of the fused PRO loss core in Triton: one program per prompt (twin: `torch_twin.ranking_forward`).

Imports Triton at module level: import it only through `fused_ranking_loss._ops("triton")` (see `token_logprob.py` for
`TRITON_INTERPRET`).

`_ranking_kernel` reads the per-candidate sums of token log-probs of its prompt's candidates (at most 16 in practice,
held in one block of N_BLOCK lanes), their token counts and optional rewards, and computes:
    scores r_i = sum_i / n_i                                                                           (Eq. 6)
    for k = 0 .. n-2, the cascade term over the suffix i >= k, max-shifted,
        x_i = w_i * r_i,   w_i = s_k - s_i (i > k),  w_k = max_{i>k} (s_k - s_i)  (Eq. 10/11; w = 1, i.e. T = 1,
                                                                                     without rewards)
        term_k = logsumexp_{i>=k} x_i - x_k                                                            (Eq. 8/9)
    the SFT term (NLL of the SFT candidate, summed or averaged over its tokens), the per-prompt loss
        rank_loss (all terms, or only term 0 for rank_loss_terms="first") + beta_b * sft_nll_b,
    and the gradient of the batch loss (mean over prompts) w.r.t. every candidate sum:
        d loss / d sum_i = (1/B) * sum_{selected k} w_i * (softmax_k(x)_i - 1[i == k]) / n_i  + SFT part.
Ties in rewards give w = 0 (a constant exp(0) in the denominator, no gradient), like `trl_pro.objectives.pro`; every value
is finite. This kernel is PRO's only (`fused_ranking_loss._ranking_forward` runs it for `PROObjective` under
implementation="triton"); the tests hold it to `PROObjective`, the one torch definition of the objective. The gradient is added with atomics because the SFT candidate of a prompt may, in principle, be a candidate
of another prompt; with at most two contributions per candidate the result does not depend on their order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ranking_kernel(
    sums_ptr,  # [C] fp32
    token_offsets_ptr,  # [C + 1]
    ranking_offsets_ptr,  # [B + 1]
    sft_candidate_ptr,  # [B]
    rewards_ptr,  # [C] fp32 (dummy without HAS_REWARDS)
    sft_weight_ptr,  # [B] fp32
    scores_ptr,  # [C] fp32 out
    terms_ptr,  # [B, num_terms] fp32 out, zero-initialized
    prompt_loss_ptr,  # [B] fp32 out
    sft_nll_ptr,  # [B] fp32 out
    grad_sums_ptr,  # [C] fp32 out, zero-initialized
    num_terms,
    inv_num_prompts,
    HAS_REWARDS: tl.constexpr,
    SFT_MEAN: tl.constexpr,
    FIRST_ONLY: tl.constexpr,
    N_BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    c0 = tl.load(ranking_offsets_ptr + b)
    n = tl.load(ranking_offsets_ptr + b + 1) - c0
    i = tl.arange(0, N_BLOCK)
    real = i < n
    cand = c0 + i
    count = (
        tl.load(token_offsets_ptr + cand + 1, mask=real, other=1)
        - tl.load(token_offsets_ptr + cand, mask=real, other=0)
    ).to(tl.float32)
    sums = tl.load(sums_ptr + cand, mask=real, other=0.0)
    r = tl.where(real, sums / count, 0.0)  # Eq. 6
    tl.store(scores_ptr + cand, r, mask=real)
    if HAS_REWARDS:
        s = tl.load(rewards_ptr + cand, mask=real, other=0.0)

    rank_loss = tl.sum(tl.zeros((N_BLOCK,), dtype=tl.float32), axis=0)
    grad_r = tl.zeros((N_BLOCK,), dtype=tl.float32)  # d rank_loss / d r_i
    for k in range(0, n - 1):
        suffix = real & (i >= k)
        is_k = i == k
        if HAS_REWARDS:
            s_k = tl.sum(tl.where(is_k, s, 0.0), axis=0)
            gaps = s_k - s  # 1/T_k^i for i > k                                             (Eq. 10)
            own = tl.max(tl.where(suffix & (i > k), gaps, float("-inf")), axis=0)  # 1/T_k^k (Eq. 11)
            w = tl.where(is_k, own, tl.where(suffix, gaps, 0.0))
        else:
            w = tl.where(suffix, 1.0, 0.0)
        x = tl.where(suffix, w * r, float("-inf"))
        x_max = tl.max(x, axis=0)
        e = tl.where(suffix, tl.exp(x - x_max), 0.0)
        e_sum = tl.sum(e, axis=0)
        x_k = tl.sum(tl.where(is_k, x, 0.0), axis=0)
        term = x_max + tl.log(e_sum) - x_k
        tl.store(terms_ptr + b.to(tl.int64) * num_terms + k, term)
        if FIRST_ONLY:
            selected = tl.where(k == 0, 1.0, 0.0)
        else:
            selected = 1.0
        rank_loss += selected * term
        grad_r += selected * w * (e / e_sum - tl.where(is_k, 1.0, 0.0))

    sft = tl.load(sft_candidate_ptr + b)
    sft_sum = tl.load(sums_ptr + sft)
    beta = tl.load(sft_weight_ptr + b)
    sft_scale = 1.0
    if SFT_MEAN:
        sft_scale = 1.0 / (tl.load(token_offsets_ptr + sft + 1) - tl.load(token_offsets_ptr + sft)).to(tl.float32)
    sft_nll = -sft_sum * sft_scale
    tl.store(sft_nll_ptr + b, sft_nll)
    tl.store(prompt_loss_ptr + b, rank_loss + beta * sft_nll)
    tl.atomic_add(grad_sums_ptr + cand, grad_r / count * inv_num_prompts, mask=real)
    tl.atomic_add(grad_sums_ptr + sft, -beta * sft_scale * inv_num_prompts)


def ranking_forward(
    sums: torch.Tensor,
    token_offsets: torch.Tensor,
    ranking_offsets: torch.Tensor,
    sft_candidate: torch.Tensor,
    rewards: torch.Tensor | None,
    sft_weight: torch.Tensor,
    n_max: int,
    sft_mean: bool,
    first_only: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [C], terms [B, n_max-1], per-prompt loss [B], sft_nll [B], d mean-loss / d sums [C]), all fp32."""
    device = sums.device
    num_prompts = ranking_offsets.numel() - 1
    num_candidates = sums.numel()
    num_terms = max(n_max - 1, 1)
    scores = torch.empty(num_candidates, device=device, dtype=torch.float32)
    terms = torch.zeros(num_prompts, num_terms, device=device, dtype=torch.float32)
    prompt_loss = torch.empty(num_prompts, device=device, dtype=torch.float32)
    sft_nll = torch.empty(num_prompts, device=device, dtype=torch.float32)
    grad_sums = torch.zeros(num_candidates, device=device, dtype=torch.float32)
    rewards = None if rewards is None else rewards.float().contiguous()
    _ranking_kernel[(num_prompts,)](
        sums,
        token_offsets,
        ranking_offsets,
        sft_candidate,
        rewards if rewards is not None else sums,
        sft_weight.float().contiguous(),
        scores,
        terms,
        prompt_loss,
        sft_nll,
        grad_sums,
        num_terms,
        1.0 / num_prompts,
        HAS_REWARDS=rewards is not None,
        SFT_MEAN=sft_mean,
        FIRST_ONLY=first_only,
        N_BLOCK=max(2, triton.next_power_of_2(n_max)),
    )
    return scores, terms[:, : n_max - 1], prompt_loss, sft_nll, grad_sums

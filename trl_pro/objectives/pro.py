"""The PRO ranking objective (Song et al., "Preference Ranking Optimization for Human Alignment").

Everything here works on already-computed candidate scores r(x, y^k) (Eq. 6); how the scores are obtained from a
model lives in `trl_pro.loss_core`. `pro_loss_terms` is the one torch definition of the cascade: `pro_loss`, the loss
core's `PROObjective` (autograd gives the gradient) and the tests of the fused Triton ranking kernel all use it.
"""

from dataclasses import dataclass

import torch

from trl_pro.objectives.base import RankingObjective


def inverse_temperatures(rewards: torch.Tensor, candidate_mask: torch.Tensor, k: int) -> torch.Tensor:
    """1 / T_k^i for i = k..n-1 (Eq. 10/11), shape [B, n - k].

    1/T_k^i = s_k - s_i for the worse candidates i > k, and 1/T_k^k = max_{i>k} (s_k - s_i) for candidate k itself.
    Entries of padding candidates are 0.
    """
    gaps = rewards[:, k : k + 1] - rewards[:, k + 1 :]  # [B, n-k-1]: s_k - s_i
    worse = candidate_mask[:, k + 1 :]
    own = gaps.masked_fill(~worse, float("-inf")).amax(dim=1, keepdim=True)  # Eq. 11
    own = torch.where(torch.isfinite(own), own, torch.zeros_like(own))  # no worse candidate: no term, any value
    return torch.cat([own, gaps.masked_fill(~worse, 0.0)], dim=1)


def pro_loss_terms(
    scores: torch.Tensor, rewards: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The cascade of Eq. 8/9 term by term: `terms[b, k]` = -log softmax over candidates k..n of prompt b, taken at k.

    Shape [B, n - 1]; a term that does not exist (candidate k or every candidate after it is padding) is 0.
    See `pro_loss` for the arguments.
    """
    batch_size, n = scores.shape
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    candidate_mask = candidate_mask.bool()
    # Accumulate in fp32 at least (bf16/fp16 inputs are upcast); zero the padding so that no NaN/inf reaches a
    # product's backward
    dtype = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(dtype).masked_fill(~candidate_mask, 0.0)
    if rewards is not None:
        rewards = rewards.to(dtype).masked_fill(~candidate_mask, 0.0)

    terms = []
    for k in range(n - 1):
        # Term k exists when candidate k has at least one worse, real candidate (padding is trailing)
        has_term = candidate_mask[:, k + 1]
        if rewards is None:
            logits = scores[:, k:]  # T = 1
        else:
            logits = scores[:, k:] * inverse_temperatures(rewards, candidate_mask, k)
        logits = logits.masked_fill(~candidate_mask[:, k:], float("-inf"))
        # A row without this term gets zeros rather than -inf, so that its logsumexp and gradient stay finite
        logits = torch.where(has_term[:, None], logits, torch.zeros_like(logits))
        term = torch.logsumexp(logits, dim=1) - logits[:, 0]  # logsumexp is max-shifted
        terms.append(torch.where(has_term, term, torch.zeros_like(term)))
    if not terms:
        return scores.new_zeros(batch_size, 0)
    return torch.stack(terms, dim=1)


def pro_loss(
    scores: torch.Tensor, rewards: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-prompt ranking loss L_PRO, shape [B] (fp32, or fp64 for fp64 scores), without the SFT term.

    Paper: Song et al., "Preference Ranking Optimization for Human Alignment" (AAAI 2024), https://arxiv.org/abs/2306.17492

    Formula:
        L_PRO = -sum_{k=1}^{n-1} log( exp(r_k / T_k^k) / sum_{i=k}^{n} exp(r_i / T_k^i) )      (Eq. 8/9)

    Legend: r_k the score of the k-th best candidate (mean token log-prob, Eq. 6); s_k its reward; T_k^i the dynamic
    temperature (Eq. 10/11), 1 without rewards.

    Args:
        scores: [B, n] candidate scores r(x, y^i), the mean token log-prob of each candidate (Eq. 6), ordered best to
            worst along dim 1.
        rewards: optional [B, n] reward-model scores s_i of the same candidates, non-increasing along dim 1 (the
            trainer sorts candidates by them). Given, they set the dynamic temperature of Eq. 10/11:
            1/T_k^i = s_k - s_i for i > k and 1/T_k^k = max_{i>k} (s_k - s_i). None: T = 1 everywhere (Eq. 8).
        candidate_mask: optional [B, n] bool, False for padding candidates, which must be trailing. Lets one batch mix
            ranking lengths; a ranking of length n_b contributes n_b - 1 terms.

    Ties in rewards: a worse candidate i tied with candidate k gets 1/T_k^i = 0, so it enters the denominator as the
    constant exp(0) = 1 and receives no gradient from term k. If candidate k ties with every worse candidate, then
    1/T_k^k = 0 too and term k is the constant log(n - k + 1): finite, no gradient, nothing learned from that term.
    The loss is never NaN or inf for ties.

    n = 2 without rewards is Bradley-Terry: pro_loss = -log sigmoid(r_1 - r_2).
    """
    return pro_loss_terms(scores, rewards, candidate_mask).sum(dim=1)


@dataclass(frozen=True)
class PROObjective(RankingObjective):
    """PRO (Eq. 7) for the loss core: loss_b = L_PRO_b (the selected cascade terms) + beta_b * L_SFT_b.

    Scores are mean token log-probs (Eq. 6); the terms are `pro_loss_terms`, with the dynamic temperature when rewards
    are given.

    Args:
        sft_loss_reduction: "sum" (the paper) or "mean": L_SFT sums or averages the NLL over the SFT candidate's tokens.
        rank_loss_terms: "all" (the full cascade) or "first" (only the k = 1 term enters the loss; every term is still
            returned).
    """

    sft_loss_reduction: str = "sum"
    rank_loss_terms: str = "all"

    def __post_init__(self):
        super().__post_init__()
        if self.rank_loss_terms not in ("all", "first"):
            raise ValueError(f"rank_loss_terms must be 'all' or 'first', got {self.rank_loss_terms!r}.")

    def rank_terms(self, scores, rewards, candidate_mask):
        """terms[b, k] = -log( exp(r_k / T_k^k) / sum_{i>=k} exp(r_i / T_k^i) ), k = 0..n-2      (Eq. 8-11)"""
        return pro_loss_terms(scores, rewards, candidate_mask)

    def rank_loss(self, terms):
        return terms.sum(dim=1) if self.rank_loss_terms == "all" else terms[:, :1].sum(dim=1)

"""The RRHF ranking objective (Yuan et al., 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback").

Like `trl_pro.objectives.pro`, everything here works on already-computed candidate scores; the loss core
computes them from a model (`trl_pro.loss_core`, with `RRHFObjective`).

Two departures from the official code (GanjinZero/RRHF), both deliberate:
- pairs are formed within the candidates of one prompt; the official code compares candidates across the whole
  flattened batch, which is only right with one prompt per batch;
- a candidate's length is its number of completion tokens; the official denominator counts padding.
"""

from dataclasses import dataclass, field

import torch

from trl_pro.objectives.base import RankingObjective


def rrhf_loss_terms(
    scores: torch.Tensor, rewards: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The rank loss grouped by the preferred candidate: terms[b, j] = sum_i [j preferred to i] max(0, p_i - p_j).

    Shape [B, n]; the row sum is `rrhf_loss`. See `rrhf_loss` for the arguments. A candidate nothing is worse than
    (the last one of a ranking sorted best to worst, or padding) has a zero term.
    """
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    candidate_mask = candidate_mask.bool()
    # Accumulate in fp32 at least; zero the padding so that no NaN/inf reaches the backward
    dtype = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(dtype).masked_fill(~candidate_mask, 0.0)
    n = scores.shape[1]
    if rewards is None:
        rank = torch.arange(n, device=scores.device)
        preferred = (rank[:, None] < rank[None, :]).expand(scores.shape[0], n, n)  # [b, j, i]: j listed before i
    else:
        rewards = rewards.to(dtype).masked_fill(~candidate_mask, 0.0)
        preferred = rewards[:, :, None] > rewards[:, None, :]  # a tie forms no pair
    preferred = preferred & candidate_mask[:, :, None] & candidate_mask[:, None, :]
    hinge = (scores[:, None, :] - scores[:, :, None]).clamp(min=0)  # [b, j, i] = max(0, p_i - p_j)
    return torch.where(preferred, hinge, torch.zeros_like(hinge)).sum(dim=2)


def rrhf_loss(
    scores: torch.Tensor, rewards: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-prompt RRHF rank loss, shape [B] (fp32, or fp64 for fp64 scores), without the SFT term.

    Paper: Yuan et al., "RRHF: Rank Responses to Align Language Models with Human Feedback" (NeurIPS 2023),
    https://arxiv.org/abs/2304.05302

    Formula:
        L_rank = sum_{i, j : j preferred to i} max(0, p_i - p_j)

    Legend: p_i the length-normalised log-prob of candidate i; "j preferred to i": a higher reward, or listed first.

    Args:
        scores: [B, n] candidate scores p_i = (sum of the token log-probs of candidate i) / len_i ** length_penalty,
            ordered best to worst along dim 1 when `rewards` is None.
        rewards: optional [B, n] reward-model scores of the same candidates; given, j is preferred to i when
            rewards[j] > rewards[i] (in any order along dim 1), and tied candidates form no pair. None: j is preferred
            to i when it comes first.
        candidate_mask: optional [B, n] bool, False for padding candidates (trailing, as in `pro_loss`), which form no
            pair.

    The loss is 0 when every preferred candidate scores at least as high as those it is preferred to; its gradient
    pushes p_j up and p_i down for every violated pair, by 1 each.
    """
    return rrhf_loss_terms(scores, rewards, candidate_mask).sum(dim=1)


@dataclass(frozen=True)
class RRHFObjective(RankingObjective):
    """RRHF for the loss core: loss_b = rrhf_weight * L_rank_b + L_SFT_b (the trainer passes sft_weight = 1).

    L_SFT is the NLL of the SFT candidate (the best one) averaged over its tokens, as in the paper.

    Args:
        rrhf_weight: weight of the rank loss (the released training script uses 1).
        length_penalty: scores are p_i = sum_i / len_i ** length_penalty; 1 (default) is the mean token log-prob.
    """

    rrhf_weight: float = 1.0
    length_penalty: float = 1.0
    sft_loss_reduction: str = field(default="mean", init=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.rrhf_weight >= 0:
            raise ValueError(f"rrhf_weight must be >= 0, got {self.rrhf_weight}.")
        if not self.length_penalty >= 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}.")

    def scores(self, logprob_sums, token_counts):
        """p_i = sum_i / len_i ** length_penalty"""
        return logprob_sums / token_counts**self.length_penalty

    def rank_terms(self, scores, rewards, candidate_mask):
        """terms[b, k] = sum_{i worse than k} max(0, p_i - p_k), k = 0..n-2 (`rrhf_loss_terms`)."""
        # Candidates come sorted best to worst, so the last column (nothing is worse than the last) is always 0
        return rrhf_loss_terms(scores, rewards, candidate_mask)[:, :-1]

    def rank_loss(self, terms):
        return self.rrhf_weight * terms.sum(dim=1)

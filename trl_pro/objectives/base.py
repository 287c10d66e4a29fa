"""Ranking objectives: the loss of one training method, from the per-candidate sums of token log-probs.

The loss core has two levels (`trl_pro.loss_core`):
- the token level, shared by every objective: the sum of the token log-probs of each candidate, computed through the
  LM head without [T, V] logits;
- the ranking level, here: from those sums [C], the candidates' token counts, the layout and the optional rewards, to
  the per-prompt loss [B]. It is cheap ([B, n] tensors), so every objective is defined once, in torch, and autograd
  gives its gradient (as in Liger-Kernel's `chunked_loss`, where a base class owns the machinery and each loss is a
  short function). Only PRO also has a fused Triton ranking kernel (`kernels/ranking.py`), tested against
  `PROObjective`.

A `RankingObjective` subclass says how candidates are scored (`scores`), what the ranking terms are (`rank_terms`, the
objective's formula on [B, n] scores), how they add up to the rank loss (`rank_loss`), and how the SFT term is reduced
(`sft_loss_reduction`). The per-prompt loss is always

    loss_b = rank_loss_b + sft_weight_b * sft_nll_b,

with `sft_nll_b` the NLL of the layout's SFT candidate of prompt b (summed, or averaged over its tokens).
"""

from dataclasses import dataclass

import torch

from trl_pro.data.layout import RankingLayout


@dataclass(frozen=True)
class RankingObjective:
    """Base class of the ranking objectives (frozen, hashable: it is a constant of the loss core's autograd Function).

    Subclasses define `rank_terms` and may override `scores` and `rank_loss`; `sft_loss_reduction` is a field of each
    subclass ("sum" or "mean").
    """

    sft_loss_reduction: str = "sum"

    def scores(self, logprob_sums: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
        """[C] candidate scores: the mean token log-prob (PRO's Eq. 6)."""
        return logprob_sums / token_counts

    def rank_terms(
        self, scores: torch.Tensor, rewards: torch.Tensor | None, candidate_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, n - 1] per-term values from [B, n] scores in rank order (best first), rewards or None, and the mask."""
        raise NotImplementedError

    def rank_loss(self, terms: torch.Tensor) -> torch.Tensor:
        """[B] rank loss of each prompt from its terms: their sum by default."""
        return terms.sum(dim=1)

    def ranking_level(
        self,
        logprob_sums: torch.Tensor,
        layout: RankingLayout,
        rewards: torch.Tensor | None = None,
        sft_weight: torch.Tensor | float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores [C], rank_terms [B, n_max - 1], per-prompt loss [B], sft_nll [B]) from the sums [C].

        Differentiable in `logprob_sums`; `rewards` [C] (or None) and `sft_weight` (float or [B]) are constants. Values
        are in the dtype of `logprob_sums` (fp32, or fp64 for gradchecks).
        """
        dtype = logprob_sums.dtype
        counts = layout.token_counts().to(dtype)
        scores = self.scores(logprob_sums, counts)
        padded_scores, mask = layout.to_padded(scores)
        padded_rewards = None if rewards is None else layout.to_padded(rewards.detach().to(dtype))[0]
        terms = self.rank_terms(padded_scores, padded_rewards, mask).to(dtype)
        sft = logprob_sums[layout.sft_candidate]
        if self.sft_loss_reduction == "mean":
            sft = sft / counts[layout.sft_candidate]
        sft_nll = -sft
        if isinstance(sft_weight, torch.Tensor):
            sft_weight = sft_weight.detach().to(device=sft_nll.device, dtype=dtype)
        prompt_loss = self.rank_loss(terms) + sft_weight * sft_nll
        return scores, terms, prompt_loss, sft_nll

    def __post_init__(self):
        if self.sft_loss_reduction not in ("sum", "mean"):
            raise ValueError(f"sft_loss_reduction must be 'sum' or 'mean', got {self.sft_loss_reduction!r}.")

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

An objective with `uses_reference = True` (list DPO, LiPO) scores the log-ratio against a reference model: the loss
core then takes `ref_logps` [C], the reference's summed token log-probs of each candidate (a constant), and `scores`
receives `logprob_sums - ref_logps`. The SFT term is always the policy's own NLL.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from trl_pro.data.layout import RankingLayout


@dataclass(frozen=True)
class RankingObjective:
    """Base class of the ranking objectives (frozen, hashable: it is a constant of the loss core's autograd Function).

    Subclasses define `rank_terms` and may override `scores` and `rank_loss`; `sft_loss_reduction` is a field of each
    subclass ("sum" or "mean").
    """

    sft_loss_reduction: str = "sum"
    #: Whether `scores` takes the log-ratio against a reference model (`ref_logps` required) instead of the sums
    uses_reference: ClassVar[bool] = False

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
        ref_logps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores [C], rank_terms [B, n_max - 1], per-prompt loss [B], sft_nll [B]) from the sums [C].

        Differentiable in `logprob_sums`; `rewards` [C] (or None), `sft_weight` (float or [B]) and `ref_logps` [C]
        (the reference's summed log-probs, for an objective that `uses_reference`) are constants. Values are in the
        dtype of `logprob_sums` (fp32, or fp64 for gradchecks).
        """
        dtype = logprob_sums.dtype
        counts = layout.token_counts().to(dtype)
        scores = self.scores(self._score_inputs(logprob_sums, ref_logps), counts)
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

    def check_ref_logps(self, ref_logps: torch.Tensor | None, num_candidates: int) -> None:
        """Raise unless `ref_logps` is [C] for an objective that `uses_reference`, and None for the others."""
        name = type(self).__name__
        if not self.uses_reference:
            if ref_logps is not None:
                raise ValueError(f"{name} takes no reference log-probs (ref_logps).")
            return
        if ref_logps is None:
            raise ValueError(f"{name} needs the reference model's log-probs (ref_logps [C]).")
        if tuple(ref_logps.shape) != (num_candidates,):
            raise ValueError(f"ref_logps must be [C] = [{num_candidates}], got {tuple(ref_logps.shape)}.")

    def _score_inputs(self, logprob_sums: torch.Tensor, ref_logps: torch.Tensor | None) -> torch.Tensor:
        """What `scores` reads: the sums, or the log-ratios `logprob_sums - ref_logps` for a reference objective."""
        self.check_ref_logps(ref_logps, logprob_sums.shape[0])
        if ref_logps is None:
            return logprob_sums
        return logprob_sums - ref_logps.detach().to(device=logprob_sums.device, dtype=logprob_sums.dtype)

    def __post_init__(self):
        if self.sft_loss_reduction not in ("sum", "mean"):
            raise ValueError(f"sft_loss_reduction must be 'sum' or 'mean', got {self.sft_loss_reduction!r}.")

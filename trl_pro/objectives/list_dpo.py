"""Listwise objectives with a reference model: list DPO (Plackett-Luce), LiPO-λ and DPO over all pairs.

Each candidate is scored by s_i = beta * r_i, with r_i = log π(y_i|x) - log π_ref(y_i|x) the summed token log-prob
ratio, as in DPO; the loss core computes r_i from the policy and the reference's summed log-probs (`ref_logps`).
Tensors are [B, n] with candidates best first and trailing padding marked False in `candidate_mask`.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from trl_pro.objectives.base import RankingObjective
from trl_pro.objectives.pro import pro_loss_terms


def _prepare(logratios: torch.Tensor, candidate_mask: torch.Tensor | None, beta: float):
    """(s = beta * logratios in fp32 or fp64 with padding zeroed, bool mask)."""
    if candidate_mask is None:
        candidate_mask = torch.ones_like(logratios, dtype=torch.bool)
    candidate_mask = candidate_mask.bool()
    dtype = torch.promote_types(logratios.dtype, torch.float32)  # bf16/fp16 accumulate in fp32
    return (beta * logratios.to(dtype)).masked_fill(~candidate_mask, 0.0), candidate_mask


def default_labels(candidate_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ψ_i = n_b - i for the candidate in 1-based position i of a ranking of n_b real candidates (0 on padding)."""
    lengths = candidate_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(1, candidate_mask.shape[1] + 1, device=candidate_mask.device)
    return (lengths - positions).clamp(min=0).to(dtype).masked_fill(~candidate_mask, 0.0)


def _pairs(labels: torch.Tensor | None, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, n, n] bool: pair (i, j) exists when i is better than j (a higher label; listed first without labels)."""
    n = candidate_mask.shape[1]
    if labels is None:
        position = torch.arange(n, device=candidate_mask.device)
        better = (position[:, None] < position[None, :]).expand(candidate_mask.shape[0], n, n)
    else:
        better = labels[:, :, None] > labels[:, None, :]  # a tie forms no pair
    return better & candidate_mask[:, :, None] & candidate_mask[:, None, :]


def plackett_luce_terms(scores: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """terms[b, k] = -log( exp(s_k) / sum_{i>=k} exp(s_i) ), [B, n - 1]: PRO's cascade at T = 1 on s."""
    return pro_loss_terms(scores, None, candidate_mask)


def lipo_lambda_terms(scores: torch.Tensor, labels: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """terms[b, i] = sum_{j: ψ_i > ψ_j} Δ_ij softplus(-(s_i - s_j)), [B, n], grouped by the better candidate i."""
    with torch.no_grad():  # Δ takes no gradient
        # τ: 1-based rank by s, descending, among the real candidates; ties keep their listed order (stable sort)
        order = (
            scores.detach().masked_fill(~candidate_mask, float("-inf")).argsort(dim=1, descending=True, stable=True)
        )
        ranks = torch.arange(1, order.shape[1] + 1, device=order.device).expand_as(order)
        tau = torch.empty_like(order).scatter_(1, order, ranks)
        inverse_discount = 1.0 / torch.log2(1.0 + tau.to(scores.dtype))
        gain = torch.exp2(labels.to(scores.dtype)) - 1.0
        delta = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inverse_discount[:, :, None] - inverse_discount[:, None, :]
        ).abs()
    pair_loss = F.softplus(-(scores[:, :, None] - scores[:, None, :]))  # [b, i, j]
    pairs = _pairs(labels, candidate_mask)
    return torch.where(pairs, delta * pair_loss, torch.zeros_like(pair_loss)).sum(dim=2)


def all_pairs_terms(scores: torch.Tensor, labels: torch.Tensor | None, candidate_mask: torch.Tensor) -> torch.Tensor:
    """terms[b, i] = sum_{j worse than i} softplus(-(s_i - s_j)) / (number of pairs of b), [B, n]."""
    pairs = _pairs(labels, candidate_mask)
    pair_loss = F.softplus(-(scores[:, :, None] - scores[:, None, :]))
    num_pairs = pairs.sum(dim=(1, 2)).clamp(min=1).to(scores.dtype)
    return torch.where(pairs, pair_loss, torch.zeros_like(pair_loss)).sum(dim=2) / num_pairs[:, None]


def plackett_luce_loss(
    logratios: torch.Tensor, candidate_mask: torch.Tensor | None = None, beta: float = 0.1
) -> torch.Tensor:
    """Per-prompt list DPO loss under the Plackett-Luce model, shape [B] (fp32, or fp64 for fp64 inputs).

    Paper: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    (NeurIPS 2023), Appendix A.3, https://arxiv.org/abs/2305.18290

    Formula:
        L = -sum_{k=1}^{n-1} log( exp(s_k) / sum_{i=k}^{n} exp(s_i) ),      s_i = beta * r_i

    Legend: r_i = log π(y_i|x) - log π_ref(y_i|x), the summed token log-prob ratio of the i-th best candidate.
    At n = 2 it is DPO's sigmoid loss, -log sigmoid(s_1 - s_2).

    Args:
        logratios: [B, n] r_i, best first.
        candidate_mask: optional [B, n] bool, False for (trailing) padding candidates.
        beta: DPO's β.
    """
    scores, mask = _prepare(logratios, candidate_mask, beta)
    return plackett_luce_terms(scores, mask).sum(dim=1)


def lipo_lambda_loss(
    logratios: torch.Tensor,
    rewards: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-prompt LiPO-λ loss, shape [B] (fp32, or fp64 for fp64 inputs).

    Paper: Liu et al., "LiPO: Listwise Preference Optimization through Learning-to-Rank" (2024),
    https://arxiv.org/abs/2402.01878

    Formula:
        L = sum_{i, j: ψ_i > ψ_j} Δ_ij · softplus(-(s_i - s_j)),      s_i = beta * r_i
        Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|,   G_i = 2^ψ_i - 1,   D(τ) = log2(1 + τ)

    Legend: r_i the summed token log-prob ratio against the reference; ψ_i the label of candidate i (its reward, or
    n - i for the candidate in 1-based position i without rewards); τ_i the 1-based rank of candidate i when the real
    candidates of its ranking are sorted by s, descending (ties keep their listed order). Δ takes no gradient, tied
    labels form no pair, and there is no normalisation by the number of pairs.

    Args:
        logratios: [B, n] r_i, best first.
        rewards: optional [B, n] labels ψ (e.g. reward-model scores); None: ψ_i = n_b - i.
        candidate_mask: optional [B, n] bool, False for (trailing) padding candidates.
        beta: DPO's β.
    """
    scores, mask = _prepare(logratios, candidate_mask, beta)
    labels = default_labels(mask, scores.dtype) if rewards is None else rewards.to(scores.dtype).masked_fill(~mask, 0)
    return lipo_lambda_terms(scores, labels, mask).sum(dim=1)


def all_pairs_loss(
    logratios: torch.Tensor,
    rewards: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-prompt DPO loss averaged over every ordered pair of a ranking, shape [B].

    Paper: the pairwise reduction of a ranking (LLaMA-Factory's list DPO proposal); DPO's sigmoid loss per pair.

    Formula:
        L = 1/|P| · sum_{(i, j) in P} -log sigmoid(s_i - s_j),      s_i = beta * r_i

    Legend: P the pairs (i better than j): i listed before j, or, with `rewards`, a higher reward (ties form no pair).
    """
    scores, mask = _prepare(logratios, candidate_mask, beta)
    labels = None if rewards is None else rewards.to(scores.dtype).masked_fill(~mask, 0)
    return all_pairs_terms(scores, labels, mask).sum(dim=1)


def _lipo_lambda_ranked(scores, labels, candidate_mask):
    labels = default_labels(candidate_mask, scores.dtype) if labels is None else labels
    return lipo_lambda_terms(scores, labels, candidate_mask)[:, :-1]


#: loss_type -> (terms [B, n - 1] from (scores, labels or None, mask) sorted best first, whether it reads the labels).
#: Grouped by the better candidate, the last column (better than none) is dropped.
LOSS_TYPES = {
    "plackett_luce": (lambda scores, labels, mask: plackett_luce_terms(scores, mask), False),
    "lipo_lambda": (_lipo_lambda_ranked, True),
    "all_pairs": (lambda scores, labels, mask: all_pairs_terms(scores, labels, mask)[:, :-1], True),
}


@dataclass(frozen=True)
class ListDPOObjective(RankingObjective):
    """The listwise objectives with a reference, for the loss core: loss_b = L_b + sft_weight * L_SFT_b.

    Scores are s_i = beta * (sum_i - ref_sum_i) (DPO's implicit rewards). L_SFT is the policy's NLL of the SFT
    candidate, averaged over its tokens (DPO's "sft" loss) by default.

    Args:
        loss_type: "plackett_luce" (`plackett_luce_loss`), "lipo_lambda" (`lipo_lambda_loss`) or "all_pairs"
            (`all_pairs_loss`).
        beta: DPO's β.
        sft_loss_reduction: "mean" (default) or "sum".
    """

    loss_type: str = "plackett_luce"
    beta: float = 0.1
    sft_loss_reduction: str = field(default="mean")
    uses_reference: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {tuple(LOSS_TYPES)}, got {self.loss_type!r}.")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")

    @property
    def reads_rewards(self) -> bool:
        """Whether the loss reads the labels ψ (the rewards): Plackett-Luce only needs the order."""
        return LOSS_TYPES[self.loss_type][1]

    def scores(self, logprob_sums, token_counts):
        """s_i = beta * r_i, r_i the summed log-ratio (not length-normalised, as in DPO)."""
        return self.beta * logprob_sums

    def rank_terms(self, scores, rewards, candidate_mask):
        """[B, n - 1] terms of `loss_type`, grouped by the better candidate (candidates come sorted best first)."""
        candidate_mask = candidate_mask.bool()
        scores = scores.masked_fill(~candidate_mask, 0.0)
        labels = None if rewards is None else rewards.to(scores.dtype).masked_fill(~candidate_mask, 0.0)
        return LOSS_TYPES[self.loss_type][0](scores, labels, candidate_mask)

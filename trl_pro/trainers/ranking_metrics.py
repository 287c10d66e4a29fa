"""Ranking metrics of the model's candidate scores against the reference ranking, as (value, count) per prompt.

Returning per-prompt values and counts rather than means lets the trainer gather them across processes with
`gather_for_metrics` (one row per prompt, so the rows accelerate duplicates into the last eval batch are dropped) and
add them up across batches of different ranking lengths before dividing.
"""

import torch


def ranking_metrics_per_prompt(
    scores: torch.Tensor, candidate_mask: torch.Tensor, rewards: torch.Tensor | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Metrics of padded scores [B, n] (rank order, best first) with mask [B, n]; rewards [B, n] mark ties.

    Each metric is a pair (value [B], count [B]) of float tensors: its mean over a set of prompts is
    sum(value) / sum(count).

    - `ranking/top1_accuracy`: the best candidate has a strictly higher score than every other one.
    - `ranking/pairwise_accuracy`: fraction of ordered pairs (i better than j) with score_i > score_j. Pairs tied in
      reward are not ordered and are left out.
    - `ranking/kendall_tau`: per prompt, (concordant - discordant) / ordered pairs (tau-a over ordered pairs).
    - `scores/rank_{i}`: mean score of the candidate at rank position i (1-based).
    """
    scores = scores.float()
    mask = candidate_mask.bool()
    n = scores.shape[1]
    upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)  # i < j: i ranked better
    ordered = upper & mask[:, :, None] & mask[:, None, :]
    if rewards is not None:
        ordered &= rewards[:, :, None] != rewards[:, None, :]
    concordant = ((scores[:, :, None] > scores[:, None, :]) & ordered).sum(dim=(1, 2)).float()
    discordant = ((scores[:, :, None] < scores[:, None, :]) & ordered).sum(dim=(1, 2)).float()
    pairs_per_prompt = ordered.sum(dim=(1, 2)).float()
    has_pairs = (pairs_per_prompt > 0).float()
    tau = (concordant - discordant) / pairs_per_prompt.clamp(min=1)

    others = scores[:, 1:].masked_fill(~mask[:, 1:], float("-inf"))
    top1 = (scores[:, 0] > others.amax(dim=1)).float()

    metrics = {
        "ranking/top1_accuracy": (top1, torch.ones_like(top1)),
        "ranking/pairwise_accuracy": (concordant, pairs_per_prompt),
        "ranking/kendall_tau": (tau * has_pairs, has_pairs),
    }
    for i in range(n):
        metrics[f"scores/rank_{i + 1}"] = (scores[:, i].masked_fill(~mask[:, i], 0.0), mask[:, i].float())
    return metrics


def ranking_metric_sums(
    scores: torch.Tensor, candidate_mask: torch.Tensor, rewards: torch.Tensor | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`ranking_metrics_per_prompt` summed over the prompts: (sum, count) scalars per metric."""
    per_prompt = ranking_metrics_per_prompt(scores, candidate_mask, rewards)
    return {name: (value.sum(), count.sum()) for name, (value, count) in per_prompt.items()}


def reference_ranks(candidate_mask: torch.Tensor, rewards: torch.Tensor | None = None) -> torch.Tensor:
    """[B, n] int64 reference rank of each candidate: 0 for the best; candidates tied in reward share the better
    (smaller) rank; without rewards, the rank is the position. Padding candidates get -100."""
    mask = candidate_mask.bool()
    n = mask.shape[1]
    if rewards is None:
        ranks = torch.arange(n, device=mask.device).expand_as(mask)
    else:
        better = (rewards[:, None, :] > rewards[:, :, None]) & mask[:, None, :]  # [b, i, j]: j strictly better than i
        ranks = better.sum(dim=2)
    return ranks.masked_fill(~mask, -100).long()

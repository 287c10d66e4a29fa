"""Eager references of the loss core, for tests and benchmarks only: full [T, V] logits, plain autograd.

`eager_ranking_loss_from_hidden` materializes the logits, takes log_softmax + gather, and scores the rankings with the
objective's torch definition (`RankingObjective.ranking_level`; for PRO, `trl_pro.objectives.pro.pro_loss_terms`). Two
styles:
- `upcast=True` (tests): logits = hidden.float() @ weight.float().T, i.e. exact products and fp32 sums, the numbers
  every fused implementation computes, so forward values compare at fp32 precision whatever the input dtype.
- `upcast=False, per_candidate=True` (benchmark baseline (a), the authors' style): logits in the model dtype, then a
  full fp32 log_softmax, one candidate at a time, every candidate's tensors kept for the backward.
"""

import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.common import RankingLossOutput
from trl_pro.loss_core.fused import resolve_objective
from trl_pro.objectives.base import RankingObjective


def _token_logprobs(hidden, weight, bias, targets, upcast: bool) -> torch.Tensor:
    if upcast:
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        logits = torch.nn.functional.linear(
            hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        )
    else:
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return logits.log_softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)


def eager_ranking_loss_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    layout: RankingLayout,
    rewards: torch.Tensor | None = None,
    *,
    sft_weight: torch.Tensor | float = 0.0,
    sft_loss_reduction: str | None = None,
    rank_loss_terms: str | None = None,
    objective: RankingObjective | None = None,
    upcast: bool = True,
    per_candidate: bool = False,
    ref_logps: torch.Tensor | None = None,
) -> RankingLossOutput:
    """Same contract as `ranking_loss_from_hidden`, computed eagerly with [T, V] logits (see module docstring)."""
    objective = resolve_objective(objective, sft_loss_reduction, rank_loss_terms)
    layout = layout.to(hidden.device)
    if per_candidate:
        offsets = layout.token_offsets.tolist()
        sums = torch.stack(
            [
                _token_logprobs(hidden[a:b], weight, bias, targets[a:b], upcast).sum()
                for a, b in zip(offsets[:-1], offsets[1:])
            ]
        )
    else:
        token_logprobs = _token_logprobs(hidden, weight, bias, targets, upcast)
        sums = torch.zeros(layout.num_candidates, device=hidden.device, dtype=token_logprobs.dtype)
        sums = sums.index_add(0, layout.token_candidate(), token_logprobs)
    scores, terms, prompt_loss, sft_nll = objective.ranking_level(sums, layout, rewards, sft_weight, ref_logps)
    output = RankingLossOutput(prompt_loss.mean(), scores.detach(), terms.detach(), sft_nll.detach())
    output.logprob_sums = sums.detach()
    return output

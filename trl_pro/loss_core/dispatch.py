"""Dispatch of the loss core, and the ranking level of the "trl" baseline.

`ranking_loss_from_hidden` is what the trainer calls; `objective` picks the training method (PRO by default, RRHF with
`trl_pro.objectives.rrhf.RRHFObjective`). `implementation`:
- "auto": the fused Triton kernels for CUDA tensors when Triton imports, the torch twin otherwise;
- "triton": the fused Triton kernels (`fused.py`, `triton/`); on CPU only under `TRITON_INTERPRET=1`;
- "torch": the torch twin of the same chunked algorithm (`torch_path.py`), the CPU path;
- "trl": baseline, TRL's `ChunkedLogProbFunction` for the token log-probs + the objective's torch definition
  (autograd).
All of them give the same loss and gradients up to floating-point summation order.
"""

import functools

import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.common import RankingLossOutput
from trl_pro.loss_core.fused import fused_ranking_loss, resolve_objective
from trl_pro.objectives.base import RankingObjective


__all__ = ["RankingLossOutput", "ranking_loss_from_hidden", "ranking_loss_from_sums"]


def ranking_loss_from_sums(
    logprob_sums: torch.Tensor,
    layout: RankingLayout,
    rewards: torch.Tensor | None,
    sft_weight: torch.Tensor | float,
    objective: RankingObjective,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, RankingLossOutput]:
    """Ranking level with autograd: per-candidate sums of token log-probs [C] -> (loss, detached outputs).

    `rewards` is [C] or None; `sft_weight` is a float or one value per prompt [B]; `ref_logps` [C] the reference's
    sums for an objective that `uses_reference`. The loss is the mean over prompts.
    """
    scores, terms, prompt_loss, sft_nll = objective.ranking_level(logprob_sums, layout, rewards, sft_weight, ref_logps)
    loss = prompt_loss.mean()
    output = RankingLossOutput(loss.detach(), scores.detach(), terms.detach(), sft_nll.detach())
    output.logprob_sums = logprob_sums.detach()
    return loss, output


def _token_logprobs_trl(
    hidden, weight, bias, targets, chunk_size: int = 4096, final_logit_softcapping=None, logit_scale: float = 1.0
):
    # TRL's chunked LM head: per-token log-probs without materializing the [T, V] logits, with the logit scale and
    # tanh softcapping of TRL's fused LM head
    from trl.kernels import ChunkedLogProbFunction

    logprobs, *_ = ChunkedLogProbFunction.apply(
        hidden, weight, bias, targets, 1.0, chunk_size, final_logit_softcapping, logit_scale, ()
    )
    return logprobs


def trl_ranking_loss_from_hidden(
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
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    ref_logps: torch.Tensor | None = None,
) -> RankingLossOutput:
    """The "trl" baseline: TRL's chunked fused LM-head log-probs, per-candidate sums, the objective in torch."""
    objective = resolve_objective(objective, sft_loss_reduction, rank_loss_terms)
    layout = layout.to(hidden.device)
    logprobs = _token_logprobs_trl(
        hidden, weight, bias, targets, final_logit_softcapping=final_logit_softcapping, logit_scale=logit_scale
    )
    sums = torch.zeros(layout.num_candidates, device=hidden.device, dtype=torch.float32)
    sums = sums.index_add(0, layout.token_candidate(), logprobs.float())
    loss, output = ranking_loss_from_sums(sums, layout, rewards, sft_weight, objective, ref_logps)
    output.loss, output.implementation = loss, "trl"
    return output


def ranking_loss_from_hidden(
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
    implementation: str = "auto",
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    ref_logps: torch.Tensor | None = None,
) -> RankingLossOutput:
    """Loss of a ranking objective (PRO's Eq. 7 by default) from the hidden states [T, H] of the positions that
    predict the targets [T].

    `weight` [V, H] and `bias` [V] are the LM head; `layout` says which tokens form which candidate of which ranking;
    `rewards` [C] are optional reward-model scores (PRO: dynamic temperature; RRHF: the preferences); `sft_weight` is
    the weight of the SFT term (PRO's beta; 1 for RRHF), a float or [B]. `objective` is a
    `trl_pro.objectives.base.RankingObjective`; without it, PRO with `sft_loss_reduction` ("sum" by default) and
    `rank_loss_terms` ("all" by default). `implementation` is "auto", "triton", "torch" or "trl" (see the module
    docstring). `ref_logps` [C] are a reference model's summed log-probs of the candidates, for an objective that
    `uses_reference` (list DPO, LiPO), None otherwise. Gradients flow into `hidden`, `weight` and `bias` for those that
    require grad; a frozen LM head skips its gradient work entirely. `RankingLossOutput.logprob_sums` are the
    candidates' summed log-probs (what a reference pass returns).

    The logits are `softcap * tanh(logit_scale * (hidden @ weight.T + bias) / softcap)` when `final_logit_softcapping`
    is set, `logit_scale * (hidden @ weight.T + bias)` otherwise, as in TRL's fused LM head (`add_fused_lm_head`).
    A scale is folded into the hidden states and the bias (the head is linear), so every implementation takes it;
    softcapping is not linear, and goes through TRL's chunked log-prob kernel, which applies it per tile.
    """
    for dispatch in _DISPATCHERS:
        loss = dispatch(implementation, logit_scale, final_logit_softcapping)
        if loss is not None:
            break
    return loss(
        hidden,
        weight,
        bias,
        targets,
        layout,
        rewards,
        sft_weight=sft_weight,
        sft_loss_reduction=sft_loss_reduction,
        rank_loss_terms=rank_loss_terms,
        objective=objective,
        ref_logps=ref_logps,
    )


def _dispatch_trl(implementation: str, logit_scale: float, final_logit_softcapping: float | None):
    """The "trl" baseline; also every softcapped head: TRL's chunked kernel applies it per tile, the fused core not."""
    if implementation != "trl" and final_logit_softcapping is None:
        return None
    return functools.partial(
        trl_ranking_loss_from_hidden, final_logit_softcapping=final_logit_softcapping, logit_scale=logit_scale
    )


def _dispatch_fused(implementation: str, logit_scale: float, final_logit_softcapping: float | None):
    """The fused core ("auto", "triton", "torch"; `fused_ranking_loss` checks the name), the logit scale folded in."""

    def loss(hidden, weight, bias, *args, **kwargs):
        # The head is linear: scaling its inputs scales the logits
        if logit_scale != 1.0:
            hidden = hidden * logit_scale
            bias = None if bias is None else bias * logit_scale
        return fused_ranking_loss(hidden, weight, bias, *args, implementation=implementation, **kwargs)

    return loss


# Consulted in order, as PEFT's LoRA dispatchers: the first that returns a loss function computes the loss
_DISPATCHERS = (_dispatch_trl, _dispatch_fused)

"""The fused loss core: one autograd Function from LM-head inputs to the loss of a ranking objective, without [T, V]
logits. For PRO (Eq. 7):

    loss = mean_b [ sum_{selected k} term_{b,k}  +  beta_b * L_SFT_b ]                                       (Eq. 7)

and for any `trl_pro.objectives.base.RankingObjective` (RRHF: `trl_pro.objectives.rrhf.RRHFObjective`) the mean over prompts of
its per-prompt loss. `FusedRankingLossFunction` runs two levels. The token level has a Triton implementation
(`token_logprob.py`) and a torch twin (`torch_path.py`) of the same chunked algorithm; `implementation` picks one. The
ranking level is the objective's torch definition with autograd's gradient (`torch_path.ranking_forward`), except for
PRO under `implementation="triton"`, which runs the fused Triton ranking kernel (`ranking.py`):

1. Token level, forward: per-token log-sum-exp of the logits `hidden @ weight.T + bias`, computed tile by tile with an
   online, max-shifted log-sum-exp across vocabulary tiles (fp32 accumulation), and the target log-prob of each token,
   summed per candidate.
2. Ranking level, forward: from the per-candidate sums, the objective's scores (PRO: Eq. 6), terms (PRO: Eq. 8/9 with
   the dynamic temperature of Eq. 10/11), SFT term and loss, and d loss / d sum_c for every candidate (the loss is a
   scalar, so this gradient is exact to compute ahead and cheap: O(C n) for PRO, O(C n) pairs for RRHF).
3. Backward: g_t = grad_loss * d loss / d sum_{c(t)} for every token; the logits tiles are recomputed and turned into
   dz = g_t (onehot(y_t) - softmax(z_t)), which gives d hidden = dz @ W and, only when the LM head requires grad,
   d weight = dz.T @ hidden and d bias = column sums of dz. A frozen LM head (LoRA/QLoRA) skips that work.

Saved for backward: the inputs (not copies), lse [T] fp32, the token -> candidate map [T], d loss / d sums [C]:
O(tokens), never O(tokens x vocab). The largest temporary is one [token_chunk, vocab_chunk] tile (`TileConfig`).
"""

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.common import (
    DEFAULT_CPU_TILES,
    DEFAULT_TILES,
    FUSED_IMPLEMENTATIONS,
    IMPLEMENTATIONS,
    RankingLossOutput,
    TileConfig,
    accumulation_dtype,
    triton_importable,
)
from trl_pro.objectives.base import RankingObjective
from trl_pro.objectives.pro import PROObjective


def _triton_token_ops():
    from trl_pro.loss_core.triton import token_logprob

    return token_logprob.token_forward, token_logprob.token_backward


def _torch_token_ops():
    from trl_pro.loss_core import torch_path

    return torch_path.token_forward, torch_path.token_backward


def _triton_pro_ranking():
    from trl_pro.loss_core.triton import pro_ranking

    return pro_ranking.ranking_forward


def _triton_unavailable(device: torch.device) -> Exception | None:
    if not triton_importable():
        return ImportError(
            "implementation='triton' needs the optional dependency Triton (`pip install triton`); "
            "use implementation='torch' or 'auto' without it."
        )
    if device.type != "cuda" and not triton_kernels_interpreted():
        return RuntimeError(
            f"implementation='triton' got {device.type} tensors: the Triton kernels run on CUDA, or on CPU under "
            "the Triton interpreter, which needs TRITON_INTERPRET=1 in the environment before trl_pro's kernels "
            "are first imported (e.g. `TRITON_INTERPRET=1 python ...`). Use implementation='torch' (or 'auto') "
            "on CPU."
        )
    return None


@dataclass(frozen=True)
class LossImplementation:
    """One token-level implementation of the fused loss core, an entry of `LOSS_IMPLEMENTATIONS`.

    Attributes:
        name: its `implementation` value.
        auto: whether "auto" picks it for tensors on a device; "auto" takes the first entry that says yes.
        unavailable: the error an explicit request raises when it cannot run on a device, or None.
        token_ops: (token_forward, token_backward), imported on first use so that Triton stays optional.
        pro_ranking: PRO's fused ranking-level kernel (imported on first use), or None: the objective's torch
            definition with autograd's gradient (`torch_path.ranking_forward`).
        guard: for "auto", whether it may run on a device in a compute dtype (`parity.triton_matches_torch`: a probe
            against the torch path), or None.
    """

    name: str
    auto: Callable[[torch.device], bool]
    unavailable: Callable[[torch.device], Exception | None]
    token_ops: Callable[[], tuple[Callable, Callable]]
    pro_ranking: Callable[[], Callable] | None = None
    guard: Callable[[torch.device, torch.dtype], bool] | None = None


def _triton_guard(device: torch.device, dtype: torch.dtype) -> bool:
    from trl_pro.loss_core.parity import triton_matches_torch

    return triton_matches_torch(fused_ranking_loss, device, dtype)


# Consulted in order, as PEFT's LoRA dispatchers: "auto" takes Triton on CUDA when it imports, else the torch twin.
# Under the interpreter Triton also runs on CPU, but "auto" never picks it there: that is for tests, and slow.
LOSS_IMPLEMENTATIONS = (
    LossImplementation(
        "triton",
        auto=lambda device: device.type == "cuda" and triton_importable(),
        unavailable=_triton_unavailable,
        token_ops=_triton_token_ops,
        pro_ranking=_triton_pro_ranking,
        guard=_triton_guard,
    ),
    LossImplementation("torch", auto=lambda device: True, unavailable=lambda device: None, token_ops=_torch_token_ops),
)
_BY_NAME = {entry.name: entry for entry in LOSS_IMPLEMENTATIONS}


def _ops(implementation: str):
    """The (token_forward, token_backward) functions of "triton" or "torch"; imports lazily."""
    return _BY_NAME[implementation].token_ops()


def _ranking_forward(implementation, objective, sums, layout, rewards, sft_weight, n_max, ref_logps):
    """(scores, terms, per-prompt loss, sft_nll, d mean-loss / d sums): the Triton kernel for PRO, autograd otherwise."""
    pro_ranking = _BY_NAME[implementation].pro_ranking
    if pro_ranking is not None and type(objective) is PROObjective:
        return pro_ranking()(
            sums,
            layout.token_offsets,
            layout.ranking_offsets,
            layout.sft_candidate,
            rewards,
            sft_weight,
            n_max,
            objective.sft_loss_reduction == "mean",
            objective.rank_loss_terms == "first",
        )
    from trl_pro.loss_core import torch_path

    return torch_path.ranking_forward(sums, layout, rewards, sft_weight, objective, ref_logps)


def resolve_objective(
    objective: RankingObjective | None, sft_loss_reduction: str | None, rank_loss_terms: str | None
) -> RankingObjective:
    """The objective of the loss core: `objective`, or PRO with `sft_loss_reduction` / `rank_loss_terms`."""
    if objective is None:
        return PROObjective(sft_loss_reduction=sft_loss_reduction or "sum", rank_loss_terms=rank_loss_terms or "all")
    if sft_loss_reduction is not None or rank_loss_terms is not None:
        raise ValueError(
            "sft_loss_reduction and rank_loss_terms configure PRO; with an `objective`, set them on the objective."
        )
    if not isinstance(objective, RankingObjective):
        raise TypeError(
            f"objective must be a trl_pro.objectives.base.RankingObjective, got {type(objective).__name__}."
        )
    return objective


def _gather_lm_head(weight, bias):
    """Under DeepSpeed ZeRO-3 the backward must gather the partitioned LM head again (as TRL's chunked kernel does)."""
    if "deepspeed" not in sys.modules:  # ZeRO-3 cannot be on; avoids importing trl's trainer utils for nothing
        return contextlib.nullcontext()
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    return maybe_gather_lm_head_ctx(weight, bias)


def triton_kernels_interpreted() -> bool:
    """Whether trl-pro's Triton kernels were compiled for the interpreter (`TRITON_INTERPRET=1` at their import)."""
    from trl_pro.loss_core.triton import token_logprob

    return token_logprob.IS_INTERPRETED


def resolve_implementation(implementation: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """ "auto" -> "triton" for CUDA tensors when Triton imports and (given the compute `dtype`) its kernels passed
    the parity probe there, "torch" otherwise; checks that an explicit "triton" can run."""
    if implementation not in FUSED_IMPLEMENTATIONS:
        if implementation in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={implementation!r} is only available through `ranking_loss_from_hidden`."
            )
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
    if implementation == "auto":
        return next(
            entry.name
            for entry in LOSS_IMPLEMENTATIONS
            if entry.auto(device) and (entry.guard is None or dtype is None or entry.guard(device, dtype))
        )
    error = _BY_NAME[implementation].unavailable(device)
    if error is not None:
        raise error
    return implementation


class FusedRankingLossFunction(torch.autograd.Function):
    """Loss of a ranking objective (PRO: Eq. 7) from the hidden states of the response-predicting positions and the
    LM head.

    Differentiable inputs: `hidden` [T, H], `weight` [V, H], `bias` [V] or None (gradients are computed only for those
    that require grad). Everything else is a constant: `targets` [T], the layout tensors, `token_candidate` [T] (the
    candidate of each token), `rewards` [C] or None, `sft_weight` [B] (beta per prompt, fp32), `n_max` (longest
    ranking), `objective` (`RankingObjective`, e.g. `PROObjective(sft_loss_reduction, rank_loss_terms)`),
    `implementation` ("triton" or "torch"), `tiles` (`TileConfig`), `compute_dtype` (dtype of the GEMM operands;
    accumulation is fp32), `ref_logps` [C] or None (a reference model's summed log-probs, for an objective that
    `uses_reference`).

    Returns (loss scalar, scores [C], rank_terms [B, n_max-1], sft_nll [B], logprob_sums [C]); only `loss` is
    differentiable.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        token_offsets: torch.Tensor,
        ranking_offsets: torch.Tensor,
        sft_candidate: torch.Tensor,
        token_candidate: torch.Tensor,
        rewards: torch.Tensor | None,
        sft_weight: torch.Tensor,
        n_max: int,
        objective: RankingObjective,
        implementation: str,
        tiles: TileConfig,
        compute_dtype: torch.dtype,
        ref_logps: torch.Tensor | None,
    ):
        ctx.set_materialize_grads(False)
        token_forward, _ = _ops(implementation)
        layout = RankingLayout(token_offsets, ranking_offsets, sft_candidate)
        with torch.autocast(hidden.device.type, enabled=False):
            lse, sums = token_forward(
                hidden, weight, bias, targets, token_offsets, token_candidate, tiles=tiles, compute_dtype=compute_dtype
            )
            scores, terms, prompt_loss, sft_nll, grad_sums = _ranking_forward(
                implementation, objective, sums, layout, rewards, sft_weight, n_max, ref_logps
            )
            loss = prompt_loss.mean()
        ctx.save_for_backward(hidden, weight, bias, targets, lse, token_candidate, grad_sums)
        ctx.implementation = implementation
        ctx.tiles = tiles
        ctx.compute_dtype = compute_dtype
        ctx.mark_non_differentiable(scores, terms, sft_nll, sums)
        return loss, scores, terms, sft_nll, sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *_):
        hidden, weight, bias, targets, lse, token_candidate, grad_sums = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grads = (None, None, None)
        if grad_loss is not None and (need_hidden or need_weight or need_bias):
            _, token_backward = _ops(ctx.implementation)
            with torch.autocast(hidden.device.type, enabled=False), _gather_lm_head(weight, bias):
                # d loss / d log p_t: the gradient of the candidate sum that token t belongs to
                token_grad = (grad_sums * grad_loss.to(grad_sums.dtype))[token_candidate]
                grads = token_backward(
                    hidden,
                    weight,
                    bias,
                    targets,
                    lse,
                    token_grad,
                    need_hidden_grad=need_hidden,
                    need_weight_grad=need_weight,
                    need_bias_grad=bool(need_bias and bias is not None),
                    tiles=ctx.tiles,
                    compute_dtype=ctx.compute_dtype,
                )
        return (*grads,) + (None,) * 13


def fused_ranking_loss(
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
    tiles: TileConfig | None = None,
    ref_logps: torch.Tensor | None = None,
) -> RankingLossOutput:
    """`ranking_loss_from_hidden` for the fused implementations ("auto", "triton", "torch"), with tile sizes exposed.

    `sft_weight` (beta, float or [B]), `rewards` and `ref_logps` are constants (no gradient flows into them). Without
    `objective`,
    the objective is PRO with `sft_loss_reduction` ("sum" by default) and `rank_loss_terms` ("all" by default).
    """
    objective = resolve_objective(objective, sft_loss_reduction, rank_loss_terms)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [T, H] and weight [V, H] expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}."
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [T] = [{hidden.shape[0]}], got {tuple(targets.shape)}.")
    device = hidden.device
    if torch.is_autocast_enabled(device.type):
        compute_dtype = torch.get_autocast_dtype(device.type)
    else:
        compute_dtype = hidden.dtype
    implementation = resolve_implementation(implementation, device, compute_dtype)
    if tiles is None:
        tiles = DEFAULT_TILES if device.type == "cuda" else DEFAULT_CPU_TILES

    layout = layout.to(device)
    num_prompts = layout.num_prompts
    n_max = int(layout.ranking_lengths().max())
    if n_max < 2:
        raise ValueError("Every ranking needs at least two candidates.")
    num_tokens = int(layout.token_offsets[-1])
    if num_tokens != hidden.shape[0]:
        raise ValueError(f"The layout describes {num_tokens} tokens, hidden has {hidden.shape[0]}.")

    acc_dtype = accumulation_dtype(compute_dtype)
    if isinstance(sft_weight, torch.Tensor):
        sft_weight = sft_weight.detach().to(device=device, dtype=acc_dtype)
    else:
        sft_weight = torch.tensor(float(sft_weight), device=device, dtype=acc_dtype)
    sft_weight = sft_weight.expand(num_prompts).contiguous()
    if rewards is not None:
        rewards = rewards.detach().to(device=device, dtype=acc_dtype).contiguous()
    objective.check_ref_logps(ref_logps, layout.num_candidates)
    if ref_logps is not None:
        ref_logps = ref_logps.detach().to(device=device, dtype=acc_dtype).contiguous()

    loss, scores, terms, sft_nll, sums = FusedRankingLossFunction.apply(
        hidden,
        weight,
        bias,
        targets.contiguous(),
        layout.token_offsets.contiguous(),
        layout.ranking_offsets.contiguous(),
        layout.sft_candidate.contiguous(),
        layout.token_candidate(),
        rewards,
        sft_weight,
        n_max,
        objective,
        implementation,
        tiles,
        compute_dtype,
        ref_logps,
    )
    return RankingLossOutput(loss, scores, terms, sft_nll, implementation=implementation, logprob_sums=sums)

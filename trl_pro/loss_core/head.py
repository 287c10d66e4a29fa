"""A forward that returns the PRO loss instead of logits, patched onto the model like TRL's `add_fused_lm_head`.

The loss is computed *inside* `model.forward`, so DDP, FSDP and DeepSpeed see the LM head used within their wrapped
forward (they hook parameters there), and PEFT models pass the extra keyword straight through to it.
"""

import functools
import sys

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from trl.trainer.utils import maybe_gather_lm_head_ctx

from trl_pro.data.collator import PADDING, PROMPT
from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core import shared_prompt
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden


# Logit transforms TRL's fused LM head does not apply: scores would differ from the model's logits, so such models are
# rejected rather than trained on wrong scores (config attribute -> what the model does)
_UNSUPPORTED_LOGIT_TRANSFORMS = {
    "logits_soft_cap": "soft-caps its logits under a name TRL's fused LM head does not read (RecurrentGemma)",
    "unpadded_vocab_size": "drops the padded vocabulary entries from its logits",
}
_UNSUPPORTED_MODEL_TYPES = {"chameleon": "masks the image-token logits"}


def logit_transform(model: PreTrainedModel) -> tuple[float, float | None]:
    """(logit_scale, final_logit_softcapping) of `model`'s logits, read from its config as TRL's `add_fused_lm_head`.

    The model's logits are `softcap * tanh(logit_scale * lm_head(h) / softcap)`, softcapping from
    `final_logit_softcapping` (Gemma 2/3, Muse Glimmer), the scale from `logit_scale` (Cohere), `output_multiplier`
    (Muse Glimmer), `lm_head_multiplier` (Falcon-H1) or `logits_scaling` (Granite, MiniCPM3: divided by it; HyperCLOVA
    X: multiplied by it). A transform TRL does not know raises a `NotImplementedError`.
    """
    text_config = model.config.get_text_config()
    model_type = getattr(text_config, "model_type", None)
    unsupported = []
    if model_type in _UNSUPPORTED_MODEL_TYPES:
        unsupported.append(f"{model_type}: {_UNSUPPORTED_MODEL_TYPES[model_type]}")
    for attribute, what in _UNSUPPORTED_LOGIT_TRANSFORMS.items():
        value = getattr(text_config, attribute, None)
        if value is not None and not (attribute == "unpadded_vocab_size" and value >= text_config.vocab_size):
            unsupported.append(f"{attribute}={value}: {what}")
    if unsupported:
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits in a way the PRO loss head does not reproduce "
            f"({'; '.join(unsupported)}): its candidate scores would differ from the model's own logits."
        )
    final_logit_softcapping = getattr(text_config, "final_logit_softcapping", None)
    # Same precedence as TRL 1.16's `add_fused_lm_head`; `logit_scale` None (e.g. MPT) means unscaled
    logit_scale = getattr(text_config, "logit_scale", None)
    if logit_scale is None:
        logit_scale = getattr(text_config, "output_multiplier", None)
    if logit_scale is None:
        logit_scale = getattr(text_config, "lm_head_multiplier", None)
    if logit_scale is None and getattr(text_config, "logits_scaling", None) is not None:
        logits_scaling = text_config.logits_scaling
        logit_scale = logits_scaling if model_type == "hyperclovax" else 1 / logits_scaling
    return (1.0 if logit_scale is None else float(logit_scale)), final_logit_softcapping


def add_ranking_loss_head(model: PreTrainedModel) -> None:
    """Patch `model` so that `model(input_ids, attention_mask, ranking_inputs=...)` returns a `RankingLossOutput`.

    `ranking_inputs` is a dict with `completion_mask` [C, L] (1 on completion tokens), optionally `segment_ids` [B, L] (the
    shared-prompt layout of `trl_pro.loss_core.shared_prompt`, one row per ranking), `layout` (`RankingLayout`),
    `rewards` ([C] or None) and the keyword arguments of `ranking_loss_from_hidden` (`sft_weight`, ...). Without
    `ranking_inputs`, the forward is the original one, so generation is unchanged. The model's logit scale and
    softcapping (`logit_transform`) are applied as TRL's fused LM head applies them. With `output_router_logits=True`,
    a mixture-of-experts model also returns its unweighted load-balancing loss as `aux_loss` (equal in both layouts).
    """
    logit_scale, final_logit_softcapping = logit_transform(model)
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, ranking_inputs: dict | None = None, **kwargs):
        if ranking_inputs is None:
            return original_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        # Shared-prompt layout (one row per ranking): its 4D mask / BlockMask and position ids replace the 2D mask
        segment_ids = ranking_inputs.get("segment_ids")
        layout: RankingLayout = ranking_inputs["layout"]
        # The load-balancing loss takes a per-token [B, L] mask, never the 4D mask / BlockMask that replaces it here
        router_mask = kwargs.get("attention_mask")
        if segment_ids is not None:
            router_mask = _router_token_weights(segment_ids, layout)
            backend = shared_prompt.attention_implementation(self)
            kwargs.update(shared_prompt.model_inputs(segment_ids, backend, self.get_input_embeddings().weight.dtype))
        # The backbone and the head are looked up on each call, since FSDP and PEFT replace them after patching
        backbone_output = self.base_model(*args, **kwargs)
        hidden_states = backbone_output.last_hidden_state
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if segment_ids is not None:
            # Gathering the prompt's last position once per candidate accumulates its gradient (index backward)
            hidden_index, target_index = shared_prompt.score_indices(segment_ids)
            hidden = hidden_states.flatten(0, 1)[hidden_index]
            targets = input_ids.flatten()[target_index]
        else:
            # Position t predicts token t + 1: keep the positions whose next token is a completion token. Row-major
            # selection keeps each candidate's tokens contiguous and in candidate order, as the layout requires.
            predicts_completion = ranking_inputs["completion_mask"][:, 1:].bool()
            hidden = hidden_states[:, :-1][predicts_completion]
            targets = input_ids[:, 1:][predicts_completion]
        lm_head = self.get_output_embeddings()
        weight, bias = lm_head.weight, lm_head.bias
        # FSDP2 shards the head as DTensors; gather it once (as TRL's fused LM head does)
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        not_loss_kwargs = ("completion_mask", "layout", "rewards", "segment_ids")
        loss_kwargs = {k: v for k, v in ranking_inputs.items() if k not in not_loss_kwargs}
        loss_kwargs.update(logit_scale=logit_scale, final_logit_softcapping=final_logit_softcapping)
        # Under ZeRO-3 the head is only materialized inside its own forward, which this path never calls
        with maybe_gather_lm_head_ctx(weight, bias):
            output = ranking_loss_from_hidden(
                hidden.to(weight.device),
                weight,
                bias,
                targets.to(weight.device),
                layout,
                ranking_inputs.get("rewards"),
                **loss_kwargs,
            )
        if kwargs.get("output_router_logits"):
            output.aux_loss = _router_aux_loss(self, backbone_output.router_logits, router_mask)
        return output

    model.forward = forward.__get__(model)


def _router_token_weights(segment_ids: torch.Tensor, layout: RankingLayout) -> torch.Tensor:
    """[B, L] weight of each position of packed rows in the router's load-balancing loss: 0 on padding, 1 on a
    candidate token, the ranking's number of candidates on a prompt token.

    The plain layout routes each prompt once per candidate; weighing the shared prompt by that count gives the same
    load-balancing loss (and gradient) as the plain layout, like the ranking loss.
    """
    num_candidates = layout.ranking_lengths().to(segment_ids.device)[:, None]
    return torch.where(segment_ids == PROMPT, num_candidates, (segment_ids != PADDING).long())


def _router_aux_loss(model: PreTrainedModel, router_logits, attention_mask):
    """Load-balancing loss of a mixture-of-experts model, computed as its own causal-LM forward does (unweighted).

    `attention_mask` is the [B, L] per-token mask (or weights) of the rows the router saw, not the 4D mask or
    BlockMask of the shared-prompt layout.
    """
    load_balancing_loss_func = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    text_config = model.config.get_text_config()
    num_experts = getattr(text_config, "num_local_experts", None) or getattr(text_config, "num_experts", None)
    if load_balancing_loss_func is None or num_experts is None:
        raise NotImplementedError(
            f"{type(model).__name__} returns router logits but trl-pro does not know its load-balancing loss; set "
            "`router_aux_loss_coef=0.0` to train without it."
        )
    return load_balancing_loss_func(router_logits, num_experts, text_config.num_experts_per_tok, attention_mask)

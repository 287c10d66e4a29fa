"""Shared-prompt forward: each prompt goes through the model once for all of its candidates.

The plain layout makes one row `prompt + candidate` per candidate, so a ranking of n re-encodes its prompt n times.
The shared layout packs each ranking into one row

    [prompt, candidate 1, ..., candidate n, padding]

and describes it with `segment_ids` (0 on the prompt, k on candidate k, -1 on padding). From them, on the device:

- the attention mask: a query attends to a key at or before it that is in the prompt or in its own segment, so each
  candidate sees the prompt and, causally, itself only (padding sees the prompt and earlier padding, so no row of
  the mask is empty);
- the position ids: the prompt counts 0..P-1 and every candidate continues from P, as in its plain row;
- which hidden state predicts which scored token. Position t predicts token t + 1 inside a candidate, but the first
  token of a candidate is predicted by the prompt's last position, which every candidate shares. We *gather* that
  position once per candidate (`hidden_states.flatten(0, 1)[hidden_index]`): autograd's index backward accumulates
  the n gradients into the one shared position. The anchor (Wang and Hegde 2024, dpo-prefix-sharing) instead repeats
  a token in the sequence; gathering adds no tokens, keeps the packed row and the position ids the same as the plain
  rows', and needs nothing from the attention kernel.

Scored tokens come out in row-major order: candidates in ranking order, rankings in batch order, which is exactly the
candidate order of the plain layout, so the same `RankingLayout` (and the same tokenization and truncation: the
collator only lays out the already truncated `prompt_ids` / `completion_ids`) feeds the loss core unchanged.

Attention backends: "sdpa" takes a boolean 4D mask, "eager" an additive float 4D mask (transformers uses a 4D mask as
given, see `masking_utils._preprocess_mask_arguments`), "flex_attention" a `BlockMask` built from the same rule (on
GPU it skips the blocks between candidates). Other backends (flash-attention 2/3, paged, kernels) take no custom
mask: the trainer falls back to the plain layout with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from trl_pro.data.collator import PROMPT


SHARED_PROMPT_ATTENTION = ("sdpa", "eager", "flex_attention")


def attention_implementation(model) -> str:
    """The attention backend name of a (possibly PEFT-wrapped) model."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "_attn_implementation", None) or "eager"


def resolve_shared_prompt(setting: bool | str, model) -> bool:
    """Whether to use the shared layout: `setting` is True, False or "auto" (`PROConfig.shared_prompt`).

    True and "auto" use it when the model's attention backend takes a custom mask; otherwise the plain layout is used,
    with one warning for True (it was asked for) and silently for "auto".
    """
    if setting is False or setting == "false":
        return False
    backend = attention_implementation(model)
    if backend in SHARED_PROMPT_ATTENTION:
        return True
    if setting is True or setting == "true":
        warnings.warn(
            f"shared_prompt=True needs an attention backend that takes a custom mask ({', '.join(SHARED_PROMPT_ATTENTION)}); "
            f"the model uses {backend!r}, so each candidate gets its own row with its prompt (the plain layout).",
            stacklevel=2,
        )
    return False


def _segment_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] index of the first position of the segment each position is in."""
    length = segment_ids.shape[1]
    arange = torch.arange(length, device=segment_ids.device).expand_as(segment_ids)
    is_start = torch.ones_like(segment_ids, dtype=torch.bool)
    is_start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return torch.cummax(torch.where(is_start, arange, 0), dim=1).values


def position_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] position ids: 0..P-1 on the prompt, P.. again on every candidate (padding continues its segment)."""
    arange = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    prompt_length = (segment_ids == PROMPT).sum(dim=1, keepdim=True)
    in_segment = arange - _segment_starts(segment_ids)
    return torch.where(segment_ids == PROMPT, arange, prompt_length + in_segment)


def score_indices(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into [B * L]: (position whose hidden state predicts each scored token, that token), row-major.

    Every candidate token is scored; the hidden state predicting it is the previous position, except for the first
    token of a candidate, predicted by the prompt's last position.
    """
    batch, length = segment_ids.shape
    flat = segment_ids.reshape(-1)
    target_index = torch.nonzero(flat > PROMPT).squeeze(1)
    row_start = (target_index // length) * length
    prompt_last = row_start + (segment_ids == PROMPT).sum(dim=1)[target_index // length] - 1
    starts = _segment_starts(segment_ids).reshape(-1)
    first_of_candidate = (starts[target_index] + row_start) == target_index
    hidden_index = torch.where(first_of_candidate, prompt_last, target_index - 1)
    return hidden_index, target_index


def allowed(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L, L] boolean: query q may attend to key k (k <= q, and k in the prompt or in q's segment)."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    return causal & ((key == PROMPT) | (key == query))


def dense_attention_mask(segment_ids: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask [B, 1, L, L] for "sdpa" (boolean, True = attend) or "eager" (additive: 0 or the dtype's min)."""
    mask = allowed(segment_ids)[:, None]
    if backend == "sdpa":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


def shared_prompt_mask_mod(segment_ids: torch.Tensor):
    """The mask rule as a flex-attention `mask_mod` over `segment_ids` [B, L]."""

    def mask_mod(b, h, q_idx, kv_idx):
        key = segment_ids[b, kv_idx]
        return (kv_idx <= q_idx) & ((key == PROMPT) | (key == segment_ids[b, q_idx]))

    return mask_mod


def block_mask(segment_ids: torch.Tensor, block_size: int = 128):
    """A flex-attention `BlockMask` [B, 1, L, L] of the same rule (blocks between candidates are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segment_ids.shape
    return create_block_mask(
        shared_prompt_mask_mod(segment_ids),
        batch,
        None,
        length,
        length,
        device=segment_ids.device,
        BLOCK_SIZE=block_size,
    )


def model_inputs(segment_ids: torch.Tensor, backend: str, dtype: torch.dtype) -> dict[str, Any]:
    """`attention_mask` (4D or BlockMask) and `position_ids` for the backbone's forward on a packed batch."""
    if backend == "flex_attention":
        mask = block_mask(segment_ids)
    elif backend in ("sdpa", "eager"):
        mask = dense_attention_mask(segment_ids, backend, dtype)
    else:
        raise ValueError(
            f"The shared-prompt layout needs an attention backend that takes a custom mask "
            f"({', '.join(SHARED_PROMPT_ATTENTION)}), got {backend!r}; use `shared_prompt=False`."
        )
    return {"attention_mask": mask, "position_ids": position_ids(segment_ids)}

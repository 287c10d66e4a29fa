"""Batches of rankings: the plain layout (one row per candidate) and the shared-prompt layout (one row per ranking,
`[prompt, candidate 1, ..., candidate n]` with segment ids), and `DataCollatorForRanking`, which makes either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin
from trl.trainer.utils import pad


PROMPT, PADDING = 0, -1


def pack_rankings(examples: list[dict[str, Any]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One row per ranking: (input ids, segment ids) of [prompt, candidate 1, ..., candidate n], unpadded."""
    input_ids, segment_ids = [], []
    for example in examples:
        ids, segments = list(example["prompt_ids"]), [PROMPT] * len(example["prompt_ids"])
        for k, completion in enumerate(example["completion_ids"], start=1):
            ids += completion
            segments += [k] * len(completion)
        input_ids.append(torch.tensor(ids))
        segment_ids.append(torch.tensor(segments))
    return input_ids, segment_ids


@dataclass
class DataCollatorForRanking(DataCollatorMixin):
    """Pads a batch of rankings of any lengths into one flat batch of candidate sequences plus its layout.

    Every candidate becomes one row `prompt_ids + completion_ids` of `input_ids` [C, L] (right-padded), so all
    candidates of the batch go through the model in one forward. The layout tensors say which rows form which ranking:
    `ranking_offsets` [B+1] (candidates of prompt b are rows ranking_offsets[b]:ranking_offsets[b+1], best to worst),
    `token_offsets` [C+1] (scored tokens per candidate, in row order), `sft_candidate` [B]; `rewards` [C] when the
    dataset has scores, `ref_logps` [C] when it has precomputed reference log-probs (list DPO).

    With `shared_prompt=True`, each ranking is instead one row [prompt, candidate 1, ..., candidate n] of `input_ids`
    [B, L], with `segment_ids` [B, L] (0 prompt, k candidate k, -1 padding) from which the model builds the attention
    mask and position ids (`trl_pro.loss_core.shared_prompt`); the layout tensors are the same.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    shared_prompt: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids, completion_mask, ranking_lengths, completion_lengths, sft_candidate = [], [], [], [], []
        rewards = [] if examples[0].get("scores") is not None else None
        ref_logps = [] if examples[0].get("ref_logps") is not None else None
        for example in examples:
            # int(): `datasets.map` keeps an input column's type for an output column of the same name, so the
            # prepared `sft_index` is float64 when the raw column was (e.g. JSON with a float or a null in it)
            sft_candidate.append(sum(ranking_lengths) + int(example["sft_index"]))
            ranking_lengths.append(len(example["completion_ids"]))
            for ids in example["completion_ids"]:
                input_ids.append(torch.tensor(example["prompt_ids"] + ids))
                completion_mask.append(torch.tensor([0] * len(example["prompt_ids"]) + [1] * len(ids)))
                completion_lengths.append(len(ids))
            if rewards is not None:
                rewards.extend(example["scores"])
            if ref_logps is not None:
                ref_logps.extend(example["ref_logps"])
        batch = {}
        if self.shared_prompt:
            input_ids, segment_ids = pack_rankings(examples)
            batch["segment_ids"] = pad(segment_ids, PADDING, pad_to_multiple_of=self.pad_to_multiple_of)
            completion_mask = [(segments > 0).long() for segments in segment_ids]
        attention_mask = [torch.ones_like(ids) for ids in input_ids]
        batch = {
            "input_ids": pad(input_ids, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of),
            "attention_mask": pad(attention_mask, 0, pad_to_multiple_of=self.pad_to_multiple_of),
            "completion_mask": pad(completion_mask, 0, pad_to_multiple_of=self.pad_to_multiple_of),
            **batch,
            "ranking_offsets": _offsets(ranking_lengths),
            "token_offsets": _offsets(completion_lengths),
            "sft_candidate": torch.tensor(sft_candidate, dtype=torch.long),
        }
        if rewards is not None:
            batch["rewards"] = torch.tensor(rewards, dtype=torch.float32)
        if ref_logps is not None:
            batch["ref_logps"] = torch.tensor(ref_logps, dtype=torch.float32)
        return batch


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.cumsum(torch.tensor([0] + lengths), dim=0)

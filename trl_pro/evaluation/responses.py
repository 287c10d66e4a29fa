"""Generating the responses of a system for evaluation, with the authors' settings (greedy, 128 new tokens, prompts
left-truncated to 384 tokens), resumable from an on-disk cache (`trl_pro.evaluation.systems` keys it on the model and
these settings)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from trl_pro.evaluation.metrics import cut_response
from trl_pro.utils.io import append_jsonl, read_jsonl_cache


#: The authors' generation settings.
MAX_NEW_TOKENS = 128
MAX_PROMPT_LENGTH = 512 - 128


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    prompt_suffix: str = "",
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    batch_size: int = 8,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> dict[str, str]:
    """`{prompt: response}` by greedy generation, as the authors generate: `prompt + prompt_suffix` left-truncated to
    `max_prompt_length` tokens, batches left-padded, `max_new_tokens` new tokens, decoded without special tokens and
    cut with `cut_response`.

    Prompts are batched by length (less padding). With `cache_path`, each finished batch is appended to that file, and
    prompts found there are not generated again: an interrupted run resumes where it stopped. The file is trusted to
    hold this model's responses with these settings: keep it with a `trl_pro.utils.cache.KeyedCache` (as
    `trl_pro.evaluation.systems.system_responses` does), which empties it when they change.
    """
    from tqdm.auto import tqdm

    from trl_pro.pipeline.generation import generate_local

    done: dict[str, str] = {}
    if cache_path is not None:
        done = {row["prompt"]: row["response"] for row in read_jsonl_cache(cache_path)}
    todo = [prompt for prompt in dict.fromkeys(prompts) if prompt not in done]
    if todo:
        lengths = [len(tokenizer(p + prompt_suffix)["input_ids"]) for p in todo]
        order = sorted(range(len(todo)), key=lambda i: lengths[i])
        bar = tqdm(
            total=len(prompts), initial=len(prompts) - len(todo), desc=desc, disable=not progress, unit="prompt"
        )
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # `generate_local`: prompts left-truncated to max_prompt_length tokens, left-padded, greedy, decoded
            # without special tokens and cut at the EOS
            texts = generate_local(
                model,
                tokenizer,
                [todo[i] + prompt_suffix for i in batch],
                max_completion_length=max_new_tokens,
                max_prompt_length=max_prompt_length,
                do_sample=False,
                batch_size=len(batch),
                progress=False,
            )
            new = {todo[i]: cut_response(generated[0]) for i, generated in zip(batch, texts)}
            done.update(new)
            if cache_path is not None:
                append_jsonl(cache_path, [{"prompt": p, "response": r} for p, r in new.items()])
            bar.update(len(batch))
        bar.close()
    return {prompt: done[prompt] for prompt in dict.fromkeys(prompts)}

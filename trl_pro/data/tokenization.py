"""Tokenization of rankings, with the one prompt-truncation rule every command uses: left truncation that keeps the
tokenizer's leading special tokens (BOS), to `resolve_max_prompt_length` tokens."""

from __future__ import annotations

from typing import Any

from trl.data_utils import common_prefix_length, is_conversational

from trl_pro.data.formats import _row_error


# The authors' code keeps the last `max_length - 128` prompt tokens
AUTHORS_COMPLETION_ROOM = 128


def resolve_max_prompt_length(max_length: int | None, max_prompt_length: int | None) -> int | None:
    """Prompt tokens kept by left truncation, or None for no prompt truncation.

    `max_prompt_length=None` adapts to `max_length`: `max(max_length - 128, max_length // 2)`, so that a DPO-shaped
    config (`max_length` only) works for any `max_length` >= 2; `-1` disables prompt truncation.
    """
    if max_prompt_length == -1:
        return None
    if max_prompt_length is not None:
        return max_prompt_length
    if max_length is None:
        return None
    return max(max_length - AUTHORS_COMPLETION_ROOM, max_length // 2, 1)


def token_ids(tokenizer, text_or_messages: str | list, **chat_template_kwargs) -> list[int]:
    """Token ids of a text (the tokenizer's own special tokens added) or of messages (through the chat template)."""
    if isinstance(text_or_messages, list):
        return tokenizer.apply_chat_template(
            text_or_messages, tokenize=True, return_dict=True, **chat_template_kwargs
        )["input_ids"]
    return tokenizer(text=text_or_messages)["input_ids"]


def truncate_prompt(tokenizer, prompt_ids: list[int], max_prompt_length: int | None) -> list[int]:
    """`prompt_ids` cut from the left to `max_prompt_length` tokens (None: not cut), keeping the special tokens the
    tokenizer puts first (LLaMA's BOS), as the authors' code does. The trainer, generation and evaluation all cut
    prompts with this function, so a model sees the same prompt tokens in each."""
    if max_prompt_length is None or len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    prefix = _special_prefix_length(tokenizer, prompt_ids)
    kept = max_prompt_length - prefix
    return (prompt_ids[:prefix] + (prompt_ids[-kept:] if kept > 0 else []))[:max_prompt_length]


def _special_prefix_length(tokenizer, prompt_ids: list[int]) -> int:
    """How many leading tokens of `prompt_ids` are special tokens the tokenizer (or its chat template) put first.

    The tokenizer's own prefix is found by tokenizing a probe with and without special tokens (LLaMA: [BOS]); a chat
    template that renders the BOS token itself is covered by the BOS check.
    """
    with_special = tokenizer(text="a")["input_ids"]
    plain = tokenizer(text="a", add_special_tokens=False)["input_ids"]
    prefix = []
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            prefix = with_special[:start]
            break
    if prefix and prompt_ids[: len(prefix)] == prefix:
        return len(prefix)
    bos = tokenizer.bos_token_id
    return 1 if bos is not None and prompt_ids[:1] == [bos] else 0


def tokenize_ranking(
    example: dict[str, Any], index: int, processing_class, max_length: int | None, max_prompt_length: int | None
) -> dict[str, Any]:
    """Tokenize a ranking: `prompt_ids` and one list of `completion_ids` per candidate, truncated.

    Prompts are truncated from the left to `max_prompt_length` (None adapts to `max_length`, -1 disables it: see
    `resolve_max_prompt_length`), keeping the special tokens the tokenizer puts first (BOS); completions are truncated
    from the right so that prompt + completion fits in `max_length` (a truncated completion did not end, so it keeps
    no end-of-sequence token). Plain-text completions get the EOS token appended.
    """
    max_prompt_length = resolve_max_prompt_length(max_length, max_prompt_length)
    prompt, completions = example["prompt"], example["completions"]
    fields = example.get("fields") or [f"completions[{i}]" for i in range(len(completions))]

    def tokenize(field, text, **kwargs):
        # A chat template may reject what validation let through (e.g. a role it does not support): name the row
        try:
            return token_ids(processing_class, text, **kwargs)
        except Exception as error:
            raise _row_error(index, field, f"cannot be tokenized: {type(error).__name__}: {error}") from error

    if is_conversational(example):
        prompt_ids = tokenize("prompt", prompt, add_generation_prompt=True)
    else:
        eos = processing_class.eos_token
        completions = [c if c.endswith(eos) else c + eos for c in completions]
        prompt_ids = tokenize("prompt", prompt)
    full_ids = [tokenize(field, prompt + c) for field, c in zip(fields, completions)]
    # The completion starts where the tokenized prompt and prompt+completion diverge (tokens can merge across the
    # boundary, and chat templates may render the prompt alone differently), as in TRL's DPOTrainer
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    completion_ids = [ids[prompt_len:] for ids in full_ids]
    prompt_ids = prompt_ids[:prompt_len]

    prompt_ids = truncate_prompt(processing_class, prompt_ids, max_prompt_length)
    if not prompt_ids:
        raise _row_error(index, "prompt", "the prompt is empty after tokenization: the first token has no context")
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise _row_error(
                index,
                "prompt",
                f"the prompt has {len(prompt_ids)} tokens, leaving no room for a completion within max_length="
                f"{max_length} (every completion would be empty after truncation); let `max_prompt_length` "
                "truncate prompts from the left (its default), or raise `max_length`",
            )
        completion_ids = [ids[:room] for ids in completion_ids]
    for field, ids in zip(fields, completion_ids):
        if not ids:
            raise _row_error(index, field, "the completion is empty after tokenization")
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}

"""Ranked data: the formats PRO accepts, their validation and tokenization, and the collator.

Every accepted row becomes a *ranking*: `prompt`, `completions` (best to worst), `scores` (reward-model scores in the
same order, or None) and `sft_index` (the candidate whose NLL is the SFT term). Formats, detected from the columns:

1. ranked: `prompt`, `completions` (list, best to worst), optional `scores` (any order: candidates are then sorted by
   score, descending, stably) and optional `sft_index`;
2. TRL preference: `prompt`, `chosen`, `rejected` (explicit prompt) or `chosen`, `rejected` (implicit prompt, the
   common prefix, extracted with TRL's `extract_prompt`, except that a "\n\nHuman: ... \n\nAssistant:" dialogue's
   prompt ends at its last common "Assistant:" marker: see `extract_implicit_prompt`), optional `score_chosen` /
   `score_rejected`: a ranking of 2;
3. the PRO authors' release: `prefix` (one prompt per candidate, equal), `suffix` (candidates), `reward`, `sft_index`.

Standard (plain text) and conversational (lists of messages, rendered with the chat template) rows are both accepted.
A bad row raises a `ValueError` naming the row and the field; nothing is dropped.

TRL's prompt-only rows (`prompt` alone, no candidates) are not rankings: only generation reads them (`trl-pro
generate`, through `detect_format(..., prompt_only=True)`), to write rankings of the candidates it generates.
"""

import math
from typing import Any

from trl.data_utils import extract_prompt


RANKED, PAIRWISE, AUTHORS, PROMPT_ONLY = "ranked", "pairwise", "authors", "prompt_only"

#: Columns that hold candidates in some format (TRL's prompt-completion `completion` too): a row with a `prompt` and
#: none of them is prompt-only.
CANDIDATE_COLUMNS = frozenset({"completions", "completion", "chosen", "rejected", "prefix", "suffix"})

#: The column that holds a row's reward scores, per format (a pairwise row's scores are `score_chosen` and
#: `score_rejected`: the first stands for both).
SCORE_COLUMNS = {RANKED: "scores", PAIRWISE: "score_chosen", AUTHORS: "reward"}


def has_scores(row: dict[str, Any]) -> bool:
    """Whether a raw row of any format carries reward scores."""
    return any(row.get(column) is not None for column in SCORE_COLUMNS.values())


def detect_format(column_names: list[str], prompt_only: bool = False) -> str:
    """The format of rows with these columns: RANKED, PAIRWISE or AUTHORS, or with `prompt_only=True` (generation's
    input) PROMPT_ONLY for a `prompt` without candidate columns; a `ValueError` saying what is accepted otherwise."""
    columns = set(column_names)
    if "completions" in columns:
        return RANKED
    if {"chosen", "rejected"} <= columns:
        return PAIRWISE
    if {"prefix", "suffix"} <= columns:
        return AUTHORS
    is_prompt_only = "prompt" in columns and not columns & CANDIDATE_COLUMNS
    if is_prompt_only and prompt_only:
        return PROMPT_ONLY
    not_rankings = (
        "not rankings: a ranking needs at least 2 candidates per prompt. Add candidates with `trl-pro generate "
        "--num_generations 2` (or more), then score and sort them with `trl-pro rank`."
    )
    if columns == {"prompt"}:
        raise ValueError(f"Prompt-only rows (columns {sorted(columns)}) are {not_rankings}")
    raise ValueError(
        f"Unrecognized dataset columns {sorted(columns)}. PRO accepts ranked rows (`prompt`, `completions`, optional "
        "`scores`), TRL preference rows (`chosen`, `rejected`, optional `prompt`, `score_chosen`, `score_rejected`), "
        "or the PRO authors' format (`prefix`, `suffix`, `reward`, `sft_index`)."
        + (f" Rows with a `prompt` and no candidates are prompt-only, {not_rankings}" if is_prompt_only else "")
    )


def _row_error(index: int, field: str, message: str) -> ValueError:
    return ValueError(f"Row {index}, field '{field}': {message}")


def is_messages(value: Any) -> bool:
    """Whether `value` is a conversation: a list of `{"role", "content"}` messages."""
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_encodable(text: str, index: int, field: str) -> None:
    # A lone surrogate (e.g. a "\ud800" escape in JSON) is a Python str but not text: tokenizers raise a TypeError
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _row_error(index, field, f"not valid Unicode text ({error.reason} at position {error.start})") from None


def _check_messages(value: Any, index: int, field: str) -> None:
    """A non-empty list of messages whose roles and contents are strings (a chat template fails on anything else)."""
    if not is_messages(value) or not value:
        raise _row_error(index, field, f"expected a list of messages with 'role' and 'content', got {value!r:.80}")
    for i, message in enumerate(value):
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise _row_error(index, f"{field}[{i}].{key}", f"expected a string, got {type(message[key]).__name__}")
            _check_encodable(message[key], index, f"{field}[{i}].{key}")


def _check_text(value: Any, index: int, field: str, conversational: bool) -> None:
    if conversational:
        _check_messages(value, index, field)
        if not any(m["content"].strip() for m in value):
            raise _row_error(index, field, "empty completion")
    elif not isinstance(value, str):
        raise _row_error(index, field, f"expected a string, got {type(value).__name__}")
    elif not value.strip():
        raise _row_error(index, field, "empty completion")
    else:
        _check_encodable(value, index, field)


def validate_scores(scores: Any, index: int, field: str, num_completions: int) -> list[float]:
    if not isinstance(scores, (list, tuple)):
        raise _row_error(index, field, f"expected a list of numbers, got {type(scores).__name__}")
    if len(scores) != num_completions:
        raise _row_error(index, field, f"has {len(scores)} scores for {num_completions} completions")
    values = []
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise _row_error(index, f"{field}[{i}]", f"expected a number, got {score!r}")
        try:
            value = float(score)  # an int beyond float's range overflows
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise _row_error(index, f"{field}[{i}]", f"score must be finite, got {str(score):.20}")
        values.append(value)
    return values


def _authors_prefix(prefix: Any, index: int) -> str:
    # The authors' HH data stores each prompt as a list of turns marked <|prompter|>/<|assistant|>; their collator
    # joins them into "\n\nHuman: ... \n\nAssistant:" text. Summarization data stores a plain string.
    if isinstance(prefix, list):
        if not all(isinstance(turn, str) for turn in prefix):
            raise _row_error(index, "prefix", "expected a string or a list of strings per candidate")
        text = "".join(prefix).replace("<|prompter|>", "\n\nHuman: ").replace("<|assistant|>", "\n\nAssistant: ")
        return text.rstrip()
    if isinstance(prefix, str):
        return prefix
    raise _row_error(index, "prefix", f"expected a string or a list of strings, got {type(prefix).__name__}")


HH_HUMAN, HH_ASSISTANT = "Human:", "\n\nAssistant:"


def extract_implicit_prompt(example: dict[str, Any]) -> dict[str, Any]:
    """Split implicit-prompt `chosen`/`rejected` into `prompt`, `chosen` and `rejected`.

    TRL's `extract_prompt` takes the longest common prefix, which for text is character-level: responses that start
    with the same words (" I think so." / " I don't know.") would move those words into the prompt. For
    "\n\nHuman: ... \n\nAssistant:" dialogues (raw HH-RLHF), the prompt therefore ends at the last
    "\n\nAssistant:" marker of the common prefix, as in the PRO authors' preprocessing, and each response keeps its
    leading space. Other data (conversational, or text without the markers) keep TRL's rule.
    """
    extracted = extract_prompt(example)
    prompt = extracted["prompt"]
    if isinstance(prompt, str) and prompt.lstrip().startswith(HH_HUMAN):
        cut = prompt.rfind(HH_ASSISTANT)
        if cut >= 0:
            prompt = prompt[: cut + len(HH_ASSISTANT)]
            return {
                "prompt": prompt,
                "chosen": example["chosen"][len(prompt) :],
                "rejected": example["rejected"][len(prompt) :],
            }
    return extracted


def to_ranking(
    example: dict[str, Any], index: int, data_format: str, expect_scores: bool, min_candidates: int = 2
) -> dict[str, Any]:
    """Validate one row of any accepted format and return it as a ranking (unsorted, not truncated).

    `min_candidates=0` is for generation's input (a PROMPT_ONLY row, or a ranked row with fewer than 2 candidates,
    e.g. one `trl-pro generate --num_generations 1` wrote): generation adds the candidates."""
    scores = None
    sft_index = example.get("sft_index")
    if data_format == PROMPT_ONLY:
        prompt, completions = example.get("prompt"), []
    elif data_format == RANKED:
        prompt, completions = example.get("prompt"), example.get("completions")
        if not isinstance(completions, list):
            raise _row_error(index, "completions", f"expected a list, got {type(completions).__name__}")
        if example.get("scores") is not None:
            scores = validate_scores(example["scores"], index, "scores", len(completions))
    elif data_format == PAIRWISE:
        for field in ("chosen", "rejected"):
            if example.get(field) is None:
                raise _row_error(index, field, "missing")
        if example.get("prompt") is None:
            if not isinstance(example["chosen"], (str, list)) or type(example["chosen"]) is not type(
                example["rejected"]
            ):
                raise _row_error(index, "chosen", "chosen and rejected must both be strings or both be messages")
            for field in ("chosen", "rejected"):
                if isinstance(example[field], list):
                    _check_messages(example[field], index, field)
                elif not example[field].strip():
                    raise _row_error(index, field, "empty text")
            try:
                example = {**example, **extract_implicit_prompt(example)}
            except Exception as error:  # e.g. two conversations that never diverge
                raise _row_error(
                    index,
                    "chosen",
                    f"cannot extract the shared prompt of chosen and rejected ({type(error).__name__}: {error})",
                ) from error
        prompt, completions = example["prompt"], [example["chosen"], example["rejected"]]
        score_chosen, score_rejected = example.get("score_chosen"), example.get("score_rejected")
        if (score_chosen is None) != (score_rejected is None):
            raise _row_error(index, "score_chosen", "give both score_chosen and score_rejected, or neither")
        if score_chosen is not None:
            scores = validate_scores([score_chosen, score_rejected], index, "score_chosen/score_rejected", 2)
    else:  # AUTHORS
        prefixes, completions = example.get("prefix"), example.get("suffix")
        if not isinstance(completions, list):
            raise _row_error(index, "suffix", f"expected a list, got {type(completions).__name__}")
        if not isinstance(prefixes, list) or len(prefixes) != len(completions):
            raise _row_error(index, "prefix", "expected one prefix per suffix")
        prompts = {_authors_prefix(p, index) for p in prefixes}
        if len(prompts) != 1:
            raise _row_error(index, "prefix", "the candidates of a ranking must share one prompt")
        prompt = prompts.pop()
        if isinstance(prefixes[0], list):  # the authors' HH collator joins prompt and response with a space
            completions = [" " + c.lstrip() if isinstance(c, str) else c for c in completions]
        if example.get("reward") is not None:
            scores = validate_scores(example["reward"], index, "reward", len(completions))

    conversational = is_messages(prompt) if isinstance(prompt, list) else False
    if not conversational and not isinstance(prompt, str):
        raise _row_error(index, "prompt", f"expected a string or a list of messages, got {type(prompt).__name__}")
    if conversational:
        _check_messages(prompt, index, "prompt")
    else:
        _check_encodable(prompt, index, "prompt")
    candidates = "suffix" if data_format == AUTHORS else "completions"
    if len(completions) < min_candidates:
        raise _row_error(
            index,
            candidates,
            f"a ranking needs at least {min_candidates} candidates, got {len(completions)} "
            "(`trl-pro generate` adds candidates to a prompt)",
        )
    if data_format == PAIRWISE:
        fields = ["chosen", "rejected"]
    else:
        fields = [f"{candidates}[{i}]" for i in range(len(completions))]
    for field, completion in zip(fields, completions):
        _check_text(completion, index, field, conversational)
    if expect_scores != (scores is not None):
        raise _row_error(
            index,
            {RANKED: "scores", PAIRWISE: "score_chosen", AUTHORS: "reward"}[data_format],
            "some rows of the dataset have scores and others do not; give every row scores, or none",
        )
    if sft_index is not None and (
        isinstance(sft_index, bool) or not isinstance(sft_index, int) or not 0 <= sft_index < len(completions)
    ):
        raise _row_error(index, "sft_index", f"must be an index into the {len(completions)} candidates")
    # `fields`: each candidate's column, so that errors after sorting (tokenization) still name the right one
    return {"prompt": prompt, "completions": completions, "scores": scores, "sft_index": sft_index, "fields": fields}


def rank(ranking: dict[str, Any], index: int, max_completions: int | None) -> dict[str, Any]:
    """Sort candidates by score (descending, stable) when scores exist, and keep the best `max_completions`."""
    completions, scores, sft_index = ranking["completions"], ranking["scores"], ranking["sft_index"]
    order = list(range(len(completions)))
    if scores is not None:
        order.sort(key=lambda i: -scores[i])  # `sort` is stable
    if max_completions is not None:
        order = order[:max_completions]
    if sft_index is None:
        sft_index = order[0]
    elif sft_index not in order:
        raise _row_error(index, "sft_index", f"candidate {sft_index} is not among the best {max_completions} kept")
    ranked = {
        "prompt": ranking["prompt"],
        "completions": [completions[i] for i in order],
        "scores": None if scores is None else [scores[i] for i in order],
        "sft_index": order.index(sft_index),
    }
    if "fields" in ranking:
        ranked["fields"] = [ranking["fields"][i] for i in order]
    return ranked

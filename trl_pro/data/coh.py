"""Chain of Hindsight (CoH, Liu et al. 2023, "Chain of Hindsight Aligns Language Models with Feedback") as a data
transform for TRL's `SFTTrainer`.

CoH turns a preference into one training sequence in which each answer is introduced by a phrase of feedback, e.g.

    {prompt} A helpful answer: {better}</s> An unhelpful answer: {worse}</s>
    {prompt} An unhelpful answer: {worse}</s> A helpful answer: {better}</s>

(both orders, so that the model learns either phrase followed by the matching answer). The loss is on the answer
tokens only: the prompt and the feedback phrases are context, as in the authors' code (forhaoliu/chain-of-hindsight,
`coh/data/hf_data.py`: loss mask 0 on the template words, 1 on the responses). At inference the prompt ends with the
positive phrase (`coh_prompt`), so the model continues with what it learned a helpful answer looks like.

From a ranking, the pair is the best candidate against the worst (the PRO paper: CoH "differentiate[s] the most
preferred candidate from the least preferred"). Choices made here:
- one fixed pair of phrases (`POSITIVE_PHRASE`, `NEGATIVE_PHRASE`), where the authors sample one of ~20 templates per
  example; a fixed phrase is what makes the inference prompt unambiguous;
- each answer ends with EOS (the authors put one EOS at the end of the whole sequence), so that generation after the
  positive phrase stops at the end of the helpful answer instead of going on with " An unhelpful answer: ...";
- plain-text prompts and completions only (a conversational row raises a `ValueError`).

The CoH view (`coh_rows`, written by `python -m trl_pro.scripts.prepare_data` as `coh`) keeps the text, one row per
sequence: `prompt`, `segments` (feedback phrases and answers, in order) and `segment_is_answer`. `tokenize_coh` turns a
row into `input_ids` + `completion_mask` (1 on answer tokens), a pre-tokenized dataset that `SFTTrainer` trains on with
`completion_only_loss=True` (its labels are -100 wherever `completion_mask` is 0). The prompt is tokenized as `trl-pro
eval` tokenizes it (the tokenizer's leading special tokens, LLaMA's BOS, kept by the left truncation), so that a CoH
model is evaluated on inputs like its training sequences.
"""

from __future__ import annotations

from typing import Any

from trl_pro.data.tokenization import token_ids, truncate_prompt


#: Phrase that introduces the preferred answer; end an inference prompt with it (`coh_prompt`).
POSITIVE_PHRASE = " A helpful answer:"
#: Phrase that introduces the dispreferred answer.
NEGATIVE_PHRASE = " An unhelpful answer:"
#: Columns of the CoH view.
COH_COLUMNS = ("prompt", "segments", "segment_is_answer")


def coh_prompt(prompt: str) -> str:
    """The inference prompt of a CoH model: the prompt followed by the positive feedback phrase."""
    return prompt + POSITIVE_PHRASE


def _row_error(index: int, field: str, message: str) -> ValueError:
    return ValueError(f"Row {index}, field '{field}': {message}")


def coh_sequences(prompt: str, better: str, worse: str) -> list[dict[str, Any]]:
    """The two CoH rows of one preference, positive phrase first then negative phrase first."""
    positive_first = [POSITIVE_PHRASE, better, NEGATIVE_PHRASE, worse]
    negative_first = [NEGATIVE_PHRASE, worse, POSITIVE_PHRASE, better]
    mask = [False, True, False, True]
    return [
        {"prompt": prompt, "segments": positive_first, "segment_is_answer": mask},
        {"prompt": prompt, "segments": negative_first, "segment_is_answer": mask},
    ]


def coh_rows_from_ranking(ranking: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """CoH rows of one ranking (`prompt`, `completions` best first): the best candidate against the worst.

    Raises a `ValueError` naming the row and field for a conversational or empty prompt/candidate, or fewer than 2
    candidates."""
    prompt, completions = ranking.get("prompt"), ranking.get("completions")
    if not isinstance(prompt, str):
        raise _row_error(index, "prompt", f"Chain of Hindsight needs plain-text prompts, got {type(prompt).__name__}")
    if not isinstance(completions, list) or len(completions) < 2:
        raise _row_error(index, "completions", "a ranking needs at least 2 candidates")
    for position in (0, len(completions) - 1):
        completion = completions[position]
        if not isinstance(completion, str):
            raise _row_error(
                index,
                f"completions[{position}]",
                f"Chain of Hindsight needs plain-text completions, got {type(completion).__name__}",
            )
        if not completion.strip():
            raise _row_error(index, f"completions[{position}]", "empty completion")
    return coh_sequences(prompt, completions[0], completions[-1])


def coh_rows(dataset, num_proc: int | None = None):
    """The CoH view of a `datasets.Dataset` in any format PRO reads (ranked rows, sorted by `scores` when present;
    TRL preference pairs; the PRO authors' format): two rows per ranking (both orders). A dataset that already is a
    CoH view is returned as is."""
    from trl_pro.data.formats import detect_format, has_scores, rank, to_ranking

    if set(COH_COLUMNS) <= set(dataset.column_names):
        return dataset
    data_format = detect_format(dataset.column_names)
    first = to_ranking(dataset[0], 0, data_format, expect_scores=has_scores(dataset[0]))
    expect_scores = first["scores"] is not None

    def convert(batch, indices):
        out = {column: [] for column in COH_COLUMNS}
        for offset, index in enumerate(indices):
            example = {key: values[offset] for key, values in batch.items()}
            ranking = rank(to_ranking(example, index, data_format, expect_scores), index, None)
            for row in coh_rows_from_ranking(ranking, index):
                for column in COH_COLUMNS:
                    out[column].append(row[column])
        return out

    return dataset.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Chain of Hindsight rows",
    )


def coh_prompt_ids(tokenizer, prompt: str, max_prompt_length: int | None) -> list[int]:
    """Token ids of a CoH row's prompt: as evaluation and generation tokenize a prompt (`token_ids`, with the special
    tokens the tokenizer puts first, e.g. LLaMA's BOS), cut from the left to `max_prompt_length` tokens (None: not
    cut) by `truncate_prompt`, which keeps those leading special tokens. A special token the tokenizer appends (an
    EOS) is left out: the feedback phrase, not the end of the sequence, follows the prompt."""
    ids = token_ids(tokenizer, prompt)
    # what the tokenizer appends, from a probe tokenized with and without special tokens (as truncate_prompt finds
    # what it puts first)
    probe, plain = tokenizer(text="a")["input_ids"], tokenizer(text="a", add_special_tokens=False)["input_ids"]
    appended = next(
        (
            probe[start + len(plain) :]
            for start in range(len(probe) - len(plain) + 1)
            if probe[start : start + len(plain)] == plain
        ),
        [],
    )
    if appended and ids[-len(appended) :] == appended:
        ids = ids[: -len(appended)]
    if max_prompt_length is None:
        return ids
    return truncate_prompt(tokenizer, ids, max(max_prompt_length, 0))


def tokenize_coh(
    example: dict[str, Any],
    tokenizer,
    max_length: int | None = 512,
    max_prompt_length: int | None = 384,
    index: int = 0,
) -> dict[str, list[int]]:
    """`input_ids` and `completion_mask` (1 on answer tokens and their EOS, 0 on the prompt and feedback phrases) of
    one CoH row. Each segment is tokenized on its own (as the authors do), without special tokens; the prompt is
    tokenized with the tokenizer's leading ones (BOS) and keeps them and its last tokens, `max_prompt_length` in all
    (`coh_prompt_ids`); the sequence is cut from the right to `max_length`."""
    prompt, segments, is_answer = example["prompt"], example["segments"], example["segment_is_answer"]
    if not isinstance(prompt, str):
        raise _row_error(index, "prompt", "expected a string")
    if not isinstance(segments, list) or not isinstance(is_answer, list) or len(segments) != len(is_answer):
        raise _row_error(index, "segments", "expected a list of strings with one segment_is_answer flag each")
    input_ids = coh_prompt_ids(tokenizer, prompt, max_prompt_length)
    completion_mask = [0] * len(input_ids)
    for position, (segment, answer) in enumerate(zip(segments, is_answer)):
        if not isinstance(segment, str) or (answer and not segment.strip()):
            raise _row_error(index, f"segments[{position}]", "expected a non-empty string")
        ids = tokenizer(segment, add_special_tokens=False)["input_ids"]
        if answer:
            ids = ids + [tokenizer.eos_token_id]
        input_ids += ids
        completion_mask += [1 if answer else 0] * len(ids)
    if max_length is not None:
        input_ids, completion_mask = input_ids[:max_length], completion_mask[:max_length]
    if 1 not in completion_mask:
        raise _row_error(
            index,
            "prompt",
            f"no answer token is left within max_length={max_length} (max_prompt_length={max_prompt_length})",
        )
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def tokenize_coh_dataset(dataset, tokenizer, max_length=512, max_prompt_length=384, num_proc=None):
    """`coh_rows` then `tokenize_coh` on every row: a pre-tokenized dataset for `SFTTrainer(...,
    args=SFTConfig(completion_only_loss=True))`."""
    rows = coh_rows(dataset, num_proc=num_proc)
    return rows.map(
        lambda example, index: tokenize_coh(example, tokenizer, max_length, max_prompt_length, index),
        with_indices=True,
        remove_columns=rows.column_names,
        num_proc=num_proc,
        desc="Tokenizing CoH rows",
    )

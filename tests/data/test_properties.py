"""Property-based tests of the data path (hypothesis): hostile rows of every accepted format either train or are named.

Rows of every format PRO accepts (ranked, TRL pairwise with an explicit or an implicit prompt, the PRO authors'
format, and the conversational variants) are generated and corrupted: wrong types, None inside lists, numbers as
strings, NaN and inf, empty and whitespace-only text, unicode edge cases (zero-width, BOM, combining marks, RTL
override, emoji sequences, NUL, lone surrogates), prompts longer than `max_length`, rankings of 1 and of 64, duplicate
candidates, scores of the wrong length, mixed scored and unscored rows, bad `sft_index`.

Invariants:
- every row either becomes a valid tokenized ranking (>= 2 candidates, non-empty prompt and completions within
  `max_length`, finite scores sorted best first, `sft_index` in range) that collates and gives a finite loss and finite
  gradients, or raises `ValueError("Row <index>, field '<field>': ...")` naming that row and one of its fields;
- no other exception type escapes;
- `PROTrainer` with `drop_invalid_rows=True` logs a dropped count equal to the number of rows that raise, keeps
  exactly the others, and trains a step with a finite loss and gradient norm; without it, it raises the first bad
  row's `ValueError`.

Many examples go through the data path (validation, ranking, tokenization, collation, one forward/backward of the
tiny model); fewer through a whole `PROTrainer` step. `STATS` counts what was tried; `-s` prints it.
"""

import logging
import math
import os
import re
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st


MAX_LENGTH = 32
STATS = Counter()
ROW_ERROR = re.compile(r"^Row (\d+), field '([^']+)': ")

WORDS = ["hello", "the cat sat", "why?", "ok.", "Assistant: no", "\n\nHuman: hi", "3", "0.5"]
UNICODE_EDGES = [
    "\u200b",
    "\ufeff",
    "e\u0301",
    "\u202ertl",
    "🙂",
    "👩\u200d👩\u200d👧",
    "\x00",
    "\r\n",
    "\t",
    "中文",
    "\U0010ffff",
    "\ud800",
    "\udfff",
]
FORMATS = ["ranked", "ranked_conv", "pairwise", "pairwise_conv", "implicit", "implicit_conv", "authors", "authors_hh"]
CORRUPTIONS = [
    "none",
    "none",
    "none",
    "wrong_type",
    "none_in_list",
    "number_as_string",
    "nonfinite",
    "empty_text",
    "whitespace_text",
    "unicode",
    "long_prompt",
    "ranking_of_1",
    "duplicate",
    "scores_wrong_length",
    "toggle_scores",
    "bad_sft_index",
    "bad_message",
]
WRONG_VALUES = [5, 1.5, True, None, {"a": 1}, ["x"], [], "", b"bytes"]

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)


def _messages(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


@st.composite
def valid_row(draw, fmt: str, scored: bool) -> dict:
    n = 2 if fmt.startswith(("pairwise", "implicit")) else draw(st.sampled_from([2, 2, 3, 4, 64]))
    prompt = draw(text)
    completions = [draw(text) for _ in range(n)]
    scores = [draw(st.one_of(st.integers(-5, 5), st.floats(-1e3, 1e3, allow_nan=False))) for _ in range(n)]
    if fmt == "ranked":
        row = {"prompt": prompt, "completions": completions, "scores": scores if scored else None}
    elif fmt == "ranked_conv":
        row = {
            "prompt": _messages("user", prompt),
            "completions": [_messages("assistant", c) for c in completions],
            "scores": scores if scored else None,
        }
    elif fmt == "pairwise":
        row = {"prompt": prompt, "chosen": completions[0], "rejected": completions[1]}
    elif fmt == "pairwise_conv":
        row = {
            "prompt": _messages("user", prompt),
            "chosen": _messages("assistant", completions[0]),
            "rejected": _messages("assistant", completions[1]),
        }
    elif fmt == "implicit":
        row = {
            "chosen": f"\n\nHuman: {prompt}\n\nAssistant: {completions[0]}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {completions[1]}",
        }
    elif fmt == "implicit_conv":
        row = {
            "chosen": _messages("user", prompt) + _messages("assistant", completions[0]),
            "rejected": _messages("user", prompt) + _messages("assistant", completions[1]),
        }
    else:  # the authors' format: one prefix per candidate, a plain string or a list of marked turns (HH)
        prefix = [f"<|prompter|>{prompt}", "<|assistant|>"] if fmt == "authors_hh" else prompt
        row = {
            "prefix": [list(prefix) if isinstance(prefix, list) else prefix for _ in range(n)],
            "suffix": completions,
            "reward": scores if scored else None,
            "sft_index": draw(st.integers(0, n - 1)),
        }
    if fmt.startswith(("pairwise", "implicit")) and scored:
        row.update(score_chosen=scores[0], score_rejected=scores[1])
    return row


def _candidate_field(row: dict) -> str:
    return next(field for field in ("completions", "suffix", "chosen") if field in row)


def _score_field(row: dict) -> str:
    return next((field for field in ("scores", "reward", "score_chosen") if field in row), "scores")


@st.composite
def corrupted(draw, row: dict, fmt: str) -> tuple[dict, str]:
    corruption = draw(st.sampled_from(CORRUPTIONS))
    row = {key: (list(value) if isinstance(value, list) else value) for key, value in row.items()}
    candidates, score_field = _candidate_field(row), _score_field(row)
    conversational = fmt.endswith("_conv")
    if corruption == "wrong_type":
        row[draw(st.sampled_from(sorted(row)))] = draw(st.sampled_from(WRONG_VALUES))
    elif corruption == "none_in_list":
        lists = [key for key, value in row.items() if isinstance(value, list) and value]
        if lists:
            key = draw(st.sampled_from(lists))
            row[key][draw(st.integers(0, len(row[key]) - 1))] = None
    elif corruption == "number_as_string":
        if isinstance(row.get(score_field), list):
            row[score_field] = [str(s) for s in row[score_field]]
        elif score_field in row and row[score_field] is not None:
            row[score_field] = str(row[score_field])
        elif candidates != "chosen" and not conversational:
            row[candidates][0] = "1.5"
    elif corruption == "nonfinite":
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 10**400]))
        if isinstance(row.get(score_field), list):
            row[score_field][draw(st.integers(0, len(row[score_field]) - 1))] = value
        elif row.get(score_field) is not None:
            row[score_field] = value
    elif corruption in ("empty_text", "whitespace_text", "unicode", "long_prompt"):
        new = {
            "empty_text": "",
            "whitespace_text": draw(st.sampled_from([" ", "\n\n", "\t \u3000"])),
            "unicode": draw(st.lists(st.sampled_from(UNICODE_EDGES), min_size=1, max_size=3).map("".join)),
            "long_prompt": " ".join(["word"] * 100),
        }[corruption]
        target = "prompt" if corruption == "long_prompt" else draw(st.sampled_from(["prompt", "completion"]))
        if target == "prompt" and "prompt" in row:
            row["prompt"] = _messages("user", new) if conversational else new
        elif target == "prompt" and "prefix" in row:
            row["prefix"] = [new for _ in row["prefix"]]
        elif target == "prompt" and fmt == "implicit":
            row["chosen"], row["rejected"] = new + row["chosen"], new + row["rejected"]
        elif candidates == "chosen":
            field = draw(st.sampled_from(["chosen", "rejected"]))
            if fmt == "implicit_conv":
                row[field] = row[field][:1] + _messages("assistant", new)
            else:
                row[field] = _messages("assistant", new) if conversational else new
        else:
            i = draw(st.integers(0, len(row[candidates]) - 1))
            row[candidates][i] = _messages("assistant", new) if conversational else new
    elif corruption == "ranking_of_1" and candidates != "chosen":
        for key in (candidates, score_field, "prefix"):
            if isinstance(row.get(key), list):
                row[key] = row[key][:1]
        if "sft_index" in row:
            row["sft_index"] = 0
    elif corruption == "duplicate":
        if candidates == "chosen":
            row["rejected"] = row["chosen"]
        else:
            row[candidates][-1] = row[candidates][0]
    elif corruption == "scores_wrong_length" and isinstance(row.get(score_field), list):
        row[score_field] = row[score_field][:-1] if draw(st.booleans()) else row[score_field] + [0.0]
    elif corruption == "toggle_scores":  # mixed scored and unscored rows in one dataset
        if candidates == "chosen":
            if "score_chosen" in row:
                del row["score_chosen"], row["score_rejected"]
            else:
                row.update(score_chosen=1.0, score_rejected=0.0)
        else:
            n = len(row[candidates]) if isinstance(row[candidates], list) else 2
            row[score_field] = None if row.get(score_field) is not None else [float(-i) for i in range(n)]
    elif corruption == "bad_sft_index":
        row["sft_index"] = draw(st.sampled_from([-1, 64, True, "0", 1.0, None]))
    elif corruption == "bad_message" and conversational:
        field = draw(st.sampled_from([key for key in ("prompt", candidates) if key in row]))
        # a list of messages: the prompt, a pairwise side, or the first candidate of a ranking
        messages = row[field] if field == "prompt" or candidates == "chosen" else row[field][0]
        messages[0] = draw(
            st.sampled_from(
                [
                    {"role": "user"},
                    {"role": "tool", "content": "x"},
                    {"content": "x"},
                    {"role": "user", "content": None},
                    {"role": "user", "content": 3},
                    "x",
                ]
            )
        )
    return row, corruption


@st.composite
def datasets(draw, max_rows: int = 4):
    fmt = draw(st.sampled_from(FORMATS))
    scored = draw(st.booleans()) and fmt not in ("pairwise_conv", "implicit_conv")
    rows, corruptions = [], []
    for _ in range(draw(st.integers(1, max_rows))):
        row, corruption = draw(corrupted(draw(valid_row(fmt, scored)), fmt))
        rows.append(row)
        corruptions.append(corruption)
    return fmt, rows, corruptions


# ---------------------------------------------------------------------------------------------------------------------
# The data path, row by row, as the trainer runs it


def prepare_row(row: dict, index: int, data_format: str, expect_scores: bool, tokenizer, max_prompt_length):
    """What `PROTrainer._prepare_dataset` does to each row (validate, rank, tokenize)."""
    from trl_pro.data.formats import rank, to_ranking
    from trl_pro.data.tokenization import tokenize_ranking

    ranking = rank(to_ranking(row, index, data_format, expect_scores), index, None)
    tokens = tokenize_ranking(ranking, index, tokenizer, MAX_LENGTH, max_prompt_length)
    return {**tokens, "scores": ranking["scores"], "sft_index": ranking["sft_index"]}


def expect_scores_of(rows: list[dict]) -> bool:
    """The trainer's rule: the first row decides whether the dataset has scores."""
    return rows[0].get(_score_field(rows[0])) is not None


def outcomes(rows, tokenizer, max_prompt_length) -> list[dict | ValueError]:
    """Each row's prepared ranking, or the ValueError it raises (any other exception fails the test)."""
    from trl_pro.data.formats import detect_format

    data_format = detect_format(list(rows[0]))
    expect_scores = expect_scores_of(rows)
    results = []
    for index, row in enumerate(rows):
        try:
            results.append(prepare_row(row, index, data_format, expect_scores, tokenizer, max_prompt_length))
        except ValueError as error:
            match = ROW_ERROR.match(str(error))
            assert match, f"a ValueError that names no row and field: {error}"
            assert int(match.group(1)) == index, str(error)
            field = re.split(r"[\[./]", match.group(2))[0]
            # a field of the row; or the extracted prompt of a pairwise row, or a score column the row lacks
            named = set(row) | {"prompt", _score_field(rows[0]), _score_field(row)}
            assert field in named, f"field {field!r} is not a field of row {sorted(row)}: {error}"
            results.append(error)
    return results


def check_prepared(prepared: dict, vocab_size: int, max_prompt_length) -> None:
    from trl_pro.data.tokenization import resolve_max_prompt_length

    max_prompt_length = resolve_max_prompt_length(MAX_LENGTH, max_prompt_length)
    prompt, completions = prepared["prompt_ids"], prepared["completion_ids"]
    assert len(completions) >= 2 and 0 <= prepared["sft_index"] < len(completions)
    assert prompt and (max_prompt_length is None or len(prompt) <= max_prompt_length)
    for ids in completions:
        assert ids and len(prompt) + len(ids) <= MAX_LENGTH
        assert all(0 <= token < vocab_size for token in prompt + ids)
    if prepared["scores"] is not None:
        scores = prepared["scores"]
        assert len(scores) == len(completions) and all(math.isfinite(s) for s in scores)
        assert scores == sorted(scores, reverse=True)


@pytest.fixture(scope="module")
def step_model(tokenizer):
    """The tiny Llama with the PRO loss head, and a function running one forward/backward of the trainer's loss."""
    from trl_pro.assets import build_tiny_llama
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    model = build_tiny_llama(seed=0)
    args = PROConfig(
        output_dir="/tmp/unused",
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=MAX_LENGTH,
        max_prompt_length=16,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    from datasets import Dataset

    trainer = PROTrainer(
        model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": "hello there.", "completions": [" yes", " no"]}]),
    )
    trainer._longest_ranking = 64

    def step(batch):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        return loss.detach(), grads

    return trainer, step


@settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", 120)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=datasets(), max_prompt_length=st.sampled_from([-1, 16, None]))  # -1: no prompt truncation
def test_every_row_trains_or_names_its_row_and_field(data, max_prompt_length, tokenizer, step_model):
    from trl_pro.data.collator import DataCollatorForRanking

    fmt, rows, corruptions = data
    trainer, step = step_model
    results = outcomes(rows, tokenizer, max_prompt_length)
    valid = [r for r in results if not isinstance(r, ValueError)]
    STATS["data_path_examples"] += 1
    STATS["data_path_rows"] += len(rows)
    STATS["data_path_rows_rejected"] += len(rows) - len(valid)
    for result in valid:
        check_prepared(result, len(tokenizer), max_prompt_length)
    if valid:
        # rows of one dataset share the scores rule, so they collate into one batch
        batch = DataCollatorForRanking(pad_token_id=tokenizer.pad_token_id)(valid)
        loss, grads = step(batch)
        assert torch.isfinite(loss), (fmt, corruptions)
        assert grads and all(torch.isfinite(g).all() for g in grads), (fmt, corruptions)
        STATS["data_path_steps"] += 1


# ---------------------------------------------------------------------------------------------------------------------
# The whole trainer, fewer examples


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=datasets(max_rows=5))
def test_trainer_drops_and_counts_exactly_the_rows_that_raise(data, tokenizer, tmp_path, caplog):
    from datasets import Dataset

    from trl_pro.assets import build_tiny_llama
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    fmt, rows, corruptions = data
    try:
        dataset = Dataset.from_list(rows)
    except Exception:  # Arrow cannot hold the column (e.g. strings and numbers mixed): not a dataset PRO could get
        STATS["trainer_examples_not_arrow"] += 1
        assume(False)
    rows = dataset.to_list()  # as Arrow returns them (missing struct keys become None, ints in a float column...)
    results = outcomes(rows, tokenizer, 16)
    invalid = [i for i, result in enumerate(results) if isinstance(result, ValueError)]
    assume(len(invalid) < len(rows))  # something left to train on
    STATS["trainer_examples"] += 1
    STATS["trainer_rows"] += len(rows)
    STATS["trainer_rows_rejected"] += len(invalid)

    def config(**overrides):
        return PROConfig(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            report_to=[],
            max_length=MAX_LENGTH,
            max_prompt_length=16,
            gradient_checkpointing=False,
            disable_tqdm=True,
            per_device_train_batch_size=8,
            max_steps=1,
            logging_steps=1,
            save_strategy="no",
            logging_nan_inf_filter=False,
            **overrides,
        )

    if invalid:
        with pytest.raises(ValueError, match=rf"^Row {invalid[0]}, field '"):
            PROTrainer(build_tiny_llama(seed=0), args=config(), processing_class=tokenizer, train_dataset=dataset)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_pro.trainers"):
        trainer = PROTrainer(
            build_tiny_llama(seed=0),
            args=config(drop_invalid_rows=True),
            processing_class=tokenizer,
            train_dataset=dataset,
        )
    counts = [
        int(m.group(1))
        for m in (re.search(r"Dropped (\d+) of (\d+) rows", r.getMessage()) for r in caplog.records)
        if m
    ]
    assert counts == ([len(invalid)] if invalid else [])
    assert len(trainer.train_dataset) == len(rows) - len(invalid)  # no row dropped without being counted
    kept = [r for r in results if not isinstance(r, ValueError)]
    assert trainer.train_dataset["completion_ids"] == [r["completion_ids"] for r in kept]

    trainer.train()
    logged = trainer.state.log_history[0]
    assert math.isfinite(logged["loss"]) and math.isfinite(logged["grad_norm"]), (fmt, corruptions)


def test_report_statistics():
    """Runs last in this file: prints the counts of the examples above (`pytest -s`) for the reliability report."""
    print("\nhypothesis statistics:", dict(STATS))
    assert STATS["data_path_examples"] > 0

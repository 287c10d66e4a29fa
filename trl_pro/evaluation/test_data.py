"""Test data for evaluation and judging: HH-RLHF subsets (the vendored harmless-base slice by default) and any ranked
data, and the responses files of systems."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trl_pro.utils.io import read_json_rows


#: Subset name of the vendored HH-RLHF slice (harmless-base test rows).
DEFAULT_SUBSET = "harmless_base"


#: The paper's four HH-RLHF test subsets, in Table 2's order (used to order subsets when they appear).
PAPER_SUBSETS = ("harmless_base", "helpful_base", "helpful_online", "helpful_rejection")


TOTAL = "total"


@dataclass
class EvalExample:
    """One test prompt: `reference` is the human-preferred response (the first candidate of the ranking)."""

    prompt: str
    reference: str
    subset: str
    index: int  # row index within its source file


def example_from_row(row: dict, index: int, subset: str) -> EvalExample:
    """An `EvalExample` from a row of any format `trl-pro pro` trains on: raw HH-RLHF pairs (`chosen`/`rejected` with
    an implicit prompt), TRL preference rows with `prompt`, ranked rows (`prompt`, `completions`, optional `scores`)
    or the PRO authors' rows (`prefix`, `suffix`)."""
    from trl_pro.data.formats import detect_format, has_scores, rank, to_ranking

    # Raw HH-RLHF pairs: `to_ranking` ends the prompt at the last "\n\nAssistant:" (as the authors' prompts end),
    # not at TRL's character-level common prefix, which runs into responses that start alike
    data_format = detect_format(list(row))
    expect_scores = has_scores(row)
    ranking = rank(to_ranking(row, index, data_format, expect_scores), index, None)
    prompt, reference = ranking["prompt"], ranking["completions"][0]
    if not isinstance(prompt, str) or not isinstance(reference, str):
        raise ValueError(f"Row {index}, field 'prompt': conversational rows are not supported by `trl-pro eval` "
                         "yet; give plain-text '\\n\\nHuman: ...\\n\\nAssistant:' prompts")
    if not prompt.strip():
        raise ValueError(f"Row {index}, field 'prompt': empty prompt (the candidates share no dialogue)")
    if not reference.strip():
        raise ValueError(f"Row {index}, field 'chosen': empty reference response")
    return EvalExample(prompt=prompt, reference=reference, subset=subset, index=index)


def _subset_order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [name for name in PAPER_SUBSETS if name in names]
    return known + [name for name in names if name not in known]


def load_test_data(
    files: dict[str, str] | Sequence[str] | None = None,
    *,
    subset_column: str = "subset",
    subsets: Sequence[str] | None = None,
    max_samples: int | None = None,
) -> dict[str, list[EvalExample]]:
    """Test prompts and references by subset.

    `files` maps subset names to files (one file per subset), or lists files whose rows carry their subset in
    `subset_column` (rows without it go to a subset named after the file); None is the vendored HH-RLHF slice
    (harmless-base test rows, subset `harmless_base`). `subsets` keeps those subsets, in that order; a subset with no
    rows is an error. `max_samples` keeps the first rows of each subset.
    """
    from trl_pro.assets import HH_RLHF_DIR

    if files is None:
        files = {DEFAULT_SUBSET: str(HH_RLHF_DIR / "test.jsonl.gz")}
    by_subset: dict[str, list[EvalExample]] = {}
    named = isinstance(files, dict)
    items = files.items() if named else [(None, path) for path in files]
    for subset_name, path in items:
        path = Path(path)
        rows = read_json_rows(path)
        if named and not rows:
            raise ValueError(f"subset '{subset_name}' has no rows (file {path})")
        default = subset_name or path.name.split(".")[0]
        for index, row in enumerate(rows):
            subset = subset_name if named else row.get(subset_column, default)
            if not isinstance(subset, str) or not subset:
                raise ValueError(f"{path}: row {index}, field '{subset_column}': expected a subset name, got "
                                 f"{subset!r}")
            try:
                example = example_from_row(row, index, subset)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
            by_subset.setdefault(subset, []).append(example)
    if subsets:
        missing = [name for name in subsets if not by_subset.get(name)]
        if missing:
            raise ValueError(f"subset {missing[0]!r} has no rows in the test data (subsets found: "
                             f"{', '.join(sorted(by_subset)) or 'none'})")
        by_subset = {name: by_subset[name] for name in subsets}
    else:
        by_subset = {name: by_subset[name] for name in _subset_order(by_subset)}
    if not by_subset:
        raise ValueError("the test data has no rows")
    if max_samples is not None:
        by_subset = {name: examples[:max_samples] for name, examples in by_subset.items()}
    return by_subset


def unique_prompts(test_data: dict[str, list[EvalExample]]) -> list[str]:
    return list(dict.fromkeys(example.prompt for examples in test_data.values() for example in examples))


def read_responses_file(path: str | os.PathLike, prompts: Sequence[str] | None = None) -> dict[str, str]:
    """`{prompt: response}` from a responses file: JSON lines (or a JSON array) with `prompt` and `response` fields,
    one row per prompt. With `prompts` (the test prompts), a missing or extra prompt is an error."""
    path = Path(path)
    responses: dict[str, str] = {}
    for index, row in enumerate(read_json_rows(path)):
        for name in ("prompt", "response"):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{path}: row {index}, field '{name}': expected a string, got "
                                 f"{type(row.get(name)).__name__}")
        prompt = row["prompt"]
        if prompt in responses and responses[prompt] != row["response"]:
            raise ValueError(f"{path}: row {index}, field 'prompt': a second, different response to the same prompt")
        responses[prompt] = row["response"]
    if prompts is not None:
        check_responses_cover(responses, prompts, str(path))
    return responses


def check_responses_cover(responses: dict[str, str], prompts: Sequence[str], where: str) -> None:
    wanted = set(prompts)
    missing = [i for i, prompt in enumerate(prompts) if prompt not in responses]
    if missing:
        first = prompts[missing[0]]
        raise ValueError(f"{where}: no response for {len(missing)} of the {len(prompts)} test prompts (first: test "
                         f"prompt {missing[0]}, {_clip(first)!r})")
    extra = [i for i, prompt in enumerate(responses) if prompt not in wanted]
    if extra:
        first = list(responses)[extra[0]]
        raise ValueError(f"{where}: {len(extra)} prompts are not in the test data (first: row {extra[0]}, "
                         f"{_clip(first)!r}); evaluate on the data these responses were generated for")


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def responses_rows(test_data: dict[str, list[EvalExample]], responses: dict[str, str]) -> list[dict]:
    """A responses file's rows: one per test prompt, in test order, with its subset and reference."""
    rows, seen = [], set()
    for subset, examples in test_data.items():
        for example in examples:
            if example.prompt in seen:
                continue
            seen.add(example.prompt)
            rows.append({"prompt": example.prompt, "response": responses[example.prompt], "subset": subset,
                         "reference": example.reference})
    return rows


RESPONSES_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def is_responses_file(path: str) -> bool:
    return Path(path).is_file() and path.endswith(RESPONSES_SUFFIXES)



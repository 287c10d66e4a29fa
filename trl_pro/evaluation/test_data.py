"""Test data for evaluation and judging: HH-RLHF subsets (the vendored harmless-base slice by default) and any ranked
data, from any dataset the other commands read, and the responses files of systems."""

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
        raise ValueError(
            f"Row {index}, field 'prompt': conversational rows are not supported by `trl-pro eval` "
            "yet; give plain-text '\\n\\nHuman: ...\\n\\nAssistant:' prompts"
        )
    if not prompt.strip():
        raise ValueError(f"Row {index}, field 'prompt': empty prompt (the candidates share no dialogue)")
    if not reference.strip():
        raise ValueError(f"Row {index}, field 'chosen': empty reference response")
    return EvalExample(prompt=prompt, reference=reference, subset=subset, index=index)


def _subset_order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [name for name in PAPER_SUBSETS if name in names]
    return known + [name for name in names if name not in known]


#: Local files read as they are (JSON arrays too, a bad line named), not through `datasets`: rows keep exactly their
#: fields, as in a responses file, and the vendored slice loads without building a cache.
_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _looks_like_file(name: str) -> bool:
    from trl_pro.data.loading import _COMPRESSIONS, _FILE_BUILDERS

    suffixes = [suffix.lower() for suffix in Path(name).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _FILE_BUILDERS


def _views_folder_hint(path: Path) -> str | None:
    """For a folder of `prepare_data` views (`<view>/<split>.parquet`, nothing to read at its top): which to give."""
    if not path.is_dir() or any(_looks_like_file(child.name) for child in path.iterdir() if child.is_file()):
        return None
    views = sorted(child.name for child in path.iterdir() if child.is_dir() and any(child.glob("*.parquet")))
    if len(views) < 2:
        return None
    best = "ranked" if "ranked" in views else views[0]
    return (
        f"{path} holds several datasets ({', '.join(views)}, as `prepare_data` writes its views): give one, e.g. "
        f"{path / best}"
    )


def read_test_rows(name: str, *, config: str | None = None, split: str = "test") -> list[dict]:
    """The rows of one test dataset, named as every command names datasets (`trl_pro.data.load_named_dataset`): a hub
    id (`config` its configuration), a local folder of data files (e.g. a `prepare_data` view, whose file names give
    the splits), a `save_to_disk` folder, or a local json, jsonl, csv, parquet or arrow file, optionally compressed
    (the whole file is the test data). Of a folder or hub dataset, `split` is read."""
    from trl_pro.data.loading import load_named_dataset

    path = Path(name).expanduser()
    if path.is_file() and name.lower().endswith(_JSON_SUFFIXES):
        return read_json_rows(path)
    if not path.exists() and _looks_like_file(name):  # not a hub id: say so, without asking the hub
        raise ValueError(f"dataset path {name} does not exist")
    hint = _views_folder_hint(path)
    if hint:
        raise ValueError(hint)
    dataset = load_named_dataset(name, config, train_split=split)
    if split not in dataset:
        raise ValueError(
            f"{name}: no '{split}' split to evaluate on (splits: {', '.join(sorted(dataset))}); choose "
            "one with --dataset_test_split"
        )
    return dataset[split].to_list()


def load_test_data(
    files: dict[str, str] | Sequence[str] | None = None,
    *,
    subset_column: str = "subset",
    subsets: Sequence[str] | None = None,
    max_samples: int | None = None,
    dataset_config: str | None = None,
    dataset_test_split: str = "test",
) -> dict[str, list[EvalExample]]:
    """Test prompts and references by subset.

    `files` maps subset names to datasets (one dataset per subset), or lists datasets whose rows carry their subset in
    `subset_column` (rows without it go to a subset named after the dataset); None is the vendored HH-RLHF slice
    (harmless-base test rows, subset `harmless_base`). A dataset is a local file, a local folder or a hub id, read by
    `read_test_rows` (with `dataset_config` and `dataset_test_split`). `subsets` keeps those subsets, in that order; a
    subset with no rows is an error. `max_samples` keeps the first rows of each subset.
    """
    from trl_pro.assets import HH_RLHF_DIR

    if files is None:
        files = {DEFAULT_SUBSET: str(HH_RLHF_DIR / "test.jsonl.gz")}
    by_subset: dict[str, list[EvalExample]] = {}
    named = isinstance(files, dict)
    items = files.items() if named else [(None, path) for path in files]
    for subset_name, name in items:
        name = str(name)
        rows = read_test_rows(name, config=dataset_config, split=dataset_test_split)
        if named and not rows:
            raise ValueError(f"subset '{subset_name}' has no rows ({name})")
        default = subset_name or Path(name).name.split(".")[0]
        for index, row in enumerate(rows):
            subset = subset_name if named else row.get(subset_column, default)
            if not isinstance(subset, str) or not subset:
                raise ValueError(
                    f"{name}: row {index}, field '{subset_column}': expected a subset name, got {subset!r}"
                )
            try:
                example = example_from_row(row, index, subset)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            by_subset.setdefault(subset, []).append(example)
    if subsets:
        missing = [name for name in subsets if not by_subset.get(name)]
        if missing:
            raise ValueError(
                f"subset {missing[0]!r} has no rows in the test data (subsets found: "
                f"{', '.join(sorted(by_subset)) or 'none'})"
            )
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
                raise ValueError(
                    f"{path}: row {index}, field '{name}': expected a string, got {type(row.get(name)).__name__}"
                )
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
        raise ValueError(
            f"{where}: no response for {len(missing)} of the {len(prompts)} test prompts (first: test "
            f"prompt {missing[0]}, {_clip(first)!r})"
        )
    extra = [i for i, prompt in enumerate(responses) if prompt not in wanted]
    if extra:
        first = list(responses)[extra[0]]
        raise ValueError(
            f"{where}: {len(extra)} prompts are not in the test data (first: row {extra[0]}, "
            f"{_clip(first)!r}); evaluate on the data these responses were generated for"
        )


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
            rows.append(
                {
                    "prompt": example.prompt,
                    "response": responses[example.prompt],
                    "subset": subset,
                    "reference": example.reference,
                }
            )
    return rows


RESPONSES_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def is_responses_file(path: str) -> bool:
    return Path(path).is_file() and path.endswith(RESPONSES_SUFFIXES)

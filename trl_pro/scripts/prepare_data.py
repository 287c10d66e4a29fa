"""
Prepare one preference dataset as the views PRO and TRL's baselines read, so that every method trains on the same
prompts and candidates.

```bash
python -m trl_pro.scripts.prepare_data --source ultrafeedback --output_dir data/ultrafeedback
python -m trl_pro.scripts.prepare_data --source hh-rlhf --output_dir data/hh_rlhf
python -m trl_pro.scripts.prepare_data --source ranked --dataset_name data/ranked.jsonl --output_dir data/ranked
```

writes, under `output_dir`, one folder per view with `train.parquet` and `test.parquet` (so `--dataset_name
<output_dir>/<view>` gives the `train` and `test` splits):

| view        | columns                     | read by       | what                                          |
|-------------|-----------------------------|---------------|-----------------------------------------------|
| `ranked`    | prompt, completions, scores | `trl-pro pro` | all candidates, best first, with their scores |
| `pairs`     | prompt, chosen, rejected    | `trl dpo`     | best candidate against the worst (`--pairs`)  |
| `best_of_n` | prompt, completion          | `trl sft`     | the best candidate (best-of-n SFT)            |
| `coh`       | prompt, segments, segment_is_answer | `trl-pro coh` | Chain of Hindsight rows (`trl_pro.data.coh`) |
| `prompts`   | prompt                      | `trl rloo`, PPO | prompts only, for on-policy generation      |

`--pairs best_vs_worst` (default) gives DPO one pair per prompt, the best candidate against the worst (the pair CoH
also uses); `--pairs adjacent` gives every adjacent pair of the ranking (1st vs 2nd, 2nd vs 3rd, ...), n - 1 pairs per
prompt, leaving out a pair tied in score (it carries no preference). For rankings of 2 both are the same pair. The
`coh` view needs plain-text rows: for conversational data it is not written (and the run says so).

Sources:
- `ultrafeedback` (default `--dataset_name openbmb/UltraFeedback`): each row has an `instruction` and up to 4
  `completions` records (`response`, `fine-grained_score`, `overall_score`, ...). The score is `--score_field`
  (default `fine-grained_score`, the mean of the four aspect ratings); records without a response or a finite score
  are left out, rows with fewer than 2 candidates or all candidates tied are dropped. Prompts are written as
  "\\n\\nHuman: {instruction}\\n\\nAssistant:" and responses with a leading space (`--prompt_template hh`, the format
  of HH-RLHF that a base model like LLaMA-7B is trained on in the PRO paper), or left as they are (`none`).
  UltraFeedback has no test split: `--test_size` of the rows (default 2%) is held out, with `--seed`.
- `hh-rlhf` (default `--dataset_name Anthropic/hh-rlhf`): raw `chosen`/`rejected` dialogues; the prompt is their
  shared prefix up to its last "\n\nAssistant:" marker (`trl_pro.data.formats.extract_implicit_prompt`, as `trl-pro pro`
  reads the raw rows), a ranking of 2 without scores. Rows PRO rejects (an empty response after the
  prompt) are dropped from every view.

- `ranked`: rows PRO reads (`prompt`, `completions`, optional `scores`: what `trl-pro rank` writes; also TRL pairs or
  the PRO authors' format), e.g. a local `.jsonl`/`.parquet` file (`--dataset_name`, required). Candidates are sorted
  by score when there are scores; rows PRO rejects (the row's error is counted) and rows whose candidates are all tied
  in score (no preference for DPO, CoH or best-of-n to learn) are dropped from every view. Without a `test` split,
  `--test_size` of the rows is held out, with `--seed`. Extra columns (such as the candidates' sources) are left out.

`--dataset_name` may also be a local file or folder (as in `trl-pro pro`). The run says how many rows of each split
it dropped and why the first one was (its row, and its line for a local JSON Lines file).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from trl_pro.cli.errors import OneLineErrors, fail, one_line_errors
from trl_pro.utils.quiet import quiet_known_noise


PROG = "python -m trl_pro.scripts.prepare_data"
VIEWS = ("ranked", "pairs", "best_of_n", "coh", "prompts")
DEFAULT_DATASETS = {"ultrafeedback": "openbmb/UltraFeedback", "hh-rlhf": "Anthropic/hh-rlhf", "ranked": None}
PAIRS = ("best_vs_worst", "adjacent")


class _Parser(OneLineErrors, argparse.ArgumentParser):
    pass


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Write the ranked (PRO, RRHF), pairs (DPO), best_of_n (SFT), coh (Chain of Hindsight) and prompts "
        "(RLOO, PPO) views of a preference dataset under --output_dir.",
        allow_abbrev=False,
    )
    parser.add_argument("--source", choices=sorted(DEFAULT_DATASETS), required=True, help="Layout of the dataset.")
    parser.add_argument("--output_dir", required=True, help="Folder that receives one sub-folder per view.")
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="Hub id or local file/folder (default: the source's hub dataset; required for --source ranked).",
    )
    parser.add_argument(
        "--pairs",
        default="best_vs_worst",
        choices=PAIRS,
        help="DPO pairs of a ranking: the best against the worst (one per prompt), or every adjacent pair.",
    )
    parser.add_argument(
        "--score_field",
        default="fine-grained_score",
        choices=["fine-grained_score", "overall_score"],
        help="ultrafeedback: the completion score that ranks the candidates.",
    )
    parser.add_argument(
        "--prompt_template",
        default="hh",
        choices=["hh", "none"],
        help="ultrafeedback: 'hh' writes '\\n\\nHuman: {instruction}\\n\\nAssistant:' prompts and ' {response}' "
        "completions; 'none' keeps the raw texts.",
    )
    parser.add_argument(
        "--test_size",
        type=float,
        default=0.02,
        help="ultrafeedback, ranked: fraction of the rows held out as the test split when there is no `test` split.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the train/test split.")
    parser.add_argument("--num_proc", type=int, default=None, help="Processes for `datasets.map`.")
    return parser


def _ultrafeedback_ranking(example, index: int, score_field: str, template: str) -> dict:
    candidates = []
    for record in example.get("completions") or []:
        response = (record or {}).get("response")
        score = (record or {}).get(score_field)
        if isinstance(score, str):
            try:
                score = float(score)
            except ValueError:
                score = None
        if not isinstance(response, str) or not response.strip():
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        candidates.append((float(score), response.strip()))
    candidates.sort(key=lambda c: -c[0])  # stable: ties keep the dataset's order
    instruction = (example.get("instruction") or "").strip()
    if template == "hh":
        prompt = f"\n\nHuman: {instruction}\n\nAssistant:"
        completions = [" " + response for _, response in candidates]
    else:
        prompt, completions = instruction, [response for _, response in candidates]
    scores = [score for score, _ in candidates]
    reason = ""  # why the row is dropped, as a row error; empty: kept
    if not instruction:
        reason = f"Row {index}, field 'instruction': empty instruction"
    elif len(candidates) < 2:
        reason = (
            f"Row {index}, field 'completions': fewer than 2 candidates with a response and a finite {score_field}"
        )
    elif scores[0] == scores[-1]:
        reason = f"Row {index}, field 'completions': all candidates tied in {score_field}"
    return {"prompt": prompt, "completions": completions, "scores": scores, "_reason": reason}


def _hh_ranking(example, index: int) -> dict:
    from trl_pro.data.formats import PAIRWISE, to_ranking

    try:
        ranking = to_ranking(example, index, PAIRWISE, expect_scores=False)
    except ValueError as error:
        return {"prompt": "", "completions": [], "scores": None, "_reason": str(error)}
    return {"prompt": ranking["prompt"], "completions": ranking["completions"], "scores": None, "_reason": ""}


def _ranked_ranking(example, index: int, data_format: str, expect_scores: bool) -> dict:
    from trl_pro.data.formats import rank, to_ranking

    try:
        ranking = rank(to_ranking(example, index, data_format, expect_scores), index, None)
    except ValueError as error:
        return {"prompt": "", "completions": [], "scores": None, "_reason": str(error)}
    scores = ranking["scores"]
    # no preference for DPO, CoH or best-of-n to learn
    reason = "" if scores is None or scores[0] > scores[-1] else f"Row {index}: all candidates tied in score"
    return {"prompt": ranking["prompt"], "completions": ranking["completions"], "scores": scores, "_reason": reason}


def _converted(source: str, dataset, args):
    """Every loaded split as rankings with a `_reason` column (why a row is dropped, as a row error; empty: kept)."""
    from datasets import DatasetDict

    if source == "ultrafeedback":
        convert = lambda example, index: _ultrafeedback_ranking(  # noqa: E731
            example, index, args.score_field, args.prompt_template
        )
    elif source == "ranked":
        from trl_pro.data import formats
        from trl_pro.data.formats import detect_format

        data_format = detect_format(dataset["train"].column_names)
        first = dataset["train"][0]
        expect_scores = formats.has_scores(first)
        convert = lambda example, index: _ranked_ranking(example, index, data_format, expect_scores)  # noqa: E731
    else:
        convert = _hh_ranking
    # Not from the cache: `datasets` hashes a module's function by its name, so that a cache an older version wrote
    # (other columns) would be reused
    return DatasetDict(
        {
            split: data.map(
                convert,
                with_indices=True,
                remove_columns=data.column_names,
                num_proc=args.num_proc,
                desc=split,
                load_from_cache_file=False,
            )
            for split, data in dataset.items()
        }
    )


def _first_reasons(converted) -> dict[str, tuple[int, int, str]]:
    """Per loaded split with dropped rows: (rows dropped, rows, the reason of the first one in the data's order)."""
    reasons = {split: [reason for reason in data["_reason"] if reason] for split, data in converted.items()}
    return {split: (len(found), len(converted[split]), found[0]) for split, found in reasons.items() if found}


def _kept(source: str, converted, args) -> tuple[object, dict[str, int]]:
    """The converted splits (`test` held out where there is none) without their dropped rows, and how many."""
    from datasets import DatasetDict

    # Split after the conversion, so that a row error names the row of the data; the split is the same as of the
    # raw rows (it depends on the row count and the seed only)
    if source in ("ultrafeedback", "ranked") and "test" not in converted:
        converted = converted["train"].train_test_split(test_size=args.test_size, seed=args.seed)
    out = {
        split: data.filter(lambda reason: not reason, input_columns="_reason").remove_columns("_reason")
        for split, data in converted.items()
    }
    return DatasetDict(out), {split: len(converted[split]) - len(data) for split, data in out.items()}


def rankings(source: str, dataset, args) -> tuple[object, dict[str, int]]:
    """Every split as rankings (`prompt`, `completions` best first, `scores` or None); returns (DatasetDict, dropped
    rows per split)."""
    return _kept(source, _converted(source, dataset, args), args)


def _pair_rows(batch, pairs: str) -> dict[str, list]:
    out = {"prompt": [], "chosen": [], "rejected": []}
    for prompt, completions, scores in zip(batch["prompt"], batch["completions"], batch["scores"]):
        if pairs == "best_vs_worst":
            candidates = [(0, len(completions) - 1)]
        else:  # adjacent pairs; a pair tied in score carries no preference
            candidates = [
                (i, i + 1) for i in range(len(completions) - 1) if scores is None or scores[i] > scores[i + 1]
            ]
        for better, worse in candidates:
            out["prompt"].append(prompt)
            out["chosen"].append(completions[better])
            out["rejected"].append(completions[worse])
    return out


def views(ranked, pairs: str = "best_vs_worst") -> dict[str, object]:
    """The views of a `DatasetDict` of rankings (`coh` only when the rows are plain text)."""
    from datasets import DatasetDict

    from trl_pro.data.coh import coh_rows

    has_scores = ranked["train"].features["scores"] is not None and ranked["train"][0]["scores"] is not None
    ranked_view = ranked if has_scores else ranked.remove_columns("scores")
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    pair_view = ranked.map(
        _pair_rows, batched=True, fn_kwargs={"pairs": pairs}, remove_columns=ranked["train"].column_names
    )
    best_of_n = ranked.map(
        lambda r: {"prompt": r["prompt"], "completion": r["completions"][0]},
        remove_columns=ranked["train"].column_names,
    )
    prompts = ranked.select_columns(["prompt"])
    out = {"ranked": ranked_view, "pairs": pair_view, "best_of_n": best_of_n, "prompts": prompts}
    if isinstance(ranked["train"][0]["prompt"], str):
        out["coh"] = DatasetDict({split: coh_rows(rows) for split, rows in ranked.items()})
    return out


def write_views(all_views: dict[str, object], output_dir: Path) -> list[str]:
    """Write each view as `<output_dir>/<view>/<split>.parquet` (through a temporary file, so that an interrupted run
    never leaves a half-written file); returns the views written."""
    from trl_pro.utils.io import atomic_write

    for view, data in all_views.items():
        for split, rows in data.items():
            atomic_write(
                output_dir / view / f"{split}.parquet", lambda temporary, rows=rows: rows.to_parquet(str(temporary))
            )
    return list(all_views)


def main(argv: list[str] | None = None) -> None:
    from trl_pro.data.loading import load_named_dataset, with_line_numbers

    quiet_known_noise()
    args = make_parser().parse_args(argv)
    if not 0 < args.test_size < 1:
        fail(PROG, f"--test_size must be in (0, 1), got {args.test_size}")
    name = args.dataset_name or DEFAULT_DATASETS[args.source]
    if name is None:
        fail(PROG, f"--dataset_name is required with --source {args.source}")
    with one_line_errors(PROG):
        dataset = load_named_dataset(name)
        converted = _converted(args.source, dataset, args)
        ranked, dropped = _kept(args.source, converted, args)
        output_dir = Path(args.output_dir)
        written = write_views(views(ranked, args.pairs), output_dir)
        if "coh" not in written:
            print("The coh view is not written: Chain of Hindsight needs plain-text prompts and completions")
    for split, (count, total, reason) in _first_reasons(converted).items():
        # one local JSON Lines file is the loaded `train` split: its rows are the file's lines
        print(f"Dropped {count} of {total} rows of the {split} split; first: {with_line_numbers(reason, name)}")
    sizes = ", ".join(f"{split} {len(rows)} (dropped {dropped[split]})" for split, rows in ranked.items())
    print(f"Wrote {', '.join(written)} views of {name} to {output_dir}: {sizes}")


if __name__ == "__main__":
    main(sys.argv[1:])

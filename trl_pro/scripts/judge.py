"""
The `trl-pro judge` command: pairwise comparison of two systems' responses, as the PRO paper's Tables 3 (GPT-4) and
4 (human evaluation). See `trl_pro.evaluation.judges`.

# GPT-4-class judge (key from OPENAI_API_KEY), both orders of every pair, win/tie/lose of the first system
```bash
trl-pro judge --responses outputs/eval/responses/pro.jsonl outputs/eval/responses/rrhf.jsonl \
    --model gpt-4 --output_dir outputs/judge
```

# Any OpenAI-compatible server (vLLM, `transformers serve`), or a local causal LM
```bash
trl-pro judge --responses a.jsonl b.jsonl --base_url http://127.0.0.1:8000/v1 --model my-judge --output_dir out
trl-pro judge --responses a.jsonl b.jsonl --judge_model_name_or_path path/to/lm --output_dir out
```

# On the test data the responses answer (subsets from it; --max_samples prompts of each), named as for `trl-pro eval`
```bash
trl-pro judge --responses a.jsonl b.jsonl --dataset_name data/hh_rlhf/ranked --max_samples 50 --model gpt-4 \
    --output_dir out
```

# Human evaluation: a blind A/B sheet, then its labels
```bash
trl-pro judge --responses a.jsonl b.jsonl --export_human --output_dir out    # fill out/human_sheet.csv
trl-pro judge --responses a.jsonl b.jsonl --import_human out/human_sheet.csv --output_dir out
```
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser  # noqa: E402

from trl_pro.cli.errors import OneLineErrors, run_main  # noqa: E402
from trl_pro.utils.errors import SetupError  # noqa: E402
from trl_pro.utils.quiet import quiet_known_noise  # noqa: E402


PROG = "trl-pro judge"


@dataclass
class JudgeScriptArguments:
    """Arguments of `trl-pro judge`."""

    responses: list[str] = field(
        default_factory=list,
        metadata={
            "help": "The two systems' responses files (as `trl-pro eval` writes them in responses/), on the "
            "same prompts; the table shows win/tie/lose of the first. Names are the file names unless "
            "given as NAME=PATH."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for judge_results.json/md, the judgment cache judgments.jsonl (a rerun pays "
            "nothing twice), and the human sheet (required)."
        },
    )
    dataset_name: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Optional test data, named as for `trl-pro eval` (a hub id, a local folder such as a "
            "`prepare_data` view, or a json, jsonl, csv or parquet file; SUBSET=NAME for one per subset): then "
            "both files must answer exactly its prompts, and subsets come from it; otherwise from the responses "
            "files' `subset` field."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration of a hub dataset (`name` of `datasets.load_dataset`)."}
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split of a folder or hub dataset that the responses answer."}
    )
    test_file: list[str] = field(
        default_factory=list,
        metadata={"help": "Alias of --dataset_name (its name in earlier versions); both lists are read."},
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Judge the first N prompts of each subset (the paper samples a few)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Judge model name at the OpenAI-compatible endpoint (e.g. gpt-4)."}
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; default: OpenAI's API. The key "
            "is read from OPENAI_API_KEY (local servers accept any)."
        },
    )
    judge_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local causal LM judge (transformers) instead of an endpoint."}
    )
    max_tokens: int = field(default=512, metadata={"help": "Length limit of each judge answer, in tokens."})
    max_retries: int = field(default=3, metadata={"help": "Retries of a failed request before giving up."})
    retry_backoff: float = field(
        default=2.0, metadata={"help": "Seconds before the first retry; doubled at each further one."}
    )
    timeout: float = field(default=120.0, metadata={"help": "Seconds a request may take."})
    system_prompt_in_user: bool = field(
        default=False,
        metadata={
            "help": "Send the judge instructions at the start of the user message instead of as a system "
            "message (for chat templates without a system role)."
        },
    )
    export_human: bool = field(
        default=False,
        metadata={
            "help": "Write a blind A/B sheet (human_sheet.csv, order drawn with --seed; the key in "
            "human_key.json) instead of judging."
        },
    )
    import_human: str | None = field(
        default=None,
        metadata={
            "help": "A filled-in human_sheet.csv (labels A, B or tie): its table instead of a judge's (the key "
            "is read from the same folder)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the human sheet's A/B order."})


class JudgeParser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line errors."""


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    kwargs = dict(
        description="Compare two systems' responses pairwise, as the PRO paper's Tables 3 (GPT-4) and 4 (human): "
        "MT-Bench's pairwise judge prompt (Zheng et al. 2023), every pair judged in both orders and averaged, "
        "win/tie/lose in %% per subset and on average; unparsable verdicts are reported as invalid.",
        epilog="In --config YAML, keys are the flag names; flags override YAML values.",
    )
    if subparsers is not None:
        parser = subparsers.add_parser(
            "judge", help="Judge two systems pairwise", dataclass_types=(JudgeScriptArguments,), **kwargs
        )
    else:
        parser = JudgeParser((JudgeScriptArguments,), prog=prog or PROG, allow_abbrev=False, **kwargs)
    for action in parser._actions:
        if action.dest in ("responses", "dataset_name", "test_file"):
            action.__class__ = argparse._ExtendAction
    return parser


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if sep and "/" not in name and name:
        return name, path
    return Path(spec).name.split(".")[0], spec


def main(args: JudgeScriptArguments) -> dict | None:
    from trl_pro.evaluation import judges
    from trl_pro.scripts.eval import load_test_data_from_args

    if not args.output_dir:
        raise ValueError("--output_dir is required")
    if len(args.responses) != 2:
        raise ValueError(f"--responses: give exactly two responses files, got {len(args.responses)}")
    (first, first_path), (second, second_path) = (_named(spec) for spec in args.responses)
    if first == second:
        second = second + "_2"
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    first_responses, first_subsets = judges.read_responses_with_subsets(first_path)
    second_responses, _ = judges.read_responses_with_subsets(second_path)
    test_data = None
    if args.dataset_name or args.test_file:
        test_data = load_test_data_from_args(args, max_samples=args.max_samples)
        kept = {ex.prompt for examples in test_data.values() for ex in examples}
    elif args.max_samples is not None:
        kept, counts = set(), {}
        for prompt in first_responses:
            subset = first_subsets[prompt]
            if counts.get(subset, 0) < args.max_samples:
                kept.add(prompt)
                counts[subset] = counts.get(subset, 0) + 1
    if args.max_samples is not None:  # a sample of prompts is judged: the rest of each file is left out on purpose
        first_responses = {p: r for p, r in first_responses.items() if p in kept}
        second_responses = {p: r for p, r in second_responses.items() if p in kept}
    pairs = judges.build_pairs(
        first_responses, second_responses, test_data, first_subsets, names=(first_path, second_path)
    )

    if args.export_human:
        sheet, key = judges.export_human_sheet(pairs, output_dir, seed=args.seed, names=(first, second))
        print(f"Blind A/B sheet: {sheet} ({len(pairs)} pairs; fill the `label` column with A, B or tie), key: {key}")
        return None
    if args.import_human:
        key = Path(args.import_human).parent / judges.HUMAN_KEY
        records = judges.import_human_labels(args.import_human, key)
        judge_name = "human labels"
    else:
        if args.judge_model_name_or_path:
            judge = judges.LocalJudge(args.judge_model_name_or_path, max_new_tokens=args.max_tokens)
        elif args.model:
            judge = judges.OpenAIJudge(
                args.model,
                args.base_url,
                max_tokens=args.max_tokens,
                max_retries=args.max_retries,
                backoff=args.retry_backoff,
                timeout=args.timeout,
                system_prompt_in_user=args.system_prompt_in_user,
            )
        else:
            raise ValueError(
                "no judge: give --model (with --base_url for a local server), "
                "--judge_model_name_or_path, --export_human or --import_human"
            )
        records = judges.judge_pairs(judge, pairs, output_dir)
        judge_name = judge.name
    table = judges.summarize(records)
    judges.write_judge_results(table, records, output_dir, first, second, judge_name)
    print(judges.format_table(table, first, second, judge_name))
    return table


def cli_main(argv: list[str] | None = None) -> None:
    from trl_pro.cli.training import parse_args

    quiet_known_noise()
    (args,) = parse_args(make_parser(), argv)
    run_main(PROG, main, args, plain_errors=(ValueError, RuntimeError, SetupError))


if __name__ == "__main__":
    cli_main(sys.argv[1:])

"""
The `trl-pro eval` command: BLEU and reward per HH-RLHF subset and in total, for every system, as the PRO paper's
Table 2 (see `trl_pro.evaluation` for the authors' definitions it follows).

# The quickstart model against the untrained tiny model, on the vendored HH-RLHF test slice
```bash
trl-pro eval --system pro=outputs/quickstart --system untrained=trl-pro/tiny-llama \
    --reward_model_name_or_path path/to/reward_model --output_dir outputs/eval
```

# Systems we cannot run here (ChatGPT, ...) as responses files, one JSON line per prompt: {"prompt", "response"}
```bash
trl-pro eval --system chatgpt=responses/chatgpt.jsonl --system pro=outputs/pro --output_dir outputs/eval
```

# Every system of a comparison folder (its comparison.json lists names, paths and prompt suffixes)
```bash
trl-pro eval --comparison_dir outputs/comparison --output_dir outputs/eval
```

# Test data as for every other command: a hub id, a folder (the test split of a `prepare_data` view) or a file
```bash
trl-pro eval --system pro=outputs/pro --dataset_name data/hh_rlhf/ranked --output_dir outputs/eval
trl-pro eval --system pro=outputs/pro --dataset_name harmless_base=hb.parquet helpful_base=hp.csv --output_dir out
```
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from trl import TrlParser  # noqa: E402

from trl_pro.cli.errors import OneLineErrors, run_main  # noqa: E402
from trl_pro.utils.errors import SetupError  # noqa: E402
from trl_pro.utils.quiet import quiet_known_noise  # noqa: E402


PROG = "trl-pro eval"


@dataclass
class EvalScriptArguments:
    """Arguments of `trl-pro eval`."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for results.json, results.md, results.png, responses/<system>.jsonl and the cache "
            "that lets an interrupted run resume (required)."
        },
    )
    system: list[str] = field(
        default_factory=list,
        metadata={
            "help": "A system to evaluate, NAME=PATH; repeat the flag for several. PATH is a model (local "
            "folder, hub id, PEFT adapter folder, or the built-in trl-pro/tiny-llama) or a responses file "
            '(.jsonl: one {"prompt", "response"} row per test prompt). Systems of --config and of the '
            "command line are combined."
        },
    )
    prompt_suffix: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Text appended to every prompt of one system, NAME=TEXT (e.g. Chain of Hindsight's "
            "positive phrase); repeat for several systems. \\n escapes are understood."
        },
    )
    comparison_dir: str | None = field(
        default=None,
        metadata={
            "help": "A comparison folder (`trl-pro compare --output_dir`): every system its comparison.json "
            'lists ({"systems": [{"name", "path", "prompt_suffix"}]}, paths relative to the folder) '
            "is evaluated, besides the --system ones.",
            "aliases": ["--comparison"],
        },
    )
    dataset_name: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test data, named as for every other command: a hub id, a local folder (a `prepare_data` "
            "view such as <output_dir>/ranked, a folder of data files, a `save_to_disk` folder) or a local "
            "json, jsonl, csv, parquet or arrow file (optionally .gz/.bz2/.xz/.zst compressed: the whole file "
            "is the test data). Rows: HH-RLHF pairs (chosen/rejected), preference rows with a prompt, ranked "
            "rows (prompt, completions[, scores]) or the PRO authors' rows (prefix, suffix). SUBSET=NAME gives "
            "one dataset per subset (repeat the flag, or give several); a bare NAME takes each row's subset "
            "from --subset_column. Default: the vendored HH-RLHF test slice (200 harmless-base rows)."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration of a hub dataset (`name` of `datasets.load_dataset`)."}
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split of a folder or hub dataset to evaluate on."}
    )
    test_file: list[str] = field(
        default_factory=list,
        metadata={"help": "Alias of --dataset_name (its name in earlier versions); both lists are read."},
    )
    subset_column: str = field(default="subset", metadata={"help": "Column holding each row's subset name."})
    subsets: list[str] | None = field(
        default=None,
        metadata={"help": "Keep these subsets, in this order (a subset with no rows is an error)."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Keep the first N rows of each subset."})
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation reward model (single-score sequence classifier, e.g. the paper's "
            "OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1, or a TRL RewardTrainer output). Without it, Reward "
            "is not computed."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Python reward functions as dotted import paths (module.function, importable from the current "
            "directory or PYTHONPATH), TRL GRPO style: f(prompts=[...], completions=[...], **kwargs) returns one "
            "float per completion. Each is a metric named after the function (mean raw value per row), besides or "
            "instead of --reward_model_name_or_path. Repeat the flag or give several."
        },
    )
    reward_prompt_format: str = field(
        default="auto",
        metadata={
            "help": "How the reward model reads (prompt, response): auto, oasst, chat_template or plain (as "
            "`trl-pro rank`).",
            "choices": ["auto", "oasst", "chat_template", "plain"],
        },
    )
    reward_batch_size: int = field(default=8, metadata={"help": "Batch size of reward scoring."})
    reward_load_in_4bit: bool = field(default=False, metadata={"help": "Load the reward model in 4 bits (NF4)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together (left-padded)."})
    max_completion_length: int = field(
        default=128, metadata={"help": "New tokens generated per response (the authors' max_new_tokens=128)."}
    )
    max_prompt_length: int = field(
        default=384, metadata={"help": "Prompts are truncated from the left to this many tokens (authors: 512-128)."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load model systems in 4 bits (NF4, bitsandbytes)."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype of model systems and reward model.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    device: str | None = field(default=None, metadata={"help": "Device (e.g. cuda:0); default: where they load."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    seed: int = field(default=0, metadata={"help": "Seed of the built-in trl-pro/tiny-llama's random weights."})


class EvalParser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line errors."""


def _extend_list_flags(parser, dests: tuple[str, ...]) -> None:
    """`--system a=x --system b=y` collects both (HfArgumentParser's lists take one `nargs="+"` group, the last one
    winning when the flag is repeated)."""
    for action in parser._actions:
        if action.dest in dests:
            action.__class__ = argparse._ExtendAction


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    kwargs = dict(
        description="Evaluate systems as the PRO paper's Table 2: BLEU (the authors' nltk character BLEU and "
        "sacreBLEU) and reward-model score, per HH-RLHF subset and in total. Greedy generation, 128 new tokens, "
        "prompts left-truncated to 384 tokens, responses cut at the first Human:/Assistant:.",
        epilog="In --config YAML, keys are the flag names (`system:` a list of NAME=PATH); flags override YAML "
        "values, list flags add to them. Outputs in --output_dir: results.json, results.md, results.png, "
        "responses/<system>.jsonl. A rerun with the same --output_dir reuses what is done.",
    )
    if subparsers is not None:
        parser = subparsers.add_parser(
            "eval", help="Evaluate systems (BLEU, reward)", dataclass_types=(EvalScriptArguments,), **kwargs
        )
    else:
        parser = EvalParser((EvalScriptArguments,), prog=prog or PROG, allow_abbrev=False, **kwargs)
    _extend_list_flags(parser, ("system", "prompt_suffix", "dataset_name", "test_file", "reward_funcs"))
    return parser


#: The `eval` extra: what the metrics and the plot import (checked before anything is loaded or generated).
EVAL_EXTRA_MODULES = ("nltk", "sacrebleu", "matplotlib")


def check_eval_dependencies() -> None:
    """Fail with the install command when a module of the `eval` extra cannot be imported."""
    import importlib

    missing = []
    for module in EVAL_EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SetupError(
            f"{', '.join(missing)} not installed (the metrics and the plot need the `eval` extra): "
            "pip install 'trl-pro[eval]'"
        )


def parse_test_datasets(items: list[str]) -> dict[str, str] | list[str] | None:
    """`--dataset_name` values: `{subset: dataset}` when given as SUBSET=NAME, the names otherwise (None: none)."""
    if not items:
        return None
    named = ["=" in item and "/" not in item.split("=", 1)[0] for item in items]
    if any(named) and not all(named):
        raise ValueError("--dataset_name: give every dataset as SUBSET=NAME, or none")
    if all(named):
        datasets = {}
        for item in items:
            subset, _, name = item.partition("=")
            if subset in datasets:
                raise ValueError(f"--dataset_name: subset {subset!r} is given twice")
            datasets[subset] = name
        return datasets
    return items


def load_test_data_from_args(args, max_samples: int | None = None):
    """The test data of `args` (`dataset_name` and its alias `test_file`, `dataset_config`, `dataset_test_split`, and
    `subset_column`/`subsets` where the command has them)."""
    from trl_pro.evaluation.test_data import load_test_data

    # A YAML `dataset_name: x.parquet` is a string, not a list
    names = [
        name
        for value in (args.dataset_name, args.test_file)
        for name in ([value] if isinstance(value, str) else value or [])
    ]
    return load_test_data(
        parse_test_datasets(names),
        subset_column=getattr(args, "subset_column", "subset"),
        subsets=getattr(args, "subsets", None),
        max_samples=max_samples,
        dataset_config=args.dataset_config,
        dataset_test_split=args.dataset_test_split,
    )


def main(args: EvalScriptArguments) -> dict:
    from trl_pro.evaluation.reward_functions import resolve_reward_funcs
    from trl_pro.evaluation.systems import evaluate_systems, parse_system_specs, read_comparison_folder

    if not args.output_dir:
        raise ValueError("--output_dir is required")
    # Before any model is loaded: otherwise a missing extra shows only after every response is generated
    check_eval_dependencies()
    if os.getcwd() not in sys.path and "" not in sys.path:  # `--reward_funcs my_rewards.f` from the current folder
        sys.path.insert(0, os.getcwd())
    reward_funcs = resolve_reward_funcs(
        [
            value
            for item in ([args.reward_funcs] if isinstance(args.reward_funcs, str) else args.reward_funcs or [])
            for value in str(item).split(",")
            if value
        ]
    )
    systems = parse_system_specs(args.system, args.prompt_suffix)
    if args.comparison_dir:
        systems += read_comparison_folder(args.comparison_dir)
    test_data = load_test_data_from_args(args, max_samples=args.max_samples)
    results = evaluate_systems(
        systems,
        test_data,
        args.output_dir,
        reward_model_name_or_path=args.reward_model_name_or_path,
        reward_prompt_format=args.reward_prompt_format,
        reward_batch_size=args.reward_batch_size,
        reward_load_in_4bit=args.reward_load_in_4bit,
        max_new_tokens=args.max_completion_length,
        max_prompt_length=args.max_prompt_length,
        batch_size=args.batch_size,
        load_in_4bit=args.load_in_4bit,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
        reward_funcs=list(reward_funcs.values()),
    )
    from pathlib import Path

    print((Path(args.output_dir) / "results.md").read_text())
    print(f"Results written to {Path(args.output_dir).resolve()}")
    return results


def cli_main(argv: list[str] | None = None) -> None:
    from trl_pro.cli.training import parse_args

    quiet_known_noise()
    (args,) = parse_args(make_parser(), argv)
    run_main(PROG, main, args, plain_errors=(ValueError, SetupError))


if __name__ == "__main__":
    cli_main(sys.argv[1:])

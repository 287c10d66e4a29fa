"""
`trl-pro generate`: add k candidates per prompt from a model to a dataset, for `trl-pro rank` to score and sort.

Input: any format `trl-pro pro` accepts (ranked, TRL preference pairs, the PRO authors' format), or TRL's prompt-only
rows (`prompt` alone, text or a list of messages); local file or folder, or hub id. Output (`--output_path`, .jsonl /
.jsonl.gz / .parquet): ranked rows `prompt`, `completions` (the dataset's candidates in their order, if any, then the
generated ones; a reply to a conversational prompt is one assistant message) and `sources` ("dataset" or the
generator's name per candidate). `trl-pro pro` trains on it as it is (the dataset's candidates first); `trl-pro rank`
re-scores and re-sorts it. Run `generate` once per model to collect candidates from several (each run appends its own).

A row needs 2 candidates to be a ranking: prompt-only rows with `--num_generations 1` (or whose generations were empty
and dropped) come out with fewer. `generate` writes them and counts them; `trl-pro rank` and `trl-pro pro` refuse
them, naming the row (`--drop_invalid_rows` drops them), and a further `generate` run (another model) adds to them.

# Rankings of 4 candidates per prompt from prompt-only rows (`{"prompt": ...}`), scored and sorted by `trl-pro rank`
```bash
trl-pro generate --dataset_name prompts.jsonl --model_name_or_path my/model --num_generations 4 \
    --output_path prompts_generated.jsonl
```

# k = 2 candidates from a local model (batched transformers generate; --adapter_path for a PEFT adapter,
# --load_in_4bit for 4-bit)
```bash
trl-pro generate --dataset_name trl_pro/assets/hh_rlhf --model_name_or_path my/model --num_generations 2 \
    --output_path hh_plus_model.jsonl.gz
```

# From an OpenAI-compatible server (ChatGPT-like API, `vllm serve`, `transformers serve`); key from $OPENAI_API_KEY
```bash
trl-pro generate --dataset_name hh_plus_model.jsonl.gz --base_url http://127.0.0.1:8000/v1 --api_model gpt-4o-mini \
    --num_generations 1 --output_path hh_plus_two_models.jsonl.gz
```

The run is written in shards and resumes after an interruption (same command line); rerun once finished, it has
nothing to do unless `--overwrite` (see `trl_pro/utils/shards.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

from trl import ScriptArguments, TrlParser

from trl_pro.cli.errors import OneLineErrors, run_main
from trl_pro.utils.quiet import quiet_known_noise


PROG = "trl-pro generate"
logger = logging.getLogger("trl_pro.scripts.generate")


@dataclass
class DataArguments(ScriptArguments):
    """TRL's dataset arguments plus the output file and its shards (shared by `generate` and `rank`)."""

    output_path: str | None = field(
        default=None, metadata={"help": "Output file: .jsonl, .jsonl.gz or .parquet (required)."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first `max_rows` rows of the split."})
    shard_size: int = field(
        default=256,
        metadata={"help": "Rows per shard: the unit written at once and skipped when an interrupted run resumes."},
    )
    drop_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Drop rows PRO cannot use (e.g. an empty response), with a count, instead of stopping."},
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Redo the output even when it is the finished output of this run, and replace an output of "
            "other settings (refused otherwise)."
        },
    )


@dataclass
class GenerateArguments:
    """Where candidates come from and how they are sampled."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local causal LM (hub id or path) to generate with, through transformers."}
    )
    adapter_path: str | None = field(default=None, metadata={"help": "PEFT adapter to load on top of the model."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the local model in 4-bit (bitsandbytes NF4)."})
    dtype: str | None = field(default=None, metadata={"help": "dtype of the local model (float32, bfloat16, ...)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Trust remote code when loading models."})
    base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) to generate with."}
    )
    api_model: str | None = field(
        default=None, metadata={"help": "Model name sent to the endpoint (defaults to --model_name_or_path)."}
    )
    api: str = field(
        default="auto",
        metadata={
            "help": "Endpoint API: chat, completions, or auto (chat for conversational prompts).",
            "choices": ["auto", "chat", "completions"],
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the endpoint's API key."}
    )
    max_retries: int = field(default=3, metadata={"help": "Retries of a failed request (exponential backoff)."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM in this process (GPU only)."})
    source_name: str | None = field(
        default=None, metadata={"help": "Name recorded in `sources` for these candidates (default: from the model)."}
    )
    num_generations: int = field(default=2, metadata={"help": "Candidates to generate per prompt."})
    max_completion_length: int = field(default=128, metadata={"help": "Maximum new tokens per candidate."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Truncate prompts from the left to this many tokens (local model)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (False: greedy, with --num_generations 1)."})
    generation_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (local model)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (shard i uses seed + i, so a resumed run matches)."})
    keep_empty: bool = field(
        default=False, metadata={"help": "Keep empty generations (dropped and counted otherwise)."}
    )


class Parser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line errors."""


#: Flags of TRL's `ScriptArguments` that mean nothing here (a DDP debugging switch of training): accepted, not listed.
HIDDEN_FLAGS = ("ignore_bias_buffers",)


def hide_flags(parser):
    """`parser` with the `HIDDEN_FLAGS` left out of its usage and `--help` (also `trl-pro rank`'s)."""
    for action in parser._actions:
        if action.dest in HIDDEN_FLAGS:
            action.help = argparse.SUPPRESS
    return parser


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    dataclass_types = (DataArguments, GenerateArguments)
    description = "Generate k candidates per prompt and add them to a dataset (see the module docstring)."
    if subparsers is not None:
        return hide_flags(subparsers.add_parser("generate", help=description, dataclass_types=dataclass_types))
    return hide_flags(Parser(dataclass_types, prog=prog or PROG, allow_abbrev=False, description=description))


def parse(parser, argv: list[str] | None):
    from trl_pro.cli.training import parse_args

    return parse_args(parser, argv)


def load_rows(data_args: DataArguments) -> list[dict]:
    """The rows of the chosen split, as plain dicts."""
    from trl_pro.data.loading import load_named_dataset

    if not data_args.dataset_name:
        raise ValueError("give --dataset_name (a hub id, a local folder or file)")
    splits = load_named_dataset(data_args.dataset_name, data_args.dataset_config, data_args.dataset_train_split)
    if data_args.dataset_train_split not in splits:
        raise ValueError(
            f"dataset {data_args.dataset_name} has no split {data_args.dataset_train_split!r} (it has "
            f"{', '.join(splits)}); choose one with --dataset_train_split"
        )
    dataset = splits[data_args.dataset_train_split]
    if data_args.max_rows is not None:
        dataset = dataset.select(range(min(data_args.max_rows, len(dataset))))
    return dataset.to_list()


def fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
    return digest.hexdigest()[:16]


def input_rankings(
    rows: list[dict], drop_invalid_rows: bool = False, dataset_name: str | None = None, for_generation: bool = False
) -> list[dict]:
    """Rows of any accepted format as rankings with `sources` (see `trl_pro.pipeline.rankings.dataset_rankings`;
    `for_generation`: also prompt-only rows and rankings of fewer than 2 candidates); a bad row of a local JSON Lines
    file `dataset_name` is named by its line too, and the error says that `--drop_invalid_rows` drops such rows."""
    from trl_pro.data.loading import rows_with_line_numbers
    from trl_pro.pipeline.rankings import dataset_rankings

    try:
        with rows_with_line_numbers(dataset_name):
            return dataset_rankings(rows, drop_invalid_rows=drop_invalid_rows, for_generation=for_generation)
    except ValueError as error:
        message = error.args[0] if error.args else None
        if not drop_invalid_rows and isinstance(message, str) and message.startswith("Row "):
            error.args = (f"{message} (--drop_invalid_rows drops such rows)", *error.args[1:])
        raise


def as_completion(text, prompt):
    """A generated text as a candidate of `prompt`: for a conversational prompt, one assistant message (the
    completion format of TRL's conversational rows, which the rankings' validation requires)."""
    from trl_pro.data.formats import is_messages

    if is_messages(prompt) and not is_messages(text):
        return [{"role": "assistant", "content": text}]
    return text


def sharded_output(prog: str, data_args: DataArguments, num_rows: int, manifest: dict):
    """The run's `ShardedOutput`, or None (and says so) when the output already is this run's finished output."""
    from trl_pro.utils.shards import ShardedOutput

    output = ShardedOutput(data_args.output_path, num_rows, data_args.shard_size, manifest, data_args.overwrite)
    if output.complete:
        print(
            f"{prog}: {data_args.output_path} is complete ({output.finished_rows} rows); nothing to do "
            "(--overwrite redoes it)"
        )
        return None
    return output


def select_source(args: GenerateArguments):
    """The one kind of `generation.SOURCE_KINDS` the arguments select, checked; a `ValueError` if none or several."""
    from trl_pro.pipeline.generation import SOURCE_KINDS

    chosen = [kind for kind in SOURCE_KINDS if kind.selects(args)]
    if not chosen:
        usages = [kind.usage for kind in SOURCE_KINDS]
        raise ValueError(f"no candidate source: give {', '.join(usages[:-1])} or {usages[-1]}")
    if len(chosen) > 1:
        raise ValueError(f"give one candidate source per run, got {' and '.join(kind.flag for kind in chosen)}")
    chosen[0].check(args)
    return chosen[0]


def build_source(args: GenerateArguments, progress: bool):
    """The candidate source the arguments select (`select_source`) and its seed box (None unless per-shard seeded)."""
    return select_source(args).build(args, progress)


def check_data_command(data_args: DataArguments) -> None:
    """What `generate` and `rank` need before any work: one process, and an output path of a known format."""
    from trl_pro.utils.shards import check_output_path

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every process would write the same shards; one process batches the work instead
        raise ValueError("runs in a single process: drop --num_processes (the work is batched within the process)")
    if not data_args.output_path:
        raise ValueError("give --output_path (.jsonl, .jsonl.gz or .parquet)")
    check_output_path(data_args.output_path)


def main(data_args: DataArguments, args: GenerateArguments) -> int:
    from trl_pro.pipeline.generation import GenerationStats, collect_candidates

    check_data_command(data_args)
    if args.num_generations < 1:
        raise ValueError(f"--num_generations must be >= 1, got {args.num_generations}")
    select_source(args)  # a missing or ill-specified source is reported before the data is read
    rows = load_rows(data_args)
    # validates every row before any generation
    rankings = input_rankings(rows, data_args.drop_invalid_rows, data_args.dataset_name, for_generation=True)
    manifest = {"command": "generate", "input": fingerprint(rows), "args": asdict(args)}
    manifest["args"].pop("max_retries", None)  # may change between attempts without changing the output
    output = sharded_output(PROG, data_args, len(rankings), manifest)  # before the model is loaded
    if output is None:
        return 0
    source, seed_box = build_source(args, data_args.progress)  # a bad source fails before anything is written
    stats = GenerationStats()
    short_rows = 0  # rows written with fewer than 2 candidates in this run: not rankings yet
    for shard, indices in output.iter_pending(PROG, data_args.progress):
        if seed_box is not None:
            seed_box["seed"] = args.seed + shard
        prompts = [rankings[i]["prompt"] for i in indices]
        candidates = collect_candidates(
            [source], prompts, args.num_generations, keep_empty=args.keep_empty, stats=stats
        )
        shard_rows = []
        for i, generated in zip(indices, candidates):
            ranking = rankings[i]
            shard_rows.append(
                {
                    "prompt": ranking["prompt"],
                    "completions": ranking["completions"]
                    + [as_completion(text, ranking["prompt"]) for text, _ in generated],
                    "sources": ranking["sources"] + [name for _, name in generated],
                }
            )
            short_rows += len(shard_rows[-1]["completions"]) < 2
        output.write_shard(shard, shard_rows)
    total = output.finalize()
    produced = sum(stats.produced.values())
    dropped = sum(stats.dropped_empty.values())
    print(
        f"{PROG}: wrote {total} rows to {data_args.output_path} ({produced} candidates generated in this run, "
        f"{dropped} empty dropped, {sum(stats.short_prompts.values())} prompts short of {args.num_generations})"
    )
    if short_rows:
        print(
            f"{PROG}: {short_rows} rows have fewer than 2 candidates, so are not rankings yet: `trl-pro rank` and "
            "`trl-pro pro` refuse them (--drop_invalid_rows drops them); add candidates with another "
            "`trl-pro generate` run on this output, or generate more per prompt (--num_generations 2 or more)"
        )
    return 0


def run_command(prog: str, make_parser, main, argv: list[str] | None) -> None:
    """Parse `argv` (YAML `--config` and flags) and run `main(data_args, args)` with one-line errors (also
    `trl-pro rank`'s entry point)."""
    quiet_known_noise()
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    data_args, args = parse(make_parser(), argv)
    run_main(prog, main, data_args, args, plain_errors=(Exception,))


def cli_main(argv: list[str] | None = None) -> None:
    run_command(PROG, make_parser, main, argv)


if __name__ == "__main__":
    cli_main()

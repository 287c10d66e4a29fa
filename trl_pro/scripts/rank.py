"""
`trl-pro rank`: score every candidate of a dataset with a reward model and sort each ranking by score, as the PRO
authors built their training sets.

Input: any format `trl-pro pro` accepts, or the output of `trl-pro generate` (dataset candidates plus generated ones,
with `sources`). Output (`--output_path`, .jsonl / .jsonl.gz / .parquet): ranked rows `prompt`, `completions` (best
first), `scores` (the reward model's, same order) and `sources`, which `trl-pro pro` trains on unchanged, with the
dynamic temperature on (the data has scores).

# The authors' HH-RLHF training set: every raw chosen/rejected pair re-scored by RM_train and re-sorted
```bash
trl-pro rank --dataset_name Anthropic/hh-rlhf \
    --reward_model_name_or_path OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5 \
    --output_path hh_rlhf_ranked.jsonl.gz
```

# HH_{LLM,k}: raw pairs plus the candidates `trl-pro generate` added, all re-ranked
```bash
trl-pro rank --dataset_name hh_plus_model.jsonl.gz --reward_model_name_or_path my/reward-model \
    --output_path hh_llm_ranked.jsonl.gz
```

`--reward_prompt_format` says how a (prompt, completion) is shown to the reward model: `oasst`
(`<|prompter|>…<|endoftext|><|assistant|>…<|endoftext|>`, OpenAssistant's models, chosen automatically for them),
`chat_template` (the reward model's template), `plain` (prompt + completion + EOS, as TRL's RewardTrainer trains) or
`auto`. `--keep_human_order` keeps the dataset's own order (generated candidates follow it, by score), writing the
scores as `rm_scores`. The run is written in shards and resumes after an interruption (same command line); rerun
once finished, it has nothing to do unless `--overwrite`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from trl_pro.scripts.generate import (
    DataArguments,
    Parser,
    check_data_command,
    fingerprint,
    hide_flags,
    input_rankings,
    load_rows,
    run_command,
    sharded_output,
)


PROG = "trl-pro rank"


@dataclass
class RankArguments:
    """The reward model and how rankings are built."""

    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Reward model (hub id or path): an AutoModelForSequenceClassification with one score, "
            "e.g. OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5 (the paper's RM_train)."
        },
    )
    reward_prompt_format: str = field(
        default="auto",
        metadata={
            "help": "How the reward model reads (prompt, completion).",
            "choices": ["auto", "oasst", "chat_template", "plain"],
        },
    )
    reward_batch_size: int = field(default=8, metadata={"help": "Candidates per reward-model forward."})
    reward_max_length: int | None = field(
        default=None, metadata={"help": "Truncate reward-model inputs from the left to this many tokens."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the reward model in 4-bit (bitsandbytes NF4)."})
    dtype: str | None = field(default=None, metadata={"help": "dtype of the reward model (float32, bfloat16, ...)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Trust remote code when loading the model."})
    keep_human_order: bool = field(
        default=False,
        metadata={"help": "Keep the dataset's own order (do not re-rank it); the authors re-rank everything."},
    )
    keep_top1: bool = field(
        default=False,
        metadata={"help": "The dataset's top-1 stays first, the rest is re-ranked (footnote 6 of the paper)."},
    )
    drop_duplicates: bool = field(default=True, metadata={"help": "Drop exact duplicate candidates of a prompt."})
    max_completions: int | None = field(
        default=None, metadata={"help": "Keep at most this many candidates per ranking (the best ones)."}
    )


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    dataclass_types = (DataArguments, RankArguments)
    description = "Score candidates with a reward model and sort each ranking (see the module docstring)."
    if subparsers is not None:
        return hide_flags(subparsers.add_parser("rank", help=description, dataclass_types=dataclass_types))
    return hide_flags(Parser(dataclass_types, prog=prog or PROG, allow_abbrev=False, description=description))


def split_generated(ranking: dict) -> tuple[dict, list[tuple]]:
    """A ranking's dataset candidates (source "dataset") and its generated ones as (completion, source) pairs."""
    from trl_pro.pipeline.rankings import DATASET_SOURCE

    own = [i for i, source in enumerate(ranking["sources"]) if source == DATASET_SOURCE]
    generated = [
        (ranking["completions"][i], ranking["sources"][i])
        for i in range(len(ranking["completions"]))
        if ranking["sources"][i] != DATASET_SOURCE
    ]
    row = {
        "prompt": ranking["prompt"],
        "completions": [ranking["completions"][i] for i in own],
        "scores": None if ranking["scores"] is None else [ranking["scores"][i] for i in own],
        "sources": [DATASET_SOURCE] * len(own),
    }
    if ranking["scores"] is not None and generated:
        row["scores"] = None  # partial scores are of no use: everything is scored again
    return row, generated


def main(data_args: DataArguments, args: RankArguments) -> int:
    from trl_pro.data.loading import rows_with_line_numbers
    from trl_pro.pipeline.rankings import RankingStats, build_rankings
    from trl_pro.pipeline.reward_models import load_reward_model

    check_data_command(data_args)
    rows = load_rows(data_args)
    # every row is validated before the reward model is loaded
    rankings = input_rankings(rows, data_args.drop_invalid_rows, data_args.dataset_name)
    split = [split_generated(ranking) for ranking in rankings]
    if args.reward_model_name_or_path is None and any(r["scores"] is None or g for r, g in split):
        raise ValueError("the dataset has candidates without scores: give --reward_model_name_or_path")
    manifest = {"command": "rank", "input": fingerprint(rows), "args": asdict(args)}
    output = sharded_output(PROG, data_args, len(split), manifest)  # before the reward model is loaded
    if output is None:
        return 0
    reward_model = tokenizer = None
    if args.reward_model_name_or_path is not None:
        import torch

        reward_model, tokenizer = load_reward_model(
            args.reward_model_name_or_path,
            load_in_4bit=args.load_in_4bit,
            dtype=args.dtype,
            device="cuda" if torch.cuda.is_available() else None,
            trust_remote_code=args.trust_remote_code,
        )
    stats = RankingStats()
    # the rows scored are the file's rows when none was dropped: a row error can then name its line
    source = data_args.dataset_name if len(split) == len(rows) else None
    for shard, indices in output.iter_pending(PROG, data_args.progress):
        with rows_with_line_numbers(source):
            ranked = build_rankings(
                [split[i][0] for i in indices],
                [split[i][1] for i in indices],
                reward_model=reward_model,
                tokenizer=tokenizer,
                prompt_format=args.reward_prompt_format,
                rerank=not args.keep_human_order,
                keep_top1=args.keep_top1,
                drop_duplicates=args.drop_duplicates,
                max_completions=args.max_completions,
                batch_size=args.reward_batch_size,
                max_length=args.reward_max_length,
                progress=data_args.progress,
                stats=stats,
                row_offset=indices.start,
            )
        output.write_shard(shard, ranked)
    total = output.finalize()
    print(
        f"{PROG}: wrote {total} rankings to {data_args.output_path} ({stats.duplicates_dropped} duplicate candidates "
        f"dropped, {stats.candidates_capped} beyond --max_completions dropped in this run)"
    )
    return 0


def cli_main(argv: list[str] | None = None) -> None:
    run_command(PROG, make_parser, main, argv)


if __name__ == "__main__":
    cli_main()

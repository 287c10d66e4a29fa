"""Self-bootstrapping (Algorithm 1 of the PRO paper), run by `PROTrainer.train()` when `bootstrap_rounds > 0`.

The training set is split into K = `bootstrap_rounds` contiguous parts. Before training on part i:

1. responses are sampled from the current policy for the part's prompts (`bootstrap_num_generations` each; through
   the PEFT adapter when there is one; gradient checkpointing is switched off for `generate` and back on after;
   under ZeRO-3 the parameters are gathered by TRL's `unwrap_model_for_generation`);
2. the samples and the part's existing candidates are scored by the bootstrap reward model;
3. the samples are inserted and the ranking re-sorted by score; with footnote 6's guard (`bootstrap_keep_top1`, on by
   default) the original top-1 stays first and only the others are re-ranked (its recorded score is lifted to the
   best one, a tie, so that sorting by score keeps it first and the dynamic temperature sees no inversion);
4. the trainer trains on part i (one `Trainer.train()` per part, through `RankingTrainer.train_part`): the optimizer
   state carries over, and one learning-rate schedule runs over every round (warm-up once, the total steps known up
   front, since a round has as many rows as its part), with the step counter going on across rounds.

With several processes each generates and scores its own contiguous shard of the part, and the re-ranked rows are
gathered back in the part's order so every process trains on the whole part, as in ordinary data-parallel training.

Each round trains with a `Trainer.train()` of its own, and its checkpoints go to a folder of its own, `output_dir/bootstrap-round-<i>/`, next to the round's re-ranked rows (`rankings.jsonl`, the data Algorithm 1
trained on) and, once the round has finished, `round_complete.json` (its statistics and last checkpoint).
`resume_from_checkpoint=True` resumes from there: finished rounds are skipped; a round that had written a complete
checkpoint resumes from it exactly, on the same re-ranked rows; a round interrupted before its first checkpoint starts
again from the previous round's last checkpoint (weights, optimizer and RNG state), sampling with the same seed. A
round that starts afresh replaces its folder if an earlier run in the same output_dir left one.
Logged per round (`bootstrap/...`, also kept in `trainer.bootstrap_history`): mean reward of the samples and of the
dataset's candidates, the histogram of the ranks the samples took, the time spent generating, scoring and training.
The authors' released code has no self-bootstrapping; this follows the paper's description.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger
from accelerate.utils import gather_object
from transformers.trainer_utils import TrainOutput

from trl_pro.data.tokenization import resolve_max_prompt_length
from trl_pro.pipeline.generation import generate_local
from trl_pro.pipeline.rankings import DATASET_SOURCE, build_rankings, dataset_rankings
from trl_pro.pipeline.reward_models import load_reward_model
from trl_pro.trainers.checkpointing import last_complete_checkpoint
from trl_pro.utils.io import atomic_write_json, read_json_rows, write_jsonl


logger = get_logger(__name__)

__all__ = ["POLICY_SOURCE", "split_into_parts", "bootstrap_train", "round_dir", "bootstrap_resume_point"]

POLICY_SOURCE = "policy"
#: Written into a round's folder when the round has finished training: its statistics and last checkpoint.
ROUND_COMPLETE = "round_complete.json"
#: A round's re-ranked rows, written before it trains.
RANKINGS_FILE = "rankings.jsonl"


def round_dir(output_dir: str | Path, round_number: int) -> Path:
    """Folder of round `round_number` (from 1): its checkpoints, `rankings.jsonl` and `round_complete.json`."""
    return Path(output_dir) / f"bootstrap-round-{round_number}"


def split_into_parts(num_rows: int, num_parts: int) -> list[range]:
    """`num_rows` row indices split into `num_parts` contiguous parts whose sizes differ by at most one."""
    if num_parts > num_rows:
        raise ValueError(f"bootstrap_rounds={num_parts} is more than the {num_rows} training rows")
    return _contiguous_ranges(num_rows, num_parts)


def _contiguous_ranges(num_rows: int, num_parts: int) -> list[range]:
    base, extra = divmod(num_rows, num_parts)
    parts, start = [], 0
    for part in range(num_parts):
        stop = start + base + (1 if part < extra else 0)
        parts.append(range(start, stop))
        start = stop
    return parts


def _round_statistics(ranked: list[dict[str, Any]], num_generations: int) -> dict[str, Any]:
    sample_scores, dataset_scores = [], []
    max_length = max((len(row["completions"]) for row in ranked), default=0)
    rank_histogram = [0] * max_length
    for row in ranked:
        scores = row.get("rm_scores") or row["scores"]  # rm_scores: before footnote 6's lift of the top-1
        for position, (source, score) in enumerate(zip(row["sources"], scores)):
            if source == POLICY_SOURCE:
                sample_scores.append(score)
                rank_histogram[position] += 1
            elif source == DATASET_SOURCE:
                dataset_scores.append(score)
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return {
        "samples": len(sample_scores),
        "samples_asked": num_generations * len(ranked),
        "dataset_candidates": len(dataset_scores),
        "sample_reward_mean": mean(sample_scores),
        "dataset_reward_mean": mean(dataset_scores),
        "sample_rank_histogram": rank_histogram,
    }


def bootstrap_resume_point(output_dir: str | Path, num_rounds: int) -> tuple[int, str | None]:
    """Where an interrupted bootstrapping run in `output_dir` resumes: the number of finished rounds, and the last
    complete checkpoint of the next round when it has one (with its re-ranked rows), else None."""
    finished = 0
    while finished < num_rounds and (round_dir(output_dir, finished + 1) / ROUND_COMPLETE).is_file():
        finished += 1
    current = round_dir(output_dir, finished + 1)
    checkpoint = None
    if finished < num_rounds and (current / RANKINGS_FILE).is_file():
        checkpoint = last_complete_checkpoint(current)
    return finished, checkpoint


def _restore_round_end(trainer, output_dir: Path, round_number: int) -> None:
    """Weights, optimizer state and RNG state as round `round_number` left them (its last checkpoint)."""
    record = json.loads((round_dir(output_dir, round_number) / ROUND_COMPLETE).read_text())
    checkpoint = record.get("checkpoint")
    if checkpoint is None or not Path(checkpoint).is_dir():
        raise ValueError(
            f"Cannot resume self-bootstrapping after round {round_number}: it kept no checkpoint (save_strategy "
            f"'no', or the checkpoint was removed: {checkpoint})"
        )
    trainer.restore_checkpoint(checkpoint)


def bootstrap_train(trainer, resume_from_checkpoint=None, **train_kwargs):
    """Algorithm 1 on `trainer` (a `PROTrainer` built with `bootstrap_rounds > 0`), through its public hooks
    (`train_part`, `restore_checkpoint`, `raw_train_dataset`); returns the last part's `TrainOutput`.
    `resume_from_checkpoint=True` resumes an interrupted run from `output_dir` (see the module)."""
    from datasets import Dataset

    args = trainer.args
    output_dir = Path(args.output_dir)
    source = trainer.raw_train_dataset
    if not isinstance(source, Dataset):
        raise ValueError("self-bootstrapping needs a map-style `datasets.Dataset` train set (not streaming)")
    rankings = dataset_rankings(source, drop_invalid_rows=args.drop_invalid_rows)
    parts = split_into_parts(len(rankings), args.bootstrap_rounds)
    # One schedule over every round, and one step count: a round has as many rows as its part
    steps = [trainer.steps_for_rows(len(part)) for part in parts]
    offsets = [sum(steps[:index]) for index in range(len(parts))]
    trainer.create_schedule_for_parts(sum(steps))
    finished, checkpoint = _resume_point(trainer, resume_from_checkpoint, output_dir)
    trainer.bootstrap_history = [
        json.loads((round_dir(output_dir, number) / ROUND_COMPLETE).read_text())["statistics"]
        for number in range(1, finished + 1)
    ]
    reward = _LazyRewardModel(trainer)
    output = None
    for round_index, part in enumerate(parts):
        round_number = round_index + 1
        if round_number <= finished:
            continue
        folder = round_dir(output_dir, round_number)
        resumed = round_number == finished + 1 and checkpoint is not None
        # the interrupted round resumes on the rows it was training on (sampling again would not give them back once
        # the policy had moved on)
        ranked = _load_round(folder) if resumed else _rank_round(trainer, reward, rankings, part, round_index, folder)
        started = time.perf_counter()
        output = trainer.train_part(
            Dataset.from_list(
                [{"prompt": r["prompt"], "completions": r["completions"], "scores": r["scores"]} for r in ranked.rows]
            ),
            name=f"train (bootstrap part {round_number}/{len(parts)})",
            checkpoint_subdir=folder.name,
            resume_from_checkpoint=checkpoint if round_number == finished + 1 else None,
            step_offset=offsets[round_index],
            **train_kwargs,
        )
        _finish_round(trainer, folder, round_number, ranked, training_seconds=time.perf_counter() - started)
    if output is None:  # every round had finished before this resume (their last weights are loaded above)
        last = json.loads((round_dir(output_dir, len(parts)) / ROUND_COMPLETE).read_text())
        output = TrainOutput(last["global_step"], float("nan"), {})
    return output


def _resume_point(trainer, resume_from_checkpoint, output_dir: Path) -> tuple[int, str | None]:
    """(finished rounds, checkpoint of the interrupted round or None); restores the state the last finished round
    left when the next round has no checkpoint of its own."""
    if not resume_from_checkpoint:
        return 0, None
    if resume_from_checkpoint is not True:
        raise ValueError(
            "With self-bootstrapping (bootstrap_rounds > 0) pass resume_from_checkpoint=True: the run resumes from "
            f"the round folders of output_dir ({output_dir}), not from one checkpoint"
        )
    num_rounds = trainer.args.bootstrap_rounds
    finished, checkpoint = bootstrap_resume_point(output_dir, num_rounds)
    if finished == 0 and checkpoint is None:
        raise ValueError(f"No self-bootstrapping round with a complete checkpoint in {output_dir} to resume from")
    if finished == num_rounds:
        logger.info("Every self-bootstrapping round has finished; loading the last round's weights")
    elif checkpoint is None:
        logger.info(f"Resuming self-bootstrapping at the start of round {finished + 1}")
    else:
        logger.info(f"Resuming self-bootstrapping round {finished + 1} from {checkpoint}")
    if finished and checkpoint is None:
        _restore_round_end(trainer, output_dir, finished)
    return finished, checkpoint


class _LazyRewardModel:
    """The bootstrap reward model and its tokenizer, loaded when a round first needs them (a resumed run whose
    rounds are all ranked never loads it)."""

    def __init__(self, trainer):
        self.trainer, self.model, self.tokenizer = trainer, None, None

    def get(self):
        if self.model is None:
            args = self.trainer.args
            self.model, self.tokenizer = load_reward_model(
                args.bootstrap_reward_model_name_or_path,
                device=self.trainer.accelerator.device,
                trust_remote_code=args.trust_remote_code,
            )
        return self.model, self.tokenizer


@dataclass
class _RankedRound:
    """A round's re-ranked rows (of every process, in the part's order) and what it took to make them."""

    rows: list[dict[str, Any]]
    statistics: list[dict[str, Any]]  # one per process
    empty_samples_dropped: int
    generation_seconds: float
    scoring_seconds: float


def _load_round(folder: Path) -> _RankedRound:
    """The re-ranked rows an interrupted round was training on, as it wrote them."""
    rows = read_json_rows(folder / RANKINGS_FILE)
    record = json.loads((folder / "round_statistics.json").read_text())
    return _RankedRound(
        rows,
        record["statistics"],
        record["empty_samples_dropped"],
        record["generation_seconds"],
        record["scoring_seconds"],
    )


def _rank_round(trainer, reward: _LazyRewardModel, rankings, part: range, round_index: int, folder: Path):
    """Steps 1-3 of a round: sample from the policy, score, re-rank; each process its own contiguous shard of the
    part, gathered back in order and written to the round's folder."""
    from trl.models.utils import unwrap_model_for_generation

    args, accelerator = trainer.args, trainer.accelerator
    if args.should_save and folder.exists():
        # left by an earlier run into the same output_dir: its checkpoints and completion mark would be taken for
        # this run's by a later resume
        logger.warning(f"Replacing {folder}, left by an earlier run in this output_dir")
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    reward_model, reward_tokenizer = reward.get()
    rows = [rankings[i] for i in part]
    # a contiguous shard per process, so that gathering puts the rows back in the part's order
    shard = _contiguous_ranges(len(rows), accelerator.num_processes)[accelerator.process_index]
    local = rows[shard.start : shard.stop]
    progress = not args.disable_tqdm and accelerator.is_local_main_process
    started = time.perf_counter()
    samples: list[list[str]] = []
    # every process enters (under ZeRO-3 gathering the parameters is collective), even with no rows
    with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as policy:
        if local:
            samples = generate_local(
                policy,
                trainer.processing_class,
                [row["prompt"] for row in local],
                num_generations=args.bootstrap_num_generations,
                max_completion_length=args.bootstrap_max_completion_length,
                max_prompt_length=resolve_max_prompt_length(args.max_length, args.max_prompt_length),
                temperature=args.bootstrap_temperature,
                top_p=args.bootstrap_top_p,
                top_k=args.bootstrap_top_k,
                batch_size=args.bootstrap_generation_batch_size,
                seed=args.seed + 1000 * round_index + accelerator.process_index,
                progress=progress,
                desc=f"Bootstrap round {round_index + 1}/{args.bootstrap_rounds}: sampling",
            )
    generation_seconds = time.perf_counter() - started
    empty = sum(1 for texts in samples for text in texts if not text.strip())
    generated = [[(text, POLICY_SOURCE) for text in texts if text.strip()] for texts in samples]
    started = time.perf_counter()
    ranked = (
        build_rankings(
            local,
            generated,
            reward_model=reward_model,
            tokenizer=reward_tokenizer,
            prompt_format=args.bootstrap_reward_prompt_format,
            rerank=True,
            keep_top1=args.bootstrap_keep_top1,
            drop_duplicates=True,
            batch_size=args.bootstrap_generation_batch_size,
            progress=progress,
            row_offset=part.start + shard.start,
        )
        if local
        else []
    )
    scoring_seconds = time.perf_counter() - started
    statistics = _round_statistics(ranked, args.bootstrap_num_generations)
    if accelerator.num_processes > 1:
        ranked, all_statistics, empty = gather_object(ranked), gather_object([statistics]), sum(gather_object([empty]))
    else:
        all_statistics = [statistics]
    result = _RankedRound(ranked, all_statistics, empty, generation_seconds, scoring_seconds)
    if args.should_save:
        write_jsonl(folder / RANKINGS_FILE, result.rows)
        atomic_write_json(
            folder / "round_statistics.json",
            {
                "statistics": all_statistics,
                "empty_samples_dropped": empty,
                "generation_seconds": generation_seconds,
                "scoring_seconds": scoring_seconds,
            },
        )
    accelerator.wait_for_everyone()
    return result


def _finish_round(trainer, folder: Path, round_number: int, ranked: _RankedRound, training_seconds: float) -> None:
    """Step 4's bookkeeping: the round's statistics logged and kept, and its completion mark written."""
    record = _merge_statistics(ranked.statistics)
    record.update(
        round=round_number,
        rows=len(ranked.rows),
        processes=len(ranked.statistics),
        empty_samples_dropped=ranked.empty_samples_dropped,
        generation_seconds=ranked.generation_seconds,
        scoring_seconds=ranked.scoring_seconds,
        training_seconds=training_seconds,
    )
    trainer.bootstrap_history.append(record)
    logs = {f"bootstrap/{key}": float(value) for key, value in record.items() if not isinstance(value, list)}
    logs.update({f"bootstrap/sample_rank_{k + 1}": float(n) for k, n in enumerate(record["sample_rank_histogram"])})
    trainer.log(logs)
    if trainer.args.should_save:
        atomic_write_json(
            folder / ROUND_COMPLETE,
            {
                "statistics": record,
                "checkpoint": last_complete_checkpoint(folder),
                "global_step": trainer.state.global_step,
            },
        )
    trainer.accelerator.wait_for_everyone()


def _merge_statistics(statistics: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-process round statistics combined (sums, histogram sums, sample-weighted means)."""
    samples = sum(s["samples"] for s in statistics)
    width = max((len(s["sample_rank_histogram"]) for s in statistics), default=0)
    histogram = [
        sum(s["sample_rank_histogram"][k] for s in statistics if k < len(s["sample_rank_histogram"]))
        for k in range(width)
    ]

    def weighted(key: str, weight_key: str) -> float:
        pairs = [(s[key], s[weight_key]) for s in statistics if s[weight_key]]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else float("nan")

    return {
        "samples": samples,
        "samples_asked": sum(s["samples_asked"] for s in statistics),
        "sample_reward_mean": weighted("sample_reward_mean", "samples"),
        "dataset_candidates": sum(s["dataset_candidates"] for s in statistics),
        "dataset_reward_mean": weighted("dataset_reward_mean", "dataset_candidates"),
        "sample_rank_histogram": histogram,
    }

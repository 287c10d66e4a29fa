"""Rankings from candidates: merge a dataset's own candidates with generated ones, score them with a reward model and
sort them, as the PRO authors built their training sets.

The authors re-scored even raw HH-RLHF pairs with their training reward model and re-sorted each pair by that score
(so the SFT target is the top candidate by reward); their HH_{LLM,i} sets add responses from other LLMs and re-rank
everything. `build_rankings` does both, and writes rows `trl-pro pro` trains on unchanged: `prompt`, `completions`
(best first), `scores` (same order) and `sources` (who produced each candidate: "dataset" or a generator's name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trl_pro.data.formats import PROMPT_ONLY, RANKED, SCORE_COLUMNS, detect_format, to_ranking
from trl_pro.pipeline.reward_models import score_completions


__all__ = ["DATASET_SOURCE", "RankingStats", "candidate_key", "order_candidates", "dataset_rankings", "build_rankings"]

logger = logging.getLogger(__name__)
DATASET_SOURCE = "dataset"


@dataclass
class RankingStats:
    rows: int = 0
    duplicates_dropped: int = 0
    candidates_capped: int = 0
    generated_kept: int = 0


def candidate_key(completion: Any) -> str:
    """Identity used to find exact duplicates: the text itself, or the messages as canonical JSON."""
    if isinstance(completion, str):
        return completion
    return json.dumps(completion, sort_keys=True, ensure_ascii=False)


def order_candidates(
    scores: Sequence[float], num_dataset: int, *, rerank: bool = True, keep_top1: bool = False
) -> list[int]:
    """The order (indices, best first) of candidates given their scores; the first `num_dataset` are the dataset's own,
    in its order.

    - `rerank=True` (the authors' choice): everything by score, descending; stable, so ties keep their given order;
    - `rerank=False`: the dataset's candidates keep their (human) order, generated ones follow, by score;
    - `keep_top1=True` (footnote 6 of the paper): the dataset's top-1 stays first, everything else by score.
    """
    indices = list(range(len(scores)))
    by_score = lambda subset: sorted(subset, key=lambda i: -scores[i])  # noqa: E731  (`sorted` is stable)
    if not rerank:
        return indices[:num_dataset] + by_score(indices[num_dataset:])
    if keep_top1 and num_dataset > 0:
        return [0] + by_score(indices[1:])
    return by_score(indices)


def dataset_rankings(dataset, drop_invalid_rows: bool = False, for_generation: bool = False) -> list[dict[str, Any]]:
    """Every row of a dataset in any format PROTrainer accepts, as a ranking: `prompt`, `completions` (best first:
    sorted by the dataset's scores when it has them, else in the dataset's order, with an explicit `sft_index` moved to
    the top), `scores` (or None) and `sources` (a ranked row's own `sources` column, else "dataset" for each). Bad rows
    raise a `ValueError` naming the row and field (`trl_pro.data.formats`), or with `drop_invalid_rows=True` are
    dropped and counted in a warning (raw HH-RLHF has a few dialogues whose response is empty).

    `for_generation=True` (the input of `trl-pro generate`, which adds candidates) also accepts rows with fewer than 2
    candidates: TRL's prompt-only rows (`prompt` alone, standard or conversational: no candidates, empty `sources`) and
    ranked rows of 0 or 1 candidates (e.g. the output of a `--num_generations 1` run)."""
    rows = list(dataset) if not isinstance(dataset, list) else dataset
    if not rows:
        return []
    data_format = detect_format(list(rows[0].keys()), prompt_only=for_generation)
    if data_format == PROMPT_ONLY:
        ignored = sorted(set(rows[0]) - {"prompt"})
        if ignored:  # e.g. candidates under a name no format uses: say so rather than generate without them
            logger.warning(
                f"prompt-only rows: columns {ignored} ignored (candidates are read from `completions`, "
                "`chosen`/`rejected` or `prefix`/`suffix`)"
            )
    score_column = SCORE_COLUMNS.get(data_format)
    expect_scores = score_column is not None and rows[0].get(score_column) is not None
    result, dropped = [], []
    for index, example in enumerate(rows):
        try:
            ranking = to_ranking(example, index, data_format, expect_scores, min_candidates=0 if for_generation else 2)
            sources = example.get("sources") if data_format == RANKED else None
            if sources is not None and (
                not isinstance(sources, list)
                or len(sources) != len(ranking["completions"])
                or not all(isinstance(s, str) for s in sources)
            ):
                raise ValueError(f"Row {index}, field 'sources': expected one source name per completion")
        except ValueError as error:
            if not drop_invalid_rows:
                raise
            dropped.append(str(error))
            continue
        completions, scores = list(ranking["completions"]), ranking["scores"]
        sources = list(sources) if sources is not None else [DATASET_SOURCE] * len(completions)
        order = list(range(len(completions)))
        if scores is not None:
            order.sort(key=lambda i: -scores[i])  # stable
        sft_index = ranking.get("sft_index")
        if sft_index is not None:  # an explicit sft_index names the preferred candidate: the dataset's top-1
            order.remove(sft_index)
            order.insert(0, sft_index)
        result.append(
            {
                "prompt": ranking["prompt"],
                "completions": [completions[i] for i in order],
                "scores": None if scores is None else [scores[i] for i in order],
                "sources": [sources[i] for i in order],
            }
        )
    if dropped:
        logger.warning(
            f"dropped {len(dropped)} of {len(rows)} invalid rows (drop_invalid_rows=True); first: {dropped[0]}"
        )
    return result


def build_rankings(
    rows: Sequence[dict[str, Any]],
    generated: Sequence[Sequence[tuple[Any, str]]] | None = None,
    *,
    reward_model: Any = None,
    tokenizer: Any = None,
    prompt_format: str = "auto",
    rerank: bool = True,
    keep_top1: bool = False,
    drop_duplicates: bool = True,
    max_completions: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
    stats: RankingStats | None = None,
    row_offset: int = 0,
) -> list[dict[str, Any]]:
    """Ranked rows from dataset rankings (`dataset_rankings`) and, per row, generated `(completion, source)` pairs.

    With a `reward_model` (a model + `tokenizer`, or a TRL reward function) every candidate is scored, the dataset's
    own included (as the authors re-scored raw HH-RLHF); without one, the dataset's scores are used and generated
    candidates are not allowed. Then exact duplicates are dropped (`drop_duplicates`, the first occurrence is kept),
    candidates are ordered (`order_candidates`: `rerank`, `keep_top1`) and the best `max_completions` kept.

    Output rows: `prompt`, `completions` (best first), `scores` (same order), `sources`. With `rerank=False` the order
    is not the score order, so the scores go to `rm_scores` and `scores` is None: `trl-pro pro` (which sorts by
    `scores`) then trains on the human order. A NaN or infinite score raises a `ValueError` naming the row.
    """
    stats = stats if stats is not None else RankingStats()
    if generated is not None and len(generated) != len(rows):
        raise ValueError(f"got generated candidates for {len(generated)} rows and {len(rows)} dataset rows")
    if max_completions is not None and max_completions < 2:
        raise ValueError(
            f"max_completions must be >= 2 (a ranking needs two candidates) or None, got {max_completions}"
        )
    merged = [
        _merge_candidates(row, generated[index] if generated is not None else (), drop_duplicates, stats)
        for index, row in enumerate(rows)
    ]
    if reward_model is not None:
        _score_merged(
            merged,
            reward_model,
            tokenizer,
            prompt_format=prompt_format,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            row_offset=row_offset,
        )
    else:
        _check_dataset_scores(merged, row_offset)
    return [
        _ranked_row(
            row, row_offset + index, rerank=rerank, keep_top1=keep_top1, max_completions=max_completions, stats=stats
        )
        for index, row in enumerate(merged)
    ]


def _merge_candidates(
    row: dict[str, Any], extra: Sequence[tuple[Any, str]], drop_duplicates: bool, stats: RankingStats
) -> dict[str, Any]:
    """One row's dataset candidates followed by its generated ones, exact duplicates dropped (first one kept)."""
    completions = list(row["completions"])
    sources = list(row.get("sources") or [DATASET_SOURCE] * len(completions))
    for completion, source in extra:
        completions.append(completion)
        sources.append(source)
    scores = row.get("scores")
    keep = list(range(len(completions)))
    if drop_duplicates:
        seen, keep = set(), []
        for i, completion in enumerate(completions):
            key = candidate_key(completion)
            if key in seen:
                stats.duplicates_dropped += 1
                continue
            seen.add(key)
            keep.append(i)
    return {
        "prompt": row["prompt"],
        "completions": [completions[i] for i in keep],
        "sources": [sources[i] for i in keep],
        "scores": None if scores is None else [scores[i] for i in keep if i < len(scores)],
        "num_dataset": sum(1 for i in keep if i < len(row["completions"])),
    }


def _score_merged(
    merged: list[dict[str, Any]],
    reward_model: Any,
    tokenizer: Any,
    *,
    prompt_format: str,
    batch_size: int,
    max_length: int | None,
    progress: bool,
    row_offset: int,
) -> None:
    """Every merged candidate scored by the reward model in one pass; an error names the dataset row and candidate."""
    flat_prompts, flat_completions, owners = [], [], []
    for index, row in enumerate(merged):
        for completion in row["completions"]:
            flat_prompts.append(row["prompt"])
            flat_completions.append(completion)
            owners.append(index)
    try:
        flat_scores = score_completions(
            reward_model,
            tokenizer,
            flat_prompts,
            flat_completions,
            prompt_format=prompt_format,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
        )
    except ValueError as error:
        message = str(error)
        if message.startswith("Row "):  # name the dataset row, not the flat candidate index
            flat_index = int(message.split()[1].rstrip(":,"))
            row_index = owners[flat_index]
            candidate = flat_index - owners.index(row_index)
            raise ValueError(
                f"Row {row_offset + row_index}, candidate {candidate} "
                f"(source {merged[row_index]['sources'][candidate]!r}): {message.split(':', 1)[1].strip()}"
            ) from error
        raise
    position = 0
    for row in merged:
        row["scores"] = flat_scores[position : position + len(row["completions"])]
        position += len(row["completions"])


def _check_dataset_scores(merged: list[dict[str, Any]], row_offset: int) -> None:
    """Without a reward model, every candidate must carry the dataset's score."""
    for index, row in enumerate(merged):
        if row["scores"] is None or len(row["scores"]) != len(row["completions"]):
            raise ValueError(
                f"Row {row_offset + index}: candidates without scores and no reward model to score them; pass a "
                "reward model (--reward_model_name_or_path)"
            )


def _ranked_row(
    row: dict[str, Any],
    row_number: int,
    *,
    rerank: bool,
    keep_top1: bool,
    max_completions: int | None,
    stats: RankingStats,
) -> dict[str, Any]:
    """One scored row as an output ranking: ordered (`order_candidates`), capped, with `rm_scores` where needed."""
    if len(row["completions"]) < 2:
        raise ValueError(
            f"Row {row_number}, field 'completions': fewer than 2 distinct candidates "
            f"({len(row['completions'])}) after dropping duplicates"
        )
    order = order_candidates(row["scores"], row["num_dataset"], rerank=rerank, keep_top1=keep_top1)
    if max_completions is not None and len(order) > max_completions:
        stats.candidates_capped += len(order) - max_completions
        order = order[:max_completions]
    scores = [row["scores"][i] for i in order]
    lifted = None
    if keep_top1 and rerank and len(scores) > 1 and scores[0] < max(scores[1:]):
        lifted = list(scores)
        # footnote 6: the top-1 stays first; its recorded score is lifted to the best one so that a trainer
        # sorting by `scores` keeps it there (stable sort), and the dynamic temperature sees a tie, not an inversion
        scores[0] = max(scores[1:])
    result = {
        "prompt": row["prompt"],
        "completions": [row["completions"][i] for i in order],
        "scores": scores if rerank else None,
        "sources": [row["sources"][i] for i in order],
    }
    if not rerank:
        result["rm_scores"] = scores
    elif lifted is not None:
        result["rm_scores"] = lifted  # the reward model's own scores, before the top-1 was lifted
    stats.generated_kept += sum(1 for s in result["sources"] if s != DATASET_SOURCE)
    stats.rows += 1
    return result

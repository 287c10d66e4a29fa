"""The metrics of the PRO paper's Table 2: the authors' response cutting, character BLEU, sacreBLEU, and the reward
model's sigmoid score, per subset and sample-weighted in total."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from trl_pro.evaluation.test_data import TOTAL, EvalExample


#: The authors' stop markers, searched in this order (`infer_func_now.py`).
STOP_MARKERS = ("Human:", "human:", "Assistant:", "assistant:")


def cut_response(text: str) -> str:
    """The authors' post-processing of a generation: strip, then cut before the first stop marker (each of "Human:",
    "human:", "Assistant:", "assistant:" in turn) and strip the right end."""
    text = text.strip()
    for stop in STOP_MARKERS:
        index = text.find(stop)
        if index >= 0:
            text = text[:index].rstrip()
    return text


def authors_bleu(hypothesis: str, reference: str) -> float:
    """The authors' BLEU of one response, in [0, 1]: `sentence_bleu([reference], hypothesis)` on the stripped raw
    strings. nltk iterates over the characters of a string, so this is character 4-gram BLEU, without smoothing (0
    whenever some n-gram order has no match)."""
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        # nltk warns on every hypothesis with no 2/3/4-gram overlap; its value (0) is the authors' value
        warnings.simplefilter("ignore")
        return float(sentence_bleu([reference.strip()], hypothesis.strip()))


def corpus_sacrebleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Standard corpus BLEU (sacrebleu's defaults: 13a tokenization, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def sigmoid(x: float) -> float:
    # Split by sign so that a large |x| never overflows `exp`
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def check_single_score_head(reward_model, name: str = "reward model") -> None:
    """A reward model gives one score per text: its classification head has one output."""
    num_labels = getattr(reward_model.config, "num_labels", 1)
    if num_labels != 1:
        raise ValueError(
            f"{name}: its head gives {num_labels} scores per text (num_labels={num_labels}); a reward "
            "model must give a single score (num_labels=1)"
        )


def reward_scores(
    reward_model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    prompt_format: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
) -> list[float]:
    """Raw reward-model scores of (prompt, response) pairs, through `trl_pro.pipeline.reward_models.score_completions` (the
    loading and prompt formats `trl-pro rank` uses, incl. the paper's OpenAssistant `oasst` format). The response
    is given with a leading space, as it follows "Assistant:" in an HH-RLHF dialogue."""
    from trl_pro.pipeline.reward_models import score_completions

    check_single_score_head(reward_model)
    completions = [" " + response if response else response for response in responses]
    scores = score_completions(
        reward_model,
        tokenizer,
        list(prompts),
        completions,
        prompt_format=prompt_format,
        batch_size=batch_size,
        progress=progress,
    )
    scores = [float(score) for score in scores]
    bad = [i for i, score in enumerate(scores) if not math.isfinite(score)]
    if bad:
        raise ValueError(f"the reward model gave a non-finite score ({scores[bad[0]]}) to prompt {bad[0]}")
    return scores


def compute_metrics(
    test_data: dict[str, list[EvalExample]],
    responses: dict[str, str],
    rewards: dict[str, float] | None = None,
    function_rewards: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """`{subset: {"bleu", "sacrebleu", "reward", "n"}, ..., "total": {...}}` on the paper's 0-100 scale.

    `rewards` maps prompts to raw reward-model scores (sigmoid is applied here), or None (then `reward` is None).
    `function_rewards` maps each reward function's name to `{prompt: value}`: a metric of that name, the mean raw
    value (on the function's own scale). The total is sample-weighted: the mean over all rows of all subsets (BLEU,
    rewards), the corpus BLEU of all rows.
    """
    function_rewards = function_rewards or {}
    all_function: dict[str, list[float]] = {name: [] for name in function_rewards}
    results: dict[str, dict[str, float | int | None]] = {}
    all_bleu, all_reward, all_hyp, all_ref = [], [], [], []
    for subset, examples in test_data.items():
        if not examples:
            raise ValueError(f"subset '{subset}' has no rows")
        hyps = [responses[example.prompt] for example in examples]
        refs = [example.reference for example in examples]
        bleus = [authors_bleu(h, r) for h, r in zip(hyps, refs)]
        entry: dict[str, float | int | None] = {
            "bleu": 100.0 * sum(bleus) / len(bleus),
            "sacrebleu": corpus_sacrebleu([h.strip() for h in hyps], [r.strip() for r in refs]),
            "reward": None,
            "n": len(examples),
        }
        if rewards is not None:
            values = [sigmoid(rewards[example.prompt]) for example in examples]
            entry["reward"] = 100.0 * sum(values) / len(values)
            all_reward += values
        for name, values_by_prompt in function_rewards.items():
            values = [values_by_prompt[example.prompt] for example in examples]
            entry[name] = sum(values) / len(values)
            all_function[name] += values
        results[subset] = entry
        all_bleu += bleus
        all_hyp += [h.strip() for h in hyps]
        all_ref += [r.strip() for r in refs]
    results[TOTAL] = {
        "bleu": 100.0 * sum(all_bleu) / len(all_bleu),
        "sacrebleu": corpus_sacrebleu(all_hyp, all_ref),
        "reward": 100.0 * sum(all_reward) / len(all_reward) if rewards is not None else None,
        "n": len(all_bleu),
        **{name: sum(values) / len(values) for name, values in all_function.items()},
    }
    return results

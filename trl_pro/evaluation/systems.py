"""Evaluation as the PRO paper reports it (Table 2): BLEU and reward-model score per HH-RLHF subset and in total.

What follows the authors' evaluation code (AlibabaResearch/DAMO-ConvAI, `PRO/eval_hh` and `PRO/eval`):

- generation: greedy (`num_beams=1, do_sample=False`), `max_new_tokens=128`, the prompt
  "\\n\\nHuman: ...\\n\\nAssistant:" left-truncated to 512 - 128 = 384 tokens, batched with left padding;
- the response is the generated text stripped, then cut before the first "Human:", "human:", "Assistant:" or
  "assistant:" (in that order of search, each cut followed by a right strip);
- `bleu`: `nltk.translate.bleu_score.sentence_bleu([reference.strip()], hypothesis.strip())` on raw strings (so
  character 4-grams, no smoothing), averaged over rows; the reference is the row's first candidate (the human-chosen
  response; the authors re-ranked harmless-base by their reward model, so there it is the one it scores higher);
- `reward`: sigmoid of the evaluation reward model's score, averaged over rows;
- total: sample-weighted over all rows of all subsets (the authors sum over the rows of the four files and divide by
  the number of rows), not a mean of subset means.

All three metrics are reported on the paper's 0-100 scale (`bleu` and `reward` x 100; `sacrebleu`, the standard
corpus BLEU on 13a-tokenized words, is 0-100 already).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trl_pro.evaluation.metrics import check_single_score_head, compute_metrics, reward_scores
from trl_pro.evaluation.report import format_results_markdown, plot_results
from trl_pro.evaluation.responses import MAX_NEW_TOKENS, MAX_PROMPT_LENGTH, generate_responses
from trl_pro.evaluation.reward_functions import resolve_reward_funcs, score_with_reward_func
from trl_pro.evaluation.test_data import (
    RESPONSES_SUFFIXES,
    EvalExample,
    is_responses_file,
    read_responses_file,
    responses_rows,
    unique_prompts,
)
from trl_pro.pipeline.models import TINY_LLAMA, load_policy
from trl_pro.utils.cache import KeyedCache, model_identity
from trl_pro.utils.io import atomic_write_json, atomic_write_text, write_jsonl


#: File name of a comparison folder's manifest: `{"systems": [{"name", "path", "prompt_suffix"}, ...]}`.
COMPARISON_MANIFEST = "comparison.json"


@dataclass
class System:
    """A system to evaluate: a model (`path` is a folder, hub id or PEFT adapter folder) or a responses file."""

    name: str
    path: str
    prompt_suffix: str = ""
    kind: str = field(default="")  # "model" or "responses"; detected from `path` when empty

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"system name {self.name!r}: give a non-empty name without '/'")
        if not self.kind:
            looks_like_file = self.path.endswith(RESPONSES_SUFFIXES)
            if looks_like_file and not Path(self.path).is_file():
                raise ValueError(f"system '{self.name}': responses file {self.path} does not exist")
            self.kind = "responses" if is_responses_file(self.path) else "model"


def parse_system_specs(specs: Sequence[str], suffixes: Sequence[str] = ()) -> list[System]:
    """`["name=path", ...]` and `["name=suffix", ...]` -> systems (a name given twice is an error)."""
    prompt_suffixes: dict[str, str] = {}
    for spec in suffixes:
        name, sep, suffix = spec.partition("=")
        if not sep:
            raise ValueError(f"--prompt_suffix {spec!r}: expected NAME=TEXT")
        prompt_suffixes[name] = suffix.encode().decode("unicode_escape") if "\\" in suffix else suffix
    systems: list[System] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(
                f"--system {spec!r}: expected NAME=PATH (a model folder, hub id, PEFT adapter folder or "
                "responses .jsonl file)"
            )
        if any(system.name == name for system in systems):
            raise ValueError(f"--system: the name {name!r} is given twice")
        systems.append(System(name=name, path=path, prompt_suffix=prompt_suffixes.pop(name, "")))
    if prompt_suffixes:
        raise ValueError(f"--prompt_suffix names no system: {', '.join(prompt_suffixes)}")
    return systems


def read_comparison_folder(folder: str | os.PathLike) -> list[System]:
    """The systems listed by a comparison folder's `comparison.json`: `{"systems": [{"name": ..., "path": ...,
    "prompt_suffix": ...}, ...]}`, `path` relative to the folder (or absolute), `prompt_suffix` optional."""
    folder = Path(folder)
    manifest = folder / COMPARISON_MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{folder}: no {COMPARISON_MANIFEST} (a comparison folder lists its systems there)")
    data = json.loads(manifest.read_text())
    entries = data.get("systems") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{manifest}: expected {{"systems": [{{"name": ..., "path": ...}}, ...]}}')
    systems = []
    for index, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("path"), str)
        ):
            raise ValueError(f"{manifest}: systems[{index}] needs string fields 'name' and 'path'")
        path = Path(entry["path"])
        path = path if path.is_absolute() else folder / path
        systems.append(System(name=entry["name"], path=str(path), prompt_suffix=entry.get("prompt_suffix") or ""))
    return systems


def responses_cache_key(
    system: System,
    *,
    max_new_tokens: int,
    max_prompt_length: int,
    dtype: str | None = None,
    load_in_4bit: bool = False,
    seed: int = 0,
) -> dict:
    """What a model system's responses depend on: the model (its weights, see `model_identity`, and how it is
    loaded) and the generation settings."""
    loading = {"dtype": dtype, "load_in_4bit": load_in_4bit}
    if system.path == TINY_LLAMA:  # built, not loaded: the seed is its weights
        loading["seed"] = seed
    return {
        "model": model_identity(system.path, **loading),
        "prompt_suffix": system.prompt_suffix,
        "max_new_tokens": max_new_tokens,
        "max_prompt_length": max_prompt_length,
    }


def reward_cache_key(
    reward_model_name_or_path: str, *, prompt_format: str, dtype: str | None = None, load_in_4bit: bool = False
) -> dict:
    """What reward scores depend on: the reward model (weights and loading) and the prompt format."""
    return {
        "model": model_identity(reward_model_name_or_path, dtype=dtype, load_in_4bit=load_in_4bit),
        "prompt_format": prompt_format,
    }


def system_responses(
    system: System,
    test_data: dict[str, list[EvalExample]],
    output_dir: str | os.PathLike,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    batch_size: int = 8,
    load_in_4bit: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, str]:
    """A system's `{prompt: response}` on the test prompts, written to `<output_dir>/responses/<name>.jsonl`.

    A responses file is read and checked (every test prompt, no other). A model generates; its batches are cached in
    `<output_dir>/cache/<name>.jsonl`, keyed on the model's weights and the generation settings
    (`responses_cache_key`), so an interrupted run resumes, a finished one is not generated again, and responses of
    another model or other settings (a model retrained into the same folder) are logged as stale and regenerated.
    """
    output_dir = Path(output_dir)
    prompts = unique_prompts(test_data)
    if system.kind == "responses":
        responses = read_responses_file(system.path, prompts)
    else:
        key = responses_cache_key(
            system,
            max_new_tokens=max_new_tokens,
            max_prompt_length=max_prompt_length,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            seed=seed,
        )
        cache = KeyedCache(
            output_dir / "cache" / f"{system.name}.jsonl", key, what=f"responses of system '{system.name}'"
        )
        cached = {row["prompt"]: row["response"] for row in cache.rows()}
        if all(prompt in cached for prompt in prompts):  # finished before: nothing to load or generate
            responses = {prompt: cached[prompt] for prompt in prompts}
        else:
            model, tokenizer = load_policy(
                system.path,
                load_in_4bit=load_in_4bit,
                dtype=dtype,
                device=device,
                trust_remote_code=trust_remote_code,
                seed=seed,
            )
            responses = generate_responses(
                model,
                tokenizer,
                prompts,
                prompt_suffix=system.prompt_suffix,
                max_new_tokens=max_new_tokens,
                max_prompt_length=max_prompt_length,
                batch_size=batch_size,
                cache_path=cache.path,
                progress=progress,
                desc=f"generating ({system.name})",
            )
            del model
    write_jsonl(output_dir / "responses" / f"{system.name}.jsonl", responses_rows(test_data, responses))
    return responses


def evaluate_systems(
    systems: Sequence[System],
    test_data: dict[str, list[EvalExample]],
    output_dir: str | os.PathLike,
    *,
    reward_model_name_or_path: str | None = None,
    reward_prompt_format: str = "auto",
    reward_batch_size: int = 8,
    reward_load_in_4bit: bool = False,
    max_new_tokens: int = MAX_NEW_TOKENS,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    batch_size: int = 8,
    load_in_4bit: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    reward_funcs: Sequence[Callable[..., Sequence[float]] | str] | None = None,
) -> dict[str, dict[str, dict]]:
    """Evaluate every system; writes results.json, results.md, results.png and one responses file per system in
    `output_dir` (all atomically) and returns the results. Generated responses and reward scores are cached under
    `output_dir/cache`, keyed on the models' weights and the settings (`responses_cache_key`, `reward_cache_key`):
    a rerun (or a resumed run) redoes nothing, and a stale cache is logged and recomputed, never reused.

    `reward_funcs`: Python reward functions, TRL GRPO style (`f(prompts=[...], completions=[...], **kwargs)` -> one
    float per completion), as callables or dotted import paths; each is a metric named after the function, the mean
    of its raw values (`trl_pro.evaluation.reward_functions`). They are called on every system's responses (not
    cached: they are cheap and deterministic by contract)."""
    funcs = resolve_reward_funcs(reward_funcs)  # before any generation: a bad path fails at once
    if not systems:
        raise ValueError("no system to evaluate: give --system NAME=PATH (or a comparison folder)")
    names = [system.name for system in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must differ, got {names}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    all_responses = {}
    for system in systems:
        all_responses[system.name] = system_responses(
            system,
            test_data,
            output_dir,
            max_new_tokens=max_new_tokens,
            max_prompt_length=max_prompt_length,
            batch_size=batch_size,
            load_in_4bit=load_in_4bit,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            seed=seed,
            progress=progress,
        )

    all_rewards: dict[str, dict[str, float] | None] = dict.fromkeys(names)
    if reward_model_name_or_path:
        key = reward_cache_key(
            reward_model_name_or_path,
            prompt_format=reward_prompt_format,
            dtype=dtype,
            load_in_4bit=reward_load_in_4bit,
        )
        reward_model = tokenizer = None
        for system in systems:
            responses = all_responses[system.name]
            cache = KeyedCache(
                output_dir / "cache" / f"{system.name}.rewards.jsonl",
                key,
                what=f"reward scores of system '{system.name}'",
            )
            scored = {(row["prompt"], row["response"]): row["score"] for row in cache.rows()}
            todo = [(p, r) for p, r in responses.items() if (p, r) not in scored]
            if todo:
                if reward_model is None:
                    from trl_pro.pipeline.reward_models import load_reward_model

                    reward_model, tokenizer = load_reward_model(
                        reward_model_name_or_path,
                        load_in_4bit=reward_load_in_4bit,
                        dtype=dtype,
                        device=device,
                        trust_remote_code=trust_remote_code,
                    )
                    check_single_score_head(reward_model, f"reward model {reward_model_name_or_path}")
                scores = reward_scores(
                    reward_model,
                    tokenizer,
                    [p for p, _ in todo],
                    [r for _, r in todo],
                    prompt_format=reward_prompt_format,
                    batch_size=reward_batch_size,
                    progress=progress,
                )
                cache.append([{"prompt": p, "response": r, "score": s} for (p, r), s in zip(todo, scores)])
                scored.update(zip(todo, scores))
            all_rewards[system.name] = {p: scored[(p, r)] for p, r in responses.items()}

    function_rewards: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    for system_name in names:
        prompts = list(all_responses[system_name])
        for func_name, func in funcs.items():
            values = score_with_reward_func(func_name, func, prompts, [all_responses[system_name][p] for p in prompts])
            function_rewards[system_name][func_name] = dict(zip(prompts, values))
    results = {
        name: compute_metrics(test_data, all_responses[name], all_rewards[name], function_rewards[name])
        for name in names
    }
    atomic_write_json(output_dir / "results.json", results)
    notes = []
    if reward_model_name_or_path:
        notes.append(f"Reward model: `{reward_model_name_or_path}` (prompt format `{reward_prompt_format}`).")
    else:
        notes.append("No reward model given (--reward_model_name_or_path): Reward is not computed.")
    if funcs:
        notes.append(
            "Reward functions (mean raw value per row, on their own scale): "
            + ", ".join(f"`{n}`" for n in funcs)
            + "."
        )
    suffixes = [f"`{s.name}`: {s.prompt_suffix!r}" for s in systems if s.prompt_suffix]
    if suffixes:
        notes.append("Prompt suffixes: " + "; ".join(suffixes) + ".")
    atomic_write_text(output_dir / "results.md", format_results_markdown(results, notes))
    if plot:
        plot_results(results, output_dir / "results.png")
    return results

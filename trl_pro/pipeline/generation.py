"""Candidate generation: k completions per prompt from a local model, an OpenAI-compatible endpoint or vLLM.

- `load_policy` + `generate_local`: a causal LM through transformers `generate` (batched, left padding, prompts
  truncated from the left, sampling or greedy, chat template for conversational prompts, a PEFT adapter, 4-bit).
  `generate_local` takes an already loaded model, so the evaluation code and self-bootstrapping reuse it.
- `generate_openai`: an OpenAI-compatible server (a ChatGPT-like API, vLLM's or `transformers serve`) through the
  `openai` client, chat or completions, with bounded retries and exponential backoff.
- `generate_vllm`: vLLM in the same process, when it is installed and a GPU is present (not run here: no GPU).
- `CandidateSource` + `collect_candidates`: any of these under a name; every candidate records the name of the source
  that produced it; a source that returns fewer candidates than asked is logged with the count; empty generations
  are dropped (and counted) unless `keep_empty=True`.
- `SOURCE_KINDS`: the registry `trl-pro generate` walks to turn its arguments into a source (a local model,
  `--base_url`, `--use_vllm`): each `SourceKind` has a name, a predicate saying whether the arguments select it and a
  builder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trl_pro.data.formats import is_messages
from trl_pro.data.tokenization import token_ids, truncate_prompt


__all__ = [
    "render_prompt",
    "generate_local",
    "generation_mode",
    "generate_openai",
    "generate_vllm",
    "CandidateSource",
    "GenerationStats",
    "local_source",
    "openai_source",
    "vllm_source",
    "SourceKind",
    "SOURCE_KINDS",
    "collect_candidates",
]

logger = logging.getLogger(__name__)


def retryable_openai_errors() -> tuple[type[Exception], ...]:
    """The `openai` errors a retry can cure: connection errors, time-outs, rate limits (429) and server errors (5xx).
    Authentication, permission and bad-request errors (401, 403, 400, 404, 422) fail the same way every time."""
    import openai

    return (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


def _prompt_label(prompt: Any, index: int) -> str:
    text = prompt if isinstance(prompt, str) else " | ".join(str(m.get("content", "")) for m in prompt)
    text = " ".join(text.split())
    return f"prompt {index} ({text[:60]!r}{'...' if len(text) > 60 else ''})"


# --------------------------------------------------------------------------------------------------------- local model


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    """The text a policy continues: conversational prompts through the tokenizer's chat template with the
    generation prompt, plain text as it is."""
    if is_messages(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("a conversational prompt needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    return prompt


def _prompt_ids(prompt: Any, tokenizer: Any, max_prompt_length: int | None) -> list[int]:
    """Prompt token ids exactly as the trainer makes them (`trl_pro.data.formats`): the chat template (with the generation
    prompt) for messages, the tokenizer's own special tokens for text; cut from the left to `max_prompt_length`,
    keeping the special tokens the tokenizer puts first (LLaMA's BOS)."""
    render_prompt(prompt, tokenizer)  # the checks: a chat template for messages, a string otherwise
    if is_messages(prompt):
        ids = token_ids(tokenizer, prompt, add_generation_prompt=True)
    else:
        ids = token_ids(tokenizer, prompt)
    return truncate_prompt(tokenizer, ids, max_prompt_length)


@contextlib.contextmanager
def generation_mode(model: Any):
    """Eval mode, the KV cache on and gradient checkpointing off for the duration of `generate`, restored after
    (a model being trained has checkpointing on and `use_cache` off)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = model.training
    checkpointing = bool(getattr(base, "is_gradient_checkpointing", False))
    config = getattr(base, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if checkpointing:
        base.gradient_checkpointing_disable()
    if config is not None:
        config.use_cache = True
    model.eval()
    try:
        yield model
    finally:
        if config is not None and use_cache is not None:
            config.use_cache = use_cache
        if checkpointing:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=getattr(base, "_gradient_checkpointing_kwargs", None)
            )
        model.train(was_training)


def generate_local(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    num_generations: int = 1,
    max_completion_length: int = 128,
    max_prompt_length: int | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 8,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "Generating",
) -> list[list[str]]:
    """`num_generations` completions for each prompt (decoded, special tokens removed, cut at the EOS).

    Prompts are tokenized as the trainer does (chat template for messages), truncated from the left to
    `max_prompt_length` tokens (keeping a leading BOS), left-padded and
    generated `batch_size` prompts at a time (each with `num_return_sequences=num_generations`). `do_sample=False` is
    greedy decoding (`num_generations` must then be 1). Returns one list per prompt, in order.
    """
    from tqdm.auto import tqdm

    _check_local_settings(num_generations, do_sample, batch_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation_config = _local_generation_config(
        tokenizer,
        pad_id,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
    )
    encoded = _encode_prompts(prompts, tokenizer, max_prompt_length)
    device = next(model.parameters()).device
    results: list[list[str]] = []
    with _seeded(seed, device), generation_mode(model), torch.inference_mode():
        for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=not progress):
            batch = encoded[start : start + batch_size]
            input_ids, attention_mask = _left_padded(batch, pad_id)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
            )
            completion_ids = output[:, input_ids.shape[1] :].tolist()
            results.extend(_decode_completions(completion_ids, len(batch), num_generations, tokenizer))
    return results


def _check_local_settings(num_generations: int, do_sample: bool, batch_size: int) -> None:
    """Reject settings `generate_local` cannot honour, before any work."""
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if not do_sample and num_generations > 1:
        raise ValueError("greedy decoding (do_sample=False) gives one completion per prompt; set num_generations=1")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _local_generation_config(
    tokenizer: Any,
    pad_id: int | None,
    *,
    num_generations: int,
    max_completion_length: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int | None,
) -> Any:
    """The `GenerationConfig` of one `generate_local` call (sampling settings only when sampling)."""
    from transformers import GenerationConfig

    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k if top_k else 0) if do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_completion_length,
        do_sample=do_sample,
        num_return_sequences=num_generations,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )


def _encode_prompts(prompts: Sequence[Any], tokenizer: Any, max_prompt_length: int | None) -> list[list[int]]:
    """Every prompt's token ids (`_prompt_ids`); a bad or empty prompt raises a `ValueError` naming its row."""
    encoded = []
    for index, prompt in enumerate(prompts):
        try:
            ids = _prompt_ids(prompt, tokenizer, max_prompt_length)
        except ValueError as error:
            raise ValueError(f"Row {index}, field 'prompt': {error}") from error
        if not ids:
            raise ValueError(f"Row {index}, field 'prompt': the prompt is empty after tokenization")
        encoded.append(ids)
    return encoded


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """With a `seed`: the global RNG (and `device`'s, on CUDA) seeded inside, restored after; else nothing."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _left_padded(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of a batch, left-padded: every prompt ends where generation starts."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _decode_completions(
    completion_ids: list[list[int]], num_prompts: int, num_generations: int, tokenizer: Any
) -> list[list[str]]:
    """The generated ids of a batch as texts, one list of `num_generations` per prompt, each cut at the EOS."""
    eos_id = tokenizer.eos_token_id
    results = []
    for row in range(num_prompts):
        texts = []
        for ids in completion_ids[row * num_generations : (row + 1) * num_generations]:
            if eos_id is not None and eos_id in ids:
                ids = ids[: ids.index(eos_id)]
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        results.append(texts)
    return results


# ------------------------------------------------------------------------------------------------- OpenAI-compatible


def generate_openai(
    prompts: Sequence[Any],
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    client: Any = None,
    num_generations: int = 1,
    max_completion_length: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    api: str = "auto",
    max_retries: int = 3,
    backoff_seconds: float = 1.0,
    timeout: float = 120.0,
    progress: bool = True,
) -> list[list[str]]:
    """`num_generations` completions per prompt from an OpenAI-compatible endpoint.

    `api`: "chat" (`/chat/completions`; an HH text prompt is split into messages), "completions" (`/completions`,
    plain text; a conversational prompt is an error) or "auto" (chat for conversational prompts, completions for text).
    One request per completion (servers such as `transformers serve` ignore `n`). A connection error, timeout, rate
    limit or 5xx is retried `max_retries` times, waiting `backoff_seconds * 2**attempt`; then, or at once for any other
    error, a `RuntimeError` names the prompt.
    """
    import openai
    from tqdm.auto import tqdm

    from trl_pro.pipeline.reward_models import split_hh_dialogue

    if api not in ("auto", "chat", "completions"):
        raise ValueError(f"api must be 'auto', 'chat' or 'completions', got {api!r}")
    if client is None:
        client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout)
    retryable = retryable_openai_errors()
    sampling = dict(max_tokens=max_completion_length, temperature=temperature, top_p=top_p)
    results = []
    for index, prompt in enumerate(tqdm(prompts, desc=f"Generating ({model})", disable=not progress)):
        use_chat = api == "chat" or (api == "auto" and is_messages(prompt))
        if not use_chat and is_messages(prompt):
            raise ValueError(f"Row {index}, field 'prompt': a conversational prompt needs api='chat'")
        messages = (prompt if is_messages(prompt) else split_hh_dialogue(prompt)) if use_chat else None
        request = functools.partial(_openai_text, client, model, prompt, messages, **sampling)
        where = functools.partial(_failed_request, base_url or getattr(client, "base_url", ""), prompt, index)
        texts = []
        for _ in range(num_generations):
            texts.append(
                _with_retries(
                    request, retryable=retryable, max_retries=max_retries, backoff_seconds=backoff_seconds, where=where
                )
            )
        results.append(texts)
    return results


def _openai_text(client: Any, model: str, prompt: Any, messages: list[dict] | None, **sampling: Any) -> str:
    """One completion's text: from `/chat/completions` when `messages` is given, else from `/completions`."""
    if messages is not None:
        response = client.chat.completions.create(model=model, messages=messages, **sampling)
        return response.choices[0].message.content or ""
    response = client.completions.create(model=model, prompt=prompt, **sampling)
    return response.choices[0].text or ""


def _failed_request(endpoint: Any, prompt: Any, index: int, verb: str) -> str:
    """The start of a failed request's message: the endpoint, what happened, and the prompt."""
    return f"Endpoint {endpoint} {verb} {_prompt_label(prompt, index)}"


def _with_retries(
    request: Callable[[], str],
    *,
    retryable: tuple[type[Exception], ...],
    max_retries: int,
    backoff_seconds: float,
    where: Callable[[str], str],
) -> str:
    """`request()`, retried with exponential backoff on `retryable` errors; a `RuntimeError` naming the prompt after."""
    import openai

    for attempt in range(max_retries + 1):
        try:
            return request()
        except retryable as error:
            if attempt == max_retries:
                raise RuntimeError(
                    f"{where('failed for')} after {max_retries + 1} attempts: {type(error).__name__}: {error}"
                ) from error
            time.sleep(backoff_seconds * 2**attempt)
        except openai.OpenAIError as error:
            raise RuntimeError(f"{where('refused')}: {type(error).__name__}: {error}") from error
    raise ValueError(f"max_retries must be >= 0, got {max_retries}")  # no attempt was made


# ----------------------------------------------------------------------------------------------------------------- vLLM


def generate_vllm(
    model_name_or_path: str,
    prompts: Sequence[Any],
    *,
    num_generations: int = 1,
    max_completion_length: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    llm: Any = None,
) -> list[list[str]]:
    """vLLM in this process (needs `vllm` and a GPU; not run here). Conversational prompts go through the model's chat
    template (vLLM's tokenizer)."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError("generate_vllm needs vLLM: pip install vllm (GPU only)") from error
    if not torch.cuda.is_available():
        raise RuntimeError("generate_vllm needs a GPU; use generate_local or an OpenAI-compatible endpoint instead")
    llm = llm or vllm.LLM(model=model_name_or_path, seed=seed or 0)
    tokenizer = llm.get_tokenizer()
    params = vllm.SamplingParams(
        n=num_generations,
        max_tokens=max_completion_length,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k if top_k else -1,
        seed=seed,
    )
    texts = [render_prompt(prompt, tokenizer) for prompt in prompts]
    outputs = llm.generate(texts, params)
    return [[choice.text for choice in output.outputs] for output in outputs]


# -------------------------------------------------------------------------------------------------------------- sources


@dataclass
class CandidateSource:
    """A named candidate generator: `generate(prompts, num_generations) -> one list of texts per prompt`."""

    name: str
    generate: Callable[[Sequence[Any], int], list[list[str]]]


@dataclass
class GenerationStats:
    """What `collect_candidates` did: candidates asked and produced, per source; short prompts; dropped empties."""

    asked: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    short_prompts: dict[str, int] = field(default_factory=dict)
    dropped_empty: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def local_source(model: Any, tokenizer: Any, name: str | None = None, **generate_kwargs: Any) -> CandidateSource:
    """A loaded causal LM as a candidate source (see `generate_local` for the keyword arguments)."""
    label = name or f"local:{getattr(getattr(model, 'config', None), '_name_or_path', 'model')}"
    return CandidateSource(
        label, lambda prompts, k: generate_local(model, tokenizer, prompts, num_generations=k, **generate_kwargs)
    )


def openai_source(model: str, name: str | None = None, **generate_kwargs: Any) -> CandidateSource:
    """An OpenAI-compatible endpoint as a candidate source (see `generate_openai` for the keyword arguments)."""
    return CandidateSource(
        name or f"openai:{model}",
        lambda prompts, k: generate_openai(prompts, model=model, num_generations=k, **generate_kwargs),
    )


def vllm_source(model_name_or_path: str, name: str | None = None, **generate_kwargs: Any) -> CandidateSource:
    """vLLM in-process as a candidate source (GPU only; see `generate_vllm`)."""
    return CandidateSource(
        name or f"vllm:{model_name_or_path}",
        lambda prompts, k: generate_vllm(model_name_or_path, prompts, num_generations=k, **generate_kwargs),
    )


# --------------------------------------------------------------------------------------------- source kinds (CLI)


@dataclass(frozen=True)
class SourceKind:
    """One way to get candidates from command-line arguments (`trl-pro generate`'s `GenerateArguments`, or anything
    with the same attributes): `selects(args)` says whether the arguments choose it, `check(args)` raises a
    `ValueError` for what they lack (before any data is read), `build(args, progress)` returns the `CandidateSource`
    and a seed box (a dict whose "seed" the caller sets before each shard, or None when the source takes no per-shard
    seed). `flag` and `usage` name it in error messages."""

    name: str
    flag: str
    usage: str
    selects: Callable[[Any], bool]
    build: Callable[[Any, bool], tuple[CandidateSource, dict[str, int] | None]]
    check: Callable[[Any], None] = lambda args: None


def _sampling_args(args: Any) -> dict[str, Any]:
    """The sampling settings every source kind takes."""
    return dict(max_completion_length=args.max_completion_length, temperature=args.temperature, top_p=args.top_p)


def _selects_local(args: Any) -> bool:
    """A model with neither an endpoint nor vLLM: the model itself, through transformers."""
    return bool(args.model_name_or_path and not args.base_url and not args.use_vllm)


def _build_local(args: Any, progress: bool) -> tuple[CandidateSource, dict[str, int]]:
    """`load_policy` + `generate_local`, seeded from the returned seed box at each call."""
    from trl_pro.pipeline.models import load_policy

    model, tokenizer = load_policy(
        args.model_name_or_path,
        adapter_path=args.adapter_path,
        load_in_4bit=args.load_in_4bit,
        dtype=args.dtype,
        device="cuda" if torch.cuda.is_available() else None,
        trust_remote_code=args.trust_remote_code,
    )
    name = args.source_name or args.model_name_or_path + (f"+{args.adapter_path}" if args.adapter_path else "")
    sampling = _sampling_args(args)
    seed_box = {"seed": args.seed}

    def generate(prompts, k):
        return generate_local(
            model,
            tokenizer,
            prompts,
            num_generations=k,
            max_prompt_length=args.max_prompt_length,
            do_sample=args.do_sample,
            top_k=args.top_k,
            batch_size=args.generation_batch_size,
            seed=seed_box["seed"],
            progress=progress,
            **sampling,
        )

    return CandidateSource(name, generate), seed_box


def _check_openai(args: Any) -> None:
    """An endpoint needs the name of the model it serves."""
    if not (args.api_model or args.model_name_or_path):
        raise ValueError("--base_url needs --api_model (the model name the endpoint serves)")


def _build_openai(args: Any, progress: bool) -> tuple[CandidateSource, None]:
    """`openai_source` on `--base_url`, the key read from the environment variable `--api_key_env`."""
    return openai_source(
        args.api_model or args.model_name_or_path,
        name=args.source_name,
        base_url=args.base_url,
        api_key=os.environ.get(args.api_key_env),
        api=args.api,
        max_retries=args.max_retries,
        progress=progress,
        **_sampling_args(args),
    ), None


def _check_vllm(args: Any) -> None:
    """vLLM needs the model to load."""
    if not args.model_name_or_path:
        raise ValueError("--use_vllm needs --model_name_or_path")


def _build_vllm(args: Any, progress: bool) -> tuple[CandidateSource, None]:
    """`vllm_source` on `--model_name_or_path` (GPU only)."""
    return vllm_source(
        args.model_name_or_path, name=args.source_name, top_k=args.top_k, seed=args.seed, **_sampling_args(args)
    ), None


#: The candidate source kinds `trl-pro generate` chooses from, in the order its messages name them.
SOURCE_KINDS: tuple[SourceKind, ...] = (
    SourceKind("local", "--model_name_or_path", "--model_name_or_path (a local model)", _selects_local, _build_local),
    SourceKind(
        "openai",
        "--base_url",
        "--base_url with --api_model (an OpenAI-compatible endpoint)",
        lambda args: bool(args.base_url),
        _build_openai,
        _check_openai,
    ),
    SourceKind(
        "vllm",
        "--use_vllm",
        "--use_vllm with --model_name_or_path (vLLM in this process, GPU only)",
        lambda args: bool(args.use_vllm),
        _build_vllm,
        _check_vllm,
    ),
)


def _is_empty(text: Any) -> bool:
    if is_messages(text):
        return not any(str(m["content"]).strip() for m in text)
    return not isinstance(text, str) or not text.strip()


def collect_candidates(
    sources: Sequence[CandidateSource],
    prompts: Sequence[Any],
    num_generations: int,
    *,
    keep_empty: bool = False,
    stats: GenerationStats | None = None,
) -> list[list[tuple[str, str]]]:
    """`num_generations` candidates per prompt from every source: one list of `(text, source name)` per prompt.

    A source that returns fewer than `num_generations` for some prompts is logged (warning) with the number of prompts
    and missing candidates; empty (whitespace-only) generations are dropped and the count logged, unless
    `keep_empty=True`. `stats`, when given, accumulates the counts and the time each source took.
    """
    stats = stats if stats is not None else GenerationStats()
    candidates: list[list[tuple[str, str]]] = [[] for _ in prompts]
    for source in sources:
        started = time.perf_counter()
        outputs = source.generate(list(prompts), num_generations)
        stats.seconds[source.name] = stats.seconds.get(source.name, 0.0) + time.perf_counter() - started
        if len(outputs) != len(prompts):
            raise RuntimeError(f"source {source.name!r} returned {len(outputs)} lists for {len(prompts)} prompts")
        short = missing = dropped = 0
        for index, texts in enumerate(outputs):
            if len(texts) < num_generations:
                short += 1
                missing += num_generations - len(texts)
            for text in texts[:num_generations]:
                if _is_empty(text) and not keep_empty:
                    dropped += 1
                    continue
                candidates[index].append((text, source.name))
        asked = num_generations * len(prompts)
        produced = sum(min(len(texts), num_generations) for texts in outputs)
        stats.asked[source.name] = stats.asked.get(source.name, 0) + asked
        stats.produced[source.name] = stats.produced.get(source.name, 0) + produced
        stats.short_prompts[source.name] = stats.short_prompts.get(source.name, 0) + short
        stats.dropped_empty[source.name] = stats.dropped_empty.get(source.name, 0) + dropped
        if short:
            logger.warning(
                f"source {source.name!r} returned fewer than {num_generations} candidates for {short} of "
                f"{len(prompts)} prompts ({missing} candidates missing)"
            )
        if dropped:
            logger.warning(
                f"source {source.name!r}: dropped {dropped} empty generations of {produced} "
                "(keep them with keep_empty=True)"
            )
    return candidates

"""Reward models: loading, the text format each expects, and batched scoring.

- `GPTNeoXRewardModel`: OpenAssistant's reward-model class (`model_type` "gpt_neox_reward_model": a GPT-NeoX backbone,
  last-token pooling, a linear `out_proj` to one score), written here and registered with `AutoConfig` and
  `AutoModelForSequenceClassification`, so that the paper's reward models (RM_train =
  OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5, RM_eval = OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1) load with
  `AutoModelForSequenceClassification.from_pretrained` (same config keys and weight names: `gpt_neox.*`, `out_proj.*`,
  `pooling`).
- `load_reward_model`: any `AutoModelForSequenceClassification` with a single score (`num_labels=1`, as TRL's
  `RewardTrainer` writes it), plus its tokenizer.
- `format_for_reward_model`: the text a reward model reads for (prompt, completion): `oasst`
  (`<|prompter|>…<|endoftext|><|assistant|>…<|endoftext|>`, the PRO authors' and OpenAssistant's format), the reward
  model tokenizer's `chat_template`, or `plain` prompt + completion.
- `score_completions`: batched scores, truncated from the left so the response is kept; a non-finite score raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, GPTNeoXConfig
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel, GPTNeoXPreTrainedModel

from trl_pro.data.formats import is_messages
from trl_pro.pipeline.models import check_local_path, from_pretrained_kwargs


__all__ = [
    "GPTNeoXRewardModelConfig",
    "GPTNeoXRewardModel",
    "REWARD_PROMPT_FORMATS",
    "load_reward_model",
    "format_for_reward_model",
    "split_hh_dialogue",
    "score_completions",
]


REWARD_PROMPT_FORMATS = ("auto", "oasst", "chat_template", "plain")


OASST_PROMPTER, OASST_ASSISTANT = "<|prompter|>", "<|assistant|>"


OASST_MODEL_TYPE = "gpt_neox_reward_model"


class GPTNeoXRewardModelConfig(GPTNeoXConfig):
    """GPT-NeoX config plus `pooling` ("last" or "mean"), the keys of OpenAssistant's reward-model checkpoints."""

    model_type = OASST_MODEL_TYPE

    def __init__(self, pooling: str = "last", **kwargs: Any):
        # Set before the parent's __init__ (which validates and may serialize the config).
        self.pooling = pooling or "last"
        super().__init__(**kwargs)
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")
        # One score: the sequence-classification convention TRL's reward code reads (`num_labels == 1`)
        self.num_labels = 1


class GPTNeoXRewardModel(GPTNeoXPreTrainedModel):
    """OpenAssistant's GPT-NeoX reward model: backbone `gpt_neox`, pooled hidden state -> `out_proj` -> one score.

    "last" pooling reads the hidden state of the last token the attention mask keeps (any padding side); "mean"
    averages over the kept tokens. The output is a `SequenceClassifierOutputWithPast` whose `logits` is [B, 1], like
    every `AutoModelForSequenceClassification` with `num_labels=1`.
    """

    config_class = GPTNeoXRewardModelConfig

    def __init__(self, config: GPTNeoXConfig):
        if type(config) is GPTNeoXConfig:  # a plain GPT-NeoX checkpoint becomes a reward model (as upstream)
            config = GPTNeoXRewardModelConfig(**config.to_dict())
        super().__init__(config)
        self.gpt_neox = GPTNeoXModel(config)
        self.out_proj = nn.Linear(config.hidden_size, 1)
        self.pooling = getattr(config, "pooling", "last")
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.gpt_neox.embed_in

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.gpt_neox.embed_in = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.gpt_neox(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=False, **kwargs
        )
        hidden_states = outputs.last_hidden_state
        if attention_mask is None:
            pooled = hidden_states[:, -1] if self.pooling == "last" else hidden_states.mean(dim=1)
        elif self.pooling == "last":
            # position of the last kept token: the first argmax of the running count of kept tokens
            last_index = attention_mask.long().cumsum(dim=1).argmax(dim=1)
            pooled = hidden_states[torch.arange(hidden_states.size(0), device=hidden_states.device), last_index]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        logits = self.out_proj(pooled.to(self.out_proj.weight.dtype))
        return SequenceClassifierOutputWithPast(logits=logits, hidden_states=outputs.hidden_states)


AutoConfig.register(OASST_MODEL_TYPE, GPTNeoXRewardModelConfig, exist_ok=True)


AutoModelForSequenceClassification.register(GPTNeoXRewardModelConfig, GPTNeoXRewardModel, exist_ok=True)


def check_single_score(model: nn.Module, name: str) -> None:
    """Raise a `ValueError` naming the model if its head does not produce a single score."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
    if num_labels != 1:
        raise ValueError(
            f"Reward model {name!r} has a head with {num_labels} outputs; a reward model must output a single score "
            "(num_labels=1, as TRL's RewardTrainer trains it)"
        )


def load_reward_model(
    name_or_path: str,
    *,
    load_in_4bit: bool = False,
    dtype: Any = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load a single-score `AutoModelForSequenceClassification` and its tokenizer, in eval mode.

    The OpenAssistant checkpoints (`gpt_neox_reward_model`) load through the class registered above. The tokenizer
    gets a pad token (its EOS when it has none) and the model's config the matching `pad_token_id`, so batches of
    several rows can be scored. Truncation is set to the left, so that a long text keeps its response.
    """
    name_or_path = check_local_path(name_or_path)  # a mistyped path fails here, not after hub retries
    kwargs = from_pretrained_kwargs(dtype, load_in_4bit, trust_remote_code)
    if load_in_4bit:
        if device is not None:
            kwargs["device_map"] = {"": str(device)}
    # The head size is checked from the config first, so a wrong model fails before its weights are read.
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if getattr(config, "num_labels", 1) != 1 and config.model_type != OASST_MODEL_TYPE:
        raise ValueError(
            f"Reward model {name_or_path!r} has a head with {config.num_labels} outputs; a reward model must output "
            "a single score (num_labels=1, as TRL's RewardTrainer trains it)"
        )
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
    check_single_score(model, name_or_path)
    if device is not None and not load_in_4bit:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def split_hh_dialogue(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF dialogue ("\\n\\nHuman: …\\n\\nAssistant: …") into messages, as the PRO authors do.

    Consecutive paragraphs of one speaker are joined with "\\n" into one turn; text before the first marker is
    dropped. A text with no marker at all is one user turn. A trailing empty "Assistant:" (the generation prompt) is
    not a turn.
    """
    messages: list[dict[str, str]] = []
    role, parts = None, []
    found_marker = False
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("Human:"):
            speaker, message = "user", paragraph[len("Human:") :]
        elif paragraph.startswith("Assistant:"):
            speaker, message = "assistant", paragraph[len("Assistant:") :]
        elif role is not None:  # a paragraph break inside a turn
            parts.append(paragraph.strip())
            continue
        else:
            continue
        found_marker = True
        if speaker != role:
            if role is not None:
                messages.append({"role": role, "content": "\n".join(p for p in parts if p)})
            role, parts = speaker, []
        parts.append(message.strip())
    if role is not None:
        content = "\n".join(p for p in parts if p)
        if content or role == "user":
            messages.append({"role": role, "content": content})
    if not found_marker:
        return [{"role": "user", "content": text.strip()}]
    return messages


def _prompt_messages(prompt: Any) -> list[dict[str, str]]:
    if is_messages(prompt):
        return [{"role": m["role"], "content": str(m["content"])} for m in prompt]
    return split_hh_dialogue(prompt)


def _completion_text(completion: Any) -> str:
    if is_messages(completion):
        return "\n".join(str(m["content"]) for m in completion)
    return completion


def _completion_messages(completion: Any) -> list[dict[str, str]]:
    if is_messages(completion):
        return [{"role": m["role"], "content": str(m["content"])} for m in completion]
    return [{"role": "assistant", "content": completion.strip()}]


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_format(prompt_format: str, reward_model: Any, tokenizer: Any, conversational: bool) -> str:
    """The concrete format `auto` stands for: oasst for OpenAssistant's class, the chat template for conversational
    rows when the tokenizer has one, else plain text."""
    if prompt_format not in REWARD_PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {REWARD_PROMPT_FORMATS}, got {prompt_format!r}")
    if prompt_format != "auto":
        return prompt_format
    model_type = getattr(getattr(reward_model, "config", None), "model_type", None)
    if model_type == OASST_MODEL_TYPE:
        return "oasst"
    if conversational and _has_chat_template(tokenizer):
        return "chat_template"
    return "plain"


def format_for_reward_model(prompt: Any, completion: Any, tokenizer: Any, prompt_format: str) -> str:
    """The text a reward model scores for one (prompt, completion).

    - "oasst": `<|prompter|>turn<|endoftext|><|assistant|>turn<|endoftext|>…<|assistant|>completion<|endoftext|>`
      (the EOS is the tokenizer's); HH text prompts are split into turns at "\\n\\nHuman:" / "\\n\\nAssistant:";
    - "chat_template": the tokenizer's chat template over prompt + completion messages (an HH text prompt is split
      into messages first);
    - "plain": prompt + completion + the tokenizer's EOS (as TRL's RewardTrainer trains on plain text; messages are
      rendered as HH "\\n\\nHuman: …" text);
    - "auto": "chat_template" for conversational rows when the tokenizer has one, else "plain". (Which format a
      *model* needs is decided by `resolve_prompt_format`, which also knows the model.)
    """
    conversational = is_messages(prompt)
    if prompt_format == "auto":
        prompt_format = "chat_template" if conversational and _has_chat_template(tokenizer) else "plain"
    if prompt_format == "oasst":
        eos = getattr(tokenizer, "eos_token", None) or "<|endoftext|>"
        turns = []
        for message in _prompt_messages(prompt):
            marker = OASST_ASSISTANT if message["role"] == "assistant" else OASST_PROMPTER
            turns.append(marker + message["content"].strip() + eos)
        return "".join(turns) + OASST_ASSISTANT + _completion_text(completion).strip() + eos
    if prompt_format == "chat_template":
        if not _has_chat_template(tokenizer):
            raise ValueError("prompt_format='chat_template' but the reward model's tokenizer has no chat template")
        messages = _prompt_messages(prompt) + _completion_messages(completion)
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if prompt_format == "plain":
        if conversational or is_messages(completion):
            names = {"user": "Human", "assistant": "Assistant", "system": "System"}
            rendered = "".join(
                f"\n\n{names.get(m['role'], m['role'])}: {m['content']}"
                for m in _prompt_messages(prompt) + _completion_messages(completion)
            )
            return rendered
        text = prompt + completion
        eos = getattr(tokenizer, "eos_token", None)
        # TRL's RewardTrainer appends the EOS to plain-text rows before training, so the score is read there too
        return text if not eos or text.endswith(eos) else text + eos
    raise ValueError(f"prompt_format must be one of {REWARD_PROMPT_FORMATS}, got {prompt_format!r}")


def _check_score(value: Any, index: int) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Row {index}: the reward model returned {value!r}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"Row {index}: the reward model returned a non-finite score ({value})")
    return float(value)


def _max_length(reward_model: nn.Module, tokenizer: Any, max_length: int | None) -> int | None:
    if max_length is not None:
        return max_length
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 1_000_000:
        return limit
    return getattr(getattr(reward_model, "config", None), "max_position_embeddings", None)


def score_completions(
    reward_model: nn.Module | Callable[..., Sequence[float]],
    tokenizer: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    prompt_format: str = "auto",
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> list[float]:
    """One score per (prompt, completion) pair, in order.

    `reward_model` is a single-score sequence-classification model (scored in batches of `batch_size`, rows sorted by
    length so batches carry little padding; texts longer than `max_length` tokens (default: the tokenizer's limit)
    are cut from the left, so the response is kept), or a callable with TRL's `reward_funcs` signature
    (`f(prompts=..., completions=..., **kwargs) -> list[float]`), called once per batch. A missing, NaN or infinite
    score raises a `ValueError` naming the row.
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(completions)} completions; give one prompt per completion"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(prompts) == 0:
        return []
    if not isinstance(reward_model, nn.Module):
        if not callable(reward_model):
            raise ValueError(f"reward_model must be a model or a callable, got {type(reward_model).__name__}")
        return _score_with_function(reward_model, prompts, completions, batch_size, progress)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to score with a reward model")
    check_single_score(reward_model, getattr(getattr(reward_model, "config", None), "_name_or_path", "reward model"))
    texts = _render_for_reward_model(reward_model, tokenizer, prompts, completions, prompt_format)
    encodings = _encode_for_reward_model(reward_model, tokenizer, texts, max_length)
    return _score_with_model(reward_model, tokenizer, encodings, batch_size, progress)


def _score_with_function(
    reward_fn: Callable[..., Sequence[float]],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    batch_size: int,
    progress: bool,
) -> list[float]:
    """Scores from a TRL-style reward function, called once per batch of `batch_size` rows, each score checked."""
    from tqdm.auto import tqdm

    total = len(prompts)
    scores: list[float | None] = [None] * total
    for start in tqdm(range(0, total, batch_size), desc="Scoring", disable=not progress):
        stop = min(start + batch_size, total)
        values = list(reward_fn(prompts=list(prompts[start:stop]), completions=list(completions[start:stop])))
        if len(values) != stop - start:
            raise ValueError(
                f"Rows {start}-{stop - 1}: the reward function returned {len(values)} scores for {stop - start} rows"
            )
        for offset, value in enumerate(values):
            scores[start + offset] = _check_score(value, start + offset)
    return scores  # type: ignore[return-value]


def _render_for_reward_model(
    reward_model: nn.Module, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any], prompt_format: str
) -> list[str]:
    """Every (prompt, completion) as the text the reward model reads, each row in its resolved format."""
    texts = []
    for index, (prompt, completion) in enumerate(zip(prompts, completions)):
        row_format = resolve_prompt_format(prompt_format, reward_model, tokenizer, is_messages(prompt))
        try:
            texts.append(format_for_reward_model(prompt, completion, tokenizer, row_format))
        except (TypeError, AttributeError) as error:
            raise ValueError(f"Row {index}: cannot render prompt/completion for the reward model: {error}") from error
    return texts


def _encode_for_reward_model(
    reward_model: nn.Module, tokenizer: Any, texts: list[str], max_length: int | None
) -> list[list[int]]:
    """Token ids of the rendered texts, cut from the left to the length limit so that the response is kept."""
    limit = _max_length(reward_model, tokenizer, max_length)
    # Special tokens are part of the rendered text (chat template, oasst markers); a BOS is added only by tokenizers
    # that add one themselves, as they did when the reward model was trained.
    encodings = tokenizer(texts, add_special_tokens=True)["input_ids"]
    if limit is not None:
        encodings = [ids[-limit:] for ids in encodings]  # from the left: the response, at the end, is kept
    return encodings


def _right_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of a batch, right-padded: the layout TRL's RewardTrainer trains with."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
    return input_ids, attention_mask


def _score_with_model(
    reward_model: nn.Module, tokenizer: Any, encodings: list[list[int]], batch_size: int, progress: bool
) -> list[float]:
    """Scores from a single-score model, in batches of rows of similar length (sorted by length), each checked."""
    from tqdm.auto import tqdm

    total = len(encodings)
    scores: list[float | None] = [None] * total
    order = sorted(range(total), key=lambda i: len(encodings[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(reward_model.parameters()).device
    with torch.inference_mode():
        for start in tqdm(range(0, total, batch_size), desc="Scoring", disable=not progress):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = _right_padded([encodings[i] for i in rows], pad_id)
            logits = reward_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            if logits.dim() != 2 or logits.shape[-1] != 1:
                raise ValueError(
                    f"the reward model returned logits of shape {tuple(logits.shape)}, not one score per row"
                )
            for i, value in zip(rows, logits[:, 0].float().tolist()):
                scores[i] = _check_score(value, i)
    return scores  # type: ignore[return-value]

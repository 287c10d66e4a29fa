"""Loading models the way every command does: the built-in tiny Llama (`trl-pro/tiny-llama`), local folders and hub
ids, 4-bit NF4 (QLoRA) and PEFT adapters, for training (`resolve_model`) and for inference (`load_policy`,
`from_pretrained_kwargs`)."""

from __future__ import annotations

import json
import tempfile  # noqa: E402
from pathlib import Path
from typing import Any

import torch

from trl_pro.data.loading import looks_like_local_path
from trl_pro.utils.errors import SetupError


class NoSuchFolderError(SetupError, ValueError):
    """A model path that can only be local (`looks_like_local_path`) and does not exist. Both a `SetupError` and a
    `ValueError`, so that every command shows it as its message alone."""


def check_local_path(name: str) -> str:
    """`name` as `from_pretrained` should get it (`~` expanded for a local path); a name that can only be a local path
    and does not exist raises `NoSuchFolderError` at once, where `from_pretrained` would try the hub with it."""
    if not looks_like_local_path(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise NoSuchFolderError(f"no such folder: {name}")
    return str(path) if name.startswith("~") else name


def from_pretrained_kwargs(dtype: Any, load_in_4bit: bool, trust_remote_code: bool) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a model used for inference (reward model, generator, judge): its dtype,
    and with `load_in_4bit` QLoRA's NF4 quantization (double quantization, compute in `dtype` or bf16)."""
    torch_dtype = _to_dtype(dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype or torch.bfloat16,
        )
    return kwargs


def _to_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
    return value


#: Built-in model name: a random-init tiny Llama from the package's config, with the shipped tokenizer.
TINY_LLAMA = "trl-pro/tiny-llama"


def kbit_device_map():
    """Where a k-bit model is loaded: the GPU of this process (as TRL's former `get_kbit_device_map`), or None on CPU
    (bitsandbytes' CPU backend)."""
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {"": PartialState().local_process_index}
    return None


def resolve_model(model_args, training_args):
    """(model or path, tokenizer or None, quantization_config, peft_config) from the `ModelConfig` flags.

    `trl-pro/tiny-llama` builds the tiny model in memory (random init, `--seed`) with the shipped tokenizer; with
    `--load_in_4bit/8bit` it is saved to a temporary folder first, since quantization happens at load time. Any other
    name is left to the trainer's `from_pretrained` path, with the `model_init_kwargs` TRL's scripts set.
    """
    import torch
    from trl import get_peft_config, get_quantization_config

    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

    name = model_args.model_name_or_path
    if not name:
        raise SetupError(f"no model: give --model_name_or_path (a hub id, a local path, or the built-in {TINY_LLAMA})")
    name = check_local_path(name)
    quantization_config = get_quantization_config(model_args)
    peft_config = get_peft_config(model_args)
    if quantization_config is not None and peft_config is None:
        raise SetupError("a 4-bit or 8-bit base model cannot be trained directly: add --use_peft (QLoRA)")
    tokenizer = None

    if name == TINY_LLAMA:
        tokenizer = load_tiny_tokenizer()
        overrides = {}
        if model_args.attn_implementation is not None:
            overrides["attn_implementation"] = model_args.attn_implementation
        model = build_tiny_llama(seed=training_args.seed, **overrides)
        if model_args.dtype in ("bfloat16", "float16"):
            model = model.to(getattr(torch, model_args.dtype))
        if quantization_config is None:
            if training_args.model_init_kwargs:
                raise SetupError(f"model_init_kwargs does not apply to the built-in {TINY_LLAMA} (built, not loaded)")
            return model, tokenizer, None, peft_config
        folder = tempfile.mkdtemp(prefix="trl-pro-tiny-llama-")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        name = folder

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if quantization_config is not None:
        model_init_kwargs["device_map"] = kbit_device_map()
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs
    return name, tokenizer, quantization_config, peft_config


def load_policy(
    name_or_path: str,
    *,
    adapter_path: str | None = None,
    load_in_4bit: bool = False,
    dtype: Any = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A causal LM set for generation, and its tokenizer: left padding and truncation, a pad token (the EOS when the
    tokenizer has none), eval mode. `name_or_path` is the built-in `trl-pro/tiny-llama` (random init from `seed`), a
    local folder or hub id, or a PEFT adapter folder (its base model is loaded first, the adapter on top; so is
    `adapter_path`). `load_in_4bit` loads the base in NF4. An adapter saved with its tokenizer brings its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

    name_or_path = check_local_path(name_or_path)
    if adapter_path is not None:
        adapter_path = check_local_path(adapter_path)
    if adapter_path is None and (Path(name_or_path) / "adapter_config.json").is_file():
        adapter_path = name_or_path
        name_or_path = json.loads((Path(name_or_path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        if name_or_path == TINY_LLAMA:
            raise ValueError(
                f"{adapter_path}: an adapter on the built-in {TINY_LLAMA} (random init) cannot be "
                "reloaded; train it with a saved base model"
            )
        try:
            name_or_path = check_local_path(name_or_path)
        except NoSuchFolderError as error:  # the base model was moved or deleted since the adapter was saved
            raise NoSuchFolderError(f"{error} (the base model of the adapter {adapter_path})") from None
    if name_or_path == TINY_LLAMA:
        model, tokenizer = build_tiny_llama(seed=seed), load_tiny_tokenizer()
        torch_dtype = _to_dtype(dtype)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    else:
        kwargs = from_pretrained_kwargs(dtype, load_in_4bit, trust_remote_code)
        if load_in_4bit:
            default_device = "cuda" if torch.cuda.is_available() else "cpu"
            kwargs["device_map"] = {"": str(device) if device is not None else default_device}
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        tokenizer = None
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    if device is not None and not load_in_4bit:
        model = model.to(device)
    model.eval()
    if tokenizer is None or (adapter_path is not None and _has_tokenizer(adapter_path)):
        tokenizer_path = adapter_path if adapter_path is not None and _has_tokenizer(adapter_path) else name_or_path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    return model, tokenizer


def _has_tokenizer(path: str) -> bool:
    directory = Path(path)
    return directory.is_dir() and any(
        (directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")
    )

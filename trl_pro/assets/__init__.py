"""Embedded default assets: an HH-RLHF slice, a tiny byte-level BPE tokenizer and a tiny Llama recipe.

They let the quickstart and the tests run offline with no hub download. Regenerate the files with
`python -m trl_pro.assets.make_assets --source <harmless-base-test.jsonl.gz>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any


# Heavy libraries are imported inside the functions so that `import trl_pro.assets` (and the generator script,
# which lives in this package) stays cheap.
if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

__all__ = [
    "ASSETS_DIR",
    "HH_RLHF_DIR",
    "TOKENIZER_DIR",
    "HH_RLHF_SPLITS",
    "tiny_llama_config",
    "load_tiny_tokenizer",
    "build_tiny_llama",
    "load_hh_rlhf_slice",
]

ASSETS_DIR = Path(__file__).resolve().parent
HH_RLHF_DIR = ASSETS_DIR / "hh_rlhf"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
HH_RLHF_SPLITS = ("train", "test")


def load_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The embedded byte-level BPE tokenizer (fast tokenizer, HH-style chat template, no auto BOS/EOS)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def tiny_llama_config(vocab_size: int, **overrides: Any) -> LlamaConfig:
    """A tiny Llama config (64 hidden, 2 layers); `overrides` replace any field."""
    from transformers import LlamaConfig

    tokenizer = load_tiny_tokenizer()
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, so the GQA code path is exercised too
        intermediate_size=128,
        max_position_embeddings=1024,
        # A separate lm_head, as in the full-size Llama checkpoints this model stands in for.
        tie_word_embeddings=False,
        # Taken from the tokenizer (not hard-coded) so model, generation config and collator agree.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny_llama(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A randomly initialised float32 tiny Llama sized to the embedded tokenizer, reproducible from `seed`."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(len(load_tiny_tokenizer()), **overrides)
    # fork_rng: the weights depend only on `seed`, and the caller's global RNG stream is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32)


def load_hh_rlhf_slice(split: str) -> Dataset:
    """The embedded HH-RLHF slice ("train": 1200 rows, "test": 200 rows) with raw `chosen`/`rejected` columns."""
    if split not in HH_RLHF_SPLITS:
        raise ValueError(f"split must be one of {HH_RLHF_SPLITS}, got {split!r}")
    from datasets import load_dataset

    # Go through the ordinary `datasets` JSON loader, the same path a user's own files take.
    return load_dataset("json", data_files=str(HH_RLHF_DIR / f"{split}.jsonl.gz"), split="train")

"""Tests for the embedded default assets (HH-RLHF slice, tiny tokenizer, tiny Llama)."""

import gzip
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from trl_pro.assets import (
    HH_RLHF_DIR,
    TOKENIZER_DIR,
    build_tiny_llama,
    load_hh_rlhf_slice,
    load_tiny_tokenizer,
    tiny_llama_config,
)


EXPECTED_ROWS = {"train": 1200, "test": 200}
ASSISTANT = "\n\nAssistant:"
# Where make_assets reads the full source; the reproducibility test is skipped where it is absent.
HH_SOURCE = Path(os.environ.get("TRL_PRO_HH_RLHF_SOURCE", "/work/shared/data/hh-rlhf/harmless-base-test.jsonl.gz"))

DIALOGUE = (
    "\n\nHuman: What's a good way to keep basil alive indoors?"
    "\n\nAssistant: Give it a sunny window, water when the top soil is dry, and pinch off flowers.  "
    "Café plants like 25°C — not 5°C! 🌱\n\tOK?"
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def _prompt(dialogue: str) -> str:
    return dialogue[: dialogue.rfind(ASSISTANT) + len(ASSISTANT)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_hh_slice_loads_unchanged(split):
    ds = load_hh_rlhf_slice(split)
    assert ds.num_rows == EXPECTED_ROWS[split]
    assert ds.column_names == ["chosen", "rejected"]
    with gzip.open(HH_RLHF_DIR / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert ds.to_list() == raw  # datasets must not alter the raw dialogues
    for row in raw:
        assert row["chosen"].startswith("\n\nHuman:") and row["rejected"].startswith("\n\nHuman:")
        assert row["chosen"] != row["rejected"]
        # The trainer relies on an implicit prompt shared by both completions.
        assert _prompt(row["chosen"]) == _prompt(row["rejected"])


def test_hh_slices_are_disjoint_and_documented():
    train = {_prompt(r["chosen"]) for r in load_hh_rlhf_slice("train")}
    test = {_prompt(r["chosen"]) for r in load_hh_rlhf_slice("test")}
    assert not train & test
    assert "MIT License" in (HH_RLHF_DIR / "LICENSE").read_text()
    readme = (HH_RLHF_DIR / "README.md").read_text()
    assert "offensive" in readme and "MIT" in readme


def test_hh_slice_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        load_hh_rlhf_slice("validation")


def test_assets_fit_size_budget():
    total = sum(p.stat().st_size for d in (HH_RLHF_DIR, TOKENIZER_DIR) for p in d.iterdir() if p.is_file())
    assert total < 1_000_000


def test_tokenizer_config(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == 2048
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 2048
    # Nothing is added on encode, so prompt and completion ids can be concatenated as tokenized.
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]


def test_tokenizer_round_trips(tokenizer):
    texts = [DIALOGUE, "", " leading and trailing  ", "\x00\x7f\u200b"]
    texts += [load_hh_rlhf_slice("train")[0]["chosen"], load_hh_rlhf_slice("test")[-1]["rejected"]]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids  # byte-level: no unknowns
        assert tokenizer.decode(ids) == text
    # Learned from HH text, so the dialogue markers are cheap.
    assert len(tokenizer("\n\nHuman:")["input_ids"]) <= 4


def test_chat_template_prefix_consistent(tokenizer):
    user = {"role": "user", "content": "What's a good way to keep basil alive indoors?"}
    assistant = {"role": "assistant", "content": "Give it a sunny window."}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    assert prompt == "\n\nHuman: What's a good way to keep basil alive indoors?\n\nAssistant:"
    assert full == prompt + " Give it a sunny window."
    assert full.startswith(prompt)
    # Multi-turn renders exactly the raw HH layout.
    turns = [user, assistant, {"role": "user", "content": "Thanks"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == (
        full + "\n\nHuman: Thanks\n\nAssistant:"
    )
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tiny_llama_config(tokenizer):
    config = tiny_llama_config(len(tokenizer), num_hidden_layers=1)
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (64, 4, 2)
    assert (config.intermediate_size, config.max_position_embeddings) == (128, 1024)
    assert config.num_hidden_layers == 1  # override applied
    assert config.tie_word_embeddings is False
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 3)


def test_tiny_llama_forward(tokenizer):
    model = build_tiny_llama()
    assert model.dtype == torch.float32
    rows = load_hh_rlhf_slice("test")[:2]
    batch = tokenizer(rows["chosen"], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_llama_seeded():
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_llama(seed=0), build_tiny_llama(seed=0), build_tiny_llama(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.skipif(not HH_SOURCE.is_file(), reason="HH-RLHF source file not available")
def test_make_assets_reproducible():
    from trl_pro.assets.make_assets import check_assets

    assert check_assets(HH_SOURCE) == []

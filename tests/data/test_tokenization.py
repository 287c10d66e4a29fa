"""Tokenization: a DPO-shaped config works unchanged (the prompt length adapts to `max_length`), and BOS is kept
when a prompt is truncated from the left."""

import pytest
from datasets import Dataset

from trl_pro.cli import training
from trl_pro.scripts.pro import make_parser
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


# A DPO-shaped config works unchanged --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length, kept", [(512, 384), (256, 128), (192, 96), (64, 32), (2, 1)])
def test_dpo_shaped_config_adapts_the_prompt_length(tmp_path, tokenizer, tiny_model, max_length, kept):
    """`max_length` alone is enough: the prompt keeps max(max_length - 128, max_length // 2) tokens."""
    config = PROConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True, report_to=[])
    assert config.max_prompt_length is None  # not frozen: the default follows `max_length`
    if max_length > 64:
        return
    rows = [{"prompt": "word " * 300, "completions": [" yes", " no"]}]
    trainer = PROTrainer(tiny_model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    assert len(row["prompt_ids"]) == kept
    assert all(len(row["prompt_ids"]) + len(ids) <= max_length and ids for ids in row["completion_ids"])


def test_dpo_shaped_cli_flag(tmp_path):
    _, training_args, _, _ = training.parse_args(
        make_parser(), ["--max_length", "192", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    )
    assert training_args.max_length == 192 and training_args.max_prompt_length is None


def test_only_an_explicit_prompt_length_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"`max_prompt_length` \(300\) must be smaller than `max_length` \(256\)"):
        PROConfig(output_dir=str(tmp_path), max_length=256, max_prompt_length=300)
    with pytest.raises(ValueError, match="-1 \\(no prompt truncation\\)"):
        PROConfig(output_dir=str(tmp_path), max_prompt_length=-2)
    assert (
        PROConfig(output_dir=str(tmp_path), max_length=256, max_prompt_length=-1, use_cpu=True).max_prompt_length == -1
    )


# BOS is kept when a prompt is truncated -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_style_tokenizer():
    """The embedded tokenizer made to add BOS (and EOS) like LLaMA's, and a chat template that renders BOS first."""
    from transformers import AutoTokenizer

    from trl_pro.assets import TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), add_bos_token=True)
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    return tokenizer


@pytest.mark.parametrize("words", [3, 31, 32, 33, 300])
@pytest.mark.parametrize("conversational", [False, True])
def test_truncated_prompt_keeps_bos(llama_style_tokenizer, words, conversational):
    from trl_pro.data.tokenization import tokenize_ranking

    tokenizer = llama_style_tokenizer
    text = " ".join(f"w{i}" for i in range(words))
    if conversational:
        prompt = [{"role": "user", "content": text}]
        completions = [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]]
        full = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)
    else:
        prompt, completions = text, [" yes", " no"]
        full = tokenizer(text)
    full = full["input_ids"]
    assert full[0] == tokenizer.bos_token_id
    tokens = tokenize_ranking({"prompt": prompt, "completions": completions}, 0, tokenizer, 64, None)
    prompt_ids = tokens["prompt_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id  # BOS kept at any prompt length
    assert len(prompt_ids) == min(len(full), 32)  # max(64 - 128, 64 // 2) prompt tokens, BOS included
    assert prompt_ids[1:] == full[len(full) - len(prompt_ids) + 1 :]  # then the end of the prompt, as before
    assert all(ids for ids in tokens["completion_ids"])


def test_bos_kept_with_a_tokenizer_that_also_adds_eos():
    from transformers import AutoTokenizer

    from trl_pro.assets import TOKENIZER_DIR
    from trl_pro.data.tokenization import tokenize_ranking

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), add_bos_token=True, add_eos_token=True)
    tokens = tokenize_ranking({"prompt": "word " * 100, "completions": [" yes", " no"]}, 0, tokenizer, 64, 16)
    assert tokens["prompt_ids"][0] == tokenizer.bos_token_id and len(tokens["prompt_ids"]) == 16
    assert tokens["prompt_ids"][1:] == tokenizer("word " * 100, add_special_tokens=False)["input_ids"][-15:]

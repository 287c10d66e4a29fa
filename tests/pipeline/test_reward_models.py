import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaForSequenceClassification

from trl_pro.assets import load_hh_rlhf_slice, load_tiny_tokenizer, tiny_llama_config
from trl_pro.pipeline.reward_models import (
    REWARD_PROMPT_FORMATS,
    GPTNeoXRewardModel,
    GPTNeoXRewardModelConfig,
    format_for_reward_model,
    load_reward_model,
    resolve_prompt_format,
    score_completions,
    split_hh_dialogue,
)


def _tiny_oasst_config(**overrides):
    kwargs = dict(
        vocab_size=2048,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    return GPTNeoXRewardModelConfig(**kwargs)


@pytest.fixture(scope="module")
def oasst_dir(tmp_path_factory):
    """A tiny random checkpoint of OpenAssistant's reward-model class with the tiny tokenizer."""
    path = tmp_path_factory.mktemp("oasst_rm")
    torch.manual_seed(0)
    GPTNeoXRewardModel(_tiny_oasst_config()).save_pretrained(path)
    load_tiny_tokenizer().save_pretrained(path)
    return path


def test_oasst_class_saves_and_reloads_through_auto_classes(oasst_dir):
    config = json.loads((oasst_dir / "config.json").read_text())
    assert config["model_type"] == "gpt_neox_reward_model" and config["pooling"] == "last"
    names = set(load_file(oasst_dir / "model.safetensors"))
    assert {"out_proj.weight", "out_proj.bias", "gpt_neox.embed_in.weight"} <= names
    assert all(name.startswith(("gpt_neox.", "out_proj.")) for name in names)
    model, info = AutoModelForSequenceClassification.from_pretrained(oasst_dir, output_loading_info=True)
    assert isinstance(model, GPTNeoXRewardModel)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    reference = GPTNeoXRewardModel.from_pretrained(oasst_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_openassistant_checkpoint_layout_loads_without_missing_keys(tmp_path):
    """config.json keys and weight names as OpenAssistant's checkpoints (transformers 4.28) have them, including the
    legacy attention buffers, load with nothing missing."""
    config = {
        "architectures": ["GPTNeoXRewardModel"],
        "model_type": "gpt_neox_reward_model",
        "pooling": "last",
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.0.dev0",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded_config, GPTNeoXRewardModelConfig) and loaded_config.num_labels == 1
    torch.manual_seed(0)
    state = {name: value.clone() for name, value in GPTNeoXRewardModel(loaded_config).state_dict().items()}
    for layer in range(2):
        state[f"gpt_neox.layers.{layer}.attention.bias"] = torch.ones(1, 1, 128, 128, dtype=torch.bool)
        state[f"gpt_neox.layers.{layer}.attention.masked_bias"] = torch.tensor(-1e9)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, GPTNeoXRewardModel)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(model.out_proj.weight.float(), state["out_proj.weight"], rtol=1e-3, atol=1e-3)


def test_last_token_pooling_ignores_padding(oasst_dir):
    model = AutoModelForSequenceClassification.from_pretrained(oasst_dir).eval()
    ids = torch.tensor([[11, 12, 13, 14, 15, 0, 0], [21, 22, 23, 24, 25, 26, 27]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    batched = model(input_ids=ids, attention_mask=mask).logits
    assert batched.shape == (2, 1)
    torch.testing.assert_close(batched[0], model(input_ids=ids[:1, :5]).logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], model(input_ids=ids[1:]).logits[0], rtol=1e-5, atol=1e-5)


class _EosOnly:
    eos_token = "<|endoftext|>"
    chat_template = None


def test_oasst_format_splits_hh_dialogue_into_turns():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    text = format_for_reward_model(prompt, " Mix flour and water.", _EosOnly(), "oasst")
    assert text == (
        "<|prompter|>Hi there<|endoftext|><|assistant|>Hello!<|endoftext|><|prompter|>How do I bake bread?"
        "<|endoftext|><|assistant|>Mix flour and water.<|endoftext|>"
    )
    messages = [{"role": "user", "content": "Hi"}]
    answer = [{"role": "assistant", "content": "Hey"}]
    assert format_for_reward_model(messages, answer, _EosOnly(), "oasst") == (
        "<|prompter|>Hi<|endoftext|><|assistant|>Hey<|endoftext|>"
    )
    # consecutive paragraphs of one speaker form one turn, joined by a newline (as the PRO authors' preprocessing)
    assert split_hh_dialogue("\n\nHuman: a\n\nHuman: b\n\nAssistant: c") == [
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
    ]
    assert split_hh_dialogue("no markers") == [{"role": "user", "content": "no markers"}]


def test_chat_template_and_plain_formats(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    answer = [{"role": "assistant", "content": "Hey"}]
    assert format_for_reward_model(messages, answer, tokenizer, "chat_template") == "\n\nHuman: Hi\n\nAssistant: Hey"
    # an HH text prompt is split into messages for the template
    assert format_for_reward_model("\n\nHuman: Hi\n\nAssistant:", " Hey", tokenizer, "chat_template") == (
        "\n\nHuman: Hi\n\nAssistant: Hey"
    )
    assert format_for_reward_model("Q: 1+1?", " 2", tokenizer, "plain") == "Q: 1+1? 2</s>"
    assert format_for_reward_model("Q: 1+1?", " 2", tokenizer, "auto") == "Q: 1+1? 2</s>"
    assert format_for_reward_model(messages, answer, tokenizer, "auto") == "\n\nHuman: Hi\n\nAssistant: Hey"
    with pytest.raises(ValueError, match="no chat template"):
        format_for_reward_model(messages, answer, _EosOnly(), "chat_template")


def test_auto_format_resolution(oasst_dir, tokenizer):
    oasst_model = AutoModelForSequenceClassification.from_pretrained(oasst_dir)
    llama_model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=1))
    assert resolve_prompt_format("auto", oasst_model, tokenizer, conversational=True) == "oasst"
    assert resolve_prompt_format("auto", llama_model, tokenizer, conversational=True) == "chat_template"
    assert resolve_prompt_format("auto", llama_model, tokenizer, conversational=False) == "plain"
    assert resolve_prompt_format("auto", llama_model, _EosOnly(), conversational=True) == "plain"
    assert set(REWARD_PROMPT_FORMATS) == {"auto", "oasst", "chat_template", "plain"}
    with pytest.raises(ValueError, match="prompt_format"):
        resolve_prompt_format("chatml", llama_model, tokenizer, conversational=False)


def test_oasst_scores_match_manual_rendering(oasst_dir):
    model, tokenizer = load_reward_model(str(oasst_dir))
    prompt, completion = "\n\nHuman: Hi\n\nAssistant:", " Hello"
    [score] = score_completions(model, tokenizer, [prompt], [completion], progress=False)
    ids = tokenizer("<|prompter|>Hi</s><|assistant|>Hello</s>", return_tensors="pt")["input_ids"]
    assert score == pytest.approx(model(input_ids=ids).logits.item(), abs=1e-5)


def test_batched_scores_equal_one_row_at_a_time(tiny_reward_model_dir):
    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    rows = load_hh_rlhf_slice("test").select(range(12))
    prompts = ["\n\nHuman: what is" + " very" * i + " up?\n\nAssistant:" for i in range(12)]
    completions = [row["chosen"][-80:] for row in rows]
    batched = score_completions(model, tokenizer, prompts, completions, batch_size=5, progress=False)
    single = score_completions(model, tokenizer, prompts, completions, batch_size=1, progress=False)
    assert batched == pytest.approx(single, abs=1e-4)
    assert len({round(s, 5) for s in batched}) > 1


def test_truncation_from_the_left_keeps_the_response(tiny_reward_model_dir):
    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    response = " I can help with that."
    prompts = ["\n\nHuman: " + "blah " * 60 + "\n\nAssistant:", "\n\nHuman: " + "other " * 80 + "\n\nAssistant:"]
    tail_length = len(tokenizer("\n\nAssistant:" + response + tokenizer.eos_token)["input_ids"])
    scores = score_completions(model, tokenizer, prompts, [response] * 2, max_length=tail_length, progress=False)
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)  # only the shared end (the response) was read
    untruncated = score_completions(model, tokenizer, prompts, [response] * 2, progress=False)
    assert untruncated[0] != pytest.approx(untruncated[1], abs=1e-5)


def test_tiny_reward_model_agrees_with_human_labels_more_than_chance(tiny_reward_model_dir):
    from helpers.baseline_data import last_exchange_pairs

    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    rows = last_exchange_pairs(load_hh_rlhf_slice("test"))  # held out: the RM trained on the train slice
    prompts = list(rows["prompt"])
    scores = score_completions(
        model, tokenizer, prompts * 2, list(rows["chosen"]) + list(rows["rejected"]), batch_size=32, progress=False
    )
    n = len(prompts)
    agreement = sum(scores[i] > scores[n + i] for i in range(n)) / n
    # 200 pairs: under chance (p = 0.5) agreement >= 0.56 has probability < 5%
    assert agreement >= 0.56, agreement


def test_reward_callable_with_trl_signature():
    def length_reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    scores = score_completions(length_reward, None, ["a", "b", "c"], ["x", "yyy", "zz"], batch_size=2, progress=False)
    assert scores == [1.0, 3.0, 2.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_non_finite_score_names_the_row(bad):
    def reward(prompts, completions, **kwargs):
        return [bad if c == "bad" else 1.0 for c in completions]

    with pytest.raises(ValueError, match="Row 2"):
        score_completions(reward, None, ["p"] * 3, ["ok", "ok", "bad"], batch_size=2, progress=False)


def test_nan_from_a_model_names_the_row(tiny_reward_model_dir):
    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    with torch.no_grad():
        model.score.weight.fill_(math.nan)
    with pytest.raises(ValueError, match="Row 0: .*non-finite"):
        score_completions(model, tokenizer, ["\n\nHuman: hi\n\nAssistant:"], [" hello"], progress=False)


def test_head_that_is_not_a_single_score_is_rejected(tmp_path, tokenizer):
    path = tmp_path / "two_labels"
    LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    with pytest.raises(ValueError, match=r"two_labels.*2 outputs.*single score"):
        load_reward_model(str(path))

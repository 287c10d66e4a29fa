"""`trl-pro eval`'s caches are keyed on what the responses and scores depend on: a model retrained into the same folder,
or reward scores from other weights or another dtype, are recomputed (and the stale cache logged), never reused."""

import json
import logging
import shutil

import pytest
import torch

from trl_pro.evaluation.metrics import sigmoid
from trl_pro.evaluation.responses import generate_responses
from trl_pro.evaluation.systems import System, evaluate_systems
from trl_pro.evaluation.test_data import load_test_data, read_responses_file, unique_prompts
from trl_pro.pipeline.models import load_policy
from trl_pro.utils.io import read_jsonl_cache


# generation with a tiny model (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CACHE_LOGGER = "trl_pro.utils.cache"


def _save_reward_model(path, seed):
    """A tiny single-score Llama classifier with random weights from `seed`, saved with the tiny tokenizer."""
    from transformers import LlamaForSequenceClassification

    from trl_pro.assets import load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=1)).to(torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _direct_scores(reward_model_dir, prompts, responses, **loading):
    from trl_pro.evaluation.metrics import reward_scores
    from trl_pro.pipeline.reward_models import load_reward_model

    model, tokenizer = load_reward_model(str(reward_model_dir), **loading)
    return reward_scores(model, tokenizer, prompts, responses, prompt_format="auto", progress=False)


def _cached_scores(out, name):
    return [row["score"] for row in read_jsonl_cache(out / "cache" / f"{name}.rewards.jsonl")]


def _reward(scores):
    """The `reward` metric of these scores: sigmoid, x100, averaged."""
    return 100 * sum(map(sigmoid, scores)) / len(scores)


def test_model_retrained_into_the_same_folder_is_generated_again(tiny_policy_dir, tmp_path, caplog):
    from trl_pro.assets import build_tiny_llama

    model_dir = tmp_path / "policy"
    shutil.copytree(tiny_policy_dir, model_dir)
    data = load_test_data(max_samples=3)
    prompts = unique_prompts(data)
    system = System("tiny", str(model_dir))
    out = tmp_path / "out"
    kwargs = dict(max_new_tokens=6, progress=False, plot=False)
    evaluate_systems([system], data, out, **kwargs)
    old = read_responses_file(out / "responses" / "tiny.jsonl", prompts)

    # "Retrained": other weights saved into the same folder (its config and tokenizer unchanged)
    build_tiny_llama(seed=1).save_pretrained(model_dir)
    model, tokenizer = load_policy(str(model_dir))
    expected = generate_responses(model, tokenizer, prompts, max_new_tokens=6, progress=False)
    assert expected != old  # otherwise the test proves nothing
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        evaluate_systems([system], data, out, **kwargs)
    assert read_responses_file(out / "responses" / "tiny.jsonl", prompts) == expected
    assert "stale" in caplog.text and str(out / "cache" / "tiny.jsonl") in caplog.text
    # The cache holds the new model's responses only, and a rerun takes them from it without warning
    assert {row["prompt"]: row["response"] for row in read_jsonl_cache(out / "cache" / "tiny.jsonl")} == expected
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        evaluate_systems([system], data, out, **kwargs)
    assert read_responses_file(out / "responses" / "tiny.jsonl", prompts) == expected and not caplog.text


def test_other_generation_settings_regenerate_instead_of_mixing(tiny_policy_dir, tmp_path, caplog):
    data = load_test_data(max_samples=2)
    prompts = unique_prompts(data)
    system = System("tiny", str(tiny_policy_dir))
    out = tmp_path / "out"
    evaluate_systems([system], data, out, max_new_tokens=2, progress=False, plot=False)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        evaluate_systems([system], data, out, max_new_tokens=7, progress=False, plot=False)
    assert "max_new_tokens" in caplog.text
    model, tokenizer = load_policy(str(tiny_policy_dir))
    expected = generate_responses(model, tokenizer, prompts, max_new_tokens=7, progress=False)
    assert read_responses_file(out / "responses" / "tiny.jsonl", prompts) == expected


def test_reward_scores_follow_the_reward_model_weights_and_dtype(tmp_path, caplog):
    data = load_test_data(max_samples=3)
    prompts = unique_prompts(data)
    canned = tmp_path / "canned.jsonl"
    canned.write_text(
        "".join(json.dumps({"prompt": p, "response": "I can't help with that."}) + "\n" for p in prompts)
    )
    responses = ["I can't help with that."] * len(prompts)  # as the file holds them
    reward_dir = tmp_path / "rm"
    _save_reward_model(reward_dir, seed=0)
    system = System("canned", str(canned))
    out = tmp_path / "out"
    kwargs = dict(reward_model_name_or_path=str(reward_dir), progress=False, plot=False)
    first = evaluate_systems([system], data, out, **kwargs)
    scores = _direct_scores(reward_dir, prompts, responses)
    assert first["canned"]["total"]["reward"] == pytest.approx(_reward(scores))

    # Other weights in the same folder: scored again, with the new weights
    _save_reward_model(reward_dir, seed=1)
    expected = _direct_scores(reward_dir, prompts, responses)
    assert _reward(expected) != pytest.approx(_reward(scores))  # otherwise the test proves nothing
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        second = evaluate_systems([system], data, out, **kwargs)
    assert second["canned"]["total"]["reward"] == pytest.approx(_reward(expected))
    assert "stale" in caplog.text and "canned.rewards.jsonl" in caplog.text
    assert _cached_scores(out, "canned") == pytest.approx(expected)

    # Another dtype: scored again in that dtype
    scores, expected = expected, _direct_scores(reward_dir, prompts, responses, dtype="bfloat16")
    assert expected != pytest.approx(scores)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        third = evaluate_systems([system], data, out, dtype="bfloat16", **kwargs)
    assert third["canned"]["total"]["reward"] == pytest.approx(_reward(expected))
    assert "stale" in caplog.text
    assert _cached_scores(out, "canned") == pytest.approx(expected)

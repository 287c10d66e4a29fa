import logging
import socket

import pytest
import torch

from trl_pro.pipeline.generation import (
    CandidateSource,
    GenerationStats,
    collect_candidates,
    generate_local,
    generate_openai,
    local_source,
    openai_source,
)
from trl_pro.pipeline.models import load_policy


PROMPTS = [
    "\n\nHuman: How do I bake bread?\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant:",
    [{"role": "user", "content": "Tell me a joke"}],
]


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return load_policy(str(tiny_policy_dir))


def test_local_generation_batched_equals_one_prompt_at_a_time(policy):
    model, tokenizer = policy
    assert tokenizer.padding_side == "left"
    batched = generate_local(
        model, tokenizer, PROMPTS, do_sample=False, max_completion_length=12, batch_size=3, progress=False
    )
    single = generate_local(
        model, tokenizer, PROMPTS, do_sample=False, max_completion_length=12, batch_size=1, progress=False
    )
    assert batched == single  # left padding: the padded prompts continue exactly as alone
    assert [len(texts) for texts in batched] == [1, 1, 1]
    # the conversational prompt went through the chat template
    ids = tokenizer("\n\nHuman: Tell me a joke\n\nAssistant:", return_tensors="pt")
    manual = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    completion = manual[0, ids["input_ids"].shape[1] :].tolist()
    if tokenizer.eos_token_id in completion:
        completion = completion[: completion.index(tokenizer.eos_token_id)]
    assert batched[2][0] == tokenizer.decode(completion, skip_special_tokens=True)


def test_local_sampling_gives_k_candidates_reproducibly(policy):
    model, tokenizer = policy
    kwargs = dict(
        num_generations=3, max_completion_length=8, temperature=1.2, top_p=0.95, top_k=50, seed=1, progress=False
    )
    first = generate_local(model, tokenizer, PROMPTS[:2], **kwargs)
    second = generate_local(model, tokenizer, PROMPTS[:2], **kwargs)
    assert first == second and [len(texts) for texts in first] == [3, 3]
    assert len(set(first[0])) > 1  # sampling, not greedy


def test_left_truncated_prompts(policy):
    model, tokenizer = policy
    long_prompt = "\n\nHuman: " + "word " * 200 + "ok?\n\nAssistant:"
    tail = tokenizer.decode(tokenizer(long_prompt)["input_ids"][-16:])
    truncated = generate_local(
        model, tokenizer, [long_prompt], do_sample=False, max_prompt_length=16, max_completion_length=6, progress=False
    )
    direct = generate_local(model, tokenizer, [tail], do_sample=False, max_completion_length=6, progress=False)
    assert truncated == direct


def test_generation_through_a_peft_adapter(policy, tiny_policy_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from trl_pro.assets import build_tiny_llama

    peft_model = get_peft_model(
        build_tiny_llama(seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    model, tokenizer = load_policy(str(tiny_policy_dir), adapter_path=str(tmp_path / "adapter"))
    with_adapter = generate_local(
        model, tokenizer, PROMPTS[:2], do_sample=False, max_completion_length=10, progress=False
    )
    base_model, _ = policy
    without = generate_local(
        base_model, tokenizer, PROMPTS[:2], do_sample=False, max_completion_length=10, progress=False
    )
    assert with_adapter != without


def test_gradient_checkpointing_is_off_during_generation_and_restored(tiny_policy_dir):
    model, tokenizer = load_policy(str(tiny_policy_dir))
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    generate_local(model, tokenizer, PROMPTS[:1], do_sample=False, max_completion_length=4, progress=False)
    assert model.is_gradient_checkpointing and model.training and model.config.use_cache is False


def test_openai_endpoint_completions_and_chat(openai_server):
    texts = generate_openai(
        PROMPTS,
        model=openai_server.model,
        base_url=openai_server.base_url,
        num_generations=2,
        max_completion_length=6,
        progress=False,
    )
    assert [len(t) for t in texts] == [2, 2, 2]
    assert all(isinstance(t, str) for row in texts for t in row)
    chat = generate_openai(
        PROMPTS[:1],
        model=openai_server.model,
        base_url=openai_server.base_url,
        api="chat",
        max_completion_length=6,
        progress=False,
    )
    assert len(chat) == 1 and len(chat[0]) == 1


def test_failing_endpoint_retries_then_names_the_prompt(monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    monkeypatch.setattr("trl_pro.pipeline.generation.time.sleep", sleeps.append)
    with pytest.raises(RuntimeError, match=r"prompt 1 \('Human: second question.*after 3 attempts"):
        generate_openai(
            ["\n\nHuman: first", "\n\nHuman: second question\n\nAssistant:"],
            model="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            max_retries=2,
            backoff_seconds=0.5,
            timeout=2,
            progress=False,
            client=_FailFrom(1, port),
        )
    assert sleeps == [0.5, 1.0]  # bounded exponential backoff


class _FailFrom:
    """A real openai client pointed at a closed port, except that prompt 0 (asked first) is answered, so the error
    must name prompt 1."""

    def __init__(self, fail_from: int, port: int):
        import openai

        self.real = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=2)
        self.base_url = self.real.base_url
        self.calls = 0
        self.fail_from = fail_from
        self.completions = self

    def create(self, **kwargs):
        self.calls += 1
        if self.calls <= self.fail_from:
            return type("R", (), {"choices": [type("C", (), {"text": " fine"})()]})()
        return self.real.completions.create(**kwargs)


def test_collect_candidates_logs_short_sources_and_drops_empty(caplog):
    def short(prompts, k):
        return [["a"] if i == 0 else ["b", "c"] for i in range(len(prompts))]

    def empties(prompts, k):
        return [["  ", "x"] for _ in prompts]

    stats = GenerationStats()
    with caplog.at_level(logging.WARNING, logger="trl_pro.pipeline.generation"):
        candidates = collect_candidates(
            [CandidateSource("short", short), CandidateSource("empty", empties)], ["p0", "p1", "p2"], 2, stats=stats
        )
    assert candidates[0] == [("a", "short"), ("x", "empty")]
    assert candidates[1] == [("b", "short"), ("c", "short"), ("x", "empty")]
    assert "fewer than 2 candidates for 1 of 3 prompts (1 candidates missing)" in caplog.text
    assert "dropped 3 empty generations" in caplog.text
    assert stats.dropped_empty == {"short": 0, "empty": 3} and stats.short_prompts["short"] == 1
    kept = collect_candidates([CandidateSource("empty", empties)], ["p0"], 2, keep_empty=True)
    assert kept == [[("  ", "empty"), ("x", "empty")]]


def test_sources_record_their_names(policy, openai_server):
    model, tokenizer = policy
    sources = [
        local_source(model, tokenizer, name="tiny", max_completion_length=4, progress=False),
        openai_source(
            openai_server.model,
            name="served",
            base_url=openai_server.base_url,
            max_completion_length=4,
            progress=False,
        ),
    ]
    candidates = collect_candidates(sources, PROMPTS[:2], 2, keep_empty=True)
    assert [[source for _, source in row] for row in candidates] == [["tiny", "tiny", "served", "served"]] * 2


def test_generation_rejects_bad_settings(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="greedy"):
        generate_local(model, tokenizer, PROMPTS[:1], do_sample=False, num_generations=2, progress=False)
    with pytest.raises(ValueError, match="Row 0, field 'prompt'"):
        generate_local(model, tokenizer, [42], progress=False)
    assert torch.is_grad_enabled()


def test_four_bit_policy_generates(tiny_policy_dir):
    pytest.importorskip("bitsandbytes")
    model, tokenizer = load_policy(str(tiny_policy_dir), load_in_4bit=True, dtype="float32")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    [texts] = generate_local(
        model, tokenizer, PROMPTS[:1], num_generations=2, max_completion_length=4, seed=0, progress=False
    )
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)

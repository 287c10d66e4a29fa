"""`trl-pro eval` and `trl_pro.evaluation`: the authors' response cutting and BLEU, test data and subsets, responses
files, batched and resumable generation, reward through a real tiny reward model, and the command end to end."""

import gzip
import json
import math

import pytest
import torch

from trl_pro.assets import HH_RLHF_DIR
from trl_pro.evaluation.metrics import authors_bleu, compute_metrics, corpus_sacrebleu, cut_response, sigmoid
from trl_pro.evaluation.responses import MAX_PROMPT_LENGTH, generate_responses
from trl_pro.evaluation.systems import (
    COMPARISON_MANIFEST,
    System,
    evaluate_systems,
    parse_system_specs,
    read_comparison_folder,
)
from trl_pro.evaluation.test_data import EvalExample, load_test_data, read_responses_file, unique_prompts
from trl_pro.pipeline.models import load_policy
from trl_pro.utils.io import read_jsonl_cache


# generation with a tiny model (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hh(prompt_turn, chosen, rejected, subset=None):
    row = {
        "chosen": f"\n\nHuman: {prompt_turn}\n\nAssistant: {chosen}",
        "rejected": f"\n\nHuman: {prompt_turn}\n\nAssistant: {rejected}",
    }
    if subset is not None:
        row["subset"] = subset
    return row


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Cutting and metrics


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("  Sure, here it is.  \n\nHuman: and more?", "Sure, here it is."),
        ("Fine.\nhuman: hi", "Fine."),
        ("A\n\nAssistant: B\n\nHuman: C", "A"),  # the first marker in the text wins
        ("x assistant: y", "x"),
        ("HUMAN: stays", "HUMAN: stays"),  # the authors' four spellings only
        ("\n\n  plain answer \n", "plain answer"),
    ],
)
def test_cut_response_follows_the_authors(generated, expected):
    assert cut_response(generated) == expected


def test_bleu_is_nltk_character_4gram_bleu_computed_by_hand():
    # Same length: p1..p4 = 4/5, 3/4, 2/3, 1/2 over characters, no brevity penalty
    assert authors_bleu("abcde", "abcdf") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # Shorter hypothesis, all n-grams match: brevity penalty exp(1 - 6/4)
    assert authors_bleu("abcd", "abcdef") == pytest.approx(math.exp(1 - 6 / 4))
    # Stripped first; no character in common -> 0 (no smoothing)
    assert authors_bleu("  abcd \n", "abcd") == pytest.approx(1.0)
    assert authors_bleu("xyz", "abc") == 0.0
    assert authors_bleu("the cat sat", "the cat sat") == pytest.approx(1.0)
    # Characters, not words: p_n counted over character n-grams (clipped counts), brevity penalty from characters
    hyp, ref = "hello world", "hello there world"

    def ngrams(text, n):
        return [text[i : i + n] for i in range(len(text) - n + 1)]

    precisions = []
    for n in range(1, 5):
        ref_counts = {}
        for gram in ngrams(ref, n):
            ref_counts[gram] = ref_counts.get(gram, 0) + 1
        matched = 0
        for gram, count in {g: ngrams(hyp, n).count(g) for g in set(ngrams(hyp, n))}.items():
            matched += min(count, ref_counts.get(gram, 0))
        precisions.append(matched / len(ngrams(hyp, n)))
    expected = math.exp(1 - len(ref) / len(hyp)) * math.prod(precisions) ** 0.25
    assert authors_bleu(hyp, ref) == pytest.approx(expected)


def test_sacrebleu_is_corpus_bleu():
    import sacrebleu

    hyps, refs = ["the cat sat on the mat", "a dog"], ["the cat sat on a mat", "the dog barked"]
    assert corpus_sacrebleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_sacrebleu(["same words here ok"], ["same words here ok"]) == pytest.approx(100.0)


def test_total_is_sample_weighted_and_reward_is_sigmoid_x100():
    data = {
        "a": [EvalExample("P1", "abcd", "a", 0)],
        "b": [EvalExample(f"Q{i}", "wxyz", "b", i) for i in range(3)],
    }
    responses = {"P1": "abcd", "Q0": "nope", "Q1": "nope", "Q2": "nope"}
    rewards = {"P1": 2.0, "Q0": -1.0, "Q1": 0.0, "Q2": 1.0}
    results = compute_metrics(data, responses, rewards)
    assert results["a"]["bleu"] == pytest.approx(100.0) and results["b"]["bleu"] == 0.0
    assert results["total"]["bleu"] == pytest.approx(25.0)  # 1 of 4 rows, not (100 + 0) / 2
    sig = [1 / (1 + math.exp(-x)) for x in (2.0, -1.0, 0.0, 1.0)]
    assert results["a"]["reward"] == pytest.approx(100 * sig[0])
    assert results["b"]["reward"] == pytest.approx(100 * sum(sig[1:]) / 3)
    assert results["total"]["reward"] == pytest.approx(100 * sum(sig) / 4)
    assert [results[k]["n"] for k in ("a", "b", "total")] == [1, 3, 4]
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0  # no overflow


# ---------------------------------------------------------------------------------------------------------------------
# Test data and responses files


def test_default_test_data_is_the_vendored_slice_with_the_authors_prompts():
    data = load_test_data()
    assert list(data) == ["harmless_base"] and len(data["harmless_base"]) == 200
    with gzip.open(HH_RLHF_DIR / "test.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    example = data["harmless_base"][0]
    # The prompt ends at the last assistant turn (not at the responses' common prefix), the reference is chosen
    assert example.prompt.endswith("\n\nAssistant:") and example.prompt + example.reference == first["chosen"]
    assert first["rejected"].startswith(example.prompt)


def test_subsets_from_a_column_from_files_and_ranked_rows(tmp_path):
    mixed = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            _hh("q1", "good", "bad", "helpful_base"),
            _hh("q2", "fine", "worse", "harmless_base"),
            _hh("q3", "ok", "no", "helpful_base"),
        ],
    )
    data = load_test_data([str(mixed)])
    assert list(data) == ["harmless_base", "helpful_base"]  # the paper's order
    assert [ex.reference.strip() for ex in data["helpful_base"]] == ["good", "ok"]
    ranked = _write_jsonl(
        tmp_path / "ranked.jsonl",
        [
            {
                "prompt": "\n\nHuman: hi\n\nAssistant:",
                "completions": [" low", " high", " mid"],
                "scores": [0.1, 0.9, 0.5],
            }
        ],
    )
    data = load_test_data({"online": str(ranked), "base": str(mixed)})
    assert list(data) == ["online", "base"] and data["online"][0].reference == " high"  # best by score
    assert len(data["base"]) == 3
    assert len(load_test_data([str(mixed)], max_samples=1)["helpful_base"]) == 1


def test_subset_with_no_rows_is_an_error(tmp_path):
    empty = tmp_path / "helpful_online.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="subset 'helpful_online' has no rows"):
        load_test_data({"helpful_online": str(empty)})
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [_hh("q1", "a", "b", "helpful_base")])
    with pytest.raises(ValueError, match="subset 'harmless_base' has no rows"):
        load_test_data([str(mixed)], subsets=["helpful_base", "harmless_base"])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_hh("q1", "a", "b"), {"chosen": "no turns", "rejected": "x"}])
    with pytest.raises(ValueError, match="Row 1, field 'prompt': empty prompt"):
        load_test_data({"x": str(bad)})


def test_responses_file_missing_or_extra_prompts(tmp_path):
    prompts = [ex.prompt for ex in load_test_data(max_samples=3)["harmless_base"]]
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": p, "response": f"r{i}"} for i, p in enumerate(prompts)])
    assert read_responses_file(good, prompts) == {p: f"r{i}" for i, p in enumerate(prompts)}
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"prompt": p, "response": "r"} for p in prompts[:2]])
    with pytest.raises(
        ValueError,
        match=r"missing.jsonl: no response for 1 of the 3 test prompts \(first: test "
        r"prompt 2",
    ):
        read_responses_file(missing, prompts)
    extra = _write_jsonl(
        tmp_path / "extra.jsonl",
        [{"prompt": p, "response": "r"} for p in prompts] + [{"prompt": "other", "response": "r"}],
    )
    with pytest.raises(ValueError, match=r"extra.jsonl: 1 prompts are not in the test data \(first: row 3"):
        read_responses_file(extra, prompts)
    no_field = _write_jsonl(tmp_path / "nofield.jsonl", [{"prompt": prompts[0], "text": "r"}])
    with pytest.raises(ValueError, match="row 0, field 'response'"):
        read_responses_file(no_field, prompts)


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def test_generation_batched_matches_one_at_a_time_and_resumes_from_its_cache(tiny_policy_dir, tmp_path):
    model, tokenizer = load_policy(str(tiny_policy_dir))
    prompts = unique_prompts(load_test_data(max_samples=4))
    kwargs = dict(max_new_tokens=6, progress=False)
    batched = generate_responses(model, tokenizer, prompts, batch_size=4, **kwargs)
    single = generate_responses(model, tokenizer, prompts, batch_size=1, **kwargs)
    assert batched == single and all(isinstance(r, str) for r in batched.values())
    # Left truncation: a prompt longer than max_prompt_length keeps its end (the last turn)
    long_prompt = "\n\nHuman: " + "word " * 600 + "\n\nAssistant:"
    ids = tokenizer(long_prompt, truncation=True, max_length=MAX_PROMPT_LENGTH)["input_ids"]
    assert len(ids) <= MAX_PROMPT_LENGTH
    # Resume: two prompts are in the cache (as an interrupted run leaves them, the last line cut short)
    cache = tmp_path / "cache.jsonl"
    cache.write_text(json.dumps({"prompt": prompts[0], "response": "CACHED"}) + "\n" + '{"prompt": "cut sh')
    resumed = generate_responses(model, tokenizer, prompts, batch_size=4, cache_path=cache, **kwargs)
    assert resumed[prompts[0]] == "CACHED"
    assert {p: resumed[p] for p in prompts[1:]} == {p: batched[p] for p in prompts[1:]}
    assert {row["prompt"] for row in read_jsonl_cache(cache)} == set(prompts)


# ---------------------------------------------------------------------------------------------------------------------
# Whole evaluation


def test_evaluate_systems_model_responses_file_reward_and_resume(tiny_policy_dir, tiny_reward_model_dir, tmp_path):
    from trl_pro.pipeline.reward_models import load_reward_model, score_completions

    data = load_test_data(max_samples=4)
    prompts = unique_prompts(data)
    canned = _write_jsonl(
        tmp_path / "canned.jsonl", [{"prompt": p, "response": "I can't help with that."} for p in prompts]
    )
    systems = [System("tiny", str(tiny_policy_dir), prompt_suffix=" Sure"), System("canned", str(canned))]
    out = tmp_path / "out"
    kwargs = dict(reward_model_name_or_path=str(tiny_reward_model_dir), max_new_tokens=6, progress=False)
    results = evaluate_systems(systems, data, out, **kwargs)

    assert set(results) == {"tiny", "canned"} and set(results["tiny"]) == {"harmless_base", "total"}
    assert json.loads((out / "results.json").read_text()) == results
    for name in ("tiny", "canned"):
        rows = [json.loads(line) for line in (out / "responses" / f"{name}.jsonl").read_text().splitlines()]
        assert [row["prompt"] for row in rows] == prompts and all(row["subset"] == "harmless_base" for row in rows)
    # Reward: sigmoid of the reward model's own scores, x100, averaged
    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    raw = score_completions(model, tokenizer, prompts, [" I can't help with that."] * 4, progress=False)
    expected = 100 * sum(sigmoid(s) for s in raw) / 4
    assert results["canned"]["total"]["reward"] == pytest.approx(expected, rel=1e-5)
    references = [ex.reference for ex in data["harmless_base"]]
    assert results["canned"]["total"]["bleu"] == pytest.approx(
        100 * sum(authors_bleu("I can't help with that.", r) for r in references) / 4
    )
    md = (out / "results.md").read_text()
    assert "| tiny |" in md and "harmless_base BLEU | harmless_base Reward" in md and "' Sure'" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun generates and scores nothing again: the caches answer (a broken model path proves it is not loaded)
    generated = (out / "responses" / "tiny.jsonl").read_text()
    again = evaluate_systems(systems, data, out, **kwargs)
    assert again == results and (out / "responses" / "tiny.jsonl").read_text() == generated
    # Other generation settings with the same output_dir: generated again, not silently mixed
    evaluate_systems(systems[:1], data, out, max_new_tokens=7, progress=False)
    assert (out / "responses" / "tiny.jsonl").read_text() != generated


def test_reward_model_head_must_be_a_single_score(tiny_policy_dir, tmp_path):
    from transformers import LlamaForSequenceClassification

    from trl_pro.assets import load_tiny_tokenizer, tiny_llama_config

    two_heads = tmp_path / "rm2"
    tokenizer = load_tiny_tokenizer()
    LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=2)).save_pretrained(two_heads)
    tokenizer.save_pretrained(two_heads)
    data = load_test_data(max_samples=2)
    canned = _write_jsonl(tmp_path / "c.jsonl", [{"prompt": p, "response": "ok"} for p in unique_prompts(data)])
    with pytest.raises(ValueError, match="single score"):
        evaluate_systems(
            [System("c", str(canned))],
            data,
            tmp_path / "out",
            reward_model_name_or_path=str(two_heads),
            progress=False,
        )


def test_comparison_folder_manifest(tmp_path):
    data = load_test_data(max_samples=2)
    folder = tmp_path / "comparison"
    (folder / "a").mkdir(parents=True)
    _write_jsonl(folder / "a" / "responses.jsonl", [{"prompt": p, "response": "yes"} for p in unique_prompts(data)])
    (folder / COMPARISON_MANIFEST).write_text(
        json.dumps({"systems": [{"name": "a", "path": "a/responses.jsonl", "prompt_suffix": " (a helpful answer)"}]})
    )
    (system,) = read_comparison_folder(folder)
    assert system.name == "a" and system.kind == "responses" and system.prompt_suffix == " (a helpful answer)"
    assert system.path == str(folder / "a" / "responses.jsonl")
    (folder / COMPARISON_MANIFEST).write_text(json.dumps({"systems": [{"name": "a"}]}))
    with pytest.raises(ValueError, match=r"systems\[0\] needs string fields 'name' and 'path'"):
        read_comparison_folder(folder)
    with pytest.raises(ValueError, match="no comparison.json"):
        read_comparison_folder(tmp_path)


def test_system_specs():
    systems = parse_system_specs(["pro=trl-pro/tiny-llama", "coh=some/model"], ["coh=\\nA helpful answer:"])
    assert [(s.name, s.kind, s.prompt_suffix) for s in systems] == [
        ("pro", "model", ""),
        ("coh", "model", "\nA helpful answer:"),
    ]
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        parse_system_specs(["nopath"])
    with pytest.raises(ValueError, match="given twice"):
        parse_system_specs(["a=x", "a=y"])
    with pytest.raises(ValueError, match="system 'r': responses file missing.jsonl does not exist"):
        parse_system_specs(["r=missing.jsonl"])
    with pytest.raises(ValueError, match="names no system: b"):
        parse_system_specs(["a=x"], ["b=suffix"])


# ---------------------------------------------------------------------------------------------------------------------
# The command


def _run_eval(argv, capsys):
    """`trl-pro eval ARGV` in this process (the script `accelerate launch` would start): (exit status, stdout,
    stderr)."""
    from trl_pro.scripts.eval import cli_main

    status = 0
    try:
        cli_main(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_eval_end_to_end_with_yaml_and_repeated_systems(tiny_policy_dir, tmp_path, capsys):
    data = load_test_data(max_samples=3)
    canned = _write_jsonl(tmp_path / "canned.jsonl", [{"prompt": p, "response": "No."} for p in unique_prompts(data)])
    config = tmp_path / "eval.yaml"
    config.write_text(f"max_samples: 3\nmax_completion_length: 4\nsystem:\n  - tiny={tiny_policy_dir}\n")
    out = tmp_path / "out"
    status, stdout, stderr = _run_eval(
        ["--config", str(config), "--system", f"canned={canned}", "--output_dir", str(out)], capsys
    )
    assert status == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["tiny", "canned"] and results["canned"]["total"]["n"] == 3
    assert results["canned"]["harmless_base"]["reward"] is None  # no reward model given
    assert "| canned |" in stdout


def test_cli_eval_is_registered_and_errors_are_one_line(tmp_path, capsys):
    from trl_pro.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0 and "--reward_model_name_or_path" in capsys.readouterr().out
    data = load_test_data(max_samples=2)
    short = _write_jsonl(tmp_path / "short.jsonl", [{"prompt": unique_prompts(data)[0], "response": "x"}])
    status, _, stderr = _run_eval(
        ["--system", f"s={short}", "--max_samples", "2", "--output_dir", str(tmp_path / "o")], capsys
    )
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("trl-pro eval: error:") and "no response for 1 of the 2 test prompts" in lines[0]
    status, _, stderr = _run_eval(["--system", "nopath", "--output_dir", str(tmp_path / "o")], capsys)
    assert status == 1 and "expected NAME=PATH" in stderr
    status, _, stderr = _run_eval(["--system", "a=b", "--max_sample", "2"], capsys)
    assert status == 2 and "unrecognized arguments: --max_sample 2" in stderr


def test_eval_generation_benchmark_runs(tmp_path):
    """The benchmark script end to end on a tiny setting (the pipeline and its files, not the figures)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_generation.py"
    spec = importlib.util.spec_from_file_location("eval_generation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(
        [
            "--num_prompts",
            "3",
            "--batch_sizes",
            "1,3",
            "--repeats",
            "1",
            "--max_new_tokens",
            "3",
            "--full_eval_prompts",
            "3",
            "--output",
            str(tmp_path / "bench"),
        ]
    )
    assert [row["batch_size"] for row in report["generation"]["rows"]] == [1, 3]
    assert report["full_eval"]["num_prompts"] == 3 and report["full_eval"]["seconds"] > 0
    assert "not measured on GPU" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_peft_adapter_and_4bit_systems_load_and_generate(tiny_policy_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    model, tokenizer = load_policy(str(tmp_path / "adapter"))
    assert isinstance(model, PeftModel) and tokenizer.pad_token is not None
    prompts = unique_prompts(load_test_data(max_samples=2))
    with_adapter = generate_responses(model, tokenizer, prompts, max_new_tokens=4, progress=False)
    plain, _ = load_policy(str(tiny_policy_dir))
    logits = [m(**tokenizer(prompts[0], return_tensors="pt")).logits for m in (model, plain)]
    assert not torch.allclose(*logits)  # the adapter is applied
    assert set(with_adapter) == set(prompts)
    pytest.importorskip("bitsandbytes")
    quantized, tokenizer = load_policy(str(tiny_policy_dir), load_in_4bit=True)
    assert getattr(quantized, "is_loaded_in_4bit", False)
    assert set(generate_responses(quantized, tokenizer, prompts, max_new_tokens=2, progress=False)) == set(prompts)


def test_cli_eval_reads_a_comparison_folder(tmp_path, capsys):
    # The folder `trl-pro compare` writes: systems in subfolders, comparison.json listing them (paths relative)
    data = load_test_data(max_samples=2)
    folder = tmp_path / "compare"
    (folder / "sft").mkdir(parents=True)
    _write_jsonl(
        folder / "sft" / "responses.jsonl", [{"prompt": p, "response": "Sorry."} for p in unique_prompts(data)]
    )
    (folder / COMPARISON_MANIFEST).write_text(
        json.dumps({"systems": [{"name": "sft", "path": "sft/responses.jsonl", "prompt_suffix": "", "method": "sft"}]})
    )
    status, _, stderr = _run_eval(
        ["--comparison", str(folder), "--max_samples", "2", "--output_dir", str(tmp_path / "out")], capsys
    )
    assert status == 0, stderr[-2000:]
    assert list(json.loads((tmp_path / "out" / "results.json").read_text())) == ["sft"]

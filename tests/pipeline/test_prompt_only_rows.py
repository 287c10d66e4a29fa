"""Prompt-only rows (issue 18): `{"prompt": ...}`, TRL's prompt-only format, standard or conversational, are what
`trl-pro generate` reads to write rankings of its candidates, which `trl-pro rank` scores and sorts; they are not
training data (a ranking needs at least 2 candidates), and the trainer says so."""

import json

import pytest

from trl_pro.cli import training
from trl_pro.pipeline.rankings import dataset_rankings
from trl_pro.pipeline.reward_models import load_reward_model, score_completions
from trl_pro.scripts import generate as generate_script
from trl_pro.scripts import rank as rank_script
from trl_pro.scripts.pro import make_parser


PLAIN = [
    {"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:"},
    {"prompt": "\n\nHuman: hi\n\nAssistant:"},
    {"prompt": "\n\nHuman: What is the capital of France?\n\nAssistant:"},
]
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "Tell me a joke"}]},
    {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
        ]
    },
]
PROMPTS = {"plain": PLAIN, "conversational": CONVERSATIONAL}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _generate(data, output, policy_dir, num_generations, *extra):
    # --keep_empty: exactly k candidates per prompt, whatever the tiny random model samples
    generate_script.cli_main(
        [
            "--dataset_name",
            str(data),
            "--model_name_or_path",
            str(policy_dir),
            "--dtype",
            "float32",
            "--source_name",
            "tiny",
            "--num_generations",
            str(num_generations),
            "--max_completion_length",
            "8",
            "--keep_empty",
            "true",
            "--output_path",
            str(output),
            "--progress",
            "false",
            *extra,
        ]
    )


def _rank(data, output, reward_model_dir, *extra):
    rank_script.cli_main(
        [
            "--dataset_name",
            str(data),
            "--reward_model_name_or_path",
            str(reward_model_dir),
            "--reward_prompt_format",
            "plain",
            "--output_path",
            str(output),
            "--progress",
            "false",
            *extra,
        ]
    )


def _error_line(capsys):
    [line] = [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]
    return line


@pytest.fixture(scope="module", params=["plain", "conversational"])
def generated(request, tiny_policy_dir, tmp_path_factory):
    """`trl-pro generate --num_generations 2` on a file of prompt-only rows: (kind, input rows, output path)."""
    folder = tmp_path_factory.mktemp(f"prompt_only_{request.param}")
    rows = PROMPTS[request.param]
    output = folder / "generated.jsonl"
    _generate(_jsonl(folder / "prompts.jsonl", rows), output, tiny_policy_dir, 2)
    return request.param, rows, output


def test_generate_writes_rankings_of_the_generated_candidates(generated):
    kind, prompts, output = generated
    rows = _read(output)
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in prompts]
    for row in rows:
        assert set(row) == {"prompt", "completions", "sources"}
        assert len(row["completions"]) == 2 and row["sources"] == ["tiny", "tiny"]
        for completion in row["completions"]:
            if kind == "conversational":  # the reply to a conversation is an assistant message, as TRL writes it
                assert len(completion) == 1 and completion[0]["role"] == "assistant"
                assert isinstance(completion[0]["content"], str)
            else:
                assert isinstance(completion, str)


def test_rank_scores_and_sorts_the_generated_candidates(generated, tiny_reward_model_dir, tmp_path):
    kind, prompts, output = generated
    ranked = tmp_path / "ranked.jsonl"
    _rank(output, ranked, tiny_reward_model_dir, "--drop_duplicates", "false")
    rows, candidates = _read(ranked), _read(output)
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in prompts]
    model, tokenizer = load_reward_model(str(tiny_reward_model_dir))
    for row, unranked in zip(rows, candidates):
        assert row["scores"] == sorted(row["scores"], reverse=True) and row["sources"] == ["tiny", "tiny"]
        assert sorted(map(json.dumps, row["completions"])) == sorted(map(json.dumps, unranked["completions"]))
        expected = score_completions(
            model, tokenizer, [row["prompt"]] * 2, row["completions"], prompt_format="plain", progress=False
        )
        assert row["scores"] == pytest.approx(expected, abs=1e-4)


def test_one_generation_per_prompt_is_not_a_ranking_until_another_run_adds_one(
    tiny_policy_dir, tiny_reward_model_dir, tmp_path, capsys
):
    data = _jsonl(tmp_path / "prompts.jsonl", PLAIN)
    once = tmp_path / "once.jsonl"
    _generate(data, once, tiny_policy_dir, 1)
    out = " ".join(capsys.readouterr().out.split())
    assert f"wrote 3 rows to {once}" in out
    assert "3 rows have fewer than 2 candidates" in out and "trl-pro rank" in out
    assert [len(row["completions"]) for row in _read(once)] == [1, 1, 1]

    # rank refuses a one-candidate row, naming it and saying what to do
    with pytest.raises(SystemExit) as exit_info:
        _rank(once, tmp_path / "refused.jsonl", tiny_reward_model_dir)
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert "Row 0 (line 1 of once.jsonl), field 'completions': a ranking needs at least 2 candidates, got 1" in line
    assert "trl-pro generate" in line and "drop_invalid_rows" in line
    assert not (tmp_path / "refused.jsonl").exists()

    # a second run (another model, here the same one with another seed) appends its candidate: now a ranking
    twice = tmp_path / "twice.jsonl"
    _generate(once, twice, tiny_policy_dir, 1, "--source_name", "tiny2", "--seed", "1")
    assert "fewer than 2 candidates" not in capsys.readouterr().out
    rows = _read(twice)
    assert [row["sources"] for row in rows] == [["tiny", "tiny2"]] * 3
    assert [row["completions"][:1] for row in rows] == [row["completions"] for row in _read(once)]
    ranked = tmp_path / "ranked.jsonl"
    _rank(twice, ranked, tiny_reward_model_dir, "--drop_duplicates", "false")
    assert all(row["scores"] == sorted(row["scores"], reverse=True) for row in _read(ranked))


def test_prompt_only_rows_are_generation_input_only():
    rankings = dataset_rankings(CONVERSATIONAL, for_generation=True)
    assert rankings == [
        {"prompt": row["prompt"], "completions": [], "scores": None, "sources": []} for row in CONVERSATIONAL
    ]
    with pytest.raises(ValueError, match=r"Row 1, field 'prompt\[0\].content': expected a string"):
        dataset_rankings([{"prompt": "ok"}, {"prompt": [{"role": "user", "content": 3}]}], for_generation=True)
    with pytest.raises(ValueError, match="Prompt-only rows .* not rankings: a ranking needs at least 2 candidates"):
        dataset_rankings(PLAIN)  # what `trl-pro rank` and self-bootstrapping read


def test_trainer_refuses_a_prompt_only_training_set_clearly(tmp_path, capsys):
    data = _jsonl(tmp_path / "prompts.jsonl", PLAIN * 4)
    argv = [
        "--model_name_or_path",
        "trl-pro/tiny-llama",
        "--dataset_name",
        str(data),
        "--use_cpu",
        "true",
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
        "--max_steps",
        "1",
    ]
    with pytest.raises(SystemExit) as exit_info:
        training.train(*training.parse_args(make_parser(), argv))
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert "Prompt-only rows (columns ['prompt']" in line and "a ranking needs at least 2 candidates" in line
    assert "trl-pro generate --num_generations 2" in line and "trl-pro rank" in line

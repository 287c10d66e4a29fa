"""`trl-pro reward`: TRL's RewardTrainer on trl-pro's models and data formats. The recipe trains the built-in tiny
model on the vendored HH-RLHF slice (a few steps here) into a folder that `trl-pro rank` loads; rankings become the
pairs `--pairs` documents; a mistyped model path is a one-line error, not a hub traceback."""

import gzip
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from transformers import AutoConfig

from trl_pro.assets import HH_RLHF_DIR
from trl_pro.pipeline.reward_models import load_reward_model, score_completions
from trl_pro.scripts import rank as rank_script
from trl_pro.scripts import reward


ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "reward" / "tiny_reward_model.yaml"
# A few steps of small batches on short pairs: the recipe's path end to end, in seconds
FAST = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "16",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
]


def _raw_pairs(num_rows: int) -> list[dict]:
    with gzip.open(HH_RLHF_DIR / "test.jsonl.gz", "rt") as handle:
        return [json.loads(line) for _, line in zip(range(num_rows), handle)]


def test_recipe_trains_a_reward_model_that_rank_loads(tmp_path, capsys):
    output_dir = tmp_path / "rm"
    trainer = reward.cli_main(["--config", str(RECIPE), "--output_dir", str(output_dir), *FAST])
    assert trainer.state.global_step == 2
    out = capsys.readouterr().out
    assert "train: 1196 rankings -> 1196 preference pairs (--pairs all); dropped 4 invalid rows" in out
    assert "Held-out pairwise accuracy on the 'test' split:" in out
    # the folder stands alone (the built-in model is random): config with one score, weights and tokenizer
    assert AutoConfig.from_pretrained(output_dir).num_labels == 1
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()

    model, tokenizer = load_reward_model(str(output_dir))
    pairs, _ = reward.to_preference_dataset(_raw_pairs(3))
    prompts, completions = list(pairs["prompt"]) * 2, list(pairs["chosen"]) + list(pairs["rejected"])
    scores = score_completions(model, tokenizer, prompts, completions, progress=False)
    assert len(scores) == 6 and all(math.isfinite(s) for s in scores) and len(set(scores)) > 1

    # and `trl-pro rank` ranks raw pairs with it
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _raw_pairs(6)))
    ranked = tmp_path / "ranked.jsonl"
    rank_script.cli_main(
        [
            "--dataset_name",
            str(tmp_path / "pairs.jsonl"),
            "--reward_model_name_or_path",
            str(output_dir),
            "--output_path",
            str(ranked),
            "--progress",
            "false",
        ]
    )
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert len(row["scores"]) == 2 and all(math.isfinite(s) for s in row["scores"])
        assert row["scores"] == sorted(row["scores"], reverse=True)


def test_lora_adapter_is_merged_into_a_model_rank_loads(tmp_path):
    output_dir = tmp_path / "rm"
    trainer = reward.cli_main(
        [
            "--config",
            str(RECIPE),
            "--output_dir",
            str(output_dir),
            *FAST,
            "--eval_after_training",
            "false",
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--learning_rate",
            "0.05",
        ]
    )
    assert (output_dir / reward.ADAPTER_DIR / "adapter_config.json").is_file()
    assert not (output_dir / "adapter_config.json").exists()  # a plain model folder, loaded without PEFT
    adapter = json.loads((output_dir / reward.ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"  # the score head is trained and saved with the adapter
    merged, tokenizer = load_reward_model(str(output_dir))
    pairs, _ = reward.to_preference_dataset(_raw_pairs(4))
    prompts, completions = list(pairs["prompt"]), list(pairs["chosen"])
    trainer.model.eval()
    expected = score_completions(trainer.model.cpu(), tokenizer, prompts, completions, progress=False)
    assert score_completions(merged, tokenizer, prompts, completions, progress=False) == pytest.approx(
        expected, abs=1e-4
    )
    base = reward.build_tiny_reward_model(42)
    assert score_completions(base, tokenizer, prompts, completions, progress=False) != pytest.approx(expected)


# --- rankings -> preference pairs ----------------------------------------------------------------------------------


RANKED = [{"prompt": "Q?", "completions": ["b", "a", "c", "d"], "scores": [2.0, 3.0, 1.0, 1.0]}]


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # sorted by score: a (3), b (2), c (1), d (1); c and d are tied, so no pair between them
        ("all", [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]),
        ("adjacent", [("a", "b"), ("b", "c")]),
        ("best_vs_worst", [("a", "d")]),
    ],
)
def test_a_scored_ranking_becomes_its_documented_pairs(pairs, expected):
    dataset, stats = reward.to_preference_dataset(RANKED, pairs)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert [(row["chosen"], row["rejected"]) for row in dataset] == expected
    assert set(dataset["prompt"]) == {"Q?"}
    assert (stats.rankings, stats.pairs, stats.pairs_left_out) == (
        1,
        len(expected),
        {"all": 1, "adjacent": 1, "best_vs_worst": 0}[pairs],
    )


def test_every_format_becomes_preference_rows():
    unscored = [{"prompt": "P", "completions": ["x", "y", "z"]}]  # the given order is the ranking
    assert [(r["chosen"], r["rejected"]) for r in reward.to_preference_dataset(unscored, "all")[0]] == [
        ("x", "y"),
        ("x", "z"),
        ("y", "z"),
    ]
    # TRL pairs with an implicit prompt (raw HH-RLHF): the prompt ends at the last shared "Assistant:" marker
    raw = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}
    (row,) = reward.to_preference_dataset([raw])[0]
    assert row == {"prompt": "\n\nHuman: Hi?\n\nAssistant:", "chosen": " Hello.", "rejected": " Go away."}
    # TRL pairs with scores that contradict the labels are ordered by score, as `trl-pro pro` orders them
    scored = [{"prompt": "P", "chosen": "c", "rejected": "r", "score_chosen": 0.0, "score_rejected": 1.0}]
    assert reward.to_preference_dataset(scored)[0][0] == {"prompt": "P", "chosen": "r", "rejected": "c"}
    # the PRO authors' rows: one prefix per candidate, rewards
    authors = [
        {
            "prefix": [["<|prompter|>Hi?", "<|assistant|>"]] * 2,
            "suffix": ["worse", "better"],
            "reward": [0.1, 0.9],
            "sft_index": 0,
        }
    ]
    (row,) = reward.to_preference_dataset(authors)[0]
    assert (row["chosen"], row["rejected"]) == (" better", " worse") and row["prompt"].startswith("\n\nHuman: Hi?")


def test_invalid_rows_and_all_tied_rankings():
    rows = [{"prompt": "P", "completions": ["a", ""]}, {"prompt": "P", "completions": ["a", "b"]}]
    with pytest.raises(ValueError, match=r"Row 0, field 'completions\[1\]': empty completion"):
        reward.to_preference_dataset(rows)
    dataset, stats = reward.to_preference_dataset(rows, drop_invalid_rows=True)
    assert len(dataset) == 1 and stats.invalid_rows == 1 and "Row 0" in stats.first_invalid
    tied = [{"prompt": "P", "completions": ["a", "b"], "scores": [1.0, 1.0]}]
    with pytest.raises(Exception, match="every pair is tied"):
        reward.to_preference_dataset(tied)
    assert reward.ranking_pairs(["a", "a", "b"], None, "all") == [(0, 2), (1, 2)]  # identical candidates: no pair


# --- one-line errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no_such_model", "no such folder: ./no_such_model"),
        ("outputs/tiny-reward-modle", "no such folder: outputs/tiny-reward-modle"),
        ("trl-pro/tiny-lama", "no built-in model trl-pro/tiny-lama: the built-in model is trl-pro/tiny-llama"),
    ],
)
def test_a_mistyped_model_path_is_a_one_line_error(name, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # "outputs/..." is then a local path, not a hub id
    with pytest.raises(SystemExit) as exit_info:
        reward.cli_main(["--config", str(RECIPE), "--model_name_or_path", name])
    assert exit_info.value.code == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == f"trl-pro reward: error: {message} [set TRL_PRO_DEBUG=1 for the traceback]"


@pytest.mark.parametrize("path", sorted(RECIPE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_reward_recipes_parse(path):
    *parsed, config_remaining, cli_remaining = reward.make_parser().parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true"], return_remaining_strings=True, separate_remaining_strings=True
    )
    script_args, training_args, model_args, _ = parsed
    assert config_remaining == [] and cli_remaining == []
    assert script_args.pairs in reward.PAIRS and script_args.dataset_name and model_args.model_name_or_path
    assert training_args.output_dir.startswith("outputs/") and training_args.report_to == []


def test_every_flag_has_help():
    actions = [a for a in reward.make_parser()._actions if a.option_strings and a.dest != "help"]
    assert {"pairs", "drop_invalid_rows", "eval_after_training", "merge_adapter", "max_length"} <= {
        a.dest for a in actions
    }
    for action in actions:
        assert action.help and action.help.strip(), action.dest


def test_trl_pro_reward_command_fails_in_one_line_through_the_launcher(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            "trl-pro",
            "reward",
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            str(tmp_path / "missing"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    missing = tmp_path / "missing"
    assert lines[-1] == f"trl-pro reward: error: no such folder: {missing} [set TRL_PRO_DEBUG=1 for the traceback]"
    assert "Traceback" not in result.stderr

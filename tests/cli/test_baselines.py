"""Baselines on the same data: every view derives from one ranked dataset (as `trl-pro rank` writes it), and every
baseline recipe under recipes/baselines trains for a few steps on CPU, with the tiny policy and the tiny reward model,
through the script that runs it (`trl sft|dpo|rloo`, `trl-pro coh`; PPO runs in its own environment: test_ppo.py)."""

import importlib
import json
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from helpers.baseline_data import write_ranked_file


ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes" / "baselines").glob("*.yaml"))
RUN_ELSEWHERE = {"ppo": "tests/test_ppo.py (TRL 1.12 environment)"}


def _script_module(recipe: Path):
    """The script a baseline recipe runs, from its name `<command>_...yaml`: trl-pro's own (`trl-pro coh`, ...)
    first, else TRL's (`trl sft|dpo|rloo`)."""
    command = recipe.name.split("_")[0]
    try:
        return importlib.import_module(f"trl_pro.scripts.{command}")
    except ModuleNotFoundError:
        return importlib.import_module(f"trl.scripts.{command}")


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    from trl_pro.scripts import prepare_data

    folder = tmp_path_factory.mktemp("baselines")
    ranked = write_ranked_file(folder / "ranked.jsonl", num_rows=16)
    prepare_data.main(
        [
            "--source",
            "ranked",
            "--dataset_name",
            str(ranked),
            "--output_dir",
            str(folder / "views"),
            "--test_size",
            "0.25",
        ]
    )
    return folder / "views"


def test_views_derive_from_one_ranked_dataset(tmp_path):
    from trl_pro.scripts import prepare_data

    rows = [
        {
            "prompt": f"\n\nHuman: q{i}?\n\nAssistant:",
            "completions": [f" low{i}", f" high{i}", f" mid{i}"],
            "scores": [-1.0, 2.0, 0.5],
            "sources": ["dataset", "m", "dataset"],
        }
        for i in range(8)
    ]
    rows.append(
        {
            "prompt": "\n\nHuman: tie?\n\nAssistant:",
            "completions": [" a", " b"],
            "scores": [1.0, 1.0],
            "sources": ["dataset", "dataset"],
        }
    )
    rows.append(
        {
            "prompt": "\n\nHuman: bad?\n\nAssistant:",
            "completions": [" a", "  "],
            "scores": [1.0, 0.0],
            "sources": ["dataset", "dataset"],
        }
    )
    rows.append(
        {
            "prompt": "\n\nHuman: q8?\n\nAssistant:",
            "completions": [" x", " y", " z"],
            "scores": [3.0, 1.0, 1.0],
            "sources": ["m", "m", "m"],
        }
    )  # y and z tied: no adjacent pair y > z
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset_splits = {}
    for pairs in ("best_vs_worst", "adjacent"):
        out = tmp_path / pairs
        prepare_data.main(
            [
                "--source",
                "ranked",
                "--dataset_name",
                str(path),
                "--output_dir",
                str(out),
                "--pairs",
                pairs,
                "--test_size",
                "0.3",
                "--seed",
                "0",
            ]
        )
        dataset_splits[pairs] = {view: load_dataset(str(out / view)) for view in prepare_data.VIEWS}
    loaded = dataset_splits["best_vs_worst"]
    ranked = [row for split in ("train", "test") for row in loaded["ranked"][split]]
    # the tied and the bad rows are dropped from every view; the others are sorted by score
    assert len(ranked) == 9 and all("tie" not in r["prompt"] and "bad" not in r["prompt"] for r in ranked)
    for view in ("best_of_n", "prompts"):
        assert sum(len(loaded[view][split]) for split in ("train", "test")) == 9
    assert sum(len(loaded["coh"][split]) for split in ("train", "test")) == 18
    by_prompt = {r["prompt"]: r for r in ranked}
    assert by_prompt["\n\nHuman: q3?\n\nAssistant:"]["completions"] == [" high3", " mid3", " low3"]
    assert "sources" not in loaded["ranked"]["train"].column_names
    for split in ("train", "test"):
        for best in loaded["best_of_n"][split]:
            assert best["completion"] == by_prompt[best["prompt"]]["completions"][0]
        for pair in loaded["pairs"][split]:
            completions = by_prompt[pair["prompt"]]["completions"]
            assert (pair["chosen"], pair["rejected"]) == (completions[0], completions[-1])
        for coh in loaded["coh"][split]:
            completions = by_prompt[coh["prompt"]]["completions"]
            assert {coh["segments"][1], coh["segments"][3]} == {completions[0], completions[-1]}
    # adjacent pairs: 2 per ranking of 3, minus the tied pair
    adjacent = [p for split in ("train", "test") for p in dataset_splits["adjacent"]["pairs"][split]]
    assert len(adjacent) == 8 * 2 + 1
    assert ("\n\nHuman: q3?\n\nAssistant:", " high3", " mid3") in {
        (p["prompt"], p["chosen"], p["rejected"]) for p in adjacent
    }


def test_every_baseline_recipe_has_a_runner():
    commands = {recipe.name.split("_")[0] for recipe in RECIPES}
    assert {"sft", "dpo", "rloo", "coh", "ppo"} <= commands
    for recipe in RECIPES:
        if recipe.name.split("_")[0] not in RUN_ELSEWHERE:
            assert hasattr(_script_module(recipe), "main"), recipe.name


@pytest.mark.parametrize(
    "recipe",
    [r for r in RECIPES if r.name.split("_")[0] not in RUN_ELSEWHERE],
    ids=lambda r: r.name,
)
def test_baseline_recipe_trains_on_cpu(recipe, views, tiny_policy_dir, tiny_reward_model_dir, tmp_path):
    from safetensors.torch import load_file

    module = _script_module(recipe)
    parser = module.make_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    config = yaml.safe_load(recipe.read_text())
    view = Path(config["dataset_name"]).name  # the recipe's view of the prepared data: pairs, best_of_n, ...
    assert (views / view).is_dir(), view
    # the recipe as written, made tiny: no 4-bit, fp32 on CPU, 2 steps of 2 rows (LoRA kept)
    overrides = {
        "model_name_or_path": tiny_policy_dir,
        "dataset_name": views / view,
        "output_dir": tmp_path / "out",
        "reward_model_name_or_path": tiny_reward_model_dir,
        "load_in_4bit": "false",
        "dtype": "float32",
        "bf16": "false",
        "gradient_checkpointing": "false",
        "use_cpu": "true",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "max_length": 256,
        "num_generations": 2,
        "max_completion_length": 8,
        "lora_r": 8,
        "lora_alpha": 16,
        "disable_tqdm": "true",
    }
    argv = ["--config", str(recipe)]
    for key, value in overrides.items():
        if f"--{key}" in known:
            argv += [f"--{key}", str(value)]
    args = parser.parse_args_and_config(argv)
    assert args[0].dataset_name == str(views / view)
    module.main(*args)

    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]  # zero at init: moved = trained
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)

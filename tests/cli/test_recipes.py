"""Every recipe under recipes/ parses with the parser that runs it (ours for recipes/pro and the quickstart, TRL's
for recipes/baselines), leaves nothing but `accelerate launch` arguments unparsed, and keeps the settings it claims."""

import importlib
import os
from pathlib import Path

import pytest
import yaml

from trl_pro.cli.launch import check_launch_args, normalize_config_flags, resolve_launch_args
from trl_pro.pipeline.models import TINY_LLAMA
from trl_pro.scripts.pro import make_parser


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# recipes/rankings/{generate,rank}_*.yaml configure `trl-pro generate` / `trl-pro rank` (tests/test_rank.py runs them)
ALL = sorted(p for p in RECIPES.rglob("*.yaml") if not (p.parent.name == "rankings" and not p.name.startswith("pro_")))
# recipes/reward/*.yaml are `trl-pro reward`'s, parsed by tests/cli/test_reward_command.py
PRO = [p for p in ALL if not {"baselines", "rrhf", "reward", "list_dpo"} & set(p.parts)]
RRHF = [p for p in ALL if "rrhf" in p.parts]
LIST_DPO = [p for p in ALL if "list_dpo" in p.parts]
BASELINES = [p for p in ALL if "baselines" in p.parts]


def _trl_command(path: Path) -> str:
    """Baselines are named `<command>_...yaml`: sft, dpo, rloo (`trl <command>`), coh (`trl-pro coh`) or ppo
    (trl_pro/scripts/ppo.py in the TRL 1.12 environment: parsed and run by tests/test_ppo.py)."""
    return path.name.split("_")[0]


def _baseline_parser(path: Path):
    command = _trl_command(path)
    package = "trl_pro" if command == "coh" else "trl"
    return importlib.import_module(f"{package}.scripts.{command}").make_parser()


def _parse(parser, path: Path, *overrides: str):
    """Parse a recipe like `trl-pro pro --config` / `trl <cmd> --config` does; returns (dataclasses, launch args)."""
    saved = dict(os.environ)
    try:
        # GPU recipes set bf16, which transformers refuses on a CPU-only machine unless use_cpu is set
        *dataclasses, config_remaining, cli_remaining = parser.parse_args_and_config(
            ["--config", str(path), "--use_cpu", "true", *overrides],
            return_remaining_strings=True,
            separate_remaining_strings=True,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert cli_remaining == []
    launch_args = resolve_launch_args(normalize_config_flags(config_remaining), "test")
    check_launch_args(launch_args, config_remaining, "test", str(path))  # exits on anything accelerate does not know
    return dataclasses, launch_args


def test_recipes_exist():
    names = {p.relative_to(RECIPES).as_posix() for p in ALL}
    assert "quickstart.yaml" in names
    assert len(PRO) >= 5 and len(BASELINES) >= 5
    assert {_trl_command(p) for p in BASELINES} == {"sft", "dpo", "rloo", "coh", "ppo"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_is_placeholder_free_yaml(path):
    text = path.read_text()
    config = yaml.safe_load(text)
    assert isinstance(config, dict) and config
    for marker in ("TODO", "FIXME", "<your", "your-org", "path/to", "xxx"):
        assert marker not in text
    assert config["report_to"] == "none"
    assert str(config["output_dir"]).startswith("outputs/")


@pytest.mark.parametrize("path", PRO, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_pro_recipe_parses(path):
    (script_args, training_args, model_args, _), launch_args = _parse(make_parser(), path)
    assert script_args.dataset_name and model_args.model_name_or_path
    assert training_args.max_length == 512
    assert training_args.sft_weight == 0.05
    if path.name == "quickstart.yaml":
        return
    # Paper settings that transfer, on LLaMA-7B
    assert model_args.model_name_or_path == "huggy-llama/llama-7b"
    assert training_args.num_train_epochs == 2
    assert training_args.bf16 and training_args.gradient_checkpointing
    if "qlora" in path.name:
        assert model_args.load_in_4bit and model_args.use_peft
        assert model_args.bnb_4bit_quant_type == "nf4" and model_args.use_bnb_nested_quant
        assert model_args.dtype == "bfloat16"  # TRL's get_quantization_config: 4-bit compute dtype = `dtype`
        assert model_args.lora_target_modules == "all-linear"
        assert launch_args == []
    if "full_zero3" in path.name:
        assert not model_args.load_in_4bit and not model_args.use_peft
        assert training_args.per_device_train_batch_size == 2 and training_args.gradient_accumulation_steps == 8
        assert training_args.learning_rate == 5e-6
        config_file = launch_args[launch_args.index("--config_file") + 1]
        assert Path(config_file).name == "zero3.yaml" and Path(config_file).is_file()
        assert launch_args[launch_args.index("--num_processes") + 1] == "7"
    if "ranked" in path.name or "ultrafeedback" in path.name:
        assert training_args.use_temperature and training_args.max_completions in (3, 4, 5)
    if "ranked_armorm" in path.name:
        assert script_args.dataset_column_map == {"all_generated_responses": "completions", "all_rm_scores": "scores"}


def test_quickstart_is_the_cpu_default():
    (script_args, training_args, model_args, _), launch_args = _parse(make_parser(), RECIPES / "quickstart.yaml")
    assert model_args.model_name_or_path == TINY_LLAMA
    assert Path(script_args.dataset_name) == Path("trl_pro/assets/hh_rlhf")
    assert (script_args.dataset_train_split, script_args.dataset_test_split) == ("train", "test")
    assert training_args.use_cpu and not training_args.bf16 and not training_args.gradient_checkpointing
    assert 1e-3 <= training_args.learning_rate <= 3e-3
    assert not training_args.disable_tqdm
    assert Path(training_args.output_dir) == Path("outputs/quickstart")
    per_epoch = -(-1196 // training_args.per_device_train_batch_size)  # 1200 rows, 4 of them dropped as invalid
    steps = training_args.max_steps if training_args.max_steps > 0 else per_epoch * training_args.num_train_epochs
    assert 100 <= steps <= 400  # "a few hundred steps at most"
    assert launch_args == []


@pytest.mark.parametrize("path", RRHF, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_rrhf_recipe_parses(path):
    """RRHF recipes parse with `trl-pro rrhf`'s parser and mirror their PRO counterpart but for the objective."""
    from trl_pro.scripts import rrhf

    (script_args, training_args, model_args, _), launch_args = _parse(rrhf.make_parser(), path)
    assert launch_args == [] and training_args.rrhf_weight == 1.0 and training_args.length_penalty == 1.0
    counterpart = RECIPES / ("quickstart.yaml" if path.name == "quickstart.yaml" else f"pro/{path.name}")
    (pro_script, pro_training, pro_model, _), _ = _parse(make_parser(), counterpart)
    assert script_args == pro_script and model_args == pro_model
    for name in (
        "max_length",
        "max_prompt_length",
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "bf16",
        "gradient_checkpointing",
        "seed",
        "lr_scheduler_type",
    ):
        assert getattr(training_args, name) == getattr(pro_training, name), name


@pytest.mark.parametrize("path", LIST_DPO, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_list_dpo_recipe_parses(path):
    """List DPO recipes parse with `trl-pro list-dpo`'s parser and keep what they claim: the quickstart mirrors the
    PRO quickstart, LiPO-λ the PRO UltraFeedback recipe (rankings of 4 with scores), Plackett-Luce on HH-RLHF the
    DPO baseline recipe (same data, model, steps and beta)."""
    from trl_pro.scripts import list_dpo

    assert {
        "quickstart.yaml",
        "lipo_ultrafeedback_llama7b_qlora.yaml",
        "plackett_luce_hh_rlhf_llama7b_qlora.yaml",
    } <= {p.name for p in LIST_DPO}
    (script_args, training_args, model_args, _), launch_args = _parse(list_dpo.make_parser(), path)
    assert launch_args == [] and training_args.beta == 0.1 and script_args.ref_model_name_or_path is None
    schedule = (
        "max_length",
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "bf16",
        "gradient_checkpointing",
        "lr_scheduler_type",
        "warmup_steps",
    )
    if path.name == "quickstart.yaml":
        counterpart, parser = RECIPES / "quickstart.yaml", make_parser()
        assert training_args.loss_type == "plackett_luce"
    elif "ultrafeedback" in path.name:
        counterpart, parser = RECIPES / "pro" / "ultrafeedback_llama7b_qlora.yaml", make_parser()
        assert training_args.loss_type == "lipo_lambda" and training_args.max_completions == 4
        assert script_args.dataset_name == "data/ultrafeedback/ranked"
    else:
        counterpart = RECIPES / "baselines" / "dpo_hh_rlhf_llama7b_qlora.yaml"
        parser = _baseline_parser(counterpart)
        assert training_args.loss_type == "plackett_luce"
    (other_script, other_training, other_model, _), _ = _parse(parser, counterpart)
    assert model_args == other_model
    assert (script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_test_split) == (
        other_script.dataset_name,
        other_script.dataset_train_split,
        other_script.dataset_test_split,
    )
    for name in schedule:
        assert getattr(training_args, name) == getattr(other_training, name), name
    if "baselines" in counterpart.parts:  # the DPO baseline: the same beta, steps and logging
        assert training_args.beta == other_training.beta
        for name in ("eval_steps", "save_steps", "per_device_eval_batch_size", "logging_steps"):
            assert getattr(training_args, name) == getattr(other_training, name), name


@pytest.mark.parametrize(
    "path", [p for p in BASELINES if _trl_command(p) != "ppo"], ids=lambda p: p.relative_to(RECIPES).as_posix()
)
def test_baseline_recipe_parses_with_trl(path):
    (script_args, training_args, model_args, _), launch_args = _parse(_baseline_parser(path), path)
    assert launch_args == []
    assert model_args.model_name_or_path == "huggy-llama/llama-7b"
    assert model_args.load_in_4bit and model_args.use_peft and model_args.lora_target_modules == "all-linear"
    # the same data as the PRO recipe of that dataset, in the view this trainer reads
    view = {"sft": "best_of_n", "dpo": "pairs", "rloo": "prompts", "coh": "coh"}[_trl_command(path)]
    assert script_args.dataset_name.endswith(f"/{view}")
    if _trl_command(path) == "coh":  # a CoH sequence holds the prompt and two answers with their phrases
        assert training_args.max_length >= 512 + 128 and script_args.max_prompt_length == 384
    else:
        assert training_args.max_length == 512 if hasattr(training_args, "max_length") else True
    if _trl_command(path) == "rloo":
        assert script_args.reward_model_name_or_path


def test_readme_lists_every_recipe():
    readme = (RECIPES / "README.md").read_text()
    for path in ALL:
        assert path.relative_to(RECIPES).as_posix() in readme, path
    assert "PPO" in readme and "1.12" in readme
    assert "not measured on GPU" in readme


# --- The data views the recipes read (python -m trl_pro.scripts.prepare_data) ----------------------------------------


def test_prepare_data_hh_rlhf_views(tmp_path):
    from datasets import load_dataset

    from trl_pro.assets import HH_RLHF_DIR
    from trl_pro.scripts import prepare_data

    prepare_data.main(["--source", "hh-rlhf", "--dataset_name", str(HH_RLHF_DIR), "--output_dir", str(tmp_path)])
    views = {view: load_dataset(str(tmp_path / view)) for view in prepare_data.VIEWS}
    for view, dataset in views.items():
        per_ranking = 2 if view == "coh" else 1  # Chain of Hindsight: both orders of the feedback phrases
        assert {split: len(rows) for split, rows in dataset.items()} == {
            "train": 1196 * per_ranking,
            "test": 200 * per_ranking,
        }, view
    assert views["ranked"]["train"].column_names == ["prompt", "completions"]
    assert views["pairs"]["train"].column_names == ["prompt", "chosen", "rejected"]
    assert views["best_of_n"]["train"].column_names == ["prompt", "completion"]
    assert views["prompts"]["train"].column_names == ["prompt"]
    ranked, pair, best = views["ranked"]["test"][0], views["pairs"]["test"][0], views["best_of_n"]["test"][0]
    # the prompt is the shared prefix of chosen and rejected (TRL's `extract_prompt`, as PRO and DPO read raw pairs)
    assert ranked["prompt"] == pair["prompt"] == best["prompt"] and "\n\nAssistant:" in ranked["prompt"]
    assert pair["chosen"] == best["completion"] == ranked["completions"][0]
    assert pair["rejected"] == ranked["completions"][1]
    raw = load_dataset(str(HH_RLHF_DIR))["test"][0]
    assert ranked["prompt"] + ranked["completions"][0] == raw["chosen"]


def test_prepare_data_ultrafeedback_views(tmp_path):
    import json

    from datasets import load_dataset

    from trl_pro.scripts import prepare_data

    def record(response, score):
        return {
            "model": "m",
            "response": response,
            "fine-grained_score": score,
            "overall_score": 5.0,
            "annotations": {},
            "critique": "",
            "custom_system_prompt": "",
            "principle": "helpfulness",
        }

    rows = [
        {
            "source": "s",
            "instruction": f"Question {i}?",
            "models": [],
            "completions": [
                record(f"ok {i}", 3.0),
                record(f"best {i}", 4.5),
                record(f"worst {i}", 1.0),
                record(f"bad score {i}", "N/A"),
            ],
        }
        for i in range(20)
    ]
    rows.append({"source": "s", "instruction": "one candidate", "models": [], "completions": [record("x", 2.0)]})
    rows.append(
        {"source": "s", "instruction": "tied", "models": [], "completions": [record("a", 2.0), record("b", 2.0)]}
    )
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "views"
    prepare_data.main(
        ["--source", "ultrafeedback", "--dataset_name", str(path), "--output_dir", str(out), "--test_size", "0.25"]
    )
    ranked = load_dataset(str(out / "ranked"))
    assert len(ranked["train"]) + len(ranked["test"]) == 20 and len(ranked["test"]) > 0  # 2 rows dropped
    row = ranked["train"][0]
    i = row["prompt"].split("Question ")[1].split("?")[0]
    assert row["prompt"] == f"\n\nHuman: Question {i}?\n\nAssistant:"
    assert row["completions"] == [f" best {i}", f" ok {i}", f" worst {i}"] and row["scores"] == [4.5, 3.0, 1.0]
    pairs = load_dataset(str(out / "pairs"))["train"][0]
    assert (pairs["chosen"], pairs["rejected"]) == (row["completions"][0], row["completions"][-1])
    assert load_dataset(str(out / "best_of_n"))["train"][0]["completion"] == row["completions"][0]

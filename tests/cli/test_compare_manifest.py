"""`trl-pro compare` keeps a finished system only while what determines it (dataset, base model, shared settings, the
method's flags) is unchanged, and a run of some methods adds its systems to the manifest without dropping the others.
Tiny CPU runs: one step of PRO and of best-of-n SFT."""

import json
from pathlib import Path

from helpers.baseline_data import write_ranked_file

from trl_pro.scripts import compare


def _args(tmp_path, ranked, **changes):
    args = compare.CompareArguments(
        dataset_name=str(ranked),
        model_name_or_path="trl-pro/tiny-llama",
        output_dir=str(tmp_path / "compare"),
        methods=["pro"],
        test_size=0.25,
        max_steps=1,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=64,
        max_prompt_length=32,
        use_cpu=True,
        overrides={"all": {"gradient_checkpointing": False, "disable_tqdm": True, "dtype": "float32"}},
    )
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def _manifest(args):
    return json.loads((Path(args.output_dir) / compare.MANIFEST).read_text())


def _statuses(args):
    return {run["name"]: run["status"] for run in _manifest(args)["runs"]}


def test_a_system_trained_with_other_settings_is_trained_again(tmp_path, tiny_policy_dir, capsys):
    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=8)
    args = _args(tmp_path, ranked)
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "trained"
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "kept"  # nothing changed
    capsys.readouterr()

    # same file name, other rows
    write_ranked_file(ranked, num_rows=10)
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "trained"
    assert "training pro again: it was trained with another dataset\n" in capsys.readouterr().out
    assert _manifest(args)["rows"]["train"] + _manifest(args)["rows"]["test"] == 10  # the views were rebuilt

    # a method flag and a shared setting through --overrides, then another base model
    args.overrides = {**args.overrides, "pro": {"sft_weight": 0.5, "learning_rate": 5e-4}}
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "trained"
    assert "training pro again: it was trained with another method, training\n" in capsys.readouterr().out
    args.model_name_or_path = str(tiny_policy_dir)
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "trained"
    assert "training pro again: it was trained with another base_model\n" in capsys.readouterr().out
    manifest = _manifest(args)
    assert manifest["base_model"] == str(tiny_policy_dir)
    assert {system["name"]: system for system in manifest["systems"]}["pro"]["base_model"] == str(tiny_policy_dir)
    assert compare.main(args) == 0 and _statuses(args)["pro"] == "kept"
    # each system records what it was trained with
    pro = {system["name"]: system for system in _manifest(args)["systems"]}["pro"]
    assert pro["key"] and pro["dataset_name"] == str(ranked)


def test_a_run_of_some_methods_merges_into_the_manifest(tmp_path, capsys):
    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=8)
    args = _args(tmp_path, ranked, methods=["pro", "best_of_n"])
    assert compare.main(args) == 0
    before = {system["name"]: system for system in _manifest(args)["systems"]}
    assert set(before) == {"base", "pro", "best_of_n"}

    # PRO alone on other data: best-of-n stays listed with its own key, and the top level no longer claims a
    # dataset that best-of-n was not trained on
    write_ranked_file(ranked, num_rows=10)
    args.methods = ["pro"]
    assert compare.main(args) == 0
    manifest = _manifest(args)
    after = {system["name"]: system for system in manifest["systems"]}
    assert set(after) == {"base", "pro", "best_of_n"}
    assert after["best_of_n"] == before["best_of_n"] and after["pro"]["key"] != before["pro"]["key"]
    assert {run["name"]: run["status"] for run in manifest["runs"]} == {
        "base": "kept",
        "pro": "trained",
        "best_of_n": "trained",
    }
    assert "dataset_name" not in manifest and "rows" not in manifest
    assert manifest["base_model"] == after["pro"]["base_model"] == after["best_of_n"]["base_model"]
    assert "\nbest_of_n  listed" in capsys.readouterr().out  # the table

    # best-of-n on the new data too: every listed system shares the dataset again
    args.methods = ["best_of_n"]
    assert compare.main(args) == 0
    manifest = _manifest(args)
    assert _statuses(args) == {"base": "kept", "pro": "trained", "best_of_n": "trained"}
    assert manifest["dataset_name"] == str(ranked)
    assert {system["name"] for system in manifest["systems"]} == {"base", "pro", "best_of_n"}

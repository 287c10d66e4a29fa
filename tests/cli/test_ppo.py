"""PPO baseline: TRL 1.12.0's PPOTrainer in its own environment (`bash tools/install.sh ppo`), run on CPU with the tiny
policy, value and reward models on the prompts view of a ranked dataset, from the PPO recipe itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.baseline_data import write_ranked_file


ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "baselines" / "ppo_hh_rlhf_llama7b_qlora.yaml"
SCRIPT = ROOT / "trl_pro" / "scripts" / "ppo.py"


@pytest.fixture(scope="session")
def ppo_python():
    """The PPO environment's python (created once, then reused: install.sh is idempotent)."""
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "install.sh"), "ppo"], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    python = ROOT / os.environ.get("PPO_VENV", ".venv-ppo") / "bin" / "python"
    assert python.is_file()
    return python


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory, tiny_policy_dir, tiny_reward_model_dir):
    from trl_pro.scripts import prepare_data

    folder = tmp_path_factory.mktemp("ppo")
    ranked = write_ranked_file(folder / "ranked.jsonl", num_rows=12)
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
    return {
        "policy": tiny_policy_dir,
        "reward": tiny_reward_model_dir,
        "prompts": folder / "views" / "prompts",
        "folder": folder,
    }


def _env():
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing from trl-pro's TRL 1.16
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS="2")
    return env


def _tiny_flags(inputs, output_dir, reward=None):
    return [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(inputs["policy"]),
        "--reward_model_path",
        str(reward or inputs["reward"]),
        "--dataset_name",
        str(inputs["prompts"]),
        "--output_dir",
        str(output_dir),
        # tiny CPU run: fp32 without 4-bit, 2 PPO steps of 2 prompts, 8 new tokens; LoRA kept from the recipe
        "--load_in_4bit",
        "false",
        "--dtype",
        "float32",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--total_episodes",
        "4",
        "--response_length",
        "8",
        "--num_ppo_epochs",
        "1",
        "--local_rollout_forward_batch_size",
        "2",
        "--per_device_eval_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--learning_rate",
        "1e-3",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
    ]


def test_ppo_recipe_runs_two_steps_on_cpu(ppo_python, ppo_inputs):
    from safetensors.torch import load_file

    output_dir = ppo_inputs["folder"] / "out"
    result = subprocess.run(
        [str(ppo_python), str(SCRIPT), *_tiny_flags(ppo_inputs, output_dir)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PPO: 2 steps, 4 episodes" in result.stdout
    summary = json.loads((output_dir / "ppo_summary.json").read_text())
    assert summary["steps"] == 2 and summary["episodes"] == 4
    logged = [log for log in summary["log_history"] if "objective/scores" in log]
    assert len(logged) == 2 and all(log["episode"] in (2, 4) for log in logged)
    # the policy was trained: LoRA's B matrices start at zero and moved
    adapter = load_file(str(output_dir / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)


def test_ppo_refuses_a_reward_model_with_another_vocabulary(tiny_reward_model_dir, tmp_path, capsys):
    """The check runs before any model is loaded; trl_pro/scripts/ppo.py imports only the standard library at the top, so
    its functions load in this environment too."""
    import importlib.util
    import shutil

    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("ppo_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    policy_tokenizer = AutoTokenizer.from_pretrained(str(tiny_reward_model_dir))
    script._check_same_vocabulary(policy_tokenizer, str(tiny_reward_model_dir), False)  # same tokens: passes
    other = tmp_path / "other_reward"
    shutil.copytree(tiny_reward_model_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(str(other))
    tokenizer.add_tokens(["<a-token-the-policy-does-not-have>"])
    tokenizer.save_pretrained(str(other))
    with pytest.raises(SystemExit) as exit_info:
        script._check_same_vocabulary(policy_tokenizer, str(other), False)
    assert exit_info.value.code == 2
    assert "another vocabulary than the policy" in capsys.readouterr().err


def test_ppo_script_says_which_environment_it_needs():
    """Run with trl-pro's own python (TRL 1.16, no PPOTrainer): one line pointing at the PPO environment."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "tools/install.sh ppo" in result.stderr and "1.12.0" in result.stderr

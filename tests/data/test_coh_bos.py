"""The CoH and PPO baselines train on the prompt tokens `trl-pro eval` feeds them: with a tokenizer that adds BOS
(LLaMA's), a CoH training sequence and a PPO prompt start with BOS and keep it when a long prompt is cut from the
left, exactly as evaluation's prompt (`trl_pro.pipeline.generation._prompt_ids`) does."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from trl_pro.data.coh import POSITIVE_PHRASE, coh_rows_from_ranking, tokenize_coh
from trl_pro.evaluation.responses import MAX_PROMPT_LENGTH
from trl_pro.pipeline.generation import _prompt_ids as eval_prompt_ids


ROOT = Path(__file__).resolve().parents[2]
PPO_SCRIPT = ROOT / "trl_pro" / "scripts" / "ppo.py"
PROMPT = "\n\nHuman: How are you?\n\nAssistant:"
LONG_PROMPT = "\n\nHuman:" + " word" * 500 + "\n\nAssistant:"  # over 384 tokens


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The embedded tokenizer made to add BOS as LLaMA's does (the embedded one adds no special token)."""
    from transformers import AutoTokenizer

    from trl_pro.assets import TOKENIZER_DIR, load_tiny_tokenizer

    assert load_tiny_tokenizer()("hi")["input_ids"][0] != load_tiny_tokenizer().bos_token_id
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), add_bos_token=True)
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


def _ppo_script():
    """trl_pro/scripts/ppo.py imports only the standard library at the top: its functions load with TRL 1.16 too."""
    spec = importlib.util.spec_from_file_location("ppo_script", PPO_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_coh_sequence_starts_with_the_prompt_eval_builds(bos_tokenizer):
    tokenizer, bos = bos_tokenizer, bos_tokenizer.bos_token_id
    positive_first, negative_first = coh_rows_from_ranking({"prompt": PROMPT, "completions": [" Fine.", " Go."]}, 0)
    for row in (positive_first, negative_first):
        ids = tokenize_coh(row, tokenizer, max_length=512, max_prompt_length=MAX_PROMPT_LENGTH)["input_ids"]
        assert ids[0] == bos and ids.count(bos) == 1
        prompt = eval_prompt_ids(PROMPT, tokenizer, MAX_PROMPT_LENGTH)
        assert ids[: len(prompt)] == prompt
    # what eval feeds a CoH model: the prompt and the positive phrase
    ids = tokenize_coh(positive_first, tokenizer, max_length=512, max_prompt_length=MAX_PROMPT_LENGTH)["input_ids"]
    asked = eval_prompt_ids(PROMPT + POSITIVE_PHRASE, tokenizer, MAX_PROMPT_LENGTH)
    assert ids[: len(asked)] == asked
    # a long prompt keeps BOS and its end, as eval cuts it
    row = coh_rows_from_ranking({"prompt": LONG_PROMPT, "completions": [" Fine.", " Go."]}, 0)[0]
    out = tokenize_coh(row, tokenizer, max_length=512, max_prompt_length=16)
    prompt = eval_prompt_ids(LONG_PROMPT, tokenizer, 16)
    assert len(prompt) == 16 and prompt[0] == bos
    assert out["input_ids"][:16] == prompt and out["completion_mask"][:16] == [0] * 16


def _prompts_file(folder: Path) -> Path:
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (PROMPT, LONG_PROMPT)))
    return data


def _load_ppo_prompts(script, data: Path, tokenizer) -> list[list[int]]:
    """The train split's `input_ids` as ppo.py builds them for PPOTrainer."""
    script_args = SimpleNamespace(
        dataset_name=str(data), dataset_config=None, dataset_train_split="train", dataset_test_split="test"
    )
    train, _ = script._load_prompts(script_args, SimpleNamespace(dataset_num_proc=None), tokenizer)
    return [list(ids) for ids in train["input_ids"]]


def test_ppo_prompts_are_the_prompts_eval_builds(bos_tokenizer, tokenizer, tmp_path):  # `tokenizer`: no BOS
    script, data = _ppo_script(), _prompts_file(tmp_path)
    assert script.MAX_PROMPT_LENGTH == MAX_PROMPT_LENGTH
    # the dataset PPO trains on: BOS first, a long prompt's end kept
    expected = [eval_prompt_ids(p, bos_tokenizer, MAX_PROMPT_LENGTH) for p in (PROMPT, LONG_PROMPT)]
    assert all(ids[0] == bos_tokenizer.bos_token_id for ids in expected) and len(expected[1]) == MAX_PROMPT_LENGTH
    assert _load_ppo_prompts(script, data, bos_tokenizer) == expected
    # the rule itself, with and without a tokenizer that adds BOS
    for each, adds_bos in ((bos_tokenizer, True), (tokenizer, False)):
        for prompt in (PROMPT, LONG_PROMPT, "\n\nHuman:" + " word" * 1000):
            assert script.prompt_ids(each, prompt) == eval_prompt_ids(prompt, each, MAX_PROMPT_LENGTH)
        cut = script.prompt_ids(each, LONG_PROMPT, 16)
        assert cut == eval_prompt_ids(LONG_PROMPT, each, 16) and len(cut) == 16
        assert (cut[0] == each.bos_token_id) == adds_bos


def test_ppo_prompts_keep_bos_in_the_ppo_environment(bos_tokenizer, tmp_path):
    """The same with the PPO environment's transformers and datasets, which read the saved tokenizer."""
    python = ROOT / os.environ.get("PPO_VENV", ".venv-ppo") / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no PPO environment at {python} (bash tools/install.sh ppo)")
    bos_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = _prompts_file(tmp_path)
    code = (
        "import importlib.util, json; from types import SimpleNamespace; from transformers import AutoTokenizer; "
        f"spec = importlib.util.spec_from_file_location('ppo_script', {str(PPO_SCRIPT)!r}); "
        "script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script); "
        f"tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / 'tokenizer')!r}); "
        f"args = SimpleNamespace(dataset_name={str(data)!r}, dataset_config=None, dataset_train_split='train', "
        "dataset_test_split='test'); "
        "train, _ = script._load_prompts(args, SimpleNamespace(dataset_num_proc=None), tokenizer); "
        "print(json.dumps([list(ids) for ids in train['input_ids']]))"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing from trl-pro's TRL 1.16
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [eval_prompt_ids(p, bos_tokenizer, MAX_PROMPT_LENGTH) for p in (PROMPT, LONG_PROMPT)]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected

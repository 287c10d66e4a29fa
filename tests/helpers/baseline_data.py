"""A tiny ranked dataset for the baseline tests (test_baselines, test_ppo, test_compare); the models are the
`tiny_policy_dir` / `tiny_reward_model_dir` session fixtures of tests/conftest.py."""

import json
from pathlib import Path


def write_ranked_file(path: Path, num_rows: int = 24) -> Path:
    """Ranked rows as `trl-pro rank` writes them (prompt, completions best first, scores, sources), from the
    vendored HH-RLHF slice: the chosen and rejected responses and a third, short candidate, with made-up scores.
    Prompts are cut to their last human turn (as the reward-model fixture's data), so CPU runs stay short."""
    from trl.data_utils import extract_prompt

    from trl_pro.assets import load_hh_rlhf_slice

    rows = []
    for index, example in enumerate(load_hh_rlhf_slice("train")):
        pair = extract_prompt(example)
        if not pair["chosen"].strip() or not pair["rejected"].strip():
            continue
        rows.append(
            {
                "prompt": "\n\nHuman:" + pair["prompt"].rsplit("\n\nHuman:", 1)[-1],
                "completions": [pair["chosen"], " I am not sure.", pair["rejected"]],
                "scores": [1.5, 0.25 + 0.01 * index, -1.0],
                "sources": ["dataset", "tiny-llama", "dataset"],
            }
        )
        if len(rows) == num_rows:
            break
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def last_exchange_pairs(dataset):
    """HH-RLHF pairs cut to their last exchange: prompt = the last human turn, chosen / rejected = the two answers.
    The human preference is about the answers; short rows keep a CPU training run within seconds."""
    from trl.data_utils import extract_prompt

    def cut(example):
        pair = extract_prompt(example)
        prompt = "\n\nHuman:" + pair["prompt"].rsplit("\n\nHuman:", 1)[-1]
        return {"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]}

    return dataset.map(cut, remove_columns=dataset.column_names)


def write_scored_rankings(folder: Path) -> Path:
    """Scored rankings of 3 (train 32, test 8) as `train.jsonl` / `test.jsonl` in `folder`: the ranked format with
    the dynamic temperature."""
    import random

    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away because dogs barked at night".split()

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    for split, rows in (("train", 32), ("test", 8)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(rows):
                row = {
                    "prompt": f"\n\nHuman: {text(6)}\n\nAssistant:",
                    "completions": [" " + text(rng.randint(3, 10)) for _ in range(3)],
                    "scores": [rng.uniform(-1, 1) for _ in range(3)],
                }
                f.write(json.dumps(row) + "\n")
    return folder


def write_tiny_model(folder: Path) -> Path:
    """The built-in tiny Llama (seed 0) and its tokenizer saved to `folder`, so that `from_pretrained` loads it."""
    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

    build_tiny_llama(0).save_pretrained(folder)
    load_tiny_tokenizer().save_pretrained(folder)
    return folder

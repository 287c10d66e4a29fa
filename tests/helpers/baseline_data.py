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

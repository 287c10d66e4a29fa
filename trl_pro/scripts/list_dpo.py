"""
List DPO training script, the `trl-pro list-dpo` command: `scripts/pro.py` with the list DPO trainer
(`ListDPOConfig` / `ListDPOTrainer`: Plackett-Luce list DPO, LiPO-λ or DPO over all pairs, with a reference model).
Everything else (data loading, the built-in tiny model, QLoRA flags, accelerate hand-off, one-line errors, the before
-> after table) is shared with the other training scripts through a `TrainingMethod`.

The reference model, as in TRL's DPOTrainer: `--ref_model_name_or_path` (a hub id, a local path, or the built-in
`trl-pro/tiny-llama`); without it, a frozen copy of the initial policy, or with `--use_peft` the base model with the
adapter disabled. `--precompute_ref_log_probs true` computes the reference log-probs once, before training.

# The embedded default: a random tiny Llama on a vendored HH-RLHF slice, on CPU
```bash
trl-pro list-dpo --config recipes/list_dpo/quickstart.yaml
```

# LLaMA-7B QLoRA on UltraFeedback rankings of 4 with scores, LiPO-λ
```bash
trl-pro list-dpo --config recipes/list_dpo/lipo_ultrafeedback_llama7b_qlora.yaml
```

# The HH-RLHF pairs of the DPO baseline recipe (same data, model, steps and beta), Plackett-Luce
```bash
trl-pro list-dpo --config recipes/list_dpo/plackett_luce_hh_rlhf_llama7b_qlora.yaml
```
"""

from __future__ import annotations

import argparse

from trl_pro.cli import training


LIST_DPO = training.LIST_DPO
PROG = LIST_DPO.prog


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    return training.make_method_parser(LIST_DPO, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args):
    return training.train(script_args, training_args, model_args, dataset_args, method=LIST_DPO)


def cli_main(argv: list[str] | None = None) -> None:
    training.cli_main(argv, method=LIST_DPO)


if __name__ == "__main__":
    cli_main()

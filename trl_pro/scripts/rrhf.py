"""
RRHF training script, the `trl-pro rrhf` command: `scripts/pro.py` with the RRHF trainer. Everything (data loading,
the built-in tiny model, QLoRA flags, accelerate hand-off, one-line errors, the before -> after table) is shared with
it through a `TrainingMethod`; only the config class (`RRHFConfig`: `rrhf_weight`, `length_penalty` and the shared
options) and the trainer differ.

# The embedded default: a random tiny Llama on a vendored HH-RLHF slice, on CPU, in a few minutes
```bash
trl-pro rrhf --config recipes/rrhf/quickstart.yaml
```

# LLaMA-7B QLoRA on raw HH-RLHF, the PRO recipe's data, model and schedule
```bash
trl-pro rrhf --config recipes/rrhf/hh_rlhf_llama7b_qlora.yaml
```
"""

from __future__ import annotations

import argparse

from trl_pro.cli import training


RRHF = training.TrainingMethod(
    command="rrhf",
    config_class="RRHFConfig",
    trainer_class="RRHFTrainer",
    description="Train a causal LM with RRHF (Rank Responses to align language models with Human Feedback, Yuan et "
    "al. 2023) on ranked, pairwise or PRO-authors data.",
    eval_loss_note="eval loss = rrhf_weight * ranking loss + SFT NLL",
)
PROG = RRHF.prog


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    return training.make_method_parser(RRHF, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args):
    return training.train(script_args, training_args, model_args, dataset_args, method=RRHF)


def cli_main(argv: list[str] | None = None) -> None:
    training.cli_main(argv, method=RRHF)


if __name__ == "__main__":
    cli_main()

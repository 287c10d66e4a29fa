"""`trl-pro pro`: train with PRO (see `trl_pro.cli.training` for what every training script shares).

```
# The embedded default: a random tiny Llama on a vendored HH-RLHF slice, on CPU, in a few minutes
trl-pro pro --config recipes/quickstart.yaml
```
"""

from __future__ import annotations

import argparse

from trl_pro.cli import training


PROG = "trl-pro pro"


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    return training.make_method_parser(training.PRO, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args):
    return training.train(script_args, training_args, model_args, dataset_args, method=training.PRO)


def cli_main(argv: list[str] | None = None) -> None:
    training.cli_main(argv, method=training.PRO)


if __name__ == "__main__":
    cli_main()

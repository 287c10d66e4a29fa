"""
PRO (Preference Ranking Optimization) training script, the `trl-pro pro` command. Shaped like TRL's
`trl/scripts/dpo.py`: `make_parser()` builds a `TrlParser` over `PROScriptArguments`, `PROConfig`, `ModelConfig` and
`DatasetMixtureConfig`, and `main()` trains.

# The embedded default: a random tiny Llama on a vendored HH-RLHF slice, on CPU, in a few minutes
```bash
trl-pro pro --config recipes/quickstart.yaml
```

# The same as a plain script (one process, no launcher)
```bash
python -m trl_pro.scripts.pro --config recipes/quickstart.yaml
```

# QLoRA (4-bit NF4 base, LoRA adapters on every linear layer but the LM head)
```bash
trl-pro pro --config recipes/pro/hh_rlhf_llama7b_qlora.yaml
```

# Several processes: any `accelerate launch` flag is passed through
```bash
trl-pro pro --config recipes/pro/hh_rlhf_llama7b_full_zero3.yaml --accelerate_config zero3 --num_processes 8
```

Everything here is shared with the other trainers' scripts (`trl-pro rrhf`, `scripts/rrhf.py`): a `TrainingMethod`
names the subcommand, the config and trainer classes and the texts that differ; `PRO` is this script's.

`--model_name_or_path trl-pro/tiny-llama` is built in: a randomly initialised tiny Llama (`trl_pro.assets`), seeded
with `--seed`, with the shipped tokenizer; nothing is downloaded. Any other value is loaded with `from_pretrained`.
`--dataset_name` is a hub id, a local folder (its files give the splits, e.g. `train.jsonl.gz`, `test.jsonl.gz`), a
folder written by `save_to_disk`, or one local file (json, jsonl, csv, parquet, arrow; optionally compressed), which
becomes the `dataset_train_split` split.
"""

from __future__ import annotations

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from trl import ScriptArguments, TrlParser  # noqa: E402

from trl_pro.cli.errors import OneLineErrors, debug_enabled, fail, one_line_errors
from trl_pro.cli.launch import check_launch_args, config_path_of, normalize_config_flags, resolve_launch_args  # noqa: E402
from trl_pro.data.loading import _column_map, _rename_columns, _split, load_dataset_splits, rows_with_line_numbers
from trl_pro.pipeline.models import TINY_LLAMA, check_local_path, resolve_model
from trl_pro.utils.errors import SetupError
from trl_pro.utils.quiet import quiet_known_noise  # noqa: E402


#: Held-out metrics of the before -> after table: (key returned by `evaluate()`, label).
REPORTED_METRICS = (
    ("eval_loss", "eval loss"),
    ("eval_ranking/pairwise_accuracy", "pairwise accuracy"),
    ("eval_ranking/top1_accuracy", "top-1 accuracy"),
    ("eval_ranking/kendall_tau", "kendall tau"),
)


BEFORE_AFTER_FILE = "eval_before_after.json"


@dataclass
class PROScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus the data and evaluation options of the PRO script."""

    dataset_column_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "Rename dataset columns before training, as a mapping (YAML) or a JSON string, e.g. "
            '\'{"all_generated_responses": "completions", "all_rm_scores": "scores"}\' to read a dataset whose '
            "ranked columns have other names."
        },
    )
    eval_before_training: bool = field(
        default=True,
        metadata={
            "help": "When the dataset has the `dataset_test_split` split, evaluate the held-out ranking metrics "
            "before training too, and print a before -> after table (the evaluation after training always runs)."
        },
    )


@dataclass(frozen=True)
class TrainingMethod:
    """What differs between the `trl-pro` training scripts, which share everything else in this module."""

    command: str  # the subcommand; the script is trl_pro/scripts/<command, "-" read as "_">.py
    config_class: str  # name of the config class in `trl_pro`
    trainer_class: str  # name of the trainer class in `trl_pro`
    description: str
    eval_loss_note: str  # what `eval loss` is, for the before -> after table
    script_arguments: type = PROScriptArguments  # the script's own arguments (a subclass adds the method's)
    # (script_args, model_args, training_args) -> extra keyword arguments of the trainer (e.g. list DPO's ref_model)
    trainer_kwargs: Callable[..., dict] | None = None

    @property
    def prog(self) -> str:
        return f"trl-pro {self.command}"

    def classes(self):
        """(config class, trainer class)."""
        import trl_pro

        return getattr(trl_pro, self.config_class), getattr(trl_pro, self.trainer_class)


PRO = TrainingMethod(
    command="pro",
    config_class="PROConfig",
    trainer_class="PROTrainer",
    description="Train a causal LM with Preference Ranking Optimization (PRO, Song et al. 2023) on ranked, pairwise "
    "or PRO-authors data.",
    eval_loss_note="eval loss = ranking loss + sft_weight * SFT NLL",
)


@dataclass
class ListDPOScriptArguments(PROScriptArguments):
    """The training scripts' arguments plus the reference model of list DPO."""

    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference model (hub id, local path, or the built-in `trl-pro/tiny-llama`, seeded with --seed), "
            "loaded like the policy. Default: a frozen copy of the initial policy, or with --use_peft the base "
            "model with the adapter disabled."
        },
    )


def reference_model(script_args, model_args, training_args):
    """What `ListDPOTrainer` takes as `ref_model`: None (its default), the built-in tiny Llama (built, with the
    policy's dtype), or a name or path (loaded by the trainer with the policy's `model_init_kwargs`)."""
    name = script_args.ref_model_name_or_path
    if not name:
        return None
    if name == TINY_LLAMA:
        import torch

        from trl_pro.assets import build_tiny_llama

        model = build_tiny_llama(seed=training_args.seed)
        if model_args.dtype in ("bfloat16", "float16"):
            model = model.to(getattr(torch, model_args.dtype))
        return model
    return check_local_path(name)


LIST_DPO = TrainingMethod(
    command="list-dpo",
    config_class="ListDPOConfig",
    trainer_class="ListDPOTrainer",
    description="Train a causal LM with DPO on rankings, with a reference model: list DPO (Plackett-Luce, the DPO "
    "paper's Appendix A.3), LiPO-λ (Liu et al. 2024) or DPO over all pairs (--loss_type), on ranked, pairwise or "
    "PRO-authors data.",
    eval_loss_note="eval loss = list loss + sft_weight * SFT NLL",
    script_arguments=ListDPOScriptArguments,
    trainer_kwargs=lambda script_args, model_args, training_args: {
        "ref_model": reference_model(script_args, model_args, training_args)
    },
)


class PROParser(OneLineErrors, TrlParser):
    """`TrlParser` whose argument errors are one line (`trl-pro <command>: error: ...`) instead of a usage dump."""


def make_method_parser(
    method: TrainingMethod, subparsers: argparse._SubParsersAction | None = None, prog: str | None = None
):
    """The parser of `method`'s script: script arguments, its config, `ModelConfig` and `DatasetMixtureConfig`."""
    from trl import DatasetMixtureConfig, ModelConfig

    config_class, _ = method.classes()
    dataclass_types = (method.script_arguments, config_class, ModelConfig, DatasetMixtureConfig)
    kwargs = dict(
        description=method.description,
        epilog=f"Flags not listed here are passed to `accelerate launch` (by `{method.prog}` only): "
        "--accelerate_config "
        "NAME|PATH (TRL's bundled single_gpu, multi_gpu, zero1, zero2, zero3, fsdp1, fsdp2, or a file), "
        "--num_processes, --num_machines, --machine_rank, --main_process_ip, --main_process_port, --mixed_precision, "
        "--cpu, ... (see `accelerate launch --help`); `--cpu --num_processes N` starts N CPU processes (torchrun, "
        "gloo). In --config YAML, the `env:` mapping sets environment variables "
        "and command-line flags override YAML values. `--model_name_or_path trl-pro/tiny-llama` is built in: a "
        "random-init tiny Llama from the package config with the shipped tokenizer, no download.",
    )
    if subparsers is not None:
        parser = subparsers.add_parser(
            method.command, help=f"Run the {method.command} training script", dataclass_types=dataclass_types
        )
    else:
        # No abbreviations: `--learning_rat` must fail, not silently set `--learning_rate`
        parser = PROParser(dataclass_types, prog=prog or method.prog, allow_abbrev=False, **kwargs)
    for action in parser._actions:
        if action.dest == "model_name_or_path":
            action.help = (
                f"Model checkpoint (hub id or local path) for weights initialization. `{TINY_LLAMA}` is built in: a "
                "random-init tiny Llama from the package config, seeded with --seed, with the shipped tokenizer (no "
                "download)."
            )
    return parser


def build_trainer(script_args, training_args, model_args, dataset_args, method: TrainingMethod = PRO):
    """Load the data and the model and build `method`'s trainer; returns (trainer, eval split or None)."""
    _, trainer_class = method.classes()

    mapping = _column_map(script_args)
    # The main process downloads and caches first; the others then read its cache
    with training_args.main_process_first(local=False, desc="loading the dataset"):
        dataset = load_dataset_splits(script_args, dataset_args)
        train_dataset = _split(dataset, script_args.dataset_train_split, "training", required=True)
        eval_dataset = _split(dataset, script_args.dataset_test_split, "evaluation", required=False)
        if mapping:
            train_dataset = _rename_columns(train_dataset, mapping, script_args.dataset_train_split)
            if eval_dataset is not None:
                eval_dataset = _rename_columns(eval_dataset, mapping, script_args.dataset_test_split)
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise SetupError(
            f"eval_strategy is '{training_args.eval_strategy}' but the dataset has no "
            f"'{script_args.dataset_test_split}' split"
        )

    model, tokenizer, quantization_config, peft_config = resolve_model(model_args, training_args)
    extra = method.trainer_kwargs(script_args, model_args, training_args) if method.trainer_kwargs else {}
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        quantization_config=quantization_config,
        peft_config=peft_config,
        **extra,
    )
    if script_args.ignore_bias_buffers:
        import torch

        # torch distributed hack, as in TRL's scripts
        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]
    return trainer, eval_dataset


def _reported(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    return {key: metrics[key] for key, _ in REPORTED_METRICS if key in metrics}


def format_before_after(
    before: dict | None, after: dict, split: str, num_rows: int | None, eval_loss_note: str = PRO.eval_loss_note
) -> str:
    """The held-out table printed at the end of a run."""
    rows = f"{num_rows} rankings" if num_rows is not None else "streamed"
    title = "before -> after training" if before is not None else "after training"
    lines = [f"Held-out ranking metrics on the '{split}' split ({rows}), {title}:"]
    for key, label in REPORTED_METRICS:
        if key not in after:
            continue
        if before is not None and key in before:
            change = after[key] - before[key]
            lines.append(f"  {label:<18} {before[key]:>9.4f} -> {after[key]:>9.4f}   ({change:+.4f})")
        else:
            lines.append(f"  {label:<18} {after[key]:>9.4f}")
    lines.append(
        "  (a random ranking scores pairwise accuracy 0.5, kendall tau 0, top-1 accuracy 1/n for n candidates; "
        f"{eval_loss_note})"
    )
    return "\n".join(lines)


def train(script_args, training_args, model_args, dataset_args, method: TrainingMethod = PRO):
    import transformers
    from packaging.version import Version

    quiet_known_noise()
    hint = "" if training_args.drop_invalid_rows else "set drop_invalid_rows to drop such rows"
    # the rows of one local file (`--dataset_name data.jsonl`) are its train split: a bad row names its line too
    source = None if dataset_args.datasets else script_args.dataset_name
    with one_line_errors(method.prog, hint=hint), rows_with_line_numbers(source):
        trainer, eval_dataset = build_trainer(script_args, training_args, model_args, dataset_args, method)

    before = after = None
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the trainer takes the last *complete* checkpoint of output_dir
    elif isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        resume = None
    resuming = bool(resume)
    if resume and getattr(training_args, "bootstrap_rounds", 0):
        from trl_pro.trainers.bootstrapping import bootstrap_resume_point

        with one_line_errors(method.prog):
            if resume is not True:
                raise SetupError(
                    f"--resume_from_checkpoint {resume}: with self-bootstrapping pass `true`; the run "
                    f"resumes from the round folders of {training_args.output_dir}"
                )
            if bootstrap_resume_point(training_args.output_dir, training_args.bootstrap_rounds) == (0, None):
                raise SetupError(
                    f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no "
                    f"self-bootstrapping round with a complete checkpoint in {training_args.output_dir}"
                )
    elif resume is True:
        from trl_pro.trainers.checkpointing import last_complete_checkpoint

        with one_line_errors(method.prog):
            if last_complete_checkpoint(training_args.output_dir) is None:
                raise SetupError(
                    f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no complete "
                    f"checkpoint in {training_args.output_dir}"
                )
    if eval_dataset is not None and script_args.eval_before_training and not resuming:
        before = _reported(trainer.evaluate())

    trainer.train(resume_from_checkpoint=resume)
    trainer.accelerator.print("✅ Training completed.")

    if eval_dataset is not None:
        after = _reported(trainer.evaluate())

    output_dir = Path(training_args.output_dir).resolve()
    trainer.save_model(training_args.output_dir)
    if eval_dataset is not None:
        num_rows = len(eval_dataset) if hasattr(eval_dataset, "__len__") else None
        if trainer.is_world_process_zero():
            record = {"split": script_args.dataset_test_split, "num_rows": num_rows, "before": before, "after": after}
            (output_dir / BEFORE_AFTER_FILE).write_text(json.dumps(record, indent=2) + "\n")
        trainer.accelerator.print(
            format_before_after(before, after, script_args.dataset_test_split, num_rows, method.eval_loss_note)
        )
    what = "LoRA adapter" if model_args.use_peft else "Model"
    trainer.accelerator.print(f"💾 {what} saved to {output_dir}")
    if training_args.save_strategy != "no":
        checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if checkpoints:
            trainer.accelerator.print(f"   last checkpoint: {checkpoints[-1]}")

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"🤗 Model pushed to the Hub in https://huggingface.co/{trainer.hub_model_id}.")

    # Finish the trackers and destroy the process group, once every process is done with it
    trainer.accelerator.wait_for_everyone()
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()
    return trainer


def parse_args(parser, argv: list[str] | None = None):
    """Parse flags and `--config` YAML; one-line errors; the YAML keys no dataclass knows must be `accelerate launch`
    arguments (they are used by `trl-pro pro`, ignored here)."""
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        *dataclasses, config_remaining, cli_remaining = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except (ValueError, TypeError, OSError, yaml.YAMLError) as error:
        if debug_enabled():
            raise
        fail(parser.prog, error)
    if cli_remaining:
        fail(parser.prog, f"unrecognized arguments: {' '.join(cli_remaining)} (see `{parser.prog} --help`)")
    launch_args = resolve_launch_args(normalize_config_flags(config_remaining), parser.prog)
    check_launch_args(launch_args, config_remaining, parser.prog, config_path_of(argv))
    return dataclasses


def cli_main(argv: list[str] | None = None, method: TrainingMethod = PRO) -> None:
    """Parse `argv` (YAML `--config` included) with `method`'s parser and train."""
    quiet_known_noise()
    parser = make_method_parser(method)
    script_args, training_args, model_args, dataset_args = parse_args(parser, argv)
    train(script_args, training_args, model_args, dataset_args, method)

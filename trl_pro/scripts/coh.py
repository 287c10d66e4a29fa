"""
Chain of Hindsight (Liu et al. 2023) baseline: TRL's `SFTTrainer` on CoH sequences, the loss on answer tokens only.

```bash
trl-pro coh --config recipes/baselines/coh_hh_rlhf_llama7b_qlora.yaml
python -m trl_pro.scripts.coh --model_name_or_path trl-pro/tiny-llama --dataset_name data/hh_rlhf/coh --output_dir out
```

`--dataset_name` is the `coh` view written by `python -m trl_pro.scripts.prepare_data` (or `trl-pro compare`), or any
dataset PRO reads (ranked rows, TRL pairs, the PRO authors' format), turned into CoH rows on the fly: the best
candidate against the worst, in both orders, "{prompt} A helpful answer: {better} An unhelpful answer: {worse}" and
the reverse (`trl_pro.data.coh`). The flags are TRL's SFT flags (`SFTConfig`, `ModelConfig`) plus `--max_prompt_length`;
`completion_only_loss` is always on, so that the prompt and the feedback phrases carry no loss. The prompt is tokenized
as `trl-pro eval` tokenizes it (with the tokenizer's BOS, kept when `--max_prompt_length` cuts it from the left). At
inference, end the prompt with `trl_pro.data.coh.POSITIVE_PHRASE` (" A helpful answer:").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from trl import ScriptArguments, TrlParser

from trl_pro.cli.errors import OneLineErrors, one_line_errors
from trl_pro.utils.quiet import quiet_known_noise


PROG = "trl-pro coh"


@dataclass
class CoHScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus the prompt truncation of the CoH rows."""

    max_prompt_length: int | None = field(
        default=384,
        metadata={
            "help": "Prompts keep their last max_prompt_length tokens, BOS included (as PRO's); the whole CoH "
            "sequence is then cut to max_length."
        },
    )


class CoHParser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line argument errors."""


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, SFTConfig

    dataclass_types = (CoHScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        return subparsers.add_parser("coh", help="Run the Chain of Hindsight script", dataclass_types=dataclass_types)
    return CoHParser(
        dataclass_types,
        prog=prog or PROG,
        allow_abbrev=False,
        description="Chain of Hindsight (Liu et al. 2023) with TRL's SFTTrainer: CoH sequences built from a ranked or "
        "pairwise dataset, loss on the answers only.",
        epilog="Flags not listed here are passed to `accelerate launch` (by `trl-pro coh` only). "
        "`--model_name_or_path trl-pro/tiny-llama` is the built-in tiny model.",
    )


def build_trainer(script_args, training_args, model_args, dataset_args):
    """The `SFTTrainer` of a CoH run (data loaded, CoH rows built and tokenized)."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from trl_pro.data.coh import tokenize_coh_dataset
    from trl_pro.data.loading import _split, load_dataset_splits
    from trl_pro.pipeline.models import resolve_model

    if script_args.dataset_streaming:
        raise ValueError("Chain of Hindsight rows are built with `datasets.map`: a streaming dataset is not supported")
    training_args.completion_only_loss = True  # the whole point: no loss on the prompt and the feedback phrases
    model, tokenizer, quantization_config, peft_config = resolve_model(model_args, training_args)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    with training_args.main_process_first(local=False, desc="building CoH rows"):
        dataset = load_dataset_splits(script_args, dataset_args)
        splits = {"train": _split(dataset, script_args.dataset_train_split, "training", required=True)}
        if training_args.eval_strategy != "no":
            splits["eval"] = _split(dataset, script_args.dataset_test_split, "evaluation", required=True)
        tokenized = {
            name: tokenize_coh_dataset(
                rows,
                tokenizer,
                training_args.max_length,
                script_args.max_prompt_length,
                num_proc=training_args.dataset_num_proc,
            )
            for name, rows in splits.items()
        }
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("eval"),
        processing_class=tokenizer,
        quantization_config=quantization_config,
        peft_config=peft_config,
    )


def main(script_args, training_args, model_args, dataset_args):
    import transformers
    from packaging.version import Version

    quiet_known_noise()
    with one_line_errors(PROG):
        trainer = build_trainer(script_args, training_args, model_args, dataset_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("✅ Training completed.")
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(
        f"💾 Model saved to {training_args.output_dir}. At inference, end the prompt with the "
        "positive phrase ' A helpful answer:' (trl_pro.data.coh.coh_prompt)."
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()
    return trainer


def cli_main(argv: list[str] | None = None) -> None:
    from trl_pro.cli.training import parse_args

    quiet_known_noise()
    script_args, training_args, model_args, dataset_args = parse_args(make_parser(), argv)
    main(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    cli_main(sys.argv[1:])

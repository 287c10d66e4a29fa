"""
Reward model training, the `trl-pro reward` command: TRL's `RewardTrainer` with trl-pro's models and data formats.

# A tiny reward model on the vendored HH-RLHF slice, on CPU, in well under a minute, with no download
```bash
trl-pro reward --config recipes/reward/tiny_reward_model.yaml
trl-pro rank --dataset_name trl_pro/assets/hh_rlhf/test.jsonl.gz \
    --reward_model_name_or_path outputs/tiny-reward-model --output_path ranked.jsonl
```

# LLaMA-7B QLoRA on HH-RLHF pairs, the adapter merged into the saved model (the reward model of the PPO recipe)
```bash
trl-pro reward --config recipes/reward/hh_rlhf_llama7b_qlora.yaml
```

`--model_name_or_path trl-pro/tiny-llama` is built in: the tiny Llama of `trl-pro pro` (`trl_pro.assets`) with a
one-score sequence-classification head (`num_labels=1`), randomly initialised from `--seed`, with the shipped
tokenizer; nothing is downloaded. Any other value is loaded with `AutoModelForSequenceClassification.from_pretrained`
(`num_labels=1`, a new head on a causal LM checkpoint); a local path that does not exist fails at once.

`--dataset_name` is read as `trl-pro pro` reads it (hub id, local folder or file) and may hold any format PRO accepts
(`trl_pro.data.formats`): ranked rows (`prompt`, `completions` best first, optional `scores`), TRL preference rows
(`chosen`, `rejected`, optional `prompt`; an implicit prompt is their shared prefix) or the PRO authors' rows
(`prefix`, `suffix`, `reward`). Candidates are ordered as PRO orders them (by score, descending, when there are
scores) and each ranking becomes TRL preference rows (`prompt`, `chosen`, `rejected`), its pairs chosen by `--pairs`:

- `all` (default): every ordered pair of the ranking, the better candidate as `chosen`: n (n - 1) / 2 pairs for n
  candidates, every comparison the ranking states (InstructGPT trains its reward model on all of them);
- `adjacent`: 1st vs 2nd, 2nd vs 3rd, ...: n - 1 pairs;
- `best_vs_worst`: the first candidate against the last: one pair (the `pairs` view of `prepare_data`).

A pair tied in score, or of two identical candidates, states no preference and is left out. Rankings of 2 (raw
HH-RLHF) give one pair in every mode. Data already tokenized for TRL (`chosen_ids`, `rejected_ids`) is used as it
is. The other flags are TRL's (`RewardConfig`, `ModelConfig`); TRL drops pairs longer than `--max_length` tokens.

`--output_dir` receives the model and its tokenizer (config included), which `trl-pro rank
--reward_model_name_or_path <output_dir>` loads (`trl_pro.pipeline.reward_models.load_reward_model`), as do
bootstrapping (`--reward_model_name_or_path`), RLOO and `trl-pro eval`. With `--use_peft`, the LoRA adapter is saved
under `<output_dir>/adapter` and, with `--merge_adapter` (default), merged into its base (reloaded unquantized in
`--dtype`) and the full model saved in `<output_dir>`. `--lora_task_type` is set to `SEQ_CLS`, so that the score
head is trained and saved with the adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments, TrlParser

from trl_pro.cli.errors import OneLineErrors, one_line_errors
from trl_pro.utils.errors import SetupError
from trl_pro.utils.quiet import quiet_known_noise


PROG = "trl-pro reward"
PAIRS = ("all", "adjacent", "best_vs_worst")
ADAPTER_DIR = "adapter"


@dataclass
class RewardScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus how rankings become preference pairs and what is saved."""

    pairs: str = field(
        default="all",
        metadata={
            "help": "Preference pairs of a ranking: every ordered pair (all), each candidate against the next "
            "(adjacent), or the best against the worst (best_vs_worst). Pairs tied in score are left out.",
            "choices": list(PAIRS),
        },
    )
    dataset_column_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "Rename dataset columns before training, as a mapping (YAML) or a JSON string, e.g. "
            '\'{"all_generated_responses": "completions", "all_rm_scores": "scores"}\'.'
        },
    )
    drop_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop rows trl-pro cannot read (empty completion, fewer than 2 candidates, bad scores, ...) and "
            "say how many, instead of stopping with an error naming the row and the field."
        },
    )
    eval_after_training: bool = field(
        default=True,
        metadata={
            "help": "When the dataset has the `dataset_test_split` split, evaluate the reward model on its pairs "
            "after training and print the pairwise accuracy (chance: 0.5)."
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "With --use_peft: merge the trained adapter into its base and save the full model in "
            "output_dir (the adapter goes to output_dir/adapter), so that `trl-pro rank` and PPO can load it."
        },
    )


class RewardParser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line argument errors."""


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, RewardConfig

    from trl_pro.pipeline.models import TINY_LLAMA

    dataclass_types = (RewardScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("reward", help="Run the reward model script", dataclass_types=dataclass_types)
    else:
        parser = RewardParser(
            dataclass_types,
            prog=prog or PROG,
            allow_abbrev=False,
            description="Train a reward model (one score per sequence) with TRL's RewardTrainer on ranked, pairwise "
            "or PRO-authors data; rankings become preference pairs (--pairs).",
            epilog="Flags not listed here are passed to `accelerate launch` (by `trl-pro reward` only). "
            f"`--model_name_or_path {TINY_LLAMA}` is built in: the tiny Llama with a one-score head, random init "
            "from --seed, with the shipped tokenizer (no download).",
        )
    for action in parser._actions:
        if action.dest == "model_name_or_path":
            action.help = (
                "Model checkpoint (hub id or local path), loaded with a one-score head (a new one on a causal LM). "
                f"`{TINY_LLAMA}` is built in: a random-init tiny Llama with a one-score head, seeded with --seed, with "
                "the shipped tokenizer."
            )
    return parser


# --- rankings -> preference pairs ---------------------------------------------------------------------------------


@dataclass
class PairStats:
    """What `to_preference_dataset` made of a dataset."""

    rankings: int = 0
    pairs: int = 0
    invalid_rows: int = 0
    pairs_left_out: int = 0
    first_invalid: str = ""


def candidate_pairs(num_candidates: int, pairs: str = "all") -> list[tuple[int, int]]:
    """(better, worse) indices of a ranking of `num_candidates` ordered best first: every ordered pair (`all`), each
    candidate against the next (`adjacent`) or the first against the last (`best_vs_worst`)."""
    n = num_candidates
    if pairs == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if pairs == "adjacent":
        return [(i, i + 1) for i in range(n - 1)]
    if pairs == "best_vs_worst":
        return [(0, n - 1)] if n >= 2 else []
    raise ValueError(f"pairs must be one of {', '.join(PAIRS)}, got {pairs!r}")


def ranking_pairs(completions: list[Any], scores: list[float] | None, pairs: str = "all") -> list[tuple[int, int]]:
    """The `candidate_pairs` of a ranking (best first) that state a preference: a pair tied in score or of two
    identical candidates is left out."""
    return [
        (i, j)
        for i, j in candidate_pairs(len(completions), pairs)
        if (scores is None or scores[i] > scores[j]) and completions[i] != completions[j]
    ]


def to_preference_dataset(dataset, pairs: str = "all", drop_invalid_rows: bool = False):
    """TRL preference rows (`prompt`, `chosen`, `rejected`) from rows of any format trl-pro reads (a `Dataset` or a
    list of dicts); returns (`datasets.Dataset`, `PairStats`). Rows already tokenized for TRL are returned as they are.
    A bad row raises a `ValueError` naming it, or with `drop_invalid_rows` is dropped and counted."""
    from datasets import Dataset

    from trl_pro.data.formats import SCORE_COLUMNS, detect_format, rank, to_ranking

    candidate_pairs(2, pairs)  # a wrong `pairs` fails here, not as a bad row
    stats = PairStats()
    if len(dataset) == 0:
        raise SetupError("the dataset has no rows")
    columns = dataset.column_names if isinstance(dataset, Dataset) else list(dataset[0].keys())
    if {"chosen_ids", "rejected_ids"} <= set(columns):
        stats.rankings = stats.pairs = len(dataset)
        return (dataset if isinstance(dataset, Dataset) else Dataset.from_list(dataset)), stats
    data_format = detect_format(columns)
    expect_scores = dataset[0].get(SCORE_COLUMNS[data_format]) is not None
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for index, example in enumerate(dataset):
        try:
            # sorted by score as PRO sorts it; sft_index names the SFT target, not a preference, and is not used
            ranking = rank(to_ranking(example, index, data_format, expect_scores), index, None)
        except ValueError as error:
            if not drop_invalid_rows:
                raise
            stats.invalid_rows += 1
            stats.first_invalid = stats.first_invalid or str(error)
            continue
        completions, scores = ranking["completions"], ranking["scores"]
        kept = ranking_pairs(completions, scores, pairs)
        stats.rankings += 1
        stats.pairs_left_out += len(candidate_pairs(len(completions), pairs)) - len(kept)
        for better, worse in kept:
            rows["prompt"].append(ranking["prompt"])
            rows["chosen"].append(completions[better])
            rows["rejected"].append(completions[worse])
    stats.pairs = len(rows["prompt"])
    if not stats.rankings:
        raise SetupError(f"no valid row: all {stats.invalid_rows} were dropped; first: {stats.first_invalid}")
    if not stats.pairs:
        raise SetupError(f"no preference pair in {stats.rankings} rankings (--pairs {pairs}): every pair is tied")
    return Dataset.from_dict(rows), stats


def describe(stats: PairStats, split: str, pairs: str) -> str:
    """One line on what the split became."""
    line = f"{split}: {stats.rankings} rankings -> {stats.pairs} preference pairs (--pairs {pairs}"
    if stats.pairs_left_out:
        line += f", {stats.pairs_left_out} tied or identical pairs left out"
    line += ")"
    if stats.invalid_rows:
        line += f"; dropped {stats.invalid_rows} invalid rows (drop_invalid_rows), first: {stats.first_invalid}"
    return line


# --- the model ----------------------------------------------------------------------------------------------------


def check_model_path(name: str) -> None:
    """Fail at once, with one line, on a model name meant as a local path that names no folder (the hub would be
    asked for it, retried for a minute, and end in a traceback): `check_local_path`'s paths (`./x`, `/x`, `a/b/c`),
    plus a file, a mistyped built-in name, and an `a/b` whose `a` is a folder here (a local path, not a hub id)."""
    from trl_pro.pipeline.models import TINY_LLAMA, NoSuchFolderError, check_local_path

    path = Path(check_local_path(name))
    if path.is_file():
        raise SetupError(f"{name} is a file, not a model folder")
    if path.exists():
        return
    if name.startswith("trl-pro/"):
        raise SetupError(f"no built-in model {name}: the built-in model is {TINY_LLAMA}")
    if "/" in name and Path(name.split("/")[0]).is_dir():
        raise NoSuchFolderError(f"no such folder: {name}")


def build_tiny_reward_model(seed: int, **overrides: Any):
    """The built-in tiny Llama with a one-score head, random init from `seed` (the caller's RNG stream untouched)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from trl_pro.assets import load_tiny_tokenizer, tiny_llama_config

    config = tiny_llama_config(len(load_tiny_tokenizer()), num_labels=1, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return model.to(torch.float32)


def resolve_reward_model(model_args, training_args):
    """(model or path, tokenizer or None, quantization_config, peft_config): `resolve_model`'s resolution with a
    one-score head; the built-in name is built here (a temporary folder under 4-bit/8-bit, quantized at load time)."""
    import tempfile

    import torch
    from trl import get_peft_config, get_quantization_config

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.pipeline.models import TINY_LLAMA, resolve_model

    if model_args.use_peft and model_args.lora_task_type == "CAUSAL_LM":
        # TRL's default task type would leave the new score head untrained and out of the saved adapter
        model_args.lora_task_type = "SEQ_CLS"
    name = model_args.model_name_or_path
    if name != TINY_LLAMA:
        if name:
            check_model_path(name)
        return resolve_model(model_args, training_args)  # the name; RewardTrainer loads it with num_labels=1
    overrides = {}
    if model_args.attn_implementation is not None:
        overrides["attn_implementation"] = model_args.attn_implementation
    model = build_tiny_reward_model(training_args.seed, **overrides)
    if model_args.dtype in ("bfloat16", "float16"):
        model = model.to(getattr(torch, model_args.dtype))
    tokenizer = load_tiny_tokenizer()
    if get_quantization_config(model_args) is None:
        if training_args.model_init_kwargs:
            raise SetupError(f"model_init_kwargs does not apply to the built-in {TINY_LLAMA} (built, not loaded)")
        return model, tokenizer, None, get_peft_config(model_args)
    folder = tempfile.mkdtemp(prefix="trl-pro-tiny-reward-model-")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    *_, quantization_config, peft_config = resolve_model(
        dataclasses.replace(model_args, model_name_or_path=folder), training_args
    )
    return folder, tokenizer, quantization_config, peft_config


# --- training -----------------------------------------------------------------------------------------------------


def build_trainer(script_args, training_args, model_args, dataset_args):
    """The `RewardTrainer` of a run (data loaded and turned into preference pairs); returns (trainer, has eval)."""
    from accelerate import PartialState
    from trl import RewardTrainer

    from trl_pro.data.loading import _column_map, _rename_columns, _split, load_dataset_splits

    if script_args.dataset_streaming:
        raise SetupError("rankings are turned into pairs before training: a streaming dataset is not supported")
    mapping = _column_map(script_args)
    model, tokenizer, quantization_config, peft_config = resolve_reward_model(model_args, training_args)
    with training_args.main_process_first(local=False, desc="loading the dataset"):
        dataset = load_dataset_splits(script_args, dataset_args)
        splits = {"train": _split(dataset, script_args.dataset_train_split, "training", required=True)}
        evaluating = training_args.eval_strategy != "no"
        test = _split(dataset, script_args.dataset_test_split, "evaluation", required=evaluating)
        if test is not None and (evaluating or script_args.eval_after_training):
            splits["eval"] = test
        preference, names = {}, {}
        for role, rows in splits.items():
            names[role] = script_args.dataset_train_split if role == "train" else script_args.dataset_test_split
            if mapping:
                rows = _rename_columns(rows, mapping, names[role])
            preference[role], stats = to_preference_dataset(rows, script_args.pairs, script_args.drop_invalid_rows)
            PartialState().print(f"{PROG}: {describe(stats, names[role], script_args.pairs)}")
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=preference["train"],
        eval_dataset=preference.get("eval"),
        processing_class=tokenizer,
        quantization_config=quantization_config,
        peft_config=peft_config,
    )
    # TRL drops the pairs longer than max_length (it does not truncate them): say how many are left
    prepared = {"train": trainer.train_dataset, "eval": trainer.eval_dataset}
    for role, rows in preference.items():
        if len(prepared[role]) < len(rows):
            PartialState().print(
                f"{PROG}: {names[role]}: {len(prepared[role])} of {len(rows)} pairs have at most "
                f"--max_length {training_args.max_length} tokens; TRL drops the others"
            )
    return trainer, "eval" in preference


def merge_and_save(trainer, model_args, training_args) -> None:
    """The LoRA adapter saved in `<output_dir>/adapter`, merged into its base (reloaded unquantized, in `--dtype`),
    and the full model saved with the tokenizer in `output_dir` (main process)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from trl_pro.pipeline.models import TINY_LLAMA, _to_dtype, check_local_path

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir / ADAPTER_DIR))
    if not trainer.is_world_process_zero():
        return
    trainer.processing_class.save_pretrained(output_dir / ADAPTER_DIR)
    dtype = _to_dtype(model_args.dtype)
    if model_args.model_name_or_path == TINY_LLAMA:
        base = build_tiny_reward_model(training_args.seed)  # the same random weights the adapter was trained on
        base = base.to(dtype) if dtype is not None else base
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            check_local_path(model_args.model_name_or_path),
            num_labels=1,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
            dtype=dtype or torch.float32,
        )
    merged = PeftModel.from_pretrained(base, str(output_dir / ADAPTER_DIR)).merge_and_unload()
    merged.config.pad_token_id = trainer.processing_class.pad_token_id
    merged.save_pretrained(output_dir)
    trainer.processing_class.save_pretrained(output_dir)


def main(script_args, training_args, model_args, dataset_args):
    import transformers
    from packaging.version import Version

    quiet_known_noise()
    hint = "" if script_args.drop_invalid_rows else "set drop_invalid_rows to drop such rows"
    with one_line_errors(PROG, hint=hint):
        trainer, has_eval = build_trainer(script_args, training_args, model_args, dataset_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("✅ Training completed.")
    if has_eval and script_args.eval_after_training:
        metrics = trainer.evaluate()
        trainer.accelerator.print(
            f"Held-out pairwise accuracy on the '{script_args.dataset_test_split}' split: "
            f"{metrics['eval_accuracy']:.4f} (chance: 0.5), mean margin {metrics['eval_margin']:.4f}"
        )
    output_dir = Path(training_args.output_dir).resolve()
    if model_args.use_peft and script_args.merge_adapter:
        merge_and_save(trainer, model_args, training_args)
        trainer.accelerator.print(
            f"💾 Reward model (adapter merged) saved to {output_dir}, adapter in {output_dir / ADAPTER_DIR}"
        )
    else:
        trainer.save_model(training_args.output_dir)
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(training_args.output_dir)
        what = "LoRA adapter" if model_args.use_peft else "Reward model"
        trainer.accelerator.print(f"💾 {what} saved to {output_dir}")
    if not model_args.use_peft or script_args.merge_adapter:
        trainer.accelerator.print(f"   rank with it: trl-pro rank --reward_model_name_or_path {output_dir} ...")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()
    return trainer


def cli_main(argv: list[str] | None = None):
    """Parse `argv` (YAML `--config` included) and train; returns the trainer."""
    from trl_pro.cli.training import parse_args

    quiet_known_noise()
    script_args, training_args, model_args, dataset_args = parse_args(make_parser(), argv)
    return main(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    cli_main(sys.argv[1:])

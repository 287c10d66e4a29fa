"""PPO baseline (the PRO paper's RLHF baseline) through TRL 1.12.0's `trl.experimental.ppo.PPOTrainer`.

TRL 1.16, which trl-pro is built on, no longer has a PPOTrainer; TRL 1.12.0 is the last release with one. This script
therefore runs in its own virtual environment and imports nothing from `trl_pro`:

```bash
bash tools/install.sh ppo                      # creates .venv-ppo (trl==1.12.0, CPU torch when there is no GPU)
.venv-ppo/bin/python trl_pro/scripts/ppo.py --config recipes/baselines/ppo_hh_rlhf_llama7b_qlora.yaml
.venv-ppo/bin/accelerate launch trl_pro/scripts/ppo.py --config ...   # several GPUs
```

Same inputs as the other baselines: the `prompts` view of the ranked dataset (`python -m trl_pro.scripts.prepare_data`
or `trl-pro compare`), the policy `--model_name_or_path` (also the reference model, and the PPO starting point:
`--sft_model_path` defaults to it) and the reward model `--reward_model_path` (an `AutoModelForSequenceClassification`
with one label, as TRL's RewardTrainer writes it; the value model starts from it, as in TRL's own PPO example).

TRL 1.12's PPO hands the policy's token ids to the reward and value models, so they must share the policy's tokenizer
(a reward model with another vocabulary, such as a DeBERTa one, cannot be used: the script refuses it with a
one-line error). One PPO step is one rollout batch of `per_device_train_batch_size * gradient_accumulation_steps *
processes` prompts; `--total_episodes` sets the number of prompts seen (default: one epoch of the train split). The
train split must fill one rollout batch (TRL 1.12 would wait for it forever): the script refuses fewer prompts.
Prompts are tokenized as `trl-pro eval` tokenizes them (`prompt_ids`: the tokenizer's special tokens, LLaMA's BOS,
kept when a long prompt keeps its last 384 tokens), so the policy is trained and evaluated on the same prompt tokens.
At the end the script prints one line `PPO: <steps> steps, <episodes> episodes, <seconds> s, saved to <dir>`.
"""

from __future__ import annotations

import json
import os
import sys
import time


PROG = "trl_pro/scripts/ppo.py"
#: Prompts keep their last 384 tokens, as PRO's `max_prompt_length` (the authors' max_length - 128).
MAX_PROMPT_LENGTH = 384


def _fail(message: object, code: int = 2) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def _check_versions() -> None:
    try:
        import trl
    except ImportError:
        _fail(
            "trl is not installed; run this script with the PPO environment: bash tools/install.sh ppo, then "
            ".venv-ppo/bin/python trl_pro/scripts/ppo.py ..."
        )
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401
    except ImportError:
        _fail(
            f"trl {trl.__version__} has no trl.experimental.ppo (TRL 1.12.0 is the last release with PPOTrainer); "
            "run this script with .venv-ppo/bin/python after `bash tools/install.sh ppo`"
        )


def make_parser():
    from trl import ModelConfig, ScriptArguments, TrlParser
    from trl.experimental.ppo import PPOConfig

    return TrlParser((ScriptArguments, PPOConfig, ModelConfig))


def _pad_token(tokenizer):
    """The pad token PPO masks with. A new `[PAD]` token (TRL's example) would need resized embeddings in the policy,
    the reference, the value and the reward model; an existing unused token does not."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.unk_token is not None:  # LLaMA: <unk> never appears in text
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.pad_token = tokenizer.eos_token


def _check_same_vocabulary(tokenizer, reward_model_path: str, trust_remote_code: bool) -> None:
    from transformers import AutoTokenizer

    try:
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # a reward model saved without its tokenizer: nothing to compare
        return
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        _fail(
            f"the reward model {reward_model_path} has another vocabulary than the policy; TRL 1.12's PPOTrainer "
            "feeds the policy's token ids to the reward model, so it needs a reward model trained on the policy's "
            "tokenizer"
        )


def prompt_ids(tokenizer, prompt: str, max_prompt_length: int | None = MAX_PROMPT_LENGTH) -> list[int]:
    """Token ids of a prompt as `trl-pro eval` builds them: with the tokenizer's own special tokens (LLaMA's BOS), cut
    from the left to `max_prompt_length` tokens (None: not cut), keeping the special tokens the tokenizer puts first.

    A copy of `trl_pro.data.tokenization.token_ids` + `truncate_prompt` for text prompts, since this script runs with
    TRL 1.12 and so imports nothing from trl_pro (built on TRL 1.16): keep the two in step."""
    ids = tokenizer(text=prompt)["input_ids"]
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids
    # the tokenizer's leading special tokens: a probe tokenized with and without them
    probe, plain = tokenizer(text="a")["input_ids"], tokenizer(text="a", add_special_tokens=False)["input_ids"]
    prefix = next(
        (probe[:start] for start in range(len(probe) - len(plain) + 1) if probe[start : start + len(plain)] == plain),
        [],
    )
    if not prefix or ids[: len(prefix)] != prefix:
        prefix = ids[:1] if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id] else []
    kept = max_prompt_length - len(prefix)
    return (prefix + (ids[-kept:] if kept > 0 else []))[:max_prompt_length]


def _load_prompts(script_args, training_args, tokenizer):
    from datasets import load_dataset

    name = script_args.dataset_name
    if name is None:
        _fail("--dataset_name is required (a folder or file with a `prompt` column, e.g. data/hh_rlhf/prompts)")
    if os.path.isfile(name):
        extension = name.split(".")[-2] if name.endswith(".gz") else name.split(".")[-1]
        extension = {"jsonl": "json"}.get(extension, extension)
        dataset = load_dataset(extension, data_files=name)
    else:
        dataset = load_dataset(name, name=script_args.dataset_config)
    train = dataset[script_args.dataset_train_split]
    if "prompt" not in train.column_names:
        _fail(f"{name} has no `prompt` column (columns: {train.column_names}); use the `prompts` view")
    eval_split = script_args.dataset_test_split
    evaluation = dataset[eval_split] if eval_split in dataset else train.select(range(min(len(train), 8)))

    def tokenize(batch):
        for index, prompt in enumerate(batch["prompt"]):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"row {index}: field 'prompt' must be a non-empty string")
        # PPO's prompts are left-padded and the response follows: a long prompt keeps its end, like PRO's
        return {"input_ids": [prompt_ids(tokenizer, prompt) for prompt in batch["prompt"]]}

    def prepare(rows):
        return rows.map(
            tokenize, batched=True, remove_columns=rows.column_names, num_proc=training_args.dataset_num_proc
        )

    return prepare(train), prepare(evaluation)


def _check_enough_prompts(num_prompts: int, training_args, num_processes: int) -> None:
    """Fail when the train split cannot fill one rollout batch: TRL 1.12's PPOTrainer reads its prompts from a
    `drop_last` dataloader, which then has no batch, and waits for one forever."""
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * num_processes
    if num_prompts < batch:
        processes = f"{num_processes} process" + ("es" if num_processes != 1 else "")
        _fail(
            f"{num_prompts} train prompts is fewer than one PPO rollout batch (per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{training_args.gradient_accumulation_steps} x {processes} = {batch}), which TRL 1.12's PPOTrainer "
            f"would wait for forever; use more prompts (at least {batch}) or a smaller "
            "--per_device_train_batch_size or --gradient_accumulation_steps"
        )


def main(argv: list[str] | None = None) -> None:
    _check_versions()
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import get_peft_config, get_quantization_config
    from trl.experimental.ppo import PPOTrainer

    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    if model_args.model_name_or_path is None:
        _fail("--model_name_or_path is required (the policy: a local folder or a hub id)")
    # TRL 1.12's defaults point at EleutherAI/pythia-160m: start from the policy given, as every other baseline does
    defaults = type(training_args).__dataclass_fields__
    if training_args.sft_model_path == defaults["sft_model_path"].default:
        training_args.sft_model_path = model_args.model_name_or_path
    if training_args.reward_model_path == defaults["reward_model_path"].default:
        _fail(
            "--reward_model_path is required (an AutoModelForSequenceClassification with num_labels=1 that reads "
            "the policy's tokens)"
        )

    trust_remote_code = getattr(model_args, "trust_remote_code", False)  # not a ModelConfig field in TRL 1.12
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    quantization_config = get_quantization_config(model_args)
    model_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=dtype,
        # a k-bit model is placed at load time, on this process's device
        device_map={"": PartialState().local_process_index} if quantization_config is not None else None,
        quantization_config=quantization_config,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, padding_side="left", trust_remote_code=trust_remote_code
    )
    _pad_token(tokenizer)
    _check_same_vocabulary(tokenizer, training_args.reward_model_path, trust_remote_code)
    # the prompts before the models: a too small train split fails in seconds, not after loading four models
    train_dataset, eval_dataset = _load_prompts(script_args, training_args, tokenizer)
    _check_enough_prompts(len(train_dataset), training_args, PartialState().num_processes)
    reward_kwargs = dict(num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code)
    value_model = AutoModelForSequenceClassification.from_pretrained(training_args.reward_model_path, **reward_kwargs)
    reward_model = AutoModelForSequenceClassification.from_pretrained(training_args.reward_model_path, **reward_kwargs)
    for model in (value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    policy = AutoModelForCausalLM.from_pretrained(training_args.sft_model_path, **model_kwargs)
    peft_config = get_peft_config(model_args)
    ref_policy = (
        None
        if peft_config is not None
        else AutoModelForCausalLM.from_pretrained(training_args.sft_model_path, **model_kwargs)
    )

    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        summary = {
            "method": "ppo",
            "steps": trainer.state.global_step,
            "episodes": trainer.state.episode,
            "train_seconds": round(seconds, 2),
            "output_dir": training_args.output_dir,
            "log_history": trainer.state.log_history,
        }
        with open(os.path.join(training_args.output_dir, "ppo_summary.json.tmp"), "w") as file:
            json.dump(summary, file, indent=1)
        os.replace(
            os.path.join(training_args.output_dir, "ppo_summary.json.tmp"),
            os.path.join(training_args.output_dir, "ppo_summary.json"),
        )
        print(
            f"PPO: {summary['steps']} steps, {summary['episodes']} episodes, {seconds:.1f} s, saved to "
            f"{training_args.output_dir}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

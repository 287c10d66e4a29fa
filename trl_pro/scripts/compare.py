"""
One comparison, same data, same model: train PRO and every baseline from one ranked dataset and one base model.

```bash
trl-pro compare --dataset_name data/ranked.jsonl --model_name_or_path huggy-llama/llama-7b \
    --reward_model_name_or_path outputs/reward-llama7b --output_dir outputs/compare
trl-pro eval --comparison outputs/compare ...      # evaluation (reads comparison.json)
```

`--dataset_name` holds ranked rows (what `trl-pro rank` writes: `prompt`, `completions` best first, `scores`; any format
`trl-pro pro` reads works). They are turned once into the views each method reads (`prepare_data --source ranked`,
under `<output_dir>/data`): PRO and RRHF train on the rankings, and so do list DPO (`list_dpo`: Plackett-Luce) and
LiPO-λ (`lipo`), both with a reference model (a frozen copy of the base model), best-of-n SFT on the top candidate,
Chain of Hindsight on the best against the worst, DPO on the pairs (`--pairs best_vs_worst`, default, or `adjacent`), RLOO and PPO on the prompts
with `--reward_model_name_or_path`. Every method starts from `--model_name_or_path` and gets the same training
settings (the PRO paper's where they transfer: 2 epochs, max length 512 with prompts cut to 384 tokens, batch 2 x
accumulation 8, learning rate 5e-6 for full fine-tuning) plus its own (`METHODS`); `--overrides` changes any flag of
any method (`{"all": {...}, "dpo": {"beta": 0.2}}`, YAML or JSON). No method evaluates before training (PRO and RRHF
could: `--eval_before_training false` for both); `trl-pro eval` compares them all afterwards.

Each system is written to `<output_dir>/<name>`, and `<output_dir>/comparison.json` lists them for `trl-pro eval`:
`{"systems": [{"name", "path", "prompt_suffix", ...}]}` (Chain of Hindsight's prompt suffix is its positive phrase;
`base` is the untrained base model). At the end a table says what ran, its steps, its time and where it was saved.
A finished system is not trained again when the command is run again (`--overwrite` to retrain) as long as what
determines it is unchanged: each system's entry records the key of its dataset (name, and for local data a fingerprint
of its files), base model (`model_identity`: config and weight fingerprints), reward model, shared training settings
and the method's own flags (`system_key`). A system whose key differs is trained again, with one line saying which of
these changed; an interrupted comparison resumes with the next system. A run of some methods (`--methods pro dpo`)
adds its systems to those already listed, which keep their own keys; each system says which dataset and base model it
was trained with, and the top-level `dataset_name`, `rows`, `base_model` and `reward_model` are written only when every
listed system was trained with them.

PPO runs `trl_pro/scripts/ppo.py` with the TRL 1.12 environment (`bash tools/install.sh ppo`, `--ppo_python`); without it,
or without a reward model for RLOO/PPO, the table says the method was skipped and why. `--method_timeout` stops a PPO
run that takes longer (the table says `timed out after N s`, and the next method runs); the methods trained in this
process have no time limit. SFT and best-of-n are one system here: the PRO authors' SFT baseline trains on the reward
model's top candidate of each re-scored pair, which is best-of-n with n = 2.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trl import TrlParser

from trl_pro.cli.errors import OneLineErrors, debug_enabled, fail, one_line, one_line_errors
from trl_pro.utils.cache import changed_fields, content_key, model_identity
from trl_pro.utils.io import atomic_write_json
from trl_pro.utils.quiet import quiet_known_noise


PROG = "trl-pro compare"
MANIFEST = "comparison.json"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PPO_SCRIPT = Path(__file__).with_name("ppo.py")


@dataclass(frozen=True)
class Method:
    """One system of the comparison.

    `script`: the module whose `make_parser()` reads the method's flags (`trl_pro.scripts.<name>` or TRL's
    `trl.scripts.<name>`), or "ppo" for the TRL 1.12 subprocess; `trainer`: for TRL's scripts, the trainer class,
    built as `trl <command>` builds it (trl-pro's scripts: their `main` trains and returns the trainer); `view`: the
    prepared data it reads; `flags`: its own settings on top of the shared ones; `reward`: the flag that takes the
    reward model, if it needs one; `prompt_suffix`: what an evaluation prompt must end with."""

    script: str
    view: str
    trainer: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    reward: str | None = None
    prompt_suffix: str = ""


def _coh_phrase() -> str:
    from trl_pro.data.coh import POSITIVE_PHRASE

    return POSITIVE_PHRASE


#: What trl-pro's ranking scripts (PRO, RRHF) get that no other method has a flag for. No method evaluates before
#: training: only these two could, and `trl-pro eval` compares every system (and the base model) afterwards.
_RANKING_FLAGS = {"eval_before_training": False}

#: The systems, in training order. Adding a method is one entry.
METHODS: dict[str, Method] = {
    "pro": Method("trl_pro.scripts.pro", "ranked", flags=dict(_RANKING_FLAGS)),
    "rrhf": Method("trl_pro.scripts.rrhf", "ranked", flags=dict(_RANKING_FLAGS)),
    "list_dpo": Method(
        "trl_pro.scripts.list_dpo", "ranked", flags={**_RANKING_FLAGS, "loss_type": "plackett_luce", "beta": 0.1}
    ),
    "lipo": Method(
        "trl_pro.scripts.list_dpo", "ranked", flags={**_RANKING_FLAGS, "loss_type": "lipo_lambda", "beta": 0.1}
    ),
    "best_of_n": Method(
        "trl.scripts.sft", "best_of_n", trainer="SFTTrainer", flags={"completion_only_loss": True, "packing": False}
    ),
    "coh": Method("trl_pro.scripts.coh", "coh", prompt_suffix=_coh_phrase()),
    "dpo": Method("trl.scripts.dpo", "pairs", trainer="DPOTrainer", flags={"beta": 0.1}),
    "rloo": Method(
        "trl.scripts.rloo",
        "prompts",
        trainer="RLOOTrainer",
        reward="reward_model_name_or_path",
        flags={"num_generations": 4, "temperature": 1.0, "beta": 0.05},
    ),
    "ppo": Method(
        "ppo",
        "prompts",
        reward="reward_model_path",
        flags={
            "stop_token": "eos",
            "temperature": 1.0,
            "kl_coef": 0.05,
            "num_ppo_epochs": 4,
            "num_mini_batches": 1,
            "missing_eos_penalty": 1.0,
            "num_sample_generations": 0,
        },
    ),
}


@dataclass
class CompareArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Ranked dataset (file, folder or hub id)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model of every system (`trl-pro/tiny-llama` is the built-in one)."}
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model of RLOO and PPO (for PPO it must read the base model's tokens)."}
    )
    output_dir: str = field(default="outputs/compare", metadata={"help": "Folder of every system and the manifest."})
    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={"help": f"Systems to train (space- or comma-separated), among {', '.join(METHODS)}."},
    )
    pairs: str = field(default="best_vs_worst", metadata={"help": "DPO pairs: best_vs_worst or adjacent."})
    test_size: float = field(default=0.02, metadata={"help": "Held-out fraction when the data has no test split."})
    seed: int = field(default=42, metadata={"help": "Seed of the split and of every run."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of every method (paper: 2)."})
    max_steps: int = field(default=-1, metadata={"help": "Steps of every method (> 0 replaces the epochs)."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate (paper: 5e-6, full fine-tuning)."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Per-device batch (paper: 2)."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Accumulation (paper: 8)."})
    max_length: int = field(default=512, metadata={"help": "Sequence length (paper: 512; CoH gets twice this)."})
    max_prompt_length: int = field(default=384, metadata={"help": "Prompt length (paper: 384)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision for every method."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU."})
    overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Flags per method, e.g. \'{"all": {"use_peft": true}, "dpo": {"beta": 0.2}}\' (a mapping in YAML).'
        },
    )
    ppo_python: str = field(
        default=str(REPO_ROOT / ".venv-ppo" / "bin" / "python"),
        metadata={"help": "Python of the TRL 1.12 environment that runs PPO (bash tools/install.sh ppo)."},
    )
    method_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds a method run in a subprocess (PPO) may take, loading included; past it the run is "
            "stopped with its processes, the table says `timed out after N s` and the next method runs. "
            "Default: no limit (a 7B PPO run takes hours). The methods trained in this process cannot be "
            "stopped safely midway and have no limit."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Train again systems already finished."})


class CompareParser(OneLineErrors, TrlParser):
    """`TrlParser` with one-line argument errors."""


def make_parser(subparsers=None, prog: str | None = None):
    if subparsers is not None:
        return subparsers.add_parser(
            "compare", help="Train PRO and every baseline on one ranked dataset", dataclass_types=(CompareArguments,)
        )
    return CompareParser(
        (CompareArguments,),
        prog=prog or PROG,
        allow_abbrev=False,
        description="Train PRO and every baseline from one ranked dataset and one base model; writes "
        "each system and comparison.json under --output_dir and prints a table.",
    )


# ---------------------------------------------------------------------------------------------------------------------


def _check(args: CompareArguments) -> dict[str, dict]:
    if not args.dataset_name:
        fail(PROG, "--dataset_name is required (ranked rows, e.g. the output of `trl-pro rank`)")
    if not args.model_name_or_path:
        fail(PROG, "--model_name_or_path is required (the base model of every system)")
    # `--methods pro dpo` or `--methods pro,dpo`
    args.methods = [name for item in args.methods for name in str(item).split(",") if name]
    unknown = [name for name in args.methods if name not in METHODS]
    if unknown:
        fail(PROG, f"unknown method(s) {', '.join(unknown)}; choose among {', '.join(METHODS)}")
    if args.pairs not in ("best_vs_worst", "adjacent"):
        fail(PROG, f"--pairs must be best_vs_worst or adjacent, got {args.pairs}")
    if args.method_timeout is not None and not args.method_timeout > 0:
        fail(PROG, f"--method_timeout must be a number of seconds > 0, got {args.method_timeout}")
    overrides = args.overrides
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as error:
            fail(PROG, f"--overrides must be a JSON object: {error}")
    overrides = overrides or {}
    if not isinstance(overrides, dict) or not all(
        key in ("all", *METHODS) and isinstance(value, dict) for key, value in overrides.items()
    ):
        fail(PROG, f"--overrides maps 'all' or a method name ({', '.join(METHODS)}) to flags, got {overrides!r}")
    return overrides


def dataset_identity(name: str) -> dict[str, Any]:
    """What a dataset is, for keys: its name, and for a local file or folder a fingerprint of each file (size,
    modification time, first and last MiB, as `model_identity` fingerprints weights), so that data rewritten under the
    same name is new data. A hub id is identified by its name."""
    path = Path(name)
    identity: dict[str, Any] = {"name": name}
    if path.is_file():
        identity["files"] = {path.name: model_identity(path)["file"]}
    elif path.is_dir():
        identity["files"] = {
            str(file.relative_to(path)): model_identity(file)["file"]
            for file in sorted(path.rglob("*"))
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)  # .cache
        }
    return identity


def split_identity(dataset: dict[str, Any], args: CompareArguments) -> dict[str, Any]:
    """The `dataset_identity` of the ranked data with what splits it into the train rows every method reads."""
    return {**dataset, "test_size": args.test_size, "split_seed": args.seed}


def prepare_views(args: CompareArguments, data_dir: Path, dataset: dict[str, Any] | None = None) -> dict[str, int]:
    """The views of the ranked dataset under `data_dir` (once: kept while the data and the split settings are the
    same); returns the row counts. `dataset`: its `dataset_identity`, if already computed."""
    from trl_pro.data.loading import load_named_dataset
    from trl_pro.scripts import prepare_data

    done = data_dir / "views.json"
    settings = {
        "dataset_name": args.dataset_name,
        "pairs": args.pairs,
        "test_size": args.test_size,
        "seed": args.seed,
        "dataset": content_key(dataset or dataset_identity(args.dataset_name)),
    }
    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        return json.loads(done.read_text())["rows"]
    dataset = load_named_dataset(args.dataset_name)
    ranked, dropped = prepare_data.rankings(
        "ranked", dataset, SimpleNamespace(test_size=args.test_size, seed=args.seed, num_proc=None)
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    prepare_data.write_views(prepare_data.views(ranked, args.pairs), data_dir)
    rows = {split: len(data) for split, data in ranked.items()} | {f"dropped_{s}": n for s, n in dropped.items()}
    atomic_write_json(done, {"settings": settings, "rows": rows})
    return rows


def materialize_base_model(args: CompareArguments, output_dir: Path) -> str:
    """A path every method (and the PPO environment) can load: the built-in tiny Llama is saved once to
    `<output_dir>/base_model`; any other name is used as is."""
    from trl_pro.pipeline.models import TINY_LLAMA

    if args.model_name_or_path != TINY_LLAMA:
        return args.model_name_or_path
    folder = output_dir / "base_model"
    if not (folder / "config.json").is_file():
        from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

        build_tiny_llama(seed=args.seed).save_pretrained(folder)
        load_tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def shared_flags(
    name: str, args: CompareArguments, base_model: str, data_dir: Path, output_dir: Path
) -> dict[str, Any]:
    """The settings every method gets (before its own flags and `--overrides`)."""
    method = METHODS[name]
    return {
        "model_name_or_path": base_model,
        "dataset_name": str(data_dir / method.view),
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "output_dir": str(output_dir / name),
        "seed": args.seed,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "max_length": 2 * args.max_length if name == "coh" else args.max_length,  # prompt + two answers
        "max_prompt_length": args.max_prompt_length,
        "max_completion_length": args.max_length - args.max_prompt_length,  # RLOO's generations
        "response_length": args.max_length - args.max_prompt_length,  # PPO's generations
        "local_rollout_forward_batch_size": args.per_device_train_batch_size,
        "bf16": args.bf16,
        "use_cpu": args.use_cpu,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10,
    }


def method_flags(
    name: str, args: CompareArguments, base_model: str, data_dir: Path, output_dir: Path, overrides: dict
) -> dict[str, Any]:
    """Every flag of one method's run: shared settings, the method's own, then `--overrides`."""
    method = METHODS[name]
    flags = shared_flags(name, args, base_model, data_dir, output_dir)
    if method.reward:
        flags[method.reward] = args.reward_model_name_or_path
    flags.update(method.flags)
    flags.update(overrides.get("all", {}))
    flags.update(overrides.get(name, {}))
    return flags


def system_key(
    name: str, flags: dict[str, Any], args: CompareArguments, shared: dict[str, Any], dataset: dict[str, Any]
) -> dict[str, Any]:
    """What determines the system a method's run trains, one field each: `dataset` (the ranked data and its split),
    `base_model`, `reward_model` (methods that use one), `training` (the shared settings, as this method gets them
    after its overrides) and `method` (every other flag: the method's own and those `--overrides` adds). Paths are
    replaced by what they point at (the output folder is where the system goes, not what it is). `shared`:
    `shared_flags` of this run; `dataset`: the `dataset_identity` of `--dataset_name`."""
    method = METHODS[name]
    if flags["dataset_name"] != shared["dataset_name"]:  # an override reads other data than the prepared view
        dataset = dataset_identity(flags["dataset_name"])
    located = {"model_name_or_path", "dataset_name", "output_dir", method.reward}
    settings = {flag: value for flag, value in flags.items() if flag not in located}
    key = {
        "dataset": split_identity(dataset, args),
        "base_model": model_identity(flags["model_name_or_path"]),
        "training": {flag: value for flag, value in settings.items() if flag in shared},
        "method": {"name": name, **{flag: value for flag, value in settings.items() if flag not in shared}},
    }
    if method.view == "pairs":  # the only view that depends on --pairs
        key["method"]["pairs"] = args.pairs
    if method.reward:
        reward = flags[method.reward]
        key["reward_model"] = None if reward is None else model_identity(reward)
    return key


def key_entry(key: dict[str, Any]) -> dict[str, Any]:
    """What a run records of its `system_key`: its `key` and one `key_fields` hash per field (to say what changed)."""
    return {"key": content_key(key), "key_fields": {field: content_key(value) for field, value in key.items()}}


def _argv(flags: dict[str, Any], known: set[str] | None) -> list[str]:
    argv = []
    for key, value in flags.items():
        if value is None or (known is not None and f"--{key}" not in known):
            continue  # a shared setting this method has no flag for (e.g. max_length for RLOO)
        argv += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return argv


def _train_seconds(trainer, fallback: float) -> float:
    """`train_runtime` as the Trainer logs it at the end of `train()` (training only, no evaluation or saving)."""
    for log in reversed(trainer.state.log_history):
        if "train_runtime" in log:
            return float(log["train_runtime"])
    return fallback


def run_in_process(name: str, flags: dict[str, Any]) -> dict[str, Any]:
    """Run the method's script in this process from its own parser; returns steps and seconds. trl-pro's scripts
    (`trl-pro pro|coh|rrhf`) run their `main`, which trains, saves and returns the trainer; TRL's are built as
    `trl <command>` builds them (its `main` returns nothing to read the steps from)."""
    import torch

    method = METHODS[name]
    module = importlib.import_module(method.script)
    parser = module.make_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    args = parser.parse_args_and_config(_argv(flags, known))
    start = time.perf_counter()
    if method.trainer is None:
        trainer = module.main(*args)
    else:
        trainer = _trl_trainer(method, *args)
        trainer.train()
        trainer.save_model(trainer.args.output_dir)
        if trainer.is_world_process_zero() and trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(trainer.args.output_dir)
        trainer.accelerator.wait_for_everyone()
    result = {
        "steps": trainer.state.global_step,
        "train_seconds": _train_seconds(trainer, time.perf_counter() - start),
    }
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _trl_trainer(method: Method, script_args, training_args, model_args, dataset_args):
    import trl
    from datasets import load_dataset
    from trl import get_peft_config, get_quantization_config

    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    dataset = load_dataset(script_args.dataset_name)
    kwargs = {}
    if method.reward:
        kwargs["reward_funcs"] = [getattr(script_args, method.reward)]
    return getattr(trl, method.trainer)(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        **kwargs,
    )


#: Shared settings that PPO (TRL 1.12's PPOConfig) has no use for: it generates `response_length` tokens after prompts
#: cut to their last 384 tokens, counts its steps in rollout batches and does not evaluate here.
_NOT_PPO_FLAGS = {"max_length", "max_prompt_length", "max_completion_length", "eval_strategy", "max_steps"}


class MethodTimeout(RuntimeError):
    """A method's run took longer than `--method_timeout` and was stopped."""


def run_subprocess(command: list[str], env: dict[str, str], timeout: float | None) -> tuple[int, str]:
    """Run `command` in its own process group; returns its exit status and stderr. Past `timeout` seconds (None: no
    limit), or if this process is interrupted, the whole group is killed: the command's own children too."""
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except BaseException as error:
        # its own session: Ctrl-C here no longer reaches it, so this process ends it
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        if isinstance(error, subprocess.TimeoutExpired):
            seconds = int(timeout) if float(timeout).is_integer() else timeout
            raise MethodTimeout(f"timed out after {seconds} s (--method_timeout)") from None
        raise
    return process.returncode, stderr


def run_ppo(flags: dict[str, Any], args: CompareArguments) -> dict[str, Any]:
    """`trl_pro/scripts/ppo.py` with the TRL 1.12 environment's python, stopped after `--method_timeout` seconds;
    returns steps and seconds (its ppo_summary.json)."""
    flags = {key: value for key, value in flags.items() if key not in _NOT_PPO_FLAGS}
    if args.max_steps > 0:  # a PPO step is one rollout batch of prompts
        flags["total_episodes"] = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing of trl-pro's TRL 1.16
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    returncode, stderr = run_subprocess(
        [args.ppo_python, str(PPO_SCRIPT), *_argv(flags, None)], env, args.method_timeout
    )
    if returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {returncode}")
    summary = json.loads((Path(flags["output_dir"]) / "ppo_summary.json").read_text())
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"]}


def skip_reason(name: str, args: CompareArguments) -> str | None:
    method = METHODS[name]
    if method.reward and not args.reward_model_name_or_path:
        return "no --reward_model_name_or_path"
    if method.script == "ppo":
        if not Path(args.ppo_python).is_file():
            return f"no PPO environment at {args.ppo_python} (bash tools/install.sh ppo)"
        if not PPO_SCRIPT.is_file():
            return f"{PPO_SCRIPT} not found (PPO runs from a source checkout)"
    elif importlib.util.find_spec(method.script) is None:
        return f"{method.script} is not in this version of trl-pro"
    return None


def format_table(runs: list[dict[str, Any]], output_dir: Path) -> str:
    """What ran, its steps, its training time and where it was saved (or why it did not run)."""
    header = f"{'system':<10} {'status':<8} {'steps':>6} {'time (s)':>9}  saved to / reason"
    lines = [header, "-" * (len(header) + 30)]
    for run in runs:
        word, _, reason = run["status"].partition(": ")
        steps = "" if run.get("steps") is None else str(run["steps"])
        seconds = "" if run.get("train_seconds") is None else f"{run['train_seconds']:.1f}"
        path = run["path"] if run["method"] == "base" else str(output_dir / run["path"])  # base: a hub id or path
        where = path if word in ("trained", "kept", "listed") else reason
        lines.append(f"{run['name']:<10} {word:<8} {steps:>6} {seconds:>9}  {where}")
    return "\n".join(lines)


def main(args: CompareArguments) -> int:
    quiet_known_noise()
    overrides = _check(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = output_dir / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    previous_runs = {run["name"]: run for run in previous.get("runs", [])}
    with one_line_errors(PROG):
        dataset = dataset_identity(args.dataset_name)
        rows = prepare_views(args, output_dir / "data", dataset)
        base_model = materialize_base_model(args, output_dir)
    print(
        f"{PROG}: {rows.get('train')} train / {rows.get('test')} test rankings from {args.dataset_name} "
        f"(views in {output_dir / 'data'}), base model {base_model}",
        flush=True,
    )

    base = {
        "name": "base",
        "method": "base",
        "status": "kept",
        "path": base_model,
        "prompt_suffix": "",
        "steps": 0,
        "train_seconds": 0.0,
        "base_model": base_model,
    }
    runs: dict[str, dict] = {}  # this run's methods
    # Systems an earlier run trained that this one does not run: still listed, with their own keys
    carried = {
        name: run
        for name, run in previous_runs.items()
        if name in METHODS
        and name not in args.methods
        and run.get("status") in ("trained", "kept")
        and (output_dir / run["path"]).is_dir()
    }
    # This run's dataset, base model and reward model key fields: does every listed system share them?
    current_fields = key_entry(
        {
            "dataset": split_identity(dataset, args),
            "base_model": model_identity(base_model),
            "reward_model": None
            if args.reward_model_name_or_path is None
            else model_identity(args.reward_model_name_or_path),
        }
    )["key_fields"]

    def manifest_path_of(run) -> str | None:
        """A system's path as comparison.json gives it: relative to the folder, or absolute outside it. A base
        model given as a hub id is not listed (a reader resolves relative paths against the folder)."""
        if run["method"] != "base":
            return run["path"]
        local = Path(run["path"])
        if not local.exists():
            return None
        local, folder = local.resolve(), output_dir.resolve()
        return str(local.relative_to(folder)) if local.is_relative_to(folder) else str(local)

    def all_runs() -> list[dict]:
        """The base model, then this run's methods and the carried systems, in training order."""
        merged = runs | carried
        return [base, *(merged[name] for name in METHODS if name in merged)]

    def write_manifest():
        listed = [
            run for run in all_runs() if run["status"] in ("trained", "kept") and manifest_path_of(run) is not None
        ]
        trained = [run for run in listed if run["method"] != "base"]

        def shared_by_all(field, runs_using=trained):
            return all(run.get("key_fields", {}).get(field) == current_fields[field] for run in runs_using)

        # Top-level fields only where every listed system was trained with them (a partial run may have retrained
        # some systems on other data or another base model)
        manifest = {}
        if shared_by_all("dataset"):
            manifest.update(dataset_name=args.dataset_name, rows=rows)
        if shared_by_all("base_model"):
            manifest["base_model"] = base_model
        if shared_by_all("reward_model", [run for run in trained if "reward_model" in run.get("key_fields", {})]):
            manifest["reward_model"] = args.reward_model_name_or_path
        manifest["runs"] = all_runs()
        manifest["systems"] = [
            {
                "name": run["name"],
                "path": manifest_path_of(run),
                "prompt_suffix": run["prompt_suffix"],
                "method": run["method"],
                "steps": run["steps"],
                "train_seconds": run["train_seconds"],
                **{
                    field: run[field]
                    for field in ("dataset_name", "base_model", "reward_model", "key")
                    if field in run
                },
            }
            for run in listed
        ]
        atomic_write_json(manifest_path, manifest)

    failed = False
    for name in args.methods:
        method = METHODS[name]
        run = {
            "name": name,
            "method": name,
            "path": name,
            "prompt_suffix": method.prompt_suffix,
            "steps": None,
            "train_seconds": None,
        }
        flags = method_flags(name, args, base_model, output_dir / "data", output_dir, overrides)
        shared = shared_flags(name, args, base_model, output_dir / "data", output_dir)
        with one_line_errors(PROG):
            entry = key_entry(system_key(name, flags, args, shared, dataset))
        trained_with = {"dataset_name": args.dataset_name, "base_model": flags["model_name_or_path"], **entry}
        if method.reward:
            trained_with["reward_model"] = flags[method.reward]
        earlier = previous_runs.get(name)
        finished = (
            earlier is not None and earlier.get("status") in ("trained", "kept") and (output_dir / name).is_dir()
        )
        if finished and not args.overwrite and earlier.get("key") == entry["key"]:
            run.update(trained_with, status="kept", steps=earlier["steps"], train_seconds=earlier["train_seconds"])
        elif (reason := skip_reason(name, args)) is not None:
            run["status"] = f"skipped: {reason}"
        else:
            if finished and not args.overwrite:
                changed = changed_fields(earlier.get("key_fields") or {}, entry["key_fields"])
                why = (
                    f"it was trained with another {', '.join(changed)}"
                    if earlier.get("key_fields")
                    else "it has no recorded key (an older trl-pro wrote it)"
                )
                print(f"{PROG}: training {name} again: {why}", flush=True)
            print(f"{PROG}: training {name} ...", flush=True)
            try:
                result = run_ppo(flags, args) if method.script == "ppo" else run_in_process(name, flags)
                run.update(trained_with, status="trained", **result)
            except MethodTimeout as error:  # stopped, not broken: the next method runs
                failed = True
                run["status"] = f"failed: {error}"
            except SystemExit as error:  # a script's own one-line error (printed above) ends this method only
                if error.code in (0, None):
                    raise
                failed = True
                run["status"] = f"failed: exit status {error.code} (see its error above)"
            except Exception as error:
                if debug_enabled():
                    raise
                failed = True
                run["status"] = f"failed: {type(error).__name__}: {one_line(error)}"
        runs[name] = run
        write_manifest()
    write_manifest()
    # carried systems did not run this time: the table says they are listed (as an earlier run left them)
    print(
        format_table([run | {"status": "listed"} if run["name"] in carried else run for run in all_runs()], output_dir)
    )
    print(f"Systems listed in {manifest_path} (trl-pro eval reads this folder)")
    return 1 if failed else 0


def cli_main(argv: list[str] | None = None) -> None:
    import yaml

    quiet_known_noise()
    parser = make_parser()
    try:
        (args,) = parser.parse_args_and_config(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, OSError, yaml.YAMLError) as error:
        fail(PROG, error)
    sys.exit(main(args))


if __name__ == "__main__":
    cli_main()

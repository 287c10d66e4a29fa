"""The PRO paper in miniature: a controlled world with a gold reward, every method, seeds and confidence intervals.

```bash
python benchmarks/miniature.py --output_dir benchmarks/results/miniature        # full size
python benchmarks/miniature.py --smoke --output_dir /tmp/miniature-smoke         # smoke size, same schema
```

The world (see docs/miniature.md for why): prompts ask to sort five digits ("\\n\\nHuman: sort 7 2 9 4 1\\n\\n
Assistant:"); the gold reward (`gold_reward`, RM_eval, seen by no trainer) gives partial credit, the fraction of
positions of the sorted answer that the response gets right. A tiny Llama trained by SFT on noisy answers is the base
policy; RM_train is a tiny Llama reward model trained with TRL's RewardTrainer on pairs labelled by gold with 25% of
labels flipped; candidate sources of graded quality (the base at two temperatures, a teacher SFT'd on clean answers)
are added to each row's "human" pair with trl-pro's generation functions and ranked by RM_train with
`build_rankings`; every method is trained by `trl-pro compare`'s library (`compare.main`) and evaluated by
`trl-pro eval`'s (`evaluate_systems`, the gold reward as a Python reward function) on held-out prompts.

Everything goes under `--output_dir`: results.json, results.md, one PNG per experiment, and `work/` (models, data,
one folder per run; git-ignored) from which an interrupted run resumes: a run whose metrics.json exists is not redone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trl_pro.utils.io import atomic_write_json, atomic_write_text, write_jsonl


NUM_DIGITS = 5
PROMPT_TEMPLATE = "\n\nHuman: sort {}\n\nAssistant:"
PROMPT_RE = re.compile(r"sort ([0-9 ]+)\n\nAssistant:\s*$")


# --------------------------------------------------------------------------------------------------- the world


def make_prompt(digits: list[int]) -> str:
    return PROMPT_TEMPLATE.format(" ".join(map(str, digits)))


def answer(digits: list[int]) -> str:
    return " " + " ".join(map(str, digits))


def gold_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """RM_eval: for each (prompt, completion), the fraction of positions of the sorted digits the completion gets
    right, over max(5, number of whitespace-separated tokens) so that extra or missing tokens cost. In [0, 1]."""
    scores = []
    for prompt, completion in zip(prompts, completions):
        match = PROMPT_RE.search(prompt)
        if match is None:
            raise ValueError(f"not a sorting prompt: {prompt!r}")
        target = sorted(match.group(1).split())
        tokens = completion.split()
        right = sum(1 for got, want in zip(tokens, target) if got == want)
        scores.append(right / max(len(target), len(tokens)))
    return scores


def corrupt(digits: list[int], errors: int, rng: random.Random) -> list[int]:
    """The sorted digits with `errors` random edits (swap two positions, or replace one digit): a "human" answer."""
    out = sorted(digits)
    for _ in range(errors):
        if rng.random() < 0.5:
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
        else:
            out[rng.randrange(len(out))] = rng.randrange(10)
    return out


@dataclass
class Size:
    name: str
    seeds: list[int]
    n_train: int  # rankings every method trains on
    n_val: int  # held-out prompts for the learning-rate choice
    n_test: int  # held-out prompts for the reported numbers
    n_sft: int  # prompts of the base's SFT data
    base_steps: int  # SFT steps of the strong base (the weak base: a third)
    teacher_steps: int
    rm_pairs: int
    rm_steps: int
    steps: int  # training steps of every method
    batch_size: int
    lrs: list[float]
    exp2_methods_all_orders: bool = True  # list DPO / LiPO in every order of Fig. 3 (else ascending only)
    ppo: bool = True  # PPO in experiment 1 when its environment exists (a minute a run: not in the smoke size)


SIZES = {
    "smoke": Size(
        "smoke",
        seeds=[0, 1],
        n_train=256,
        n_val=32,
        n_test=64,
        n_sft=2048,
        base_steps=150,
        teacher_steps=150,
        rm_pairs=1024,
        rm_steps=120,
        steps=40,
        batch_size=16,
        lrs=[3e-5, 1e-3],
        exp2_methods_all_orders=False,
        ppo=False,
    ),
    "full": Size(
        "full",
        seeds=[0, 1, 2],
        n_train=1024,
        n_val=64,
        n_test=128,
        n_sft=4096,
        base_steps=200,
        teacher_steps=300,
        rm_pairs=2048,
        rm_steps=200,
        steps=100,
        batch_size=16,
        lrs=[3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
        exp2_methods_all_orders=True,
    ),
}

#: The learning test's slice (`learning_slice`): the base, RM_train and PRO on the human pairs, sized for CI.
TEST_SIZE = Size(
    "test",
    seeds=[0],
    n_train=256,
    n_val=16,
    n_test=64,
    n_sft=2048,
    base_steps=150,
    teacher_steps=0,
    rm_pairs=1024,
    rm_steps=120,
    steps=60,
    batch_size=16,
    lrs=[1e-3],
    ppo=False,
)

SOURCES = ("curie", "alpaca", "chatgpt")  # stand-ins, named by the quality they play (measured, not assumed)


class World:
    """The prompts, models and rankings, built once under `work/world` (each piece skipped when already there)."""

    def __init__(self, work: Path, size: Size):
        self.dir = work / "world"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.size = size
        rng = random.Random(1234)
        total = size.n_sft + size.rm_pairs + size.n_train + size.n_val + size.n_test + 256
        seen, digits = set(), []
        while len(digits) < total:  # distinct prompts: held-out ones are never trained on
            d = [rng.randrange(10) for _ in range(NUM_DIGITS)]
            if tuple(d) not in seen:
                seen.add(tuple(d))
                digits.append(d)
        cuts = [size.n_sft, size.rm_pairs, size.n_train, size.n_val, size.n_test, 256]
        self.splits, start = {}, 0
        for name, n in zip(("sft", "rm", "train", "val", "test", "rm_test"), cuts):
            self.splits[name] = digits[start : start + n]
            start += n
        self.rng = rng

    # the SFT'd policies --------------------------------------------------------------------------------------
    def sft_model(self, name: str, steps: int, noisy: bool) -> str:
        folder = self.dir / name
        if (folder / "config.json").is_file():
            return str(folder)
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

        rng = random.Random(7 if noisy else 8)
        rows = [
            {
                "prompt": make_prompt(d),
                # noisy "human" answers: 0-3 edits; the teacher learns from clean ones
                "completion": answer(corrupt(d, rng.choice([0, 1, 1, 2, 3]) if noisy else 0, rng)),
            }
            for d in self.splits["sft"]
        ]
        tokenizer = load_tiny_tokenizer()
        args = SFTConfig(
            output_dir=str(folder),
            max_steps=steps,
            per_device_train_batch_size=64,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
            completion_only_loss=True,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=build_tiny_llama(seed=0),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        trainer.train()
        trainer.save_model(str(folder))
        tokenizer.save_pretrained(str(folder))
        return str(folder)

    # RM_train --------------------------------------------------------------------------------------------------
    def reward_model(self) -> tuple[str, float]:
        folder = self.dir / "rm_train"
        info = self.dir / "rm_train.json"
        if info.is_file() and (folder / "config.json").is_file():
            return str(folder), json.loads(info.read_text())["heldout_accuracy_vs_gold"]
        from trl_pro.scripts import reward

        rng = random.Random(11)
        rows = []
        for d in self.splits["rm"]:
            a, b = (answer(corrupt(d, rng.choice([0, 1, 2, 3, 4]), rng)) for _ in range(2))
            ga, gb = gold_reward([make_prompt(d)] * 2, [a, b])
            if ga == gb:
                continue
            chosen, rejected = (a, b) if ga > gb else (b, a)
            if rng.random() < 0.25:  # label noise: RM_train is imperfect, as a 1.4B RM is against humans
                chosen, rejected = rejected, chosen
            rows.append({"prompt": make_prompt(d), "chosen": chosen, "rejected": rejected})
        data = self.dir / "rm_pairs.jsonl"
        write_jsonl(data, rows)
        parser = reward.make_parser()
        argv = [
            "--model_name_or_path", "trl-pro/tiny-llama", "--dataset_name", str(data), "--output_dir", str(folder),
            "--max_steps", str(self.size.rm_steps), "--per_device_train_batch_size", "32", "--learning_rate",
            "2e-3", "--lr_scheduler_type", "cosine", "--use_cpu", "true", "--report_to", "none", "--save_strategy",
            "no", "--eval_strategy", "no", "--logging_steps", "50", "--max_length", "64", "--seed", "0",
            "--disable_tqdm", "true", "--eval_after_training", "false",
        ]  # fmt: skip
        reward.main(*parser.parse_args_and_config(argv))
        accuracy = self._rm_accuracy(str(folder))
        atomic_write_json(info, {"heldout_accuracy_vs_gold": accuracy, "train_pairs": len(rows), "label_noise": 0.25})
        return str(folder), accuracy

    def _rm_accuracy(self, folder: str) -> float:
        from trl_pro.pipeline.reward_models import load_reward_model, score_completions

        model, tokenizer = load_reward_model(folder)
        rng = random.Random(13)
        prompts, a, b, labels = [], [], [], []
        for d in self.splits["rm_test"]:
            x, y = (answer(corrupt(d, rng.choice([0, 1, 2, 3, 4]), rng)) for _ in range(2))
            gx, gy = gold_reward([make_prompt(d)] * 2, [x, y])
            if gx != gy:
                prompts.append(make_prompt(d))
                a.append(x)
                b.append(y)
                labels.append(gx > gy)
        sa = score_completions(model, tokenizer, prompts, a, progress=False)
        sb = score_completions(model, tokenizer, prompts, b, progress=False)
        return sum((x > y) == label for x, y, label in zip(sa, sb, labels)) / len(labels)

    # candidates and rankings ------------------------------------------------------------------------------------
    def rankings(self, base: str, teacher: str | None, rm: str) -> tuple[list[dict], dict[str, float]]:
        """Every train row ranked by RM_train: its "human" pair (source `dataset`) and one candidate per source
        (`teacher=None`: the human pairs alone, the learning test's slice)."""
        path = self.dir / ("ranked_all.jsonl" if teacher else "ranked_pairs.jsonl")
        info = self.dir / ("sources.json" if teacher else "sources_pairs.json")
        if path.is_file() and info.is_file():
            return [json.loads(line) for line in path.read_text().splitlines()], json.loads(info.read_text())
        from datasets import Dataset

        from trl_pro.pipeline.generation import collect_candidates, local_source
        from trl_pro.pipeline.models import load_policy
        from trl_pro.pipeline.rankings import build_rankings, dataset_rankings
        from trl_pro.pipeline.reward_models import load_reward_model

        rng = random.Random(17)
        rows = []
        for d in self.splits["train"]:
            a, b = (answer(corrupt(d, rng.choice([0, 1, 2, 3]), rng)) for _ in range(2))
            ga, gb = gold_reward([make_prompt(d)] * 2, [a, b])
            rows.append({"prompt": make_prompt(d), "chosen": a if ga >= gb else b, "rejected": b if ga >= gb else a})
        generated = None
        if teacher:
            base_model, tokenizer = load_policy(base)
            teacher_model, _ = load_policy(teacher)
            common = dict(max_completion_length=12, batch_size=64, seed=0, progress=False)
            sources = [
                local_source(base_model, tokenizer, name="curie", temperature=1.4, **common),
                local_source(base_model, tokenizer, name="alpaca", temperature=0.8, **common),
                local_source(teacher_model, tokenizer, name="chatgpt", temperature=0.7, **common),
            ]
            generated = collect_candidates(sources, [row["prompt"] for row in rows], 1)
        reward_model, rm_tokenizer = load_reward_model(rm)
        ranked = build_rankings(
            dataset_rankings(Dataset.from_list(rows)),
            generated,
            reward_model=reward_model,
            tokenizer=rm_tokenizer,
            drop_duplicates=False,  # a source's candidate stays even when it repeats another (lengths stay exact)
            batch_size=64,
            progress=False,
        )
        quality: dict[str, list[float]] = {}
        for row in ranked:
            golds = gold_reward([row["prompt"]] * len(row["completions"]), row["completions"])
            for source, value in zip(row["sources"], golds):
                quality.setdefault(source, []).append(value)
        means = {source: sum(v) / len(v) for source, v in quality.items()}
        write_jsonl(path, ranked)
        atomic_write_json(info, means)
        return ranked, means


def ranking_view(ranked: list[dict], sources: list[str]) -> list[dict]:
    """Each row's "human" pair plus the candidates of `sources` (in RM_train's order, best first)."""
    rows = []
    for row in ranked:
        keep = [i for i, s in enumerate(row["sources"]) if s == "dataset" or s in sources]
        rows.append(
            {
                "prompt": row["prompt"],
                "completions": [row["completions"][i] for i in keep],
                "scores": [row["scores"][i] for i in keep],
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------- the runs


def ppo_skip_reason(size: Size) -> str | None:
    """Why PPO is not among the methods, or None when it is: it runs in TRL 1.12's own environment
    (`bash tools/install.sh ppo`, `.venv-ppo`), which CI and a plain install do not have."""
    from trl_pro.scripts.compare import CompareArguments

    if not size.ppo:
        return f"skipped at size {size.name!r}: a PPO run (rollouts with RM_train) takes about a minute here"
    python = CompareArguments().ppo_python
    if not Path(python).is_file():
        return f"skipped: no PPO environment at {python} (bash tools/install.sh ppo)"
    return None


def method_names(size: Size) -> list[str]:
    """The compare methods of experiment 1, in the order of its table: list DPO / LiPO when trl-pro has them, PPO
    when its environment exists."""
    from trl_pro.scripts.compare import METHODS

    names = ["best_of_n", "dpo", "rrhf", "coh", "pro"]
    names += [name for name in ("list_dpo", "lipo") if name in METHODS]
    return names + ([] if ppo_skip_reason(size) else ["ppo"])


#: Result names of compare's methods (the paper's SFT baseline is best-of-n with n = 2, see compare.py).
SYSTEM_NAME = {"best_of_n": "sft"}
LISTWISE = ("list_dpo", "lipo")
ABLATIONS = {
    "pro": {},
    "no_sft": {"sft_weight": 0.0},
    "no_temperature": {"use_temperature": False},
    "k1_only": {"rank_loss_terms": "first"},
}


@dataclass
class Run:
    run_id: str
    base: str  # "strong" or "weak"
    sources: list[str]  # sources added to the human pair (ranking length = 2 + len)
    method: str
    lr: float | None  # None: the method's chosen learning rate (resolved after the search)
    seed: int
    overrides: dict = field(default_factory=dict)


def ci95(values: list[float]) -> dict[str, Any]:
    from scipy import stats

    mean = sum(values) / len(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": [mean, mean], "per_seed": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return {"mean": mean, "ci95": [mean - half, mean + half], "per_seed": values}


def supported(better: dict, worse: dict) -> bool:
    """A difference is supported when the 95% intervals do not overlap."""
    return better["ci95"][0] > worse["ci95"][1]


class Miniature:
    def __init__(self, output_dir: Path, size: Size, progress: bool = True):
        self.out = output_dir
        self.work = output_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.work / ".gitignore", "*\n")  # models and data: results only are committed
        self.size = size
        self.progress = progress
        self.log = open(self.work / "log.txt", "a")

    @contextlib.contextmanager
    def quiet(self):
        """Library output to work/log.txt, the PPO subprocess's included (file descriptors 1 and 2 are redirected
        too): the progress bar stays readable."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(self.log.fileno(), 1)
            os.dup2(self.log.fileno(), 2)
            with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log):
                yield
        finally:
            self.log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)

    def build_world(self, bar, weak: bool = True) -> None:
        size = self.size
        self.world = World(self.work, size)
        steps = [
            ("base (strong)", lambda: self.world.sft_model("base_strong", size.base_steps, noisy=True)),
            # the weak base: a third of the SFT (only experiment 4 needs it)
            (
                "base (weak)",
                lambda: self.world.sft_model("base_weak", size.base_steps // 3, noisy=True) if weak else None,
            ),
            ("teacher", lambda: self.world.sft_model("teacher", size.teacher_steps, noisy=False)),
            ("RM_train", self.world.reward_model),
        ]
        built = []
        for label, step in steps:
            bar.set_description(label)
            with self.quiet():
                built.append(step())
            bar.update(1)
        self.bases = {"strong": built[0], "weak": built[1]}
        self.rm, self.rm_accuracy = built[3]
        bar.set_description("rankings")
        with self.quiet():
            self.ranked, self.source_quality = self.world.rankings(built[0], built[2], self.rm)
        bar.update(1)
        quality = sorted(SOURCES, key=lambda s: self.source_quality[s])
        self.orders = {"ascending": quality, "descending": quality[::-1]}
        shuffled, rng = list(quality), random.Random(5)
        while shuffled in (quality, quality[::-1]):  # a random order that is neither of the other two
            rng.shuffle(shuffled)
        self.orders["random"] = shuffled
        self.test_data = self._test_data()

    def _test_data(self):
        from trl_pro.evaluation.test_data import EvalExample

        return {
            split: [
                EvalExample(prompt=make_prompt(d), reference=answer(sorted(d)), subset=split, index=i)
                for i, d in enumerate(self.world.splits[split])
            ]
            for split in ("val", "test")
        }

    def evaluate(self, systems, folder: Path) -> dict[str, dict]:
        from trl_pro.evaluation.systems import evaluate_systems

        results = evaluate_systems(
            systems,
            self.test_data,
            folder,
            reward_funcs=[gold_reward],
            max_new_tokens=12,
            max_prompt_length=32,
            batch_size=64,
            progress=False,
            plot=False,
        )
        return {
            name: {
                split: {"gold_reward": r[split]["gold_reward"], "bleu": r[split]["bleu"]} for split in ("val", "test")
            }
            for name, r in results.items()
        }

    def base_metrics(self, base: str) -> dict:
        from trl_pro.evaluation.systems import System

        path = self.work / "runs" / f"base-{base}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
        with self.quiet():
            metrics = self.evaluate([System(name="base", path=self.bases[base])], path.parent / "eval")["base"]
        atomic_write_json(path, metrics)
        return metrics

    def data_file(self, sources: list[str]) -> str:
        name = "ranked-" + ("-".join(sources) or "pair") + ".jsonl"
        path = self.work / "data" / name
        if not path.is_file():
            write_jsonl(path, ranking_view(self.ranked, sources))
        return str(path)

    def train_and_eval(self, run: Run) -> dict:
        """One compare run (one method, one seed) and its evaluation; kept in work/runs/<id>/metrics.json."""
        from trl_pro.evaluation.systems import read_comparison_folder
        from trl_pro.scripts import compare

        folder = self.work / "runs" / run.run_id
        done = folder / "metrics.json"
        if done.is_file():
            return json.loads(done.read_text())
        start = time.perf_counter()
        overrides = dict(run.overrides)
        if run.method in ("pro",) and overrides.get("bootstrap_rounds"):
            overrides["bootstrap_reward_model_name_or_path"] = self.rm
        args = compare.CompareArguments(
            dataset_name=self.data_file(run.sources),
            model_name_or_path=self.bases[run.base],
            reward_model_name_or_path=self.rm,  # PPO's reward (its rollouts are scored by RM_train)
            output_dir=str(folder / "compare"),
            methods=[run.method],
            seed=run.seed,
            max_steps=self.size.steps,
            learning_rate=run.lr,
            per_device_train_batch_size=self.size.batch_size,
            gradient_accumulation_steps=1,
            max_length=48,
            max_prompt_length=32,
            use_cpu=True,
            test_size=0.02,
            overrides={"all": {"logging_steps": 1000, "disable_tqdm": True}, run.method: overrides},
        )
        with self.quiet():
            status = compare.main(args)
            if status != 0:
                raise RuntimeError(f"run {run.run_id}: trl-pro compare failed (see {self.work / 'log.txt'})")
            manifest = json.loads((folder / "compare" / compare.MANIFEST).read_text())
            systems = [s for s in read_comparison_folder(folder / "compare") if s.name != "base"]
            metrics = self.evaluate(systems, folder / "eval")[run.method]
        trained = next(s for s in manifest["systems"] if s["name"] == run.method)
        metrics.update(
            steps=trained["steps"],
            train_seconds=trained["train_seconds"],
            wall_seconds=time.perf_counter() - start,
            lr=run.lr,
            loadavg=os.getloadavg(),
        )
        # weights are not kept: a finished run is its metrics (keeps work/ small)
        for weights in (folder / "compare").rglob("*.safetensors"):
            weights.unlink()
        atomic_write_json(done, metrics)
        return metrics


# --------------------------------------------------------------------------------------------------- orchestration


def plan(size: Size, methods: list[str], orders: dict[str, list[str]], chosen_lr: dict[str, float] | None):
    """The runs, in order: the learning-rate search (seed 0, ranking length 2, validation prompts), then the four
    experiments. Runs that several cells share are one run (same id)."""
    s0 = size.seeds[0]
    search = [Run(f"lr-{m}-{lr:g}-s{s0}", "strong", [], m, lr, s0) for m in methods for lr in size.lrs]
    if chosen_lr is None:
        return search, []
    runs: list[Run] = []

    def add(run: Run) -> str:
        if not any(r.run_id == run.run_id for r in runs):
            runs.append(run)
        return run.run_id

    def cell(method, sources, seed, base="strong", overrides=None, tag=""):
        lr = chosen_lr[method]
        if not sources and base == "strong" and not overrides and seed == s0:
            return f"lr-{method}-{lr:g}-s{s0}"  # the search run at the chosen LR is this cell's seed-0 run
        name = "-".join(sources) or "pair"
        return add(Run(f"{method}{tag}-{base}-{name}-s{seed}", base, list(sources), method, lr, seed, overrides or {}))

    cells: dict[str, dict[str, list[str]]] = {"exp1": {}, "exp2": {}, "exp3": {}, "exp4": {}}
    for method in methods:
        for length, sources in ((2, []), (3, orders["descending"][:1])):
            if method == "ppo":  # PPO reads the prompts, not the rankings: one run serves both lengths
                sources = []
            cells["exp1"][f"{method}@{length}"] = [cell(method, sources, s) for s in size.seeds]
    for method in ["pro"] + [m for m in methods if m in LISTWISE]:
        for order, quality in orders.items():
            if method != "pro" and order != "ascending" and not size.exp2_methods_all_orders:
                continue
            for length in range(2, 2 + len(quality) + 1):
                sources = sorted(quality[: length - 2]) if length - 2 == len(quality) else quality[: length - 2]
                cells["exp2"][f"{method}|{order}@{length}"] = [cell(method, sources, s) for s in size.seeds]
    full = sorted(orders["ascending"])  # every candidate: the order no longer matters
    for variant, overrides in ABLATIONS.items():
        tag = "" if variant == "pro" else f"_{variant}"
        cells["exp3"][variant] = [cell("pro", full, s, overrides=overrides, tag=tag) for s in size.seeds]
    boot = {"bootstrap_rounds": 2, "bootstrap_max_completion_length": 12, "bootstrap_generation_batch_size": 64}
    for base in ("weak", "strong"):
        cells["exp4"][f"{base}|pro"] = [cell("pro", [], s, base=base) for s in size.seeds]
        cells["exp4"][f"{base}|pro_bootstrap"] = [
            cell("pro", [], s, base=base, overrides=boot, tag="_boot") for s in size.seeds
        ]
    return runs, cells


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--smoke", action="store_true", help="Smallest size that still learns, 2 seeds.")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Re-render results.md and the plots from the results.json in --output_dir (after a report change); "
        "trains nothing.",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core CPU, 2 threads ran 25x slower)"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((Path(args.output_dir) / "results.json").read_text())
        atomic_write_text(Path(args.output_dir) / "results.md", report(results))
        plots(results, Path(args.output_dir))
        return results
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)

    from trl_pro.utils.quiet import quiet_known_noise

    quiet_known_noise()
    import datasets
    import transformers

    datasets.disable_progress_bars()  # their bars would break the one bar over the runs
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    size = SIZES["smoke" if args.smoke else "full"]
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    load_start = os.getloadavg()
    mini = Miniature(output_dir, size, progress=not args.no_progress)
    methods = method_names(size)
    search, _ = plan(size, methods, {}, None)
    # total known up front: the search's result only picks LRs, the number of runs does not depend on it
    orders = {"ascending": list(SOURCES), "descending": list(SOURCES[::-1]), "random": list(SOURCES[1:] + SOURCES[:1])}
    estimate, _ = plan(size, methods, orders, dict.fromkeys(methods, size.lrs[0]))
    bar = tqdm(total=5 + 2 + len(search) + len(estimate), desc="world", disable=args.no_progress, unit="run")
    mini.build_world(bar)
    base = {b: mini.base_metrics(b) for b in ("strong", "weak")}
    bar.update(2)
    metrics: dict[str, dict] = {}
    for run in search:
        bar.set_description(run.run_id)
        metrics[run.run_id] = mini.train_and_eval(run)
        bar.update(1)
    chosen_lr = {
        m: max(size.lrs, key=lambda lr: (metrics[f"lr-{m}-{lr:g}-s{size.seeds[0]}"]["val"]["gold_reward"], -lr))
        for m in methods
    }
    runs, cells = plan(size, methods, mini.orders, chosen_lr)
    bar.total = 5 + 2 + len(search) + len(runs)
    bar.refresh()
    for run in runs:
        bar.set_description(run.run_id)
        metrics[run.run_id] = mini.train_and_eval(run)
        bar.update(1)
    bar.close()
    results = summarize(mini, size, methods, base, metrics, cells, chosen_lr)
    results["meta"] = run_meta(size, started, load_start, metrics)
    atomic_write_json(output_dir / "results.json", results)
    atomic_write_text(output_dir / "results.md", report(results))
    plots(results, output_dir)
    return results


def _stat(metrics, ids, split="test"):
    return {key: ci95([metrics[i][split][key] for i in ids]) for key in ("gold_reward", "bleu")}


def _base_stat(base_metrics):
    return {key: ci95([base_metrics["test"][key]]) for key in ("gold_reward", "bleu")}


def summarize(mini, size, methods, base, metrics, cells, chosen_lr) -> dict:
    systems = {"base": _base_stat(base["strong"])}
    exp1 = {"base@2": _base_stat(base["strong"]), "base@3": _base_stat(base["strong"])}
    for key, ids in cells["exp1"].items():
        exp1[key] = _stat(metrics, ids)
        method, length = key.split("@")
        if length == "2":
            systems[SYSTEM_NAME.get(method, method)] = exp1[key]
    exp2 = {key: _stat(metrics, ids) for key, ids in cells["exp2"].items()}
    exp3 = {key: _stat(metrics, ids) for key, ids in cells["exp3"].items()}
    exp4 = {key: _stat(metrics, ids) for key, ids in cells["exp4"].items()}
    exp4["weak|base"] = _base_stat(base["weak"])
    exp4["strong|base"] = _base_stat(base["strong"])
    from trl_pro.scripts.compare import METHODS

    return {
        "systems": systems,
        "exp1_table2": exp1,
        "exp2_fig3": exp2,
        "exp3_table5": exp3,
        "exp4_table6": exp4,
        "world": {
            "task": f"sort {NUM_DIGITS} digits; gold reward = fraction of positions right (partial credit)",
            "rm_train_heldout_accuracy_vs_gold": mini.rm_accuracy,
            "source_mean_gold_reward": mini.source_quality,
            "orders": mini.orders,
            "base_val_gold_reward": {b: base[b]["val"]["gold_reward"] for b in base},
        },
        "learning_rates": {
            "grid": size.lrs,
            "rule": "each method's LR is the grid value with the highest mean gold reward on the validation prompts "
            f"at seed {size.seeds[0]}, ranking length 2 (ties: the smaller LR); the same grid for every method",
            "chosen": {SYSTEM_NAME.get(m, m): chosen_lr[m] for m in methods},
            "val_gold_reward": {
                SYSTEM_NAME.get(m, m): {
                    f"{lr:g}": metrics[f"lr-{m}-{lr:g}-s{size.seeds[0]}"]["val"]["gold_reward"] for lr in size.lrs
                }
                for m in methods
            },
        },
        "ppo": ppo_skip_reason(size)
        or "trained (TRL 1.12's PPOTrainer in its own environment, rollouts scored by RM_train; it reads the "
        "prompts only, so its length-3 cell is its length-2 run)",
        "listwise_methods": [m for m in methods if m in LISTWISE] or "not in this version of trl-pro",
        "size": asdict(size),
        "ci_rule": "mean and 95% t-interval over seeds; a difference is 'supported' only when the intervals do "
        "not overlap. The base model is greedy and deterministic: one value, no interval.",
        "compare_methods_available": list(METHODS),
    }


def run_meta(size, started, load_start, metrics) -> dict:
    import torch
    import transformers
    import trl

    import trl_pro

    return {
        "size": size.name,
        "wall_seconds": time.perf_counter() - started,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "trl_pro": getattr(trl_pro, "__version__", "unknown"),
        },
        "runs": len(metrics),
        "run_wall_seconds_total": sum(m.get("wall_seconds", 0.0) for m in metrics.values()),
        "note": "runs finished in an earlier, interrupted invocation keep their own timings (work/runs/*)",
    }


# --------------------------------------------------------------------------------------------------- reports


def _fmt(stat) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _verdict(better, worse) -> str:
    if supported(better, worse):
        return "supported"
    if supported(worse, better):
        return "reversed (supported)"
    return "not supported (intervals overlap)"


def claims(results) -> list[str]:
    e1, e2, e3, e4 = (results[k] for k in ("exp1_table2", "exp2_fig3", "exp3_table5", "exp4_table6"))
    lines = []
    g = "gold_reward"
    for other in ("sft", "rrhf", "coh", "dpo") + (("ppo",) if "ppo@2" in e1 else ()):
        key = {"sft": "best_of_n"}.get(other, other)
        lines.append(
            f"- PRO > {other} at length 2 (Table 2): PRO {_fmt(e1['pro@2'][g])} vs {_fmt(e1[key + '@2'][g])}: "
            f"{_verdict(e1['pro@2'][g], e1[key + '@2'][g])}"
        )
    lines.append(f"- PRO > base at length 2: {_verdict(e1['pro@2'][g], e1['base@2'][g])}")
    last = max(int(k.split("@")[1]) for k in e2 if k.startswith("pro|"))
    for order in ("ascending", "descending", "random"):
        lines.append(
            f"- Longer rankings help PRO, {order} (Fig. 3): length 2 {_fmt(e2[f'pro|{order}@2'][g])} -> {last} "
            f"{_fmt(e2[f'pro|{order}@{last}'][g])}: {_verdict(e2[f'pro|{order}@{last}'][g], e2[f'pro|{order}@2'][g])}"
        )
    lines.append(
        f"- Better candidates help more (length 3, descending vs ascending): {_fmt(e2['pro|descending@3'][g])} vs "
        f"{_fmt(e2['pro|ascending@3'][g])}: {_verdict(e2['pro|descending@3'][g], e2['pro|ascending@3'][g])}"
    )
    for variant in ("no_sft", "no_temperature", "k1_only"):
        lines.append(
            f"- The part that {variant} removes matters (Table 5): PRO {_fmt(e3['pro'][g])} vs {variant} "
            f"{_fmt(e3[variant][g])}: {_verdict(e3['pro'][g], e3[variant][g])}"
        )
    weak, strong = (_verdict(e4[f"{b}|pro_bootstrap"][g], e4[f"{b}|pro"][g]) for b in ("weak", "strong"))
    for base, verdict in (("weak", weak), ("strong", strong)):
        lines.append(
            f"- Self-bootstrapping on the {base} base (Table 6): {_fmt(e4[f'{base}|pro_bootstrap'][g])} vs PRO "
            f"{_fmt(e4[f'{base}|pro'][g])}: {verdict}"
        )
    helps_strong_only = strong == "supported" and weak != "supported"
    lines.append(
        "- Self-bootstrapping helps only with a strong base (Table 6): "
        + ("reproduced" if helps_strong_only else "not reproduced")
        + f" (weak base: {weak}; strong base: {strong})"
    )
    return lines


def _table(rows: dict[str, dict], label: str) -> list[str]:
    lines = [f"| {label} | gold reward (mean [95% CI]) | BLEU (mean [95% CI]) |", "|---|---:|---:|"]
    for key, stat in rows.items():
        lines.append(f"| {key} | {_fmt(stat['gold_reward'])} | {_fmt(stat['bleu'])} |")
    return lines


def report(results) -> str:
    meta, world, lrs = results["meta"], results["world"], results["learning_rates"]
    lines = [
        "# The PRO paper in miniature",
        "",
        f"Size `{meta['size']}`, seeds {results['size']['seeds']}, {meta['runs']} runs, wall time "
        f"{meta['wall_seconds'] / 60:.1f} min, load average {meta['loadavg_start'][0]:.2f} at start / "
        f"{meta['loadavg_end'][0]:.2f} at the end, {meta['hardware']['cpu_count']} CPUs; torch "
        f"{meta['versions']['torch']}, transformers {meta['versions']['transformers']}, trl {meta['versions']['trl']}.",
        "",
        f"World: {world['task']}. RM_train's held-out accuracy against gold: {world['rm_train_heldout_accuracy_vs_gold']:.3f}. "
        "Mean gold reward of each candidate source (train prompts): "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(world["source_mean_gold_reward"].items(), key=lambda kv: kv[1]))
        + ".",
        "",
        f"Learning rates: {lrs['rule']}. Grid {lrs['grid']}; chosen: "
        + ", ".join(f"{k} {v:g}" for k, v in lrs["chosen"].items())
        + ".",
        "",
        results["ci_rule"],
        "",
        f"PPO: {results['ppo']}. List DPO / LiPO: {results['listwise_methods']}.",
        "",
        "## Claims",
        "",
        *claims(results),
        "",
        "## Experiment 1 (Table 2): every method at ranking length 2 and 3 (the best source added)",
        "",
        *_table(results["exp1_table2"], "system@length"),
        "",
        "![exp1](exp1_table2.png)",
        "",
        "## Experiment 2 (Fig. 3): ranking length 2-5, candidates added in ascending / descending / random quality",
        "",
        f"Orders: {world['orders']}.",
        "",
        *_table(results["exp2_fig3"], "method|order@length"),
        "",
        "![exp2](exp2_fig3.png)",
        "",
        "## Experiment 3 (Table 5): ablations at the full ranking (length 5)",
        "",
        *_table(results["exp3_table5"], "variant"),
        "",
        "![exp3](exp3_table5.png)",
        "",
        "## Experiment 4 (Table 6): self-bootstrapping on a weak and a strong base (length 2)",
        "",
        *_table(results["exp4_table6"], "base|system"),
        "",
        "![exp4](exp4_table6.png)",
        "",
        "Gold reward: fraction of positions right, in [0, 1], mean over the held-out test prompts; BLEU: the authors' "
        "character BLEU x 100 against the correct answer.",
    ]
    return "\n".join(lines) + "\n"


def _bars(ax, labels, stats, title):
    means = [s["gold_reward"]["mean"] for s in stats]
    err = [[m - s["gold_reward"]["ci95"][0] for m, s in zip(means, stats)],
           [s["gold_reward"]["ci95"][1] - m for m, s in zip(means, stats)]]  # fmt: skip
    ax.bar(range(len(labels)), means, yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("gold reward (95% CI)")
    ax.set_title(title)


def _save(fig, path: Path) -> None:
    from trl_pro.utils.io import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plots(results, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e1 = results["exp1_table2"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, length in zip(axes, (2, 3)):
        keys = [k for k in e1 if k.endswith(f"@{length}")]
        _bars(ax, [k.split("@")[0] for k in keys], [e1[k] for k in keys], f"Table 2 in miniature: length {length}")
        ax.axhline(e1["base@2"]["gold_reward"]["mean"], color="gray", linestyle="--", linewidth=1)
    _save(fig, output_dir / "exp1_table2.png")
    plt.close(fig)

    e2 = results["exp2_fig3"]
    methods = list(dict.fromkeys(k.split("|")[0] for k in e2))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), sharey=True, squeeze=False)
    base = results["exp1_table2"]["base@2"]["gold_reward"]["mean"]
    for ax, method in zip(axes[0], methods):
        for order in ("ascending", "descending", "random"):
            keys = sorted((k for k in e2 if k.startswith(f"{method}|{order}@")), key=lambda k: int(k.split("@")[1]))
            if not keys:
                continue
            xs = [int(k.split("@")[1]) for k in keys]
            stats = [e2[k]["gold_reward"] for k in keys]
            ax.plot(xs, [st["mean"] for st in stats], marker="o", label=order)
            ax.fill_between(xs, [st["ci95"][0] for st in stats], [st["ci95"][1] for st in stats], alpha=0.15)
        ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="base")
        ax.set_xticks(range(2, 6))
        ax.set_xlabel("ranking length")
        ax.set_title(f"Fig. 3 in miniature: {method}")
    axes[0][0].set_ylabel("gold reward (mean, 95% CI)")
    axes[0][0].legend(fontsize=8)
    _save(fig, output_dir / "exp2_fig3.png")
    plt.close(fig)

    for key, title, name in (
        ("exp3_table5", "Table 5 in miniature: ablations", "exp3_table5.png"),
        ("exp4_table6", "Table 6 in miniature: self-bootstrapping", "exp4_table6.png"),
    ):
        rows = results[key]
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(ax, list(rows), list(rows.values()), title)
        _save(fig, output_dir / name)
        plt.close(fig)


def learning_slice(output_dir: str | os.PathLike, threads: int = 1) -> dict[str, float]:
    """The learning test's slice of the pipeline (tests/benchmarks/test_miniature.py): the base by SFT, RM_train,
    the human pairs ranked by RM_train, then PRO at ranking length 2 with the size's one learning rate at seed 0, as
    the cell `pro@2` of experiment 1. Returns the base's and PRO's test gold reward and RM_train's accuracy."""
    import torch

    torch.set_num_threads(threads)
    mini = Miniature(Path(output_dir), TEST_SIZE, progress=False)
    mini.world = World(mini.work, TEST_SIZE)
    with mini.quiet():
        mini.bases = {"strong": mini.world.sft_model("base_strong", TEST_SIZE.base_steps, noisy=True)}
        mini.rm, mini.rm_accuracy = mini.world.reward_model()
        mini.ranked, _ = mini.world.rankings(mini.bases["strong"], None, mini.rm)
    mini.test_data = mini._test_data()
    base = mini.base_metrics("strong")["test"]["gold_reward"]
    metrics = mini.train_and_eval(Run("pro-pair-s0", "strong", [], "pro", TEST_SIZE.lrs[0], 0))
    return {"base": base, "pro": metrics["test"]["gold_reward"], "rm_accuracy": mini.rm_accuracy}


if __name__ == "__main__":
    main(sys.argv[1:])

"""Python reward functions for evaluation, TRL GRPO style: `f(prompts=[...], completions=[...], **kwargs) -> floats`,
one float per completion. Given as callables (`evaluate_systems(reward_funcs=[f])`) or as dotted import paths
(`trl-pro eval --reward_funcs my_module.my_func`). Each function is a metric of its own, named after the function,
reported as the mean of its raw values (no sigmoid: a rule-based reward has its own scale)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence


RewardFunc = Callable[..., Sequence[float]]

#: Metric names a reward function cannot take (they are the model-based metrics').
RESERVED_NAMES = ("bleu", "sacrebleu", "reward", "n")


def import_reward_func(path: str) -> RewardFunc:
    """The callable at a dotted import path `package.module.function` (the module must be importable: installed, or
    on `sys.path`/`PYTHONPATH`)."""
    module_name, dot, attribute = path.rpartition(".")
    if not dot or not module_name or not attribute:
        raise ValueError(f"--reward_funcs {path!r}: expected a dotted path module.function, e.g. my_rewards.gold")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--reward_funcs {path!r}: cannot import module {module_name!r} ({error})") from None
    func = getattr(module, attribute, None)
    if func is None:
        raise ValueError(f"--reward_funcs {path!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(func):
        raise ValueError(f"--reward_funcs {path!r}: {type(func).__name__} is not callable")
    return func


def reward_func_name(func: RewardFunc) -> str:
    """The metric name of a reward function: its `__name__` (a `functools.partial`: its function's)."""
    name = getattr(func, "__name__", None) or getattr(getattr(func, "func", None), "__name__", None)
    if not name:
        raise ValueError(f"reward function {func!r} has no __name__ to name its metric")
    return name


def resolve_reward_funcs(funcs: Sequence[RewardFunc | str] | None) -> dict[str, RewardFunc]:
    """`{metric name: callable}` from callables and dotted paths; names must differ and not be reserved."""
    resolved: dict[str, RewardFunc] = {}
    for item in funcs or ():
        func = import_reward_func(item) if isinstance(item, str) else item
        if not callable(func):
            raise ValueError(f"reward_funcs: {func!r} is neither callable nor a dotted import path")
        name = reward_func_name(func)
        if name in RESERVED_NAMES:
            raise ValueError(f"reward function {name!r}: the name is taken by a metric ({', '.join(RESERVED_NAMES)})")
        if name in resolved:
            raise ValueError(f"reward functions: two are named {name!r} (metric names must differ)")
        resolved[name] = func
    return resolved


def score_with_reward_func(
    name: str, func: RewardFunc, prompts: Sequence[str], responses: Sequence[str]
) -> list[float]:
    """One float per (prompt, response), checked: as many values as responses, each a finite number."""
    values = func(prompts=list(prompts), completions=list(responses))
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"reward function {name!r} returned {type(values).__name__}, not a list of floats") from None
    if len(values) != len(responses):
        raise ValueError(
            f"reward function {name!r} returned {len(values)} values for {len(responses)} completions "
            "(one float per completion)"
        )
    scores = []
    for index, value in enumerate(values):
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"reward function {name!r}: value {index} is {value!r}, not a number") from None
        if not math.isfinite(score):
            raise ValueError(
                f"reward function {name!r}: value {index} is {score} (must be finite) for {prompts[index]!r}"
            )
        scores.append(score)
    return scores

"""Real reward functions for `tests/evaluation/test_reward_funcs.py`, imported by dotted path as a user's would be."""

import math


def word_count(prompts, completions, **kwargs):
    """Number of words of each completion (a rule-based reward)."""
    return [float(len(completion.split())) for completion in completions]


def too_few(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def not_a_number(prompts, completions, **kwargs):
    return [math.nan for _ in completions]


NOT_CALLABLE = 3

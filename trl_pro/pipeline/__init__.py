"""Building rankings the paper's way: candidates from a policy, an endpoint or vLLM (`generation`), scored by a reward
model (`reward_models`), merged and sorted into rankings (`rankings`); and loading models (`models`)."""

from trl_pro.pipeline.generation import collect_candidates, generate_local, generate_openai
from trl_pro.pipeline.models import load_policy, resolve_model
from trl_pro.pipeline.rankings import build_rankings, dataset_rankings
from trl_pro.pipeline.reward_models import load_reward_model, score_completions


__all__ = [
    "build_rankings",
    "collect_candidates",
    "dataset_rankings",
    "generate_local",
    "generate_openai",
    "load_policy",
    "load_reward_model",
    "resolve_model",
    "score_completions",
]

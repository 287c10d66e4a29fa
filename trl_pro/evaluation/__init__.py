"""Evaluation as the PRO paper reports it: responses generated with the authors' settings (`responses`), BLEU and
reward per HH-RLHF subset (`metrics`, `test_data`), every system of a comparison (`systems`), reports (`report`) and
pairwise judgments (`judges`)."""

from trl_pro.evaluation.judges import LocalJudge, OpenAIJudge, judge_pairs
from trl_pro.evaluation.metrics import authors_bleu, compute_metrics, cut_response
from trl_pro.evaluation.systems import System, evaluate_systems, read_comparison_folder
from trl_pro.evaluation.test_data import load_test_data


__all__ = [
    "LocalJudge",
    "OpenAIJudge",
    "System",
    "authors_bleu",
    "compute_metrics",
    "cut_response",
    "evaluate_systems",
    "judge_pairs",
    "load_test_data",
    "read_comparison_folder",
]

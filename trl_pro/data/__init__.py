"""Ranked data: the accepted formats and their validation (`formats`), tokenization with the one prompt-truncation
rule (`tokenization`), batches and their layout (`collator`, `layout`), Chain-of-Hindsight rows (`coh`) and loading
datasets by name (`loading`)."""

from trl_pro.data.collator import DataCollatorForRanking
from trl_pro.data.formats import detect_format, is_messages, rank, to_ranking
from trl_pro.data.layout import RankingLayout
from trl_pro.data.loading import load_named_dataset
from trl_pro.data.tokenization import resolve_max_prompt_length, tokenize_ranking, truncate_prompt


__all__ = [
    "DataCollatorForRanking",
    "RankingLayout",
    "detect_format",
    "is_messages",
    "load_named_dataset",
    "rank",
    "resolve_max_prompt_length",
    "to_ranking",
    "tokenize_ranking",
    "truncate_prompt",
]

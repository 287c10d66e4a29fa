"""Tokenized rankings for tests of the batch layouts."""

from trl_pro.assets import load_hh_rlhf_slice
from trl_pro.data.formats import rank, to_ranking
from trl_pro.data.tokenization import tokenize_ranking


def hh_ranking_examples(tokenizer, max_length, max_prompt_length, lengths=(2, 4, 3)):
    """Ragged, scored rankings from the vendored HH-RLHF slice, truncated with the trainer's rules."""
    rows = load_hh_rlhf_slice("test").select(range(12))
    examples, row = [], 0
    for i, n in enumerate(lengths):
        completions, scores = [], []
        for j in range(n):  # rejected/chosen of consecutive rows, all answering the first row's prompt
            pair = rows[row + j]
            completions.append(pair["chosen"][-60 - 17 * j :] if j % 2 == 0 else pair["rejected"][-40 - 11 * j :])
            scores.append(float((7 * i + 3 * j) % 5) - 1.5)
        prompt = rows[row]["chosen"][: 300 + 150 * i]
        row += n
        ranking = rank(
            to_ranking({"prompt": prompt, "completions": completions, "scores": scores}, i, "ranked", True), i, None
        )
        tokens = tokenize_ranking(ranking, i, tokenizer, max_length, max_prompt_length)
        examples.append({**tokens, "scores": ranking["scores"], "sft_index": ranking["sft_index"]})
    return examples

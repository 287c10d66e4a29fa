"""A local-LM judge's prompts fit its context: answers too long for `max_position_embeddings` (with the judge's
`max_new_tokens`) are cut at their ends, the instructions and the end of the dialogue kept, and the number of prompts
cut is reported (a warning, each record's `truncated`, judge_results.json/md); transformers has nothing to warn
about."""

import json
import logging
import warnings

import pytest

from trl_pro.evaluation import judges


pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_NEW_TOKENS = 4


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def judge(tiny_policy_dir):
    """A local judge whose every prompt (as the model gets it) is recorded, on a fresh tokenizer: transformers warns
    only once per tokenizer that a text is longer than its `model_max_length`."""
    from trl_pro.pipeline.models import load_policy

    model, tokenizer = load_policy(str(tiny_policy_dir))
    judge = judges.LocalJudge(str(tiny_policy_dir), model=model, tokenizer=tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    judge.input_lengths, judge.user_prompts = [], []
    generate, complete = model.generate, judge.complete

    def recording_generate(**kwargs):
        judge.input_lengths.append(kwargs["input_ids"].shape[1])
        return generate(**kwargs)

    def recording_complete(system_prompt, user_prompt):
        judge.user_prompts.append(user_prompt)
        return complete(system_prompt, user_prompt)

    model.generate, judge.complete = recording_generate, recording_complete
    return judge


def _long(name: str, words: int = 1500) -> str:
    return f"{name} begins here. " + " ".join(f"{name}{i}" for i in range(words))


def test_long_answers_are_cut_to_fit_the_context(judge, tmp_path, caplog):
    import transformers

    context = judge.model.config.max_position_embeddings
    assert context < judge.tokenizer.model_max_length  # the model's limit is the smaller: the one that counts
    question = "\n\nHuman: Which of you writes the longer answer?\n\nAssistant:"
    pairs = [
        judges.Pair(question, "helpful_base", _long("alpha"), _long("beta")),
        judges.Pair("\n\nHuman: hi?\n\nAssistant:", "helpful_base", "short one", "short two"),
    ]

    hf_messages = _Records()
    hf_logger = transformers.utils.logging.get_logger("transformers")  # transformers' loggers do not propagate
    hf_logger.addHandler(hf_messages)
    transformers.utils.logging.warning_once.cache_clear()  # "friendly reminder" of an over-long generation: once
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger=judges.__name__):
            warnings.simplefilter("always")
            records = judges.judge_pairs(judge, pairs, tmp_path, progress=False)
    finally:
        hf_logger.removeHandler(hf_messages)

    # Nothing for transformers to warn about: every prompt, with the new tokens, fits the context
    warned = hf_messages.messages + [str(w.message) for w in caught]
    assert not [m for m in warned if "maximum" in m and "length" in m], warned
    assert len(judge.input_lengths) == 4 and all(n + MAX_NEW_TOKENS <= context for n in judge.input_lengths)
    assert max(judge.input_lengths) > context - MAX_NEW_TOKENS - 20  # the room is used, not wasted

    assert judge.context_length == context

    # The answers lost their ends; the question and the instructions are whole
    for user_prompt, (first, second) in zip(judge.user_prompts[:2], [("alpha", "beta"), ("beta", "alpha")]):
        assert user_prompt.startswith(
            f"[User Question]\n{question.strip()}\n\n[The Start of Assistant A's Answer]\n"
            f"{first} begins here. {first}0 {first}1"
        )
        assert f"[The Start of Assistant B's Answer]\n{second} begins here. {second}0 {second}1" in user_prompt
        assert user_prompt.endswith("[The End of Assistant B's Answer]")
        assert f"{first}1499" not in user_prompt and f"{second}1499" not in user_prompt
        # both answers keep about as much
        a = user_prompt.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
        b = user_prompt.split("[The Start of Assistant B's Answer]")[1].split("[The End")[0]
        assert abs(len(a) - len(b)) < 0.1 * len(a)
    assert judge.user_prompts[2:] == [
        judges.judge_prompt(pairs[1].prompt, "short one", "short two"),
        judges.judge_prompt(pairs[1].prompt, "short two", "short one"),
    ]

    # How many were cut is said: in the log, in each record, in the results files
    assert [r["truncated"] for r in records] == [True, True, False, False]
    assert "2 of 4 judge prompts were too long for the context" in caplog.text
    judges.write_judge_results(judges.summarize(records), records, tmp_path, "alpha", "beta", judge.name)
    assert json.loads((tmp_path / "judge_results.json").read_text())["truncated"] == 2
    assert "2 of 4 judge prompts were too long" in (tmp_path / "judge_results.md").read_text()

    # A rerun finds the cut prompts' answers in the cache
    judge.input_lengths.clear()
    assert judges.judge_pairs(judge, pairs, tmp_path, progress=False) == records and not judge.input_lengths


def test_a_long_dialogue_loses_its_start_not_its_end(judge, tmp_path):
    question = (
        "\n\nHuman: " + _long("earlier", 3000) + "\n\nAssistant: Sure.\n\nHuman: And the last question?\n\nAssistant:"
    )
    records = judges.judge_pairs(
        judge, [judges.Pair(question, "s", _long("alpha"), _long("beta"))], tmp_path, progress=False
    )
    context = judge.model.config.max_position_embeddings
    assert all(n + MAX_NEW_TOKENS <= context for n in judge.input_lengths)
    assert [r["truncated"] for r in records] == [True, True]
    fixed = judge._num_tokens(judge._render(judges.JUDGE_SYSTEM_PROMPT, judges.judge_prompt("", "", "")))
    room = context - MAX_NEW_TOKENS - fixed
    for user_prompt in judge.user_prompts:
        dialogue, answers = user_prompt.split("\n\n[The Start of Assistant A's Answer]")
        assert dialogue.endswith("Human: And the last question?\n\nAssistant:")
        assert "earlier begins here" not in dialogue
        assert judge._num_tokens(answers) > room / 2 - 20  # the answers keep (about) half of the room

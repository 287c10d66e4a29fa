"""`trl_pro.evaluation.judges`: a cached answer holds for the judge that gave it (model, endpoint, token limit, ...)
only, and an endpoint is retried only on errors a retry can cure (connection, 429, 5xx), never on 400 or 401."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trl_pro.evaluation import judges
from trl_pro.utils.io import read_jsonl_cache


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(n=1):
    return [
        judges.Pair(f"\n\nHuman: question {i}?\n\nAssistant:", "harmless_base", f"first {i}", f"second {i}")
        for i in range(n)
    ]


def _completion(content):
    return {
        "id": "chatcmpl-0",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedEndpoint:
    """A real HTTP server on 127.0.0.1 that answers `POST .../chat/completions` with the scripted `(status, body)`
    replies in turn (the last one repeated), and records the JSON of every request."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.requests.append(json.loads(body or b"{}"))
                status, reply = endpoint.replies[min(len(endpoint.requests), len(endpoint.replies)) - 1]
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _error(status, message, kind):
    return status, {"error": {"message": message, "type": kind, "param": None, "code": None}}


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff waits of the judge, recorded instead of slept."""
    waited = []
    monkeypatch.setattr(judges.time, "sleep", waited.append)
    return waited


# ---------------------------------------------------------------------------------------------------------------------
# Cache keys


def test_judge_cache_is_keyed_on_the_max_tokens_of_a_served_model(openai_server, tmp_path):
    def judge(max_tokens):
        return judges.OpenAIJudge(
            openai_server.model,
            openai_server.base_url,
            max_tokens=max_tokens,
            max_retries=1,
            backoff=0.01,
            system_prompt_in_user=True,
        )

    short = judge(2)
    judges.judge_pairs(short, _pairs(1), tmp_path, progress=False)
    assert short.num_requests == 2
    # A higher limit (the answers were cut short) asks again; the old answers are no hits for it
    longer = judge(6)
    judges.judge_pairs(longer, _pairs(1), tmp_path, progress=False)
    assert longer.num_requests == 2 and len(read_jsonl_cache(tmp_path / judges.JUDGMENTS_FILE)) == 4
    # Each judge still finds its own answers
    for again in (judge(2), judge(6)):
        judges.judge_pairs(again, _pairs(1), tmp_path, progress=False)
        assert again.num_requests == 0


def test_judge_cache_is_keyed_on_the_endpoint(tmp_path, sleeps):
    with (
        ScriptedEndpoint([(200, _completion("[[A]]"))]) as one,
        ScriptedEndpoint([(200, _completion("[[B]]"))]) as two,
    ):
        first = judges.judge_pairs(judges.OpenAIJudge("judge", one.base_url), _pairs(1), tmp_path, progress=False)
        second = judges.judge_pairs(judges.OpenAIJudge("judge", two.base_url), _pairs(1), tmp_path, progress=False)
    # Same model name, same prompts: the second endpoint is asked, and its answers decide
    assert len(one.requests) == len(two.requests) == 2
    assert [r["verdict"] for r in first] == ["A", "A"] and [r["verdict"] for r in second] == ["B", "B"]


def test_judge_identity_holds_what_changes_the_answer():
    base = judges.OpenAIJudge("judge", "http://127.0.0.1:1/v1")
    assert (
        base.cache_identity
        == judges.OpenAIJudge("judge", "http://127.0.0.1:1/v1", api_key="other", max_retries=9).cache_identity
    )  # not the key or the retries
    for other in (
        judges.OpenAIJudge("judge2", "http://127.0.0.1:1/v1"),
        judges.OpenAIJudge("judge", "http://127.0.0.1:2/v1"),
        judges.OpenAIJudge("judge", "http://127.0.0.1:1/v1", max_tokens=7),
        judges.OpenAIJudge("judge", "http://127.0.0.1:1/v1", system_prompt_in_user=True),
    ):
        assert other.cache_identity != base.cache_identity


def test_local_judge_cache_is_keyed_on_max_new_tokens_and_dtype(tiny_policy_dir, tmp_path):
    from trl_pro.pipeline.models import load_policy

    model, tokenizer = load_policy(str(tiny_policy_dir))

    def judge(**kwargs):
        return judges.LocalJudge(str(tiny_policy_dir), model=model, tokenizer=tokenizer, **kwargs)

    short = judge(max_new_tokens=2)
    judges.judge_pairs(short, _pairs(1), tmp_path, progress=False)
    longer = judge(max_new_tokens=5)
    judges.judge_pairs(longer, _pairs(1), tmp_path, progress=False)
    assert short.num_requests == longer.num_requests == 2
    assert len(read_jsonl_cache(tmp_path / judges.JUDGMENTS_FILE)) == 4
    again = judge(max_new_tokens=2)
    judges.judge_pairs(again, _pairs(1), tmp_path, progress=False)
    assert again.num_requests == 0
    assert judge(max_new_tokens=2, dtype="bfloat16").cache_identity != again.cache_identity


def test_local_judge_cache_is_keyed_on_the_weights(tiny_policy_dir, tmp_path):
    import shutil

    from trl_pro.assets import build_tiny_llama

    model_dir = tmp_path / "judge"
    shutil.copytree(tiny_policy_dir, model_dir)
    identity = judges.LocalJudge(str(model_dir), max_new_tokens=2).cache_identity
    build_tiny_llama(seed=1).save_pretrained(model_dir)  # "retrained" into the same folder
    assert judges.LocalJudge(str(model_dir), max_new_tokens=2).cache_identity != identity


# ---------------------------------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize(
    "reply",
    [
        _error(401, "Incorrect API key provided", "invalid_request_error"),
        _error(400, "max_tokens is too large", "invalid_request_error"),
    ],
    ids=["401", "400"],
)
def test_request_errors_are_not_retried(reply, tmp_path, sleeps):
    with ScriptedEndpoint([reply]) as endpoint:
        judge = judges.OpenAIJudge("judge", endpoint.base_url, max_retries=3, backoff=0.01)
        with pytest.raises(judges.JudgeError) as caught:
            judges.judge_pairs(judge, _pairs(1), tmp_path, progress=False)
    assert len(endpoint.requests) == 1 and judge.num_requests == 1 and not sleeps
    message = str(caught.value)
    assert "pair 0" in message and "not retried" in message and str(reply[0]) in message
    assert reply[1]["error"]["message"] in message
    assert not read_jsonl_cache(tmp_path / judges.JUDGMENTS_FILE)


def test_server_errors_are_retried_with_backoff(tmp_path, sleeps):
    replies = [
        _error(503, "overloaded", "server_error"),
        _error(429, "slow down", "rate_limit"),
        (200, _completion("Better. [[A]]")),
    ]
    with ScriptedEndpoint(replies) as endpoint:
        judge = judges.OpenAIJudge("judge", endpoint.base_url, max_retries=3, backoff=0.5)
        assert judge.complete("system", "user") == "Better. [[A]]"
    assert len(endpoint.requests) == judge.num_requests == 3 and sleeps == [0.5, 1.0]
    assert endpoint.requests[0]["messages"][-1] == {"role": "user", "content": "user"}


def test_server_errors_past_the_retries_name_the_endpoint(tmp_path, sleeps):
    with ScriptedEndpoint([_error(500, "boom", "server_error")]) as endpoint:
        judge = judges.OpenAIJudge("judge", endpoint.base_url, max_retries=2, backoff=0.01)
        with pytest.raises(judges.JudgeError, match=r"failed 3 times \(last: InternalServerError: .*boom"):
            judge.complete("system", "user")
    assert len(endpoint.requests) == 3 and len(sleeps) == 2

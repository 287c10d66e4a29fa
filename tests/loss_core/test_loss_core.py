"""The loss core's public API (`ranking_loss_from_hidden`): dispatch, errors, gradcheck, memory, import without Triton."""

import os
import subprocess
import sys
import textwrap

import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from trl_pro.loss_core.common import TileConfig  # noqa: E402
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden  # noqa: E402
from trl_pro.loss_core.fused import (  # noqa: E402
    FusedRankingLossFunction,
    fused_ranking_loss,
    resolve_implementation,  # noqa: E402
)
from trl_pro.loss_core.reference import eager_ranking_loss_from_hidden  # noqa: E402


sys.path.insert(0, os.path.dirname(__file__))
from test_kernels import DEVICE, assert_close, make_case, run  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kwargs():
    return dict(sft_weight=torch.tensor([0.2, 1.0, 0.05]), sft_loss_reduction="sum", rank_loss_terms="all")


def _case(dtype=torch.float32, **kwargs):
    return make_case([3, 2, 4], [2, 5, 1, 3, 3, 1, 2, 6, 1], 32, 257, dtype, rewards="distinct", seed=11, **kwargs)


@pytest.mark.parametrize("implementation", ["auto", "torch", "triton", "trl"])
def test_pro_loss_from_hidden_implementations(implementation):
    """Every implementation of the public entry point gives the reference's loss, outputs and gradients."""
    if implementation == "triton":
        pytest.importorskip("triton")
    case = _case()
    args = (case["hidden"], case["weight"], case["bias"], case["targets"], case["layout"], case["rewards"])
    out = ranking_loss_from_hidden(*args, implementation=implementation, **_kwargs())
    out.loss.backward()
    grads = [case[k].grad.clone() for k in ("hidden", "weight", "bias")]
    ref, ref_grads = run(case, "reference", **_kwargs())
    rtol = 1e-4 if implementation == "trl" else 1e-5  # TRL's kernel folds logits in its own order
    for name in ("loss", "scores", "rank_terms", "sft_nll"):
        assert_close(getattr(out, name), getattr(ref, name), rtol, name)
    for g, name in zip(grads, ("hidden", "weight", "bias")):
        assert_close(g, ref_grads[name], rtol, name)


def test_auto_resolution():
    assert resolve_implementation("auto", torch.device("cpu")) == "torch"
    assert resolve_implementation("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="implementation must be one of"):
        resolve_implementation("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="only available through"):
        resolve_implementation("trl", torch.device("cpu"))


def test_argument_errors():
    case = _case()
    args = (case["hidden"], case["weight"], case["bias"], case["targets"], case["layout"])
    with pytest.raises(ValueError, match="sft_loss_reduction"):
        ranking_loss_from_hidden(*args, sft_loss_reduction="avg")
    with pytest.raises(ValueError, match="rank_loss_terms"):
        ranking_loss_from_hidden(*args, rank_loss_terms="last")
    with pytest.raises(ValueError, match="tokens"):
        ranking_loss_from_hidden(case["hidden"][1:], *args[1:3], case["targets"][1:], args[4])


def _run_python(code: str, env_update: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_update}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


_SNIPPET = textwrap.dedent(
    """
    import torch
    from trl_pro.loss_core import ranking_loss_from_hidden
    from trl_pro.data.layout import RankingLayout
    layout = RankingLayout(torch.tensor([0, 2, 3, 5]), torch.tensor([0, 3]), torch.tensor([0]))
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    pytest.importorskip("triton")
    code = _SNIPPET + textwrap.dedent(
        """
    ranking_loss_from_hidden(hidden, weight, None, targets, layout, implementation="auto").loss.backward()  # torch
    try:
        ranking_loss_from_hidden(hidden, weight, None, targets, layout, implementation="triton")
    except RuntimeError as error:
        assert "TRITON_INTERPRET=1" in str(error), error
        print("CLEAR ERROR")
    """
    )
    result = _run_python(code, {"TRITON_INTERPRET": "0"})
    assert "CLEAR ERROR" in result.stdout, result.stderr[-3000:]


def test_import_and_torch_path_without_triton():
    """Triton is an optional extra: trl_pro imports and trains on the torch path when it is missing."""
    blocker = """
    import sys
    sys.modules["triton"] = None  # `import triton` fails, importlib.util.find_spec("triton") is None
    import trl_pro, trl_pro.loss_core
    """
    code = (
        textwrap.dedent(blocker)
        + _SNIPPET
        + textwrap.dedent(
            """
    for implementation in ("auto", "torch"):
        ranking_loss_from_hidden(hidden, weight, None, targets, layout, implementation=implementation).loss.backward()
    try:
        ranking_loss_from_hidden(hidden, weight, None, targets, layout, implementation="triton")
    except ImportError as error:
        assert "Triton" in str(error)
        print("NO TRITON OK")
    assert not any(name == "triton" or name.startswith("triton.") for name, m in sys.modules.items() if m)
    """
        )
    )
    result = _run_python(code, {})
    assert "NO TRITON OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("rank_loss_terms", ["all", "first"])
def test_gradcheck_torch_twin(rank_loss_terms):
    """float64 gradcheck of the torch twin's custom backward, with chunks smaller than the data on both axes."""
    case = make_case([3, 2], [2, 1, 3, 2, 1], 4, 7, torch.float64, rewards="distinct", seed=12)
    tiles = TileConfig(token_chunk=3, vocab_chunk=3)
    layout, targets, rewards = case["layout"], case["targets"], case["rewards"]

    def loss(hidden, weight, bias):
        return fused_ranking_loss(
            hidden,
            weight,
            bias,
            targets,
            layout,
            rewards,
            sft_weight=torch.tensor([0.3, 0.7]),
            sft_loss_reduction="mean",
            rank_loss_terms=rank_loss_terms,
            implementation="torch",
            tiles=tiles,
        ).loss

    assert torch.autograd.gradcheck(loss, (case["hidden"], case["weight"], case["bias"]))


@pytest.mark.parametrize("implementation", ["torch", "triton"])
def test_autocast_mixed_dtypes(implementation):
    """fp32 master weights under bf16 autocast: GEMM operands in bf16, gradients in the parameters' dtype."""
    if implementation == "triton":
        pytest.importorskip("triton")
    case = _case(torch.float32)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out, grads = run(case, implementation, **_kwargs())
    assert all(g.dtype == torch.float32 for g in grads.values())
    # Reference: the same bf16-rounded operands, upcast
    rounded = {k: case[k].detach().to(torch.bfloat16).requires_grad_() for k in ("hidden", "weight")}
    ref = eager_ranking_loss_from_hidden(
        rounded["hidden"],
        rounded["weight"],
        case["bias"],
        case["targets"],
        case["layout"],
        case["rewards"],
        **_kwargs(),
    )
    assert_close(out.loss, ref.loss, 1e-5, "loss")
    assert_close(out.scores, ref.scores, 1e-5, "scores")
    ref.loss.backward()
    assert_close(grads["hidden"], rounded["hidden"].grad, 2e-2, "grad hidden")
    assert_close(grads["weight"], rounded["weight"].grad, 2e-2, "grad weight")


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any torch op produces (the Triton interpreter's host copies included)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("implementation", ["torch", "triton"])
def test_no_tokens_by_vocab_tensor(implementation):
    """No [T, V] tensor: the largest temporary is one chunk, and the saved-for-backward tensors are O(T)."""
    if implementation == "triton":
        pytest.importorskip("triton")
    case = make_case([4, 4], [9] * 8, 16, 1000, torch.float32, rewards="distinct", seed=13)  # T = 72, V = 1000
    num_tokens, vocab, hidden_size = 72, 1000, 16
    tiles = TileConfig(block_t=16, block_v=32, block_h=16, token_chunk=16, vocab_chunk=128, segment_block=8)
    args = (case["hidden"], case["weight"], case["bias"], case["targets"], case["layout"], case["rewards"])
    with _LargestTensor() as mode:
        out = fused_ranking_loss(*args, sft_weight=0.1, implementation=implementation, tiles=tiles)
        saved = out.loss.grad_fn.saved_tensors
        out.loss.backward()
    # The inputs and their gradients (V x H fp32) are the largest tensors; a chunk is 16 x 128; T x V would be 72000
    assert mode.largest <= 4 * max(vocab * hidden_size, 16 * 128) < 4 * num_tokens * vocab
    inputs = {id(case[k]) for k in ("hidden", "weight", "bias")} | {id(case["targets"])}
    others = [t for t in saved if t is not None and id(t) not in inputs]
    assert others and all(t.numel() <= num_tokens for t in others)
    assert type(out.loss.grad_fn).__name__ == FusedRankingLossFunction.__name__ + "Backward"


def test_trl_baseline_and_fused_agree_on_frozen_head():
    """The frozen-head path (hidden grads only) of the fused core matches the "trl" baseline."""
    case = _case(torch.bfloat16)
    case["weight"].requires_grad_(False)
    case["bias"].requires_grad_(False)
    args = (case["hidden"], case["weight"], case["bias"], case["targets"], case["layout"], case["rewards"])
    grads = []
    for implementation in ("trl", "torch"):
        case["hidden"].grad = None
        out = ranking_loss_from_hidden(*args, implementation=implementation, **_kwargs())
        out.loss.backward()
        grads.append((out.loss.detach(), case["hidden"].grad.clone()))
    # TRL rounds its logits tiles to bf16 in the forward; the fused core keeps them in fp32
    assert_close(grads[1][0], grads[0][0], 2e-2, "loss")
    assert_close(grads[1][1], grads[0][1], 5e-2, "grad hidden")

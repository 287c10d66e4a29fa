import os

import pytest
import torch
from helpers.baseline_data import last_exchange_pairs


# No test may reach a hub: everything is built locally
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
# Without a GPU, Triton kernels run (and are tested) in Triton's interpreter on CPU tensors. Set before anything
# imports triton: `@triton.jit` reads it when it decorates. With a GPU, kernels are compiled and run for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist (README's `-n 2`), one torch thread per worker: two workers of two threads each on two cores
# spin against each other and run slower than one worker alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Every test of `transformers serve` on one xdist worker (`--dist loadgroup`): one server per session. The
    `slow` and `multiprocess` tests first (a stable sort): under xdist the longest start early, so that the run does
    not end with one worker finishing a minute-long test while the other idles."""
    for item in items:
        if "openai_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("openai_server"))
    items.sort(
        key=lambda item: item.get_closest_marker("slow") is None and item.get_closest_marker("multiprocess") is None
    )


@pytest.fixture(scope="session")
def tokenizer():
    from trl_pro.assets import load_tiny_tokenizer

    return load_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    from trl_pro.assets import build_tiny_llama

    return build_tiny_llama(seed=0)


@pytest.fixture
def make_config(tmp_path):
    """PROConfig (or `config_class`, e.g. RRHFConfig) for fast, exact CPU tests (fp32, no checkpointing, no saving,
    no reporting). Everything else is the user's default, the shared-prompt layout (`shared_prompt="auto"`) included;
    a test that depends on the layout is parametrized over `shared_prompt` with the `layout` fixture."""
    from trl_pro.trainers.pro_config import PROConfig

    def make(config_class=PROConfig, **overrides):
        kwargs = dict(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            max_steps=3,
            learning_rate=1e-3,
            logging_steps=1,
            bf16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            max_length=128,
            max_prompt_length=64,
        )
        kwargs.update(overrides)
        return config_class(**kwargs)

    return make


# ----------------------------------------------------------------------------------------------------------------------
# Session fixtures shared by the ranking, generation, evaluation and baseline tests: real (tiny) models saved to disk,
# so that every `from_pretrained` path is exercised, and a real OpenAI-compatible server.


@pytest.fixture(params=["auto", False], ids=["shared_prompt", "plain"])
def layout(request):
    """`shared_prompt` for a test whose behaviour depends on the layout: the default ("auto", the shared-prompt layout
    on sdpa/eager) and the plain layout (one row per candidate)."""
    return request.param


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A directory holding the tiny Llama (seed 0) and the tiny tokenizer, written with `save_pretrained`."""
    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_policy")
    build_tiny_llama(seed=0).save_pretrained(path)
    load_tiny_tokenizer().save_pretrained(path)
    return path


def _train_tiny_reward_model(output_dir):
    """A tiny Llama sequence classifier (one score) trained with TRL's RewardTrainer on the vendored HH-RLHF train
    slice, saved with its tokenizer. Two epochs: enough for its scores to agree with the human labels more often
    than chance on the test slice (checked in tests/test_reward_models.py)."""
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from trl_pro.assets import load_hh_rlhf_slice, load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    config = tiny_llama_config(len(tokenizer), num_labels=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config).to(torch.float32)
    args = RewardConfig(
        output_dir=str(output_dir / "run"),
        per_device_train_batch_size=32,
        num_train_epochs=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_length=128,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=last_exchange_pairs(load_hh_rlhf_slice("train")),
        processing_class=tokenizer,
    )
    # One thread: for a model this small more threads barely help, and on a busy machine spinning OpenMP threads
    # make the run several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory):
    """A directory holding a tiny reward model trained in this session (see `_train_tiny_reward_model`)."""
    path = tmp_path_factory.mktemp("tiny_reward_model")
    _train_tiny_reward_model(path)
    return path


class OpenAIServer:
    """A running `transformers serve` process: `base_url` (ends in /v1) and the `model` name to request."""

    def __init__(self, process, base_url: str, model: str):
        self.process, self.base_url, self.model = process, base_url, model


@pytest.fixture(scope="session")
def openai_server(tiny_policy_dir):
    """`transformers serve` (transformers' own OpenAI-compatible server) on 127.0.0.1 and a free port, pinned to the
    tiny policy directory on CPU; stopped (its whole process group) at the end of the session."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = shutil.which("transformers")
    command = [executable] if executable else [sys.executable, "-m", "transformers.cli.transformers"]
    model = str(tiny_policy_dir)
    command += [
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--log-level",
        "warning",
        "--default-seed",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = tiny_policy_dir.parent / f"serve_{port}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                log.flush()
                pytest.fail(f"`transformers serve` exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`transformers serve` did not answer in 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield OpenAIServer(process, f"{base}/v1", model)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


# Property tests (tests/test_properties.py): in CI (CI=true) hypothesis draws the same examples on every run, so a
# submission is judged on a fixed set; locally each run explores new examples (and keeps failures in .hypothesis/)
from hypothesis import settings as _hypothesis_settings  # noqa: E402


_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test. Generation with a tiny model is dominated by per-step overhead; on a busy
    machine several OpenMP threads spinning against each other make it many times slower, one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

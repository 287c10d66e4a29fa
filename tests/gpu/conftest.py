"""The GPU tier: tests marked `gpu` run where CUDA is available and are skipped with the reason "needs CUDA" elsewhere,
so the CPU CI stays green; on a GPU machine `python -m pytest -m gpu` (or `python -m pytest tests/gpu`) runs them all.

Every test module here sets `pytestmark = pytest.mark.gpu`; `pytest_collection_modifyitems` below also marks any test
of this folder that lacks it, and skips them all without CUDA. On a GPU, tests/conftest.py does not set
`TRITON_INTERPRET`, so the Triton kernels are compiled and run for real (test_kernels_gpu.py checks it).

What the tier covers (one process, one GPU):
- test_kernels_gpu.py: the compiled Triton token-level and PRO ranking kernels, and RRHF's objective on the Triton
  token level, against the torch path and the eager [T, V] reference: real vocabularies (32003, 151936), hidden size
  4096, ragged rankings of up to 8 candidates, frozen and trainable LM heads, fp32 / bf16 / fp16.
- test_trainers_gpu.py: one PRO and one RRHF trainer step with loss_implementation="triton" equal to "torch", and a
  bf16 (autocast) trainer step.
- test_shared_prompt_gpu.py: the shared-prompt layout with sdpa and flex_attention against the plain layout.
- test_qlora_gpu.py: a QLoRA step (bitsandbytes NF4 base, LoRA adapters).
- test_memory_gpu.py: no fp32 [T, V] buffer under bf16 autocast (peak CUDA memory around the loss core).

Out of reach here: several processes (DDP, FSDP2, DeepSpeed ZeRO across GPUs). They need one GPU per rank: NCCL
rejects two ranks on the same device ("Duplicate GPU detected"), and ranks sharing one GPU would not be the setup users
run anyway. So this tier has no multi-process test; those paths stay covered on CPU (gloo) by
tests/trainers/test_multiprocess.py and tests/trainers/test_fsdp2.py, and a multi-GPU machine is needed to run them
on GPUs.
"""

from pathlib import Path

import pytest
import torch


HERE = Path(__file__).resolve().parent
MARKER = "gpu: needs CUDA; run with pytest -m gpu on a GPU machine"


def pytest_configure(config):
    # Also registered here, so that `-m gpu` and --strict-markers work before pyproject.toml lists the marker
    config.addinivalue_line("markers", MARKER)


def pytest_collection_modifyitems(config, items):
    # This hook sees every item of the session: only this folder's tests are touched
    skip = pytest.mark.skip(reason="needs CUDA")
    cuda = torch.cuda.is_available()
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        if item.get_closest_marker("gpu") is None:
            item.add_marker(pytest.mark.gpu)
        if not cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 matmuls in IEEE precision (torch's default), which the fp32 tolerances of this tier assume: turned off for
    the test if something turned TF32 on, and restored after. Read through the legacy flag, as the Triton loss core
    reads it (`token_logprob._input_precision`)."""
    if not torch.cuda.is_available() or not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True

"""FSDP2: two CPU ranks (gloo) running the trainer's recorded PRO forward on a `fully_shard`-ed tiny Llama give the loss,
scores and gradients of the unsharded model, whether FSDP unsharded the LM head before the forward (head in the root
unit) or the loss head has to gather a still-sharded DTensor head itself (head in its own unit)."""

import socket
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers.launching import run_launcher

from trl_pro.trainers.pro_trainer import PROTrainer


pytestmark = pytest.mark.multiprocess
WORKER = Path(__file__).resolve().parents[1] / "helpers" / "fsdp2_worker.py"


@pytest.mark.parametrize(("head_unit", "head_type"), [("root", "Parameter"), ("own", "DTensor")])
def test_fsdp2_sharded_model_matches_unsharded(head_unit, head_type, tokenizer, make_config, tmp_path):
    from trl_pro.assets import build_tiny_llama

    rows = [
        {"prompt": "Q: name a fruit.\nA:", "completions": [" apple", " a red car", " no"], "scores": [2.0, 0.5, -1.0]},
        {"prompt": "Q: two plus two?\nA:", "completions": [" four", " five"], "scores": [1.0, 0.0]},
    ]
    trainer = PROTrainer(
        build_tiny_llama(0), args=make_config(), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    recorded = {}
    patched_forward = trainer.model.forward

    def recording_forward(**kwargs):
        recorded.update(kwargs)
        return patched_forward(**kwargs)

    trainer.model.forward = recording_forward
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    loss, output = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    loss.backward()
    expected_grads = {name: p.grad for name, p in trainer.model.named_parameters()}
    torch.save({"seed": 0, "forward_kwargs": recorded}, tmp_path / "recorded.pt")

    with socket.socket() as free:  # a free local port for the ranks' rendezvous
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    run_launcher(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(WORKER),
            str(tmp_path / "recorded.pt"),
            str(tmp_path / "result.pt"),
            head_unit,
        ],
        timeout=180,
    )

    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert result["head_types"] == [head_type]
    torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["scores"], output.scores, rtol=1e-5, atol=1e-6)
    assert result["grads"].keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)

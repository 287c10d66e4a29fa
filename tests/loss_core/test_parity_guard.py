"""`loss_implementation="auto"` runs the Triton core on a device and dtype only once a probe matched the torch path
there. On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by conftest), so "auto" is made
to consider Triton for CPU tensors here."""

import dataclasses
import warnings

import pytest
import torch
from datasets import Dataset

from trl_pro.loss_core import fused, parity
from trl_pro.loss_core.fused import fused_ranking_loss


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """ "auto" considers Triton for CPU tensors, and no probe has run yet."""
    entries = tuple(
        dataclasses.replace(entry, auto=lambda device: True) if entry.name == "triton" else entry
        for entry in fused.LOSS_IMPLEMENTATIONS
    )
    monkeypatch.setattr(fused, "LOSS_IMPLEMENTATIONS", entries)
    monkeypatch.setattr(parity, "_VERDICTS", {})


def _auto_implementation():
    hidden, weight, targets, layout, rewards = parity._probe_batch(torch.device("cpu"), torch.float32)
    return fused_ranking_loss(hidden, weight, None, targets, layout, rewards, implementation="auto").implementation


def test_probe_matches_and_auto_runs_triton(triton_on_cpu):
    assert parity.probe_difference(fused_ranking_loss, torch.device("cpu"), torch.float32) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _auto_implementation() == "triton"


def test_a_mismatch_warns_once_and_auto_runs_torch(triton_on_cpu, monkeypatch):
    monkeypatch.setitem(parity.PROBE_RTOL, torch.float32, -1.0)  # any difference is too much
    with pytest.warns(UserWarning, match=r"on cpu in torch.float32 differs from the torch path by .* torch path runs"):
        assert _auto_implementation() == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per device and dtype: no second probe, no second warning
        assert _auto_implementation() == "torch"


def test_a_kernel_that_fails_to_compile_sends_auto_to_torch(triton_on_cpu, monkeypatch):
    from trl_pro.loss_core.triton import token_logprob

    def does_not_compile(*args, **kwargs):
        raise RuntimeError("CompilationError: at 12:4: unsupported on this device")

    monkeypatch.setattr(token_logprob, "token_forward", does_not_compile)
    with pytest.warns(UserWarning, match=r"failed: RuntimeError: CompilationError"):
        assert _auto_implementation() == "torch"


def test_an_explicit_triton_request_is_not_guarded(triton_on_cpu, monkeypatch):
    from trl_pro.loss_core.triton import token_logprob

    monkeypatch.setitem(parity.PROBE_RTOL, torch.float32, -1.0)
    hidden, weight, targets, layout, rewards = parity._probe_batch(torch.device("cpu"), torch.float32)
    out = fused_ranking_loss(hidden, weight, None, targets, layout, rewards, implementation="triton")
    assert out.implementation == "triton" and not parity._VERDICTS

    monkeypatch.setattr(token_logprob, "token_forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # loudly, as asked
        fused_ranking_loss(hidden, weight, None, targets, layout, rewards, implementation="triton")


def test_the_trainer_records_the_path_that_ran(tokenizer, tiny_model, make_config, caplog, tmp_path):
    from trl_pro.trainers.pro_trainer import PROTrainer

    rows = [{"prompt": f"Q{i}:", "completions": [" good", " bad"], "scores": [1.0, 0.0]} for i in range(4)]
    trainer = PROTrainer(
        tiny_model, args=make_config(max_steps=1), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    with caplog.at_level("INFO", logger="trl_pro.trainers.ranking_trainer"):
        trainer.train()
    assert trainer.loss_implementation_used == "torch"  # "auto" on CPU
    assert "loss-core-torch" in trainer.model.model_tags
    assert any("Loss core: the torch implementation" in record.getMessage() for record in caplog.records)
    trainer.create_model_card(model_name="tiny")
    assert "loss-core-torch" in (tmp_path / "out" / "README.md").read_text()

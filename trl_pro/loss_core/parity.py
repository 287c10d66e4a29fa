"""The parity guard of `implementation="auto"`: the Triton core is used for a device and dtype only once it has
matched the torch path there.

Before "auto" first runs the Triton kernels for a (device, dtype), a probe computes the loss and every gradient of a
small random ranking batch (ragged rankings, rewards, an SFT term, a vocabulary that is no multiple of a tile) with
both implementations, in that dtype, in milliseconds. If the kernels fail to compile or run, or the results differ
beyond `PROBE_RTOL`, one warning names the device, the dtype and the difference, and the torch path runs for the rest
of the run. `implementation="triton"` is never guarded: the user asked for it, so it fails loudly.

The tolerances are loose on purpose: the two paths sum in other orders (and Triton uses TF32 for fp32 operands), which
moves results by far less than these bounds, while a wrong kernel (a sign, a mask, an offset) moves them by O(1).
"""

from __future__ import annotations

import logging
import warnings

import torch

from trl_pro.data.layout import RankingLayout


logger = logging.getLogger(__name__)

#: Largest |triton - torch| allowed, relative to max |torch|, per compute dtype, for the loss and each gradient.
PROBE_RTOL = {torch.float32: 5e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}

#: (device, dtype) -> the implementation "auto" runs there, once probed.
_VERDICTS: dict[tuple[str, torch.dtype], str] = {}


def _probe_batch(device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    ranking_lengths, hidden_size, vocab = [2, 3, 4], 64, 331  # 331: no tile divides it
    counts = torch.randint(2, 7, (sum(ranking_lengths),), generator=generator)
    token_offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    ranking_offsets = torch.tensor([0, *torch.tensor(ranking_lengths).cumsum(0).tolist()])
    layout = RankingLayout(token_offsets, ranking_offsets, ranking_offsets[:-1].clone()).to(device)
    num_tokens = int(token_offsets[-1])
    hidden = torch.randn(num_tokens, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5
    targets = torch.randint(0, vocab, (num_tokens,), generator=generator)
    rewards = torch.cat([torch.arange(n, 0, -1, dtype=torch.float32) for n in ranking_lengths])
    return (hidden.to(device, dtype), weight.to(device, dtype), targets.to(device), layout, rewards.to(device))


def probe_difference(fused_ranking_loss, device: torch.device, dtype: torch.dtype) -> float:
    """The largest difference between the Triton and torch paths of `fused_ranking_loss` over the probe's loss and
    gradients, relative to the torch path's largest magnitude (for the loss and each gradient). Raises what the
    Triton kernels raise."""
    hidden, weight, targets, layout, rewards = _probe_batch(device, dtype)
    results = {}
    for implementation in ("torch", "triton"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        output = fused_ranking_loss(
            h, w, None, targets, layout, rewards, sft_weight=0.1, implementation=implementation
        )
        output.loss.backward()
        results[implementation] = (output.loss.detach(), h.grad, w.grad)
    difference = 0.0
    for triton_value, torch_value in zip(results["triton"], results["torch"]):
        scale = max(torch_value.abs().max().item(), 1e-30)
        error = (triton_value.float() - torch_value.float()).abs().max().item()
        difference = max(difference, error / scale if error == error else float("inf"))  # NaN: no match
    return difference


def triton_matches_torch(fused_ranking_loss, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether "auto" may run the Triton core of `fused_ranking_loss` on `device` in `dtype`: probed once per
    (device, dtype) and run; a failure or a mismatch warns once and sends "auto" to the torch path there."""
    key = (str(device), dtype)
    if key not in _VERDICTS:
        tolerance = PROBE_RTOL.get(dtype, PROBE_RTOL[torch.float32])
        try:
            difference = probe_difference(fused_ranking_loss, device, dtype)
            problem = (
                None
                if difference <= tolerance
                else (f"differs from the torch path by {difference:.3g} (relative; tolerance {tolerance:g})")
            )
        except Exception as error:  # a kernel that does not compile or run on this device: any error, by design
            problem = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if problem is None:
            logger.info(
                f"loss_implementation='auto': the Triton loss core matches the torch path on {device} in "
                f"{dtype} (relative difference {difference:.3g}); using it"
            )
        else:
            warnings.warn(
                f"loss_implementation='auto': the Triton loss core on {device} in {dtype} {problem}; the "
                "torch path runs instead for the rest of the run (loss_implementation='triton' would "
                "use the kernels anyway)",
                stacklevel=2,
            )
        _VERDICTS[key] = "triton" if problem is None else "torch"
    return _VERDICTS[key] == "triton"

"""One rank of `tests/test_fsdp2.py`: the tiny Llama sharded with FSDP2 (`fully_shard`, gloo, CPU) runs the PRO forward
the trainer recorded and saves the loss, the scores and the full gradients (rank 0).

`head_unit` says where the LM head is sharded: "root" (with the embeddings in the root unit, as accelerate's
transformer-layer wrap policy does: FSDP unsharded it before the forward) or "own" (its own unit, whose forward the PRO
path never calls: the head is still a sharded DTensor when the loss head reads it, and must gather it).

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_worker.py recorded.pt result.pt root|own
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from trl_pro.assets import build_tiny_llama
from trl_pro.loss_core.head import add_ranking_loss_head


def main(recorded_path: str, result_path: str, head_unit: str) -> None:
    dist.init_process_group("gloo")
    recorded = torch.load(recorded_path, weights_only=False)
    model = build_tiny_llama(recorded["seed"])
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    if head_unit == "own":
        fully_shard(model.get_output_embeddings(), mesh=mesh)
    fully_shard(model, mesh=mesh)
    add_ranking_loss_head(model)
    head_types = []  # what the loss head finds when it runs (hooks run after FSDP's own pre-forward unshard)
    model.register_forward_pre_hook(
        lambda module, args: head_types.append(type(module.get_output_embeddings().weight).__name__)
    )

    output = model(**recorded["forward_kwargs"])
    output.loss.backward()
    # full_tensor is a collective: every rank gathers, rank 0 saves
    grads = {
        name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for name, p in model.named_parameters()
    }
    if dist.get_rank() == 0:
        torch.save(
            {"loss": output.loss.detach(), "scores": output.scores, "grads": grads, "head_types": head_types},
            result_path,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Loss and gradients of one fixed global batch, split over however many processes run this script.

    accelerate launch --num_processes 2 --cpu tests/distributed_check.py OUT.safetensors
    python tests/distributed_check.py OUT.safetensors

Each process takes its shard of the same global batch. The main process writes, per objective, the global loss
(the mean of the local losses) and every parameter gradient after DDP's averaging, so tests can compare a
2-process run against a 1-process run with the whole batch (design.md §4). With ``--no-gather`` the objectives
skip the all-gather (a negative control the test uses to show the comparison can fail).
"""
import sys

import safetensors.torch
import torch
from accelerate import Accelerator

import hybridzoo
import hybridzoo.losses
from hybridzoo.losses import ContrastiveObjective
from hybridzoo.training import ContrastiveLearner

GLOBAL_BATCH = 8
# (objective, head): every objective on a geometry it is meant for. A LayerNorm backbone (test_vit) and an MLP
# without batch norm: batch statistics would legitimately differ between one batch of 2B and two batches of B.
SETUPS = [("simclr", "lorentz"), ("supcon", "product"), ("hybrid", "hybrid")]


def run(accelerator: Accelerator, objective_name: str, head: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = hybridzoo.create_model("test_vit", head=head, backbone_kwargs={"img_size": 32}, batch_norm=False,
                                   hidden_dim=32)
    geometry = model.geometry
    names = [f.name for f in geometry.factors] if hasattr(geometry, "factors") else [geometry.name]
    objective = ContrastiveObjective(objective_name, temperature=0.2, learn_temperature=True,
                                     num_factors=len(names), factor_names=names)
    learner = accelerator.prepare(ContrastiveLearner(model, objective))
    generator = torch.Generator().manual_seed(1)
    view1 = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    view2 = view1 + 0.1 * torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 3, 2])
    shard = slice(accelerator.process_index * GLOBAL_BATCH // accelerator.num_processes,
                  (accelerator.process_index + 1) * GLOBAL_BATCH // accelerator.num_processes)
    loss, _, _ = learner(view1[shard], view2[shard], labels[shard])
    accelerator.backward(loss)
    global_loss = accelerator.gather(loss.detach()[None]).mean()
    unwrapped = accelerator.unwrap_model(learner)
    result = {f"{objective_name}/loss": global_loss}
    result.update({f"{objective_name}/grad/{name}": p.grad.detach().clone()
                   for name, p in unwrapped.named_parameters() if p.grad is not None})
    return result


def main(out: str, no_gather: bool) -> None:
    if no_gather:
        hybridzoo.losses.gather_with_grad = lambda x: (x, 0)
    accelerator = Accelerator(cpu=True)
    results = {}
    for objective_name, head in SETUPS:
        results.update(run(accelerator, objective_name, head))
    if accelerator.is_main_process:
        safetensors.torch.save_file({k: v.contiguous() for k, v in results.items()}, out,
                                    metadata={"num_processes": str(accelerator.num_processes)})
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], "--no-gather" in sys.argv[2:])

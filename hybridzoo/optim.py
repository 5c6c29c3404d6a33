"""Optimisers and schedules for contrastive pretraining: AdamW or LARS, warm-up + cosine, decay groups."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "LARS", "parameter_groups", "build_optimizer", "warmup_cosine_schedule"]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR: SGD with momentum whose step per tensor is scaled by the trust
    ratio η‖w‖ / ‖g + λw‖. Groups with ``lars_exclude=True`` (biases, norms, curvature, α, temperature) take plain
    momentum SGD steps without weight decay, as in SimCLR."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    weight_norm, grad_norm = p.norm(), grad.norm()
                    # a zero weight or gradient (fresh zero-initialised tensors) gets the plain step
                    trust = torch.where((weight_norm > 0) & (grad_norm > 0),
                                        group["trust_coefficient"] * weight_norm / grad_norm,
                                        torch.ones_like(weight_norm))
                    grad = grad * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Two groups: weight matrices and conv kernels decay; everything with ≤ 1 dimension does not — biases,
    norm layers, and the learnable scalars (log curvature, log α, log temperature), whose decay would pull
    c, α and 1/τ towards 1 instead of letting the data set them (design.md §3)."""
    decay, no_decay = [], []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def _adamw(groups, lr):
    for group in groups:
        group.pop("lars_exclude", None)
    return torch.optim.AdamW(groups, lr=lr)


#: Optimiser names accepted by :func:`build_optimizer` (and ``--optimizer``).
OPTIMIZERS = {"adamw": _adamw, "lars": lambda groups, lr: LARS(groups, lr=lr)}


def build_optimizer(name: str, modules: list[nn.Module], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameter_groups(modules, weight_decay), lr)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                           min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` × lr at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

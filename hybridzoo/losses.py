"""Contrastive objectives for any geometry: the geometry supplies the logits, the objective the targets.

All objectives take the two views' points ``z1, z2`` (B, P) of the local process, gather the other processes'
points with a differentiable all-gather and compute the loss of the local rows against all columns (local loss,
design.md §4). DDP's gradient averaging then makes W processes × batch B match 1 process × batch W·B.
Everything runs in fp32 (the geometry upcasts), under any autocast.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .geometry import Geometry, Product

__all__ = ["LogitScale", "gather_with_grad", "OBJECTIVES", "ContrastiveObjective", "nt_xent", "supcon"]


class LogitScale(nn.Module):
    """Inverse temperature s = 1/τ, fixed or learned as log s (CLIP) and capped at ``max_scale`` (100).

    The cap stops a learned temperature from collapsing to 0, where the softmax becomes a hard max and training
    turns unstable.
    """

    def __init__(self, temperature: float = 0.1, learnable: bool = False, max_scale: float = 100.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        self.max_scale = float(max_scale)
        log_scale = torch.tensor(math.log(1 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self) -> torch.Tensor:
        """s = 1/τ, a 0-dim fp32 (or float64) tensor, ≤ max_scale."""
        log_scale = self.log_scale if self.log_scale.dtype == torch.float64 else self.log_scale.float()
        return log_scale.clamp_max(math.log(self.max_scale)).exp()

    @property
    def temperature(self) -> float:
        return 1 / self().item()


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows, in rank order, with gradients flowing back to their owners: (B, P) -> (W·B, P),
    plus the offset of this process's rows. The identity when not distributed.

    ``torch.distributed.nn.all_gather`` sums the gradients of every rank's loss into each owner's rows, so with a
    local loss and DDP's averaging the gradient equals the single-process one (no world-size factor: open_clip
    issue 616).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    import torch.distributed.nn.functional as dist_nn

    with warnings.catch_warnings():
        # torch 2.14 marks it deprecated in favour of a private API; it remains the public differentiable gather.
        warnings.simplefilter("ignore", FutureWarning)
        gathered = dist_nn.all_gather(x.contiguous())
    return torch.cat(gathered, dim=0), dist.get_rank() * x.shape[0]


def _two_view_batch(z1: torch.Tensor, z2: torch.Tensor):
    """Rows = local [z1; z2] (2B, P); columns = all processes' [z1; z2] (2·W·B, P); each row's own column index
    and its positive's (the other view of the same image) column index."""
    batch = z1.shape[0]
    columns1, offset = gather_with_grad(z1)
    columns2, _ = gather_with_grad(z2)
    total = columns1.shape[0]
    rows = torch.cat([z1, z2])
    columns = torch.cat([columns1, columns2])
    local = torch.arange(batch, device=z1.device) + offset
    self_index = torch.cat([local, local + total])
    positive_index = torch.cat([local + total, local])
    return rows, columns, self_index, positive_index


def _masked_logits(geometry: Geometry, rows, columns, self_index, scale, kind):
    """Logits (2B, 2·W·B) with each row's own column removed (-inf): a sample is never its own candidate."""
    logits = geometry.logits(rows, columns, temperature=1 / scale, kind=kind)
    return logits.scatter(1, self_index[:, None], float("-inf"))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, geometry: Geometry, scale: torch.Tensor,
            kind: str | None = None) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B local views must pick its partner among all 2·W·B - 1 other views.

    z1, z2 (B, P) points of ``geometry``; scale = 1/τ. Returns the mean loss over local rows (fp32 scalar).
    """
    rows, columns, self_index, positive_index = _two_view_batch(z1, z2)
    logits = _masked_logits(geometry, rows, columns, self_index, scale, kind)
    return F.cross_entropy(logits, positive_index)


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, geometry: Geometry, scale: torch.Tensor,
           kind: str | None = None) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): positives are all other views with the same label.

    z1, z2 (B, P); labels (B,) int. Rows without any positive cannot happen (each has its other view).
    """
    rows, columns, self_index, _ = _two_view_batch(z1, z2)
    all_labels, _ = gather_with_grad(labels)
    row_labels = torch.cat([labels, labels])
    column_labels = torch.cat([all_labels, all_labels])
    log_prob = F.log_softmax(_masked_logits(geometry, rows, columns, self_index, scale, kind), dim=1)
    positive = row_labels[:, None] == column_labels[None, :]
    positive = positive.scatter(1, self_index[:, None], False)
    # -inf · 0 would be NaN at the masked self column: zero the log-probabilities outside the positives first.
    positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(positive_log_prob / positive.sum(1)).mean()


#: Objective names accepted by :class:`ContrastiveObjective` (and ``--objective``).
OBJECTIVES = ("simclr", "supcon", "hybrid")


class ContrastiveObjective(nn.Module):
    """A contrastive objective with its own temperature(s); geometry-generic.

    - ``simclr``: NT-Xent on the full points (product heads: the product distance).
    - ``supcon``: supervised contrastive on the full points (needs labels).
    - ``hybrid``: Σ_f w_f · NT-Xent on each factor of a product head with its own temperature
      (literature: Euclidean + 0.1 × hyperbolic); ``factor_weights`` defaults to 1 for Euclidean factors and 0.1 for
      the others, ``factor_temperatures`` to ``temperature``.

    ``logits``: the logit kind (None = the geometry's default: cosine for Euclidean, -d/τ otherwise; or
    ``neg_sq_distance``, ``inner``). ``forward(z1, z2, labels, geometry)`` -> (loss, {name: float} metrics).
    """

    def __init__(self, objective: str = "simclr", temperature: float = 0.1, learn_temperature: bool = False,
                 max_logit_scale: float = 100.0, logits: str | None = None,
                 factor_weights: list[float] | None = None, factor_temperatures: list[float] | None = None,
                 num_factors: int = 1, factor_names: list[str] | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.objective = objective
        self.logit_kind = logits
        if objective == "hybrid":
            if num_factors < 2:
                raise ValueError("the hybrid objective needs a product head with at least two factors "
                                 "(e.g. head 'hybrid': Euclidean × Lorentz)")
            names = factor_names or ["?"] * num_factors
            self.factor_weights = list(factor_weights or [1.0 if n == "euclidean" else 0.1 for n in names])
            temperatures = factor_temperatures or [temperature] * num_factors
            if len(self.factor_weights) != num_factors or len(temperatures) != num_factors:
                raise ValueError(f"factor_weights and factor_temperatures need one value per factor ({num_factors})")
            self.scales = nn.ModuleList(LogitScale(t, learn_temperature, max_logit_scale) for t in temperatures)
        else:
            self.factor_weights = None
            self.scales = nn.ModuleList([LogitScale(temperature, learn_temperature, max_logit_scale)])

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None,
                geometry: Geometry) -> tuple[torch.Tensor, dict[str, float]]:
        if self.objective == "simclr":
            loss = nt_xent(z1, z2, geometry, self.scales[0](), self.logit_kind)
            return loss, {"temperature": 1 / self.scales[0]().item()}
        if self.objective == "supcon":
            if labels is None or (labels < 0).any():
                raise ValueError("the supcon objective needs labels for every image; use --objective simclr "
                                 "for unlabelled data")
            loss = supcon(z1, z2, labels, geometry, self.scales[0](), self.logit_kind)
            return loss, {"temperature": 1 / self.scales[0]().item()}
        if not isinstance(geometry, Product):
            raise ValueError("the hybrid objective needs a product head (e.g. 'hybrid': Euclidean × Lorentz)")
        metrics, loss = {}, 0.0
        for i, (factor, p1, p2, scale, weight) in enumerate(zip(geometry.factors, geometry.split(z1),
                                                               geometry.split(z2), self.scales, self.factor_weights)):
            factor_loss = nt_xent(p1, p2, factor, scale(), self.logit_kind)
            loss = loss + weight * factor_loss
            metrics[f"loss_{i}_{factor.name}"] = factor_loss.item()
            metrics[f"temperature_{i}_{factor.name}"] = 1 / scale().item()
        return loss, metrics

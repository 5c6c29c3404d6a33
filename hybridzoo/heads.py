"""Projection heads: a SimCLR-style MLP, then per-factor tangent guards (α scale, norm clip), then the geometry.

A head config is data::

    {"hidden_dim": 512, "num_layers": 2, "batch_norm": true,
     "factors": [{"geometry": "euclidean", "dim": 64},
                 {"geometry": "lorentz", "dim": 64, "curvature": 1.0, "learn_curvature": true,
                  "alpha_init": "auto", "learn_alpha": true, "clip_radius": 2.3}]}

One factor gives that geometry; several give their :class:`~hybridzoo.geometry.Product` (a "hybrid" E×H head is
just the two factors above). Named presets live in :data:`HEAD_PRESETS`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .geometry import Geometry, Product, build_geometry

__all__ = ["HEAD_PRESETS", "MLP_KEYS", "TANGENT_KEYS", "TangentGuard", "ProjectionHead", "resolve_head_config"]

#: Ready-made head configs. Tangent dimension 128 in every preset, so heads compare at equal width.
HEAD_PRESETS: dict[str, dict] = {
    "euclidean": {"factors": [{"geometry": "euclidean", "dim": 128}]},
    "lorentz": {"factors": [{"geometry": "lorentz", "dim": 128, "curvature": 1.0, "learn_curvature": True,
                             "alpha_init": "auto", "learn_alpha": True}]},
    "hybrid": {"factors": [{"geometry": "euclidean", "dim": 64},
                           {"geometry": "lorentz", "dim": 64, "curvature": 1.0, "learn_curvature": True,
                            "alpha_init": "auto", "learn_alpha": True}]},
    "product": {"factors": [{"geometry": "euclidean", "dim": 48},
                            {"geometry": "lorentz", "dim": 48, "curvature": 1.0, "learn_curvature": True,
                             "alpha_init": "auto", "learn_alpha": True},
                            {"geometry": "sphere", "dim": 32, "curvature": 1.0}]},
}

#: Head-level options (the MLP).
MLP_KEYS = ("hidden_dim", "num_layers", "batch_norm")
#: Factor-level options consumed by :class:`TangentGuard` rather than by the geometry.
TANGENT_KEYS = ("alpha_init", "learn_alpha", "clip_radius")


def resolve_head_config(head: str | dict, **overrides) -> dict:
    """A full head config from a preset name or a dict, with overrides.

    MLP keys (``hidden_dim``, ``num_layers``, ``batch_norm``) and ``factors`` apply to the head; any other key
    (``dim``, ``curvature``, ``clip_radius``, ...) applies to the factor of a one-factor head. Multi-factor heads
    take a whole ``factors=[...]`` list instead, so no option is silently applied to the wrong factor.
    """
    if isinstance(head, str):
        if head not in HEAD_PRESETS:
            raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEAD_PRESETS)} or pass a head config dict")
        config = copy.deepcopy(HEAD_PRESETS[head])
    else:
        config = copy.deepcopy(dict(head))
    factor_overrides = {k: v for k, v in overrides.items() if k not in (*MLP_KEYS, "factors")}
    config.update({k: v for k, v in overrides.items() if k in (*MLP_KEYS, "factors")})
    if factor_overrides:
        if len(config["factors"]) != 1:
            raise ValueError(f"options {sorted(factor_overrides)} are ambiguous for a head with "
                             f"{len(config['factors'])} factors; pass factors=[...] with each factor's options")
        config["factors"][0].update(factor_overrides)
    return config


class TangentGuard(nn.Module):
    """Guards applied to a factor's Euclidean features before its exponential map (design.md §3).

    1. ``alpha_init``: multiply by a scale α (``"auto"`` = 1/sqrt(D), MERU), learned as log α and kept ≤ 1,
       so that points start near the origin instead of saturating the softmax.
    2. ``clip_radius`` r: v · min(1, r/‖v‖) (Guo et al. 2022), bounding the geodesic radius of the points, which
       prevents vanishing gradients near the boundary and fp32 cancellation far from the origin.
    """

    def __init__(self, dim: int, alpha_init: float | str | None = None, learn_alpha: bool = False,
                 clip_radius: float | None = None):
        super().__init__()
        self.alpha_init = alpha_init
        self.clip_radius = None if clip_radius is None else float(clip_radius)
        if self.clip_radius is not None and not self.clip_radius > 0:
            raise ValueError(f"clip_radius must be positive or None; got {clip_radius!r}")
        self.learn_alpha = bool(learn_alpha)
        if alpha_init is None:
            if learn_alpha:
                raise ValueError("learn_alpha=True needs an alpha_init (a number or 'auto')")
            self.log_alpha = None
            return
        alpha = 1 / math.sqrt(dim) if alpha_init == "auto" else float(alpha_init)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha_init must lie in (0, 1] (or be 'auto'); got {alpha_init!r}")
        log_alpha = torch.tensor(math.log(alpha))
        if self.learn_alpha:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)

    @property
    def alpha(self) -> torch.Tensor | None:
        """The current scale α ≤ 1 (None when the factor has no scale)."""
        if self.log_alpha is None:
            return None
        # α ≤ 1 (MERU): a larger scale would only push points outward, where the softmax saturates.
        return self.log_alpha.float().clamp_max(0).exp()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        if self.log_alpha is not None:
            v = v * self.alpha
        if self.clip_radius is not None:
            # Floor the norm so a zero feature does not divide by zero.
            norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            v = v * (self.clip_radius / norm).clamp_max(1.0)
        return v

    def to_config(self) -> dict:
        return {"alpha_init": self.alpha_init, "learn_alpha": self.learn_alpha, "clip_radius": self.clip_radius}

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else round(self.alpha.item(), 4)
        return f"alpha={alpha}, learn_alpha={self.learn_alpha}, clip_radius={self.clip_radius}"


def _mlp(in_features: int, hidden_dim: int, out_dim: int, num_layers: int, batch_norm: bool) -> nn.Sequential:
    """SimCLR projection MLP: (Linear → [BN] → ReLU) × (num_layers - 1) → Linear. ``num_layers=1`` is linear."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be ≥ 1; got {num_layers}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """MLP → per-factor :class:`TangentGuard` → geometry ``expmap0``.

    ``forward(features)``: (N, in_features) -> points (N, P) in fp32, P = ``geometry.point_dim(D)``.
    The MLP follows the autocast of the caller; guards and the exponential map run in fp32.
    """

    def __init__(self, in_features: int, factors: list[dict], hidden_dim: int | None = None, num_layers: int = 2,
                 batch_norm: bool = True):
        super().__init__()
        if not factors:
            raise ValueError("a head needs at least one factor, e.g. [{'geometry': 'lorentz', 'dim': 128}]")
        self.in_features = int(in_features)
        self.hidden_dim = int(hidden_dim or in_features)
        self.num_layers = int(num_layers)
        self.batch_norm = bool(batch_norm)
        geometry_configs = [{k: v for k, v in f.items() if k not in TANGENT_KEYS} for f in factors]
        for config in geometry_configs:
            if "dim" not in config:
                raise ValueError(f"head factor {config} needs a 'dim' (its feature dimension)")
        self.dims = [int(c["dim"]) for c in geometry_configs]
        self.guards = nn.ModuleList(
            TangentGuard(d, **{k: v for k, v in f.items() if k in TANGENT_KEYS}) for d, f in zip(self.dims, factors))
        if len(factors) == 1:
            self.geometry: Geometry = build_geometry(geometry_configs[0])
        else:
            self.geometry = build_geometry({"geometry": Product.name, "factors": geometry_configs})
        self.mlp = _mlp(self.in_features, self.hidden_dim, sum(self.dims), self.num_layers, self.batch_norm)

    @property
    def out_dim(self) -> int:
        """Number of coordinates of the output points."""
        return self.geometry.point_dim(sum(self.dims))

    def tangent(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> guarded tangent vectors at the origin (N, D), fp32 (logmap0 of the output)."""
        v = self.mlp(features).float()
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            parts = torch.split(v, self.dims, dim=-1)
            return torch.cat([guard(p) for guard, p in zip(self.guards, parts)], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> points (N, P), fp32."""
        return self.geometry.expmap0(self.tangent(features))

    def to_config(self) -> dict:
        geometry = self.geometry.to_config()
        geometry_factors = geometry["factors"] if len(self.dims) > 1 else [{**geometry, "dim": self.dims[0]}]
        return {"hidden_dim": self.hidden_dim, "num_layers": self.num_layers, "batch_norm": self.batch_norm,
                "factors": [{**g, **guard.to_config()} for g, guard in zip(geometry_factors, self.guards)]}

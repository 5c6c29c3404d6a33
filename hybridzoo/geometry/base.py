"""The interface every geometry implements, plus the fp32 guard and the curvature parameter.

A geometry maps Euclidean features (tangent vectors at the origin, shape ``(..., D)``) to points of its
manifold (shape ``(..., point_dim(D))``) and measures distances between points. Geometries are
``nn.Module`` s because their curvature may be learned.

Shapes in the docstrings: ``N``, ``M`` batch sizes, ``D`` tangent (feature) dimension, ``P`` point dimension.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

__all__ = ["Geometry", "CurvedGeometry", "Curvature", "full_precision", "LOGIT_KINDS"]

#: The contrastive logit variants every geometry offers (design.md §2).
#: ``cosine`` is only meaningful for the Euclidean geometry; the others are geometry-generic.
LOGIT_KINDS = ("cosine", "neg_distance", "neg_sq_distance", "inner")

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _upcast(value):
    # Half tensors stay half under ``autocast(enabled=False)``: they must be cast explicitly (MERU's trap).
    if isinstance(value, torch.Tensor) and value.dtype in _HALF_DTYPES:
        return value.float()
    return value


def full_precision(method: Callable) -> Callable:
    """Run a geometry method in at least fp32: autocast off, half inputs cast to fp32.

    float64 inputs stay float64, so evaluation can ask for double precision. Outputs are never half.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        args = tuple(_upcast(a) for a in args)
        kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


class Curvature(nn.Module):
    """A positive curvature magnitude ``c``, fixed or learned as ``log c`` and clamped to ``[c0/10, 10*c0]``.

    Learning ``log c`` keeps ``c`` positive; the clamp (MERU) stops it from running to 0 (flat, all points
    collapse onto a tangent plane) or infinity (every distance explodes). The default range follows design.md §3.
    """

    def __init__(self, value: float, learnable: bool = False, min_value: float | None = None,
                 max_value: float | None = None):
        super().__init__()
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"curvature must be a positive finite number c (the manifold has curvature -c "
                             f"for Lorentz, +c for Sphere); got {value!r}")
        self.learnable = bool(learnable)
        self.min_value = float(min_value) if min_value is not None else value / 10
        self.max_value = float(max_value) if max_value is not None else value * 10
        # The relative slack admits a value saved after rounding at a clamp bound.
        if not self.min_value * (1 - 1e-6) <= value <= self.max_value * (1 + 1e-6):
            raise ValueError(f"curvature {value} lies outside its clamp range "
                             f"[{self.min_value}, {self.max_value}]")
        # float64 storage: fp32 would hold c = 0.1 as 0.099999994, and float64 evaluation needs the exact c.
        # Computations cast c to their own dtype (CurvedGeometry._c).
        log_c = torch.tensor(math.log(value), dtype=torch.float64)
        if self.learnable:
            self.log_c = nn.Parameter(log_c)
        else:
            self.register_buffer("log_c", log_c)

    def forward(self) -> torch.Tensor:
        """The curvature magnitude ``c`` as a 0-dim fp32 (or float64) tensor, clamped."""
        # fp32 at least, should a model cast (model.half()) have rounded the stored float64 value
        log_c = self.log_c if self.log_c.dtype == torch.float64 else self.log_c.float()
        return log_c.clamp(math.log(self.min_value), math.log(self.max_value)).exp()

    def to_config(self) -> dict:
        """The current (clamped, possibly learned) value with its clamp range: enough to rebuild this module."""
        return {"curvature": round(self().item(), 7), "learn_curvature": self.learnable,
                "curvature_min": self.min_value, "curvature_max": self.max_value}

    def extra_repr(self) -> str:
        return f"c={self().item():.4g}, learnable={self.learnable}"


class Geometry(nn.Module):
    """The shared interface. Subclasses implement the ``_``-free public methods below.

    Points are what ``expmap0`` returns; tangent vectors are Euclidean features. Every method computes in
    fp32 (or float64 when given float64) and never in half precision, even under autocast.
    """

    #: Registry key and config name, e.g. ``"lorentz"``.
    name: str = ""
    #: The logit kind used by :meth:`logits` when none is given.
    default_logits: str = "neg_distance"

    def point_dim(self, dim: int) -> int:
        """Number of coordinates of a point made from a ``dim``-dimensional feature."""
        return dim

    def tangent_dim(self, point_dim: int) -> int:
        """Inverse of :meth:`point_dim`."""
        return point_dim

    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """Map features ``v`` (..., D) (tangent vectors at the origin) to points (..., P)."""
        raise NotImplementedError

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """Map points (..., P) back to tangent vectors at the origin (..., D)."""
        raise NotImplementedError

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Geodesic distance of matching rows: x, y (..., P) -> (...)."""
        raise NotImplementedError

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """All distances: a (N, P), b (M, P) -> (N, M)."""
        raise NotImplementedError

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pairwise inner product of the ambient space: a (N, P), b (M, P) -> (N, M)."""
        raise NotImplementedError

    def manifold_error(self, x: torch.Tensor) -> torch.Tensor:
        """How far each point (..., P) is from satisfying the manifold constraint -> (...)."""
        raise NotImplementedError

    def to_config(self) -> dict:
        """A JSON-serialisable description from which :func:`hybridzoo.geometry.build_geometry` rebuilds it."""
        raise NotImplementedError

    @full_precision
    def logits(self, a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 1.0,
               kind: str | None = None) -> torch.Tensor:
        """Contrastive logits between points: a (N, P), b (M, P) -> (N, M), fp32 (or float64).

        ``kind`` (default :attr:`default_logits`): ``"neg_distance"`` -d/τ (MERU), ``"neg_sq_distance"`` -d²/τ,
        ``"inner"`` ⟨a, b⟩/τ with the ambient inner product (Minkowski for Lorentz), ``"cosine"`` cos/τ.
        """
        kind = kind or self.default_logits
        if kind == "neg_distance":
            scores = -self.pairwise_distance(a, b)
        elif kind == "neg_sq_distance":
            scores = -self.pairwise_distance(a, b).square()
        elif kind == "inner":
            scores = self.inner(a, b)
        elif kind == "cosine":
            scores = self._cosine(a, b)
        else:
            raise ValueError(f"unknown logit kind {kind!r}; choose one of {LOGIT_KINDS}")
        return scores / temperature

    def _cosine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"cosine logits are defined for the Euclidean geometry only, not {self.name!r}; "
                         f"use kind='neg_distance', 'neg_sq_distance' or 'inner'")


class CurvedGeometry(Geometry):
    """A geometry with one curvature magnitude ``c > 0`` (fixed or learned); the sign is the subclass's."""

    #: Human-readable statement of the sign convention and coordinate layout, written into every config.
    convention: str = ""

    def __init__(self, curvature: float = 1.0, learn_curvature: bool = False,
                 curvature_min: float | None = None, curvature_max: float | None = None):
        super().__init__()
        self._curvature = Curvature(curvature, learn_curvature, curvature_min, curvature_max)

    def point_dim(self, dim: int) -> int:
        """Curved spaces are embedded in one more dimension than their features (x₀ first)."""
        return dim + 1

    def tangent_dim(self, point_dim: int) -> int:
        return point_dim - 1

    @property
    def curvature(self) -> torch.Tensor:
        """The curvature magnitude ``c`` (0-dim fp32 tensor; clamped when learned)."""
        return self._curvature()

    def _c(self, like: torch.Tensor) -> torch.Tensor:
        """``c`` in the dtype and device of ``like`` (float64 evaluation keeps float64)."""
        return self.curvature.to(device=like.device, dtype=like.dtype)

    @staticmethod
    def _eps(like: torch.Tensor) -> float:
        """A relative tolerance a few ulps wide in the dtype of ``like``."""
        return 4 * torch.finfo(like.dtype).eps

    def to_config(self) -> dict:
        return {"geometry": self.name, **self._curvature.to_config(), "convention": self.convention}

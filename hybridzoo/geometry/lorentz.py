"""The Lorentz (hyperboloid) model of hyperbolic space with sectional curvature -c, c > 0.

Points are full hyperboloid coordinates, **time first**: a D-dim feature becomes D+1 numbers x = (x₀, x_s) with
⟨x, x⟩_L = -1/c and x₀ > 0, where ⟨x, y⟩_L = -x₀y₀ + x_s·y_s. ``geoopt.Lorentz(k=1/c)`` accepts them unchanged.
Only the space part is ever computed; x₀ = sqrt(1/c + ‖x_s‖²) is recomputed from it, so points never drift off
the manifold.
"""
from __future__ import annotations

import math

import torch

from .base import CurvedGeometry, full_precision

__all__ = ["Lorentz"]

# Largest argument of sinh in expmap0: sinh(asinh(2**15)) = 2**15, so coordinates stay far below fp32 overflow
# (x₀² must be representable in the Minkowski products) whatever the feature norm.
_MAX_SINH_ARG = math.asinh(2.0**15)
# Floor of squared norms before sqrt / division: a zero feature maps to the origin with a finite gradient.
_SQ_NORM_EPS = 1e-12


class Lorentz(CurvedGeometry):
    """Hyperbolic space of curvature -c in Lorentz coordinates (time first). See the module docstring."""

    name = "lorentz"
    convention = ("sectional curvature is -c with c > 0 (geoopt.Lorentz k = 1/c); points are hyperboloid "
                  "coordinates, time first: D+1 numbers with <x,x>_L = -1/c and x0 > 0")

    @staticmethod
    def time_from_space(x_space: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x₀ = sqrt(1/c + ‖x_s‖²): (..., D) -> (..., 1)."""
        return torch.sqrt(1 / c + x_space.square().sum(-1, keepdim=True))

    @full_precision
    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D+1): x_s = sinh(√c‖v‖) v / (√c‖v‖), x₀ from x_s."""
        c = self._c(v)
        sqrt_c = c.sqrt()
        scaled_norm = sqrt_c * v.square().sum(-1, keepdim=True).clamp_min(_SQ_NORM_EPS).sqrt()
        x_space = torch.sinh(scaled_norm.clamp_max(_MAX_SINH_ARG)) / scaled_norm * v
        return torch.cat([self.time_from_space(x_space, c), x_space], dim=-1)

    @full_precision
    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) -> (..., D): v = asinh(√c‖x_s‖)/√c · x_s/‖x_s‖.

        Uses asinh of the space part rather than acosh(√c x₀): acosh is ill-conditioned near the origin.
        """
        sqrt_c = self._c(x).sqrt()
        x_space = x[..., 1:]
        scaled_norm = sqrt_c * x_space.square().sum(-1, keepdim=True).clamp_min(_SQ_NORM_EPS).sqrt()
        return torch.asinh(scaled_norm) / scaled_norm * x_space

    @full_precision
    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pairwise Minkowski inner product: (N, D+1), (M, D+1) -> (N, M), one matmul."""
        return torch.cat([-a[:, :1], a[:, 1:]], dim=-1) @ b.T

    @full_precision
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Row-wise geodesic distance (..., D+1) -> (...) in the form that is accurate for near points:
        d = (2/√c) asinh((√c/2) sqrt(⟨x-y, x-y⟩_L))."""
        sqrt_c = self._c(x).sqrt()
        diff = x - y
        sq = diff[..., 1:].square().sum(-1) - diff[..., 0].square()
        # ⟨x-y, x-y⟩_L ≥ 0 on the manifold but rounding can make it negative, and sqrt has an infinite slope
        # at 0: the floor keeps identical points (a positive pair of identical views) at a finite gradient.
        return 2 / sqrt_c * torch.asinh(sqrt_c / 2 * sq.clamp_min(_SQ_NORM_EPS).sqrt())

    @full_precision
    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D+1), (M, D+1) -> (N, M), one matmul plus elementwise work, in the near-point-accurate form
        d = (2/√c) asinh((√c/2) sqrt(q)) with q = ⟨a-b, a-b⟩_L = ‖a_s - b_s‖² - (a₀ - b₀)².

        The textbook acosh(-c⟨a, b⟩_L) cancels at the scale of 1/c and cannot resolve distances below ~1e-3 in
        fp32; expanding only the space part, ‖a_s‖² + ‖b_s‖² - 2 a_s·b_s, cancels at the scale of the points'
        norms, so points near the origin (where α and clipping keep them) keep their fine structure.
        """
        sqrt_c = self._c(a).sqrt()
        a_space, b_space = a[:, 1:], b[:, 1:]
        space_sq = (a_space.square().sum(-1, keepdim=True) + b_space.square().sum(-1)[None, :]
                    - 2 * a_space @ b_space.T)
        q = space_sq - (a[:, :1] - b[:, 0][None, :]).square()
        # q ≥ 0 in exact arithmetic; rounding can make it negative, and sqrt has an infinite slope at 0: the floor
        # keeps coincident points (identical views) at a finite value and gradient.
        return 2 / sqrt_c * torch.asinh(sqrt_c / 2 * q.clamp_min(_SQ_NORM_EPS).sqrt())

    @full_precision
    def to_poincare(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) -> (..., D): the Poincaré ball of radius 1/√c, p = x_s / (1 + √c x₀)."""
        sqrt_c = self._c(x).sqrt()
        return x[..., 1:] / (1 + sqrt_c * x[..., :1])

    @full_precision
    def manifold_error(self, x: torch.Tensor) -> torch.Tensor:
        """|c⟨x, x⟩_L + 1| per point (..., D+1) -> (...); +inf where x₀ ≤ 0 (the lower sheet)."""
        c = self._c(x)
        minkowski_sq = x[..., 1:].square().sum(-1) - x[..., 0].square()
        error = (c * minkowski_sq + 1).abs()
        return torch.where(x[..., 0] > 0, error, torch.full_like(error, math.inf))

    def extra_repr(self) -> str:
        return f"curvature=-{self.curvature.item():.4g}, learnable={self._curvature.learnable}"

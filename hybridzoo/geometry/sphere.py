"""The sphere of curvature +c (radius 1/√c) in ambient coordinates, laid out like the Lorentz model.

A D-dim feature becomes D+1 numbers x = (x₀, x_s) with ‖x‖ = 1/√c; the origin (the point features are tangent
at) is o = (1/√c, 0, …, 0), so x₀ plays the role of the Lorentz time coordinate.
"""
from __future__ import annotations

import torch

from .base import CurvedGeometry, full_precision

__all__ = ["Sphere"]

# Floor of squared norms before sqrt / division: a zero feature maps to the origin with a finite gradient.
_SQ_NORM_EPS = 1e-12


class Sphere(CurvedGeometry):
    """Positively curved space: the sphere of radius 1/√c. See the module docstring for the coordinates."""

    name = "sphere"
    convention = ("sectional curvature is +c with c > 0 (radius 1/sqrt(c)); points are ambient coordinates, "
                  "D+1 numbers with ||x|| = 1/sqrt(c); the origin is (1/sqrt(c), 0, ..., 0)")

    @full_precision
    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D+1): x = (cos θ, sin θ · v/‖v‖) / √c with θ = √c‖v‖."""
        sqrt_c = self._c(v).sqrt()
        theta = sqrt_c * v.square().sum(-1, keepdim=True).clamp_min(_SQ_NORM_EPS).sqrt()
        return torch.cat([torch.cos(theta), torch.sin(theta) / theta * sqrt_c * v], dim=-1) / sqrt_c

    @full_precision
    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) -> (..., D): v = θ/√c · x_s/‖x_s‖ with θ = atan2(‖x_s‖, x₀) ∈ [0, π]."""
        sqrt_c = self._c(x).sqrt()
        space_norm = x[..., 1:].square().sum(-1, keepdim=True).clamp_min(_SQ_NORM_EPS).sqrt()
        # atan2 is accurate over the whole range, unlike acos(√c x₀) near the origin.
        theta = torch.atan2(space_norm, x[..., :1])
        return theta / (sqrt_c * space_norm) * x[..., 1:]

    @full_precision
    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D+1), (M, D+1) -> (N, M)."""
        return a @ b.T

    @full_precision
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Row-wise geodesic distance (..., D+1) -> (...) from the chord, accurate for near points:
        d = (2/√c) asin(√c‖x - y‖ / 2)."""
        sqrt_c = self._c(x).sqrt()
        # The floor keeps the gradient of sqrt finite for identical points; the clamp keeps asin's argument
        # inside its domain, off its infinite slope at 1, when rounding makes the chord reach the diameter.
        chord = (x - y).square().sum(-1).clamp_min(_SQ_NORM_EPS).sqrt()
        return 2 / sqrt_c * torch.asin((sqrt_c * chord / 2).clamp_max(1 - self._eps(chord)))

    @full_precision
    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D+1), (M, D+1) -> (N, M), one matmul plus elementwise work, from the chord like :meth:`distance`:
        ‖a - b‖² = ‖a_s - b_s‖² + (a₀ - b₀)², with only the space part expanded.

        acos(c⟨a, b⟩) cancels at the scale of 1/c and cannot resolve distances below ~1e-3 in fp32; expanding the
        space part cancels at the scale of the points' offsets from the origin.
        """
        sqrt_c = self._c(a).sqrt()
        a_space, b_space = a[:, 1:], b[:, 1:]
        chord_sq = (a_space.square().sum(-1, keepdim=True) + b_space.square().sum(-1)[None, :]
                    - 2 * a_space @ b_space.T + (a[:, :1] - b[:, 0][None, :]).square())
        # Floor: finite sqrt gradient for coincident points (rounding can even make the expansion negative);
        # clamp: keep asin inside its domain, off its infinite slope at 1 (antipodal points).
        chord = chord_sq.clamp_min(_SQ_NORM_EPS).sqrt()
        return 2 / sqrt_c * torch.asin((sqrt_c * chord / 2).clamp_max(1 - self._eps(chord)))

    @full_precision
    def manifold_error(self, x: torch.Tensor) -> torch.Tensor:
        """|c‖x‖² - 1| per point (..., D+1) -> (...)."""
        return (self._c(x) * x.square().sum(-1) - 1).abs()

    def extra_repr(self) -> str:
        return f"curvature=+{self.curvature.item():.4g}, learnable={self._curvature.learnable}"

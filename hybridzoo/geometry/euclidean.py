"""Euclidean geometry: unit-norm ("cosine") points by default, or the flat space R^D as a product factor."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Geometry, full_precision

__all__ = ["Euclidean"]

# Smallest norm divided by in normalisation: a zero feature maps to zero instead of NaN.
_NORM_EPS = 1e-12
# Floor of a squared distance before its square root: sqrt has an infinite slope at 0, and a positive pair of
# identical views must still get a finite gradient.
_SQ_DIST_EPS = 1e-12


class Euclidean(Geometry):
    """Euclidean head geometry.

    ``normalize=True`` (default): points are L2-normalised features on the unit sphere, distance is the chordal
    ``‖x - y‖`` and the default logits are cosine / τ (SimCLR). ``normalize=False``: the flat space R^D with
    the identity exponential map, as used for the Euclidean factor of a product space (Gu et al. 2019).
    """

    name = "euclidean"

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = bool(normalize)
        self.default_logits = "cosine" if self.normalize else "neg_distance"

    @full_precision
    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D): L2-normalised (or unchanged when ``normalize=False``)."""
        return F.normalize(v, dim=-1, eps=_NORM_EPS) if self.normalize else v

    @full_precision
    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D): the identity (normalisation forgets the norm, so this is a right inverse)."""
        return x

    @full_precision
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., D), (..., D) -> (...)."""
        return (x - y).square().sum(-1).clamp_min(_SQ_DIST_EPS).sqrt()

    @full_precision
    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D), (M, D) -> (N, M) via one matmul: ‖a‖² + ‖b‖² - 2 a·b."""
        sq = a.square().sum(-1, keepdim=True) + b.square().sum(-1)[None, :] - 2 * a @ b.T
        # Rounding can make the expansion slightly negative for coincident points.
        return sq.clamp_min(_SQ_DIST_EPS).sqrt()

    @full_precision
    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D), (M, D) -> (N, M)."""
        return a @ b.T

    def _cosine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.normalize(a, dim=-1, eps=_NORM_EPS) @ F.normalize(b, dim=-1, eps=_NORM_EPS).T

    @full_precision
    def manifold_error(self, x: torch.Tensor) -> torch.Tensor:
        """|‖x‖ - 1| for normalised points, 0 for the flat space."""
        if not self.normalize:
            return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        return (x.norm(dim=-1) - 1).abs()

    def to_config(self) -> dict:
        return {"geometry": self.name, "normalize": self.normalize}

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"

"""Product spaces E^a × H^b × S^d (Gu et al., ICLR 2019): factors side by side, d² = Σ dᵢ²."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Geometry, full_precision

__all__ = ["Product"]

# Floor of the summed squared distance before sqrt: finite gradient for identical points.
_SQ_DIST_EPS = 1e-12


class Product(Geometry):
    """A product of geometries, each with its own feature dimension (and curvature).

    ``Product([(Euclidean(), 64), (Lorentz(curvature=1.0), 64)])`` takes 128-dim features and returns
    64 + 65 = 129 coordinates: the factors' points concatenated in declared order (use :meth:`split`).
    """

    name = "product"

    def __init__(self, factors: Sequence[tuple[Geometry, int]]):
        super().__init__()
        if not factors:
            raise ValueError("Product needs at least one (geometry, dim) factor")
        for factor in factors:
            if not (isinstance(factor, (tuple, list)) and len(factor) == 2 and isinstance(factor[0], Geometry)
                    and isinstance(factor[1], int) and factor[1] > 0):
                raise TypeError(f"each Product factor must be a (Geometry, positive int dim) pair; got {factor!r}")
            if isinstance(factor[0], Product):
                raise TypeError("nested products are not supported: list the factors of the inner product instead")
        self.factors = nn.ModuleList(g for g, _ in factors)
        self.dims = [int(d) for _, d in factors]
        self.point_dims = [g.point_dim(d) for g, d in zip(self.factors, self.dims)]

    def point_dim(self, dim: int) -> int:
        if dim != sum(self.dims):
            raise ValueError(f"this product takes {sum(self.dims)}-dim features (factors {self.dims}), not {dim}")
        return sum(self.point_dims)

    def tangent_dim(self, point_dim: int) -> int:
        if point_dim != sum(self.point_dims):
            raise ValueError(f"this product has {sum(self.point_dims)}-dim points, not {point_dim}")
        return sum(self.dims)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Points (..., P) -> one point tensor per factor, in declared order."""
        return list(torch.split(x, self.point_dims, dim=-1))

    def split_tangent(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Features (..., D) -> one feature tensor per factor, in declared order."""
        return list(torch.split(v, self.dims, dim=-1))

    @full_precision
    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., P)."""
        return torch.cat([g.expmap0(part) for g, part in zip(self.factors, self.split_tangent(v))], dim=-1)

    @full_precision
    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., P) -> (..., D)."""
        return torch.cat([g.logmap0(part) for g, part in zip(self.factors, self.split(x))], dim=-1)

    @full_precision
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., P), (..., P) -> (...): sqrt(Σ dᵢ²)."""
        sq = sum(g.distance(a, b).square() for g, a, b in zip(self.factors, self.split(x), self.split(y)))
        return sq.clamp_min(_SQ_DIST_EPS).sqrt()

    @full_precision
    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, P), (M, P) -> (N, M): sqrt(Σ dᵢ²)."""
        sq = sum(g.pairwise_distance(p, q).square() for g, p, q in zip(self.factors, self.split(a), self.split(b)))
        return sq.clamp_min(_SQ_DIST_EPS).sqrt()

    @full_precision
    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, P), (M, P) -> (N, M): the sum of the factors' inner products."""
        return sum(g.inner(p, q) for g, p, q in zip(self.factors, self.split(a), self.split(b)))

    @full_precision
    def manifold_error(self, x: torch.Tensor) -> torch.Tensor:
        """The largest factor error per point (..., P) -> (...)."""
        return torch.stack([g.manifold_error(p) for g, p in zip(self.factors, self.split(x))]).amax(0)

    def to_config(self) -> dict:
        return {"geometry": self.name,
                "factors": [{**g.to_config(), "dim": d} for g, d in zip(self.factors, self.dims)]}

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

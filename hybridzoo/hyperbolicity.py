"""Gromov δ-hyperbolicity of a feature set (Khrulkov et al., "Hyperbolic Image Embeddings", CVPR 2020).

A metric space is δ-hyperbolic when every four points satisfy the four-point condition. With the Gromov product
with respect to a base point w,

    (x|y)_w = ½ (d(x, w) + d(y, w) - d(x, y)),

the smallest δ that works for base point w is

    δ_w = max_{x,y,z} [ min((x|z)_w, (z|y)_w) - (x|y)_w ],

i.e. the largest entry of (G ⊗ G) - G, where G is the (n, n) matrix of Gromov products and ⊗ the max-min matrix
product (A ⊗ B)[x, y] = max_z min(A[x, z], B[z, y]). The four-point δ of the space is max_w δ_w, and any single
δ_w lies within a factor 2 of it. Trees (0-hyperbolic) give δ = 0; Euclidean spaces and spheres have δ of the
order of their diameter.

Khrulkov et al.'s protocol (followed by :func:`delta_hyperbolicity`): draw up to 2,000 points, take the first
drawn point as the base point, compute δ_w and the relative value δ_rel = 2 δ_w / diam (diam: the largest distance
within the draw), average over several draws. δ_rel is scale-free and lies in [0, 1] (0 for a tree metric, about
1 for points on a circle). Taking δ_rel ≈ 0.144 as the value of the unit-curvature Poincaré ball, they suggest the
curvature c = (0.144 / δ_rel)² (sectional curvature -c, the library's convention; design.md §5) for a hyperbolic
head on data with relative hyperbolicity δ_rel: smaller δ_rel (more tree-like data) asks for stronger curvature.

The max-min product costs n³ comparisons: about 2.5 s per draw of 2,000 points on one CPU core. It runs one z at
a time over cache-sized row blocks, so memory stays at O(n²) (the distance and Gromov product matrices).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .geometry import Geometry

__all__ = ["gromov_products", "max_min_product", "gromov_delta", "delta_hyperbolicity", "pairwise_distances",
           "POINCARE_DELTA_REL"]

#: δ_rel of the Poincaré ball measured by Khrulkov et al. (2020); the reference of the curvature suggestion.
POINCARE_DELTA_REL = 0.144

#: Output entries computed together by the max-min product (rows × columns): 2^17 fp32 values = 512 KiB, so the
#: running maximum and the scratch row block stay in a CPU core's L2 cache (8x faster than materialising the
#: (rows, n, n) broadcast of min(A[x, z], B[z, y]) and reducing it).
_BLOCK_ENTRIES = 1 << 17


def gromov_products(dist: torch.Tensor, base: int = 0) -> torch.Tensor:
    """(x|y)_w for all x, y: distance matrix (n, n) -> (n, n), base point w = ``base`` (an index)."""
    to_base = dist[base]
    return 0.5 * (to_base[:, None] + to_base[None, :] - dist)


def _max_min_rows(a_rows: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max_z min(a_rows[x, z], b[z, y]): (r, m), (m, p) -> (r, p), one z at a time (memory 2·r·p)."""
    out = torch.full((a_rows.shape[0], b.shape[1]), -math.inf, dtype=a_rows.dtype, device=a_rows.device)
    scratch = torch.empty_like(out)
    for z in range(b.shape[0]):
        torch.minimum(a_rows[:, z:z + 1], b[z:z + 1], out=scratch)
        torch.maximum(out, scratch, out=out)
    return out


def _row_blocks(n_rows: int, n_columns: int) -> range:
    step = max(1, _BLOCK_ENTRIES // max(1, n_columns))
    return range(0, n_rows, step)


def max_min_product(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(A ⊗ B)[x, y] = max_z min(A[x, z], B[z, y]): (n, m), (m, p) -> (n, p). ``b`` defaults to ``a``."""
    b = a if b is None else b
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {tuple(a.shape)} ⊗ {tuple(b.shape)}")
    step = _row_blocks(len(a), b.shape[1]).step
    return torch.cat([_max_min_rows(a[start:start + step], b) for start in range(0, len(a), step)])


def gromov_delta(dist: torch.Tensor, base: int | None = 0) -> float:
    """δ_w of a finite metric given by its distance matrix (n, n).

    ``base``: index of the base point w (Khrulkov et al.: the first point); ``None``: the four-point δ of the
    space, the maximum over every base point (n times the cost).
    """
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1] or len(dist) == 0:
        raise ValueError(f"need a non-empty square distance matrix, got shape {tuple(dist.shape)}")
    delta = 0.0      # x = y = z gives 0: δ_w is never negative
    for w in (range(len(dist)) if base is None else [base]):
        products = gromov_products(dist, w)
        blocks = _row_blocks(len(products), len(products))
        for start in blocks:
            rows = products[start:start + blocks.step]
            # max over this row block of (G ⊗ G - G): the (n, n) product is never stored whole
            delta = max(delta, (_max_min_rows(rows, products) - rows).max().item())
    return delta


def pairwise_distances(points: torch.Tensor, metric: str | Geometry | Callable = "euclidean") -> torch.Tensor:
    """Distance matrix (n, n) of points (n, P) under ``metric``, in float64.

    ``"euclidean"``: ‖x - y‖ (expanded in float64, so the cancellation of the expansion is at 1e-16 relative);
    a :class:`~hybridzoo.geometry.Geometry`: its ``pairwise_distance`` (geodesic distances of its points); a
    callable ``metric(a, b) -> (n, m)`` distances.
    """
    points = points.double()
    if isinstance(metric, Geometry):
        dist = metric.pairwise_distance(points, points)
    elif callable(metric):
        dist = torch.as_tensor(metric(points, points), dtype=torch.float64)
    elif metric == "euclidean":
        sq = points.square().sum(1)
        # the expansion can be slightly negative for (near-)duplicate points: clamp before the square root
        dist = (sq[:, None] + sq[None, :] - 2 * points @ points.T).clamp_min(0).sqrt()
    else:
        raise ValueError(f"metric must be 'euclidean', 'precomputed', a Geometry or a callable; got {metric!r}")
    dist = dist.clone()
    dist.fill_diagonal_(0)      # d(x, x) = 0 exactly, whatever rounding the formula left
    return dist


def delta_hyperbolicity(features, n_samples: int = 2000, n_draws: int = 5, seed: int = 0,
                        metric: str | Geometry | Callable = "euclidean", dtype: torch.dtype = torch.float32) -> dict:
    """Relative δ-hyperbolicity of a feature set and the curvature it suggests (Khrulkov et al. 2020).

    Args:
        features: (N, P) features or points (tensor or array); with ``metric="precomputed"``, an (N, N)
            distance matrix.
        n_samples: points per draw (all N when N is smaller; each draw then differs by its base point).
        n_draws: independent draws averaged (without replacement within a draw).
        seed: seed of the draws (a private generator; the global RNG is untouched).
        metric: ``"euclidean"``, ``"precomputed"``, a Geometry (e.g. ``model.geometry`` for head outputs:
            geodesic distances) or a callable ``(a, b) -> distances``.
        dtype: dtype of the max-min product (distances are computed in float64 first).

    Returns:
        dict with ``delta`` (mean δ_w), ``delta_rel`` (mean 2δ_w/diam), ``delta_rel_std`` (over draws),
        ``diameter`` (mean diam), ``suggested_curvature`` ((0.144/δ_rel)², the c of sectional curvature -c;
        ``inf`` for δ_rel = 0), ``n_samples`` and ``n_draws``. A draw's δ below 8 ulps of its diameter (in
        ``dtype``) is rounding noise and counts as 0.
    """
    data = torch.as_tensor(features)
    precomputed = isinstance(metric, str) and metric == "precomputed"
    if precomputed and (data.ndim != 2 or data.shape[0] != data.shape[1]):
        raise ValueError(f"metric='precomputed' needs a square distance matrix, got shape {tuple(data.shape)}")
    if data.ndim != 2 or len(data) < 2:
        raise ValueError(f"need at least 2 points as an (N, P) array, got shape {tuple(data.shape)}")
    if n_draws < 1 or n_samples < 2:
        raise ValueError(f"need n_draws >= 1 and n_samples >= 2, got {n_draws} and {n_samples}")
    generator = torch.Generator().manual_seed(seed)
    size = min(n_samples, len(data))
    deltas, rels, diameters = [], [], []
    for _ in range(n_draws):
        index = torch.randperm(len(data), generator=generator)[:size].to(data.device)
        if precomputed:
            dist = data[index][:, index].double()
        else:
            dist = pairwise_distances(data[index], metric)
        diameter = dist.max().item()
        delta = gromov_delta(dist.to(dtype), base=0)
        # δ is a difference of sums of distances: below a few ulps of the diameter it is rounding noise (a tree
        # metric gives ~1e-16 in float64), reported as 0 rather than as a curvature suggestion of 1e29
        if delta <= 8 * torch.finfo(dtype).eps * diameter:
            delta = 0.0
        deltas.append(delta)
        diameters.append(diameter)
        # all points identical: diameter 0, and δ = 0 as well; call that perfectly hyperbolic (δ_rel = 0)
        rels.append(2 * delta / diameter if diameter > 0 else 0.0)
    delta_rel = sum(rels) / n_draws
    std = math.sqrt(sum((r - delta_rel) ** 2 for r in rels) / (n_draws - 1)) if n_draws > 1 else 0.0
    return {"delta": sum(deltas) / n_draws, "delta_rel": delta_rel, "delta_rel_std": std,
            "diameter": sum(diameters) / n_draws,
            "suggested_curvature": (POINCARE_DELTA_REL / delta_rel) ** 2 if delta_rel > 0 else math.inf,
            "n_samples": size, "n_draws": n_draws}

"""fp32 precision of pairwise distances for points near the origin, where α scaling and clipping keep them.

Regression test: the textbook acosh(-c⟨a,b⟩_L) form cancels at the scale of 1/c, so in fp32 it cannot resolve
distances below ~1e-3 — an untrained resnet10t-lorentz then scores chance-level 1-NN on digits (0.13 instead of
0.83). The reference here is float64 arithmetic on the same points, written independently of the library.
"""
import math

import pytest
import torch

from hybridzoo.geometry import Euclidean, Lorentz, Product, Sphere


def lorentz_reference(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """float64 acosh form on the points' space parts, with x0 recomputed in float64 (design.md §1: the space part
    is the parameter). acosh(1 + y) in float64 resolves distances down to ~1e-7, below everything tested here."""
    u, w = a[:, 1:].double(), b[:, 1:].double()
    a0 = torch.sqrt(1 / c + (u * u).sum(-1, keepdim=True))
    b0 = torch.sqrt(1 / c + (w * w).sum(-1))[None, :]
    return torch.acosh((c * (a0 * b0 - u @ w.T)).clamp_min(1.0)) / math.sqrt(c)


def sphere_reference(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    a, b = a.double(), b.double()
    chord = torch.cdist(a, b)
    return 2 / math.sqrt(c) * torch.asin((math.sqrt(c) * chord / 2).clamp(max=1.0))


@pytest.mark.parametrize("c", [0.1, 1.0, 2.0])
@pytest.mark.parametrize("scale", [1e-3, 3e-2, 1.0])
def test_near_origin_pairwise_distances_keep_fp32_accuracy(c, scale):
    """Clusters of radius ~scale/10 around points at tangent norm ~scale: fine structure must survive fp32."""
    torch.manual_seed(0)
    centre = torch.randn(1, 16) * scale
    features = centre + torch.randn(64, 16) * scale / 10
    for geometry, reference in ((Lorentz(curvature=c), lorentz_reference), (Sphere(curvature=c), sphere_reference)):
        points = geometry.expmap0(features)
        # the reference sees the same fp32 points, promoted, so only the distance arithmetic is compared
        expected = reference(points, points, c)
        got = geometry.pairwise_distance(points, points).double()
        off_diagonal = ~torch.eye(64, dtype=torch.bool)
        relative = ((got - expected).abs() / expected)[off_diagonal]
        assert relative.max() < 2e-3, (geometry.name, relative.max().item())
        # coincident points: only the rounding of the space expansion remains, ~sqrt(eps)·‖x_s‖ (the acosh form
        # leaves ~1e-3/√c whatever the norm)
        bound = 4 * math.sqrt(torch.finfo(torch.float32).eps) * points[:, 1:].norm(dim=-1).max().item()
        assert got.diagonal().max() < bound


def test_untrained_features_near_the_origin_rank_like_float64():
    """The 1-NN of every point is the same in fp32 as in float64 (what k-NN evaluation depends on)."""
    torch.manual_seed(1)
    features = torch.randn(1, 128) * 0.03 + torch.randn(200, 128) * 0.002
    geometry = Product([(Euclidean(), 64), (Lorentz(curvature=1.0), 64)])
    points = geometry.expmap0(features)
    d32 = geometry.pairwise_distance(points, points).fill_diagonal_(float("inf"))
    d64 = geometry.pairwise_distance(points.double(), points.double()).fill_diagonal_(float("inf"))
    assert (d32.argmin(1) == d64.argmin(1)).float().mean() > 0.98

"""Gromov δ-hyperbolicity (hybridzoo/hyperbolicity.py) against brute force and known metrics."""
import itertools
import math

import numpy as np
import pytest
import torch

from hybridzoo.geometry import Lorentz
from hybridzoo.hyperbolicity import (delta_hyperbolicity, gromov_delta, gromov_products, max_min_product,
                                     pairwise_distances)


def brute_force_four_point_delta(dist: np.ndarray) -> float:
    """O(n⁴) over all quadruples, sum form: δ = max (S₁ - S₂)/2 over the three pair sums S₁ ≥ S₂ ≥ S₃."""
    delta = 0.0
    for x, y, z, w in itertools.product(range(len(dist)), repeat=4):
        sums = sorted([dist[x, y] + dist[z, w], dist[x, z] + dist[y, w], dist[x, w] + dist[y, z]])
        delta = max(delta, (sums[2] - sums[1]) / 2)
    return delta


def brute_force_base_delta(dist: np.ndarray, w: int) -> float:
    """O(n³) over all triples, Gromov product form with base point w."""
    g = 0.5 * (dist[:, w][:, None] + dist[w, :][None, :] - dist)
    n = len(dist)
    return max(min(g[x, z], g[z, y]) - g[x, y] for x in range(n) for y in range(n) for z in range(n))


def random_tree_metric(n: int, seed: int = 0) -> torch.Tensor:
    """Shortest-path distances between the nodes of a random weighted tree (node i hangs from a random j < i)."""
    rng = np.random.default_rng(seed)
    dist = np.zeros((n, n))
    for i in range(1, n):
        parent, length = rng.integers(0, i), rng.uniform(0.1, 2.0)
        dist[i, :i] = dist[:i, i] = dist[parent, :i] + length     # the path to any earlier node passes the parent
    return torch.tensor(dist)


def test_max_min_product_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 5, generator=gen), torch.rand(5, 9, generator=gen)
    expected = torch.minimum(a[:, :, None], b[None, :, :]).amax(1)
    assert torch.equal(max_min_product(a, b), expected)
    square = torch.rand(6, 6, generator=gen)
    assert torch.equal(max_min_product(square), torch.minimum(square[:, :, None], square[None]).amax(1))


def test_gromov_delta_matches_brute_force():
    points = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dist = pairwise_distances(points)
    np.testing.assert_allclose(dist.numpy(), torch.cdist(points, points).numpy(), atol=1e-12)
    for w in (0, 4):
        assert gromov_delta(dist, base=w) == pytest.approx(brute_force_base_delta(dist.numpy(), w), abs=1e-12)
    four_point = brute_force_four_point_delta(dist.numpy())
    assert gromov_delta(dist, base=None) == pytest.approx(four_point, abs=1e-12)
    assert four_point > 0
    # any base point gives at least half the four-point δ
    assert all(four_point / 2 - 1e-12 <= gromov_delta(dist, base=w) <= four_point + 1e-12 for w in range(9))


def test_gromov_products():
    dist = torch.tensor([[0.0, 3, 4], [3, 0, 5], [4, 5, 0]])
    products = gromov_products(dist, base=0)
    assert products[1, 2].item() == pytest.approx(0.5 * (3 + 4 - 5))
    assert torch.equal(products.diagonal(), dist[0])        # (x|x)_w = d(x, w)


def test_tree_metric_is_zero_hyperbolic():
    dist = random_tree_metric(40, seed=2)
    assert gromov_delta(dist, base=None) < 1e-12
    result = delta_hyperbolicity(dist, metric="precomputed", n_samples=30, n_draws=3, dtype=torch.float64)
    assert result["delta_rel"] < 1e-12 and result["suggested_curvature"] == math.inf
    assert result["n_samples"] == 30 and result["diameter"] > 0


def test_circle_is_far_from_hyperbolic():
    angles = torch.linspace(0, 2 * math.pi, 121)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()], 1)
    chordal = delta_hyperbolicity(circle, n_draws=2)
    assert chordal["delta_rel"] > 0.5, chordal
    # arc-length (geodesic) metric on the circle of circumference 2π: diameter π
    arc = (angles[:, None] - angles[None, :]).abs()
    arc = torch.minimum(arc, 2 * math.pi - arc)
    geodesic = delta_hyperbolicity(arc, metric="precomputed", n_draws=2)
    assert geodesic["delta_rel"] > 0.5 and geodesic["diameter"] == pytest.approx(math.pi, rel=1e-6)
    tree = delta_hyperbolicity(random_tree_metric(120), metric="precomputed", n_draws=2)
    assert tree["delta_rel"] < 1e-5 < chordal["delta_rel"]


def test_delta_hyperbolicity_protocol():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(300, 8, generator=gen)
    state = torch.get_rng_state()
    result = delta_hyperbolicity(features, n_samples=100, n_draws=4, seed=7)
    assert torch.equal(state, torch.get_rng_state())                     # private generator
    assert result == delta_hyperbolicity(features, n_samples=100, n_draws=4, seed=7)
    assert result["n_samples"] == 100 and result["n_draws"] == 4 and result["delta_rel_std"] >= 0
    assert 0 < result["delta_rel"] < 1
    assert result["suggested_curvature"] == pytest.approx((0.144 / result["delta_rel"]) ** 2)
    assert result["delta"] == pytest.approx(result["delta_rel"] * result["diameter"] / 2, rel=0.2)


def test_geometry_and_callable_metrics():
    geometry = Lorentz(curvature=1.0)
    points = geometry.expmap0(torch.randn(60, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    with_geometry = delta_hyperbolicity(points, metric=geometry, n_draws=2, dtype=torch.float64)
    precomputed = delta_hyperbolicity(geometry.pairwise_distance(points, points), metric="precomputed",
                                      n_draws=2, dtype=torch.float64)
    assert with_geometry["delta"] == pytest.approx(precomputed["delta"], abs=1e-9)
    manhattan = delta_hyperbolicity(points, metric=lambda a, b: torch.cdist(a, b, p=1), n_draws=1)
    assert manhattan["delta_rel"] > 0
    with pytest.raises(ValueError, match="metric"):
        delta_hyperbolicity(points, metric="cosine")
    with pytest.raises(ValueError, match="square"):
        delta_hyperbolicity(points, metric="precomputed")

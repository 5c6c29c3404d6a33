"""k-NN evaluation and the linear probe (hybridzoo/evaluation.py).

The k-NN reference is scikit-learn's KNeighborsClassifier on the precomputed distance matrix of the geometry,
with a callable weights function implementing the documented vote weights; float64 and continuous random data,
so no two distances tie.
"""
import math

import mpmath
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from hybridzoo.evaluation import (_LN2, _acosh1p_log2, _ranking_key, knn_accuracies, knn_accuracy, knn_classify,
                                  knn_topk, knn_votes, linear_probe)
from hybridzoo.geometry import Euclidean, Geometry, Lorentz, Product, Sphere

TAU = 0.07


def _geometries():
    return {
        "cosine": (Euclidean(), 16),
        "lorentz": (Lorentz(curvature=0.7), 16),
        "product": (Product([(Euclidean(), 8), (Lorentz(curvature=1.5), 8), (Sphere(curvature=0.5), 6)]), 22),
    }


def _clustered_points(geometry, dim, n, num_classes=6, seed=0, dtype=torch.float64):
    """Points around one centre per class (the same centres for every seed: k-NN is informative), labels."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123), dtype=dtype) * 0.5
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=gen)
    features = centres[labels] + 0.4 * torch.randn(n, dim, generator=gen, dtype=dtype)
    return geometry.expmap0(features), labels


def _sklearn_reference(geometry, train, train_labels, queries, k):
    """KNeighborsClassifier(metric="precomputed") on D = d (or 1 - cos), weights exp(s/τ) with s = -D (or cos)."""
    if isinstance(geometry, Euclidean):
        cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
        distances = (1 - cos).numpy()
        weights = lambda d: np.exp((1 - d) / TAU)      # noqa: E731  exp(cos/τ)
        fit_matrix = np.zeros((len(train), len(train)))
    else:
        distances = geometry.pairwise_distance(queries, train).numpy()
        weights = lambda d: np.exp(-d / TAU)          # noqa: E731  exp(-d/τ)
        fit_matrix = np.zeros((len(train), len(train)))
    model = KNeighborsClassifier(n_neighbors=k, metric="precomputed", weights=weights)
    model.fit(fit_matrix, train_labels.numpy())
    return model.predict(distances), distances


@pytest.mark.parametrize("name", ["cosine", "lorentz", "product"])
@pytest.mark.parametrize("k", [1, 20])
def test_knn_equals_sklearn_precomputed(name, k):
    geometry, dim = _geometries()[name]
    train, train_labels = _clustered_points(geometry, dim, 500, seed=1)
    queries, _ = _clustered_points(geometry, dim, 120, seed=2)
    expected, distances = _sklearn_reference(geometry, train, train_labels, queries, k)
    # small blocks, not multiples of the filter's group size: several merges per query
    predicted = knn_classify(train, train_labels, queries, geometry, k=k, temperature=TAU, dtype=torch.float64,
                             query_block=64, train_block=100)
    np.testing.assert_array_equal(predicted.numpy(), expected)
    # the neighbours themselves: the k smallest distances, nearest first, with the geometry's similarity
    sims, indices = knn_topk(train, queries, geometry, k=k, dtype=torch.float64)
    np.testing.assert_array_equal(indices.numpy(), np.argsort(distances, axis=1, kind="stable")[:, :k])
    expected_sims = -np.take_along_axis(distances, indices.numpy(), 1)
    if isinstance(geometry, Euclidean):
        expected_sims = 1 + expected_sims              # cos = 1 - D
    np.testing.assert_allclose(sims.numpy(), expected_sims, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["cosine", "lorentz", "product", "sphere", "flat"])
def test_blocking_does_not_change_the_neighbours(name):
    geometry, dim = {**_geometries(), "sphere": (Sphere(curvature=2.0), 12),
                     "flat": (Euclidean(normalize=False), 12)}[name]
    train, _ = _clustered_points(geometry, dim, 500, seed=3)
    queries, _ = _clustered_points(geometry, dim, 60, seed=4)
    for k in (1, 7, 50):
        reference = knn_topk(train, queries, geometry, k, dtype=torch.float64)
        for query_block, train_block in ((40, 128), (30, 33)):
            sims, indices = knn_topk(train, queries, geometry, k, dtype=torch.float64, query_block=query_block,
                                     train_block=train_block)
            assert torch.equal(indices, reference[1]), (k, query_block, train_block)
            torch.testing.assert_close(sims, reference[0], rtol=0, atol=1e-12)


def test_k_larger_than_the_training_set_and_empty_queries():
    geometry = Lorentz()
    train = geometry.expmap0(torch.randn(5, 4))
    sims, indices = knn_topk(train, train, geometry, k=200)
    assert indices.shape == (5, 5) and torch.equal(indices[:, 0], torch.arange(5))
    assert (sims[:, :-1] >= sims[:, 1:]).all()                    # nearest first
    empty = knn_topk(train, train[:0], geometry, k=3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)


def _near_origin_lorentz(c, scale, n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 64, generator=gen) * scale + torch.randn(n, 64, generator=gen) * scale / 10
    return Lorentz(curvature=c).expmap0(features)


def _float64_nearest(points, c):
    """Independent float64 reference: acosh form with x0 recomputed in float64 from the space part."""
    xs = points[:, 1:].double()
    x0 = torch.sqrt(1 / c + xs.square().sum(1, keepdim=True))
    d = torch.acosh((c * (x0 * x0.T - xs @ xs.T)).clamp_min(1.0)).fill_diagonal_(math.inf)
    return d.argmin(1)


@pytest.mark.parametrize("c", [0.1, 1.0])
@pytest.mark.parametrize("scale", [1e-3, 3e-2])
def test_fp32_lorentz_search_keeps_near_origin_neighbours(c, scale):
    """The README precision finding applied to search: ranking by the plain Minkowski product in fp32 loses the
    near-origin neighbours; the origin-offset key keeps them (agreement with float64 like pairwise_distance)."""
    points = _near_origin_lorentz(c, scale)
    reference = _float64_nearest(points, c)
    # the query itself is its own nearest neighbour: take the second
    _, indices = knn_topk(points, points, Lorentz(curvature=c), k=2)
    assert (indices[:, 0] == torch.arange(len(points))).float().mean() > 0.99
    assert (indices[:, 1] == reference).float().mean() > 0.98
    plain = (torch.cat([-points[:, :1], points[:, 1:]], 1) @ points.T).fill_diagonal_(-math.inf)   # ⟨x,y⟩_L
    if scale == 1e-3:
        assert (plain.argmax(1) == reference).float().mean() < 0.5     # what the key avoids


def test_fp32_product_and_sphere_search_near_origin():
    torch.manual_seed(1)
    features = torch.randn(1, 64) * 0.01 + torch.randn(300, 64) * 0.001
    for geometry in (Product([(Euclidean(normalize=False), 32), (Lorentz(curvature=1.0), 32)]),
                     Sphere(curvature=1.0)):
        points = geometry.expmap0(features)
        d64 = geometry.pairwise_distance(points.double(), points.double()).fill_diagonal_(math.inf)
        _, indices = knn_topk(points, points, geometry, k=2)
        assert (indices[:, 1] == d64.argmin(1)).float().mean() > 0.98, geometry


def test_ties_go_to_the_smaller_index_and_the_smaller_label():
    geometry = Euclidean()
    # unit vectors with four entries ±1/2: every dot product is a sum of ±1/4, exact in any summation order, so
    # the duplicates tie exactly even when blocks of different shapes take different matmul kernels
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(20, 8)
    for row in base:
        row[torch.randperm(8, generator=gen)[:4]] = 0.5 * (2 * torch.randint(0, 2, (4,), generator=gen) - 1)
    assert len(torch.unique(base, dim=0)) == 20
    train = torch.cat([base, base])             # every point twice: indices i and i + 20 tie exactly
    for train_block in (4096, 16, 7):           # the duplicate in the same block or in a later one
        _, indices = knn_topk(train, base, geometry, k=1, train_block=train_block)
        assert torch.equal(indices[:, 0], torch.arange(20))
    # a vote tie (two neighbours at exactly the same similarity, different labels): the smaller label wins
    labels = torch.cat([torch.full((20,), 3), torch.full((20,), 1)])
    assert (knn_classify(train, labels, base, geometry, k=2) == 1).all()


def test_vote_weights_formula():
    """k > 1: class votes Σ exp(s/τ) (relative to the nearest), s = -d for distance geometries."""
    geometry = Lorentz()
    train = geometry.expmap0(torch.randn(50, 6, dtype=torch.float64))
    labels = torch.randint(4, (50,))
    queries = geometry.expmap0(torch.randn(10, 6, dtype=torch.float64))
    votes = knn_votes(train, labels, queries, geometry, k=5, temperature=0.5, num_classes=4)
    d = geometry.pairwise_distance(queries, train)
    near = d.topk(5, largest=False)
    expected = torch.zeros(10, 4, dtype=torch.float64)
    expected.scatter_add_(1, labels[near.indices], torch.exp(-(near.values - near.values[:, :1]) / 0.5))
    torch.testing.assert_close(votes, expected)
    uniform = knn_votes(train, labels, queries, geometry, k=5, weights="uniform", num_classes=4)
    assert torch.equal(uniform.sum(1), torch.full((10,), 5.0, dtype=torch.float64))


def test_accuracy_api_and_one_search_for_several_k():
    geometry = Product([(Euclidean(), 8), (Lorentz(), 8)])
    train, train_labels = _clustered_points(geometry, 16, 400, seed=5, dtype=torch.float32)
    test, test_labels = _clustered_points(geometry, 16, 100, seed=6, dtype=torch.float32)
    together = knn_accuracies(train, train_labels, test, test_labels, geometry, ks=(1, 20, 200))
    for k in (1, 20, 200):
        # the call hybridzoo/training.py makes
        single = knn_accuracy(train, train_labels, test, test_labels, geometry, k=k)
        assert single == together[k]
        predicted = knn_classify(train, train_labels, test, geometry, k=k)
        assert single == pytest.approx((predicted == test_labels).double().mean().item())
    assert together[20] > 0.5         # the clusters are separable


def test_half_precision_inputs_and_bad_inputs():
    geometry = Lorentz()
    points = geometry.expmap0(torch.randn(64, 8))
    labels = torch.arange(64) % 4
    sims, indices = knn_topk(points.bfloat16(), points.bfloat16(), geometry, k=3)
    assert sims.dtype == torch.float32 and (indices[:, 0] == torch.arange(64)).float().mean() > 0.9
    bad = points.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn_topk(bad, points, geometry)
    with pytest.raises(ValueError, match="NaN"):
        knn_topk(points, bad, geometry)
    with pytest.raises(ValueError, match="coordinates"):
        knn_topk(points, points[:, :5], geometry)
    with pytest.raises(ValueError, match="non-negative integers"):
        knn_classify(points, labels.float(), points, geometry)
    with pytest.raises(ValueError, match="weights"):
        knn_classify(points, labels, points, geometry, k=3, weights="distance")


class _Manhattan(Geometry):
    """A geometry the search has no special key for: it falls back to the default logits."""
    name = "manhattan"

    def pairwise_distance(self, a, b):
        return (a[:, None, :] - b[None, :, :]).abs().sum(-1)


def test_other_geometries_fall_back_to_their_logits():
    geometry = _Manhattan()
    train, queries = torch.randn(200, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    sims, indices = knn_topk(train, queries, geometry, k=4, train_block=64)
    expected = geometry.pairwise_distance(queries, train).topk(4, largest=False)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(sims, -expected.values)


def test_linear_probe_on_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = torch.tensor(digits.data[:1200], dtype=torch.float32), torch.tensor(digits.target[:1200])
    result = linear_probe(x[:900], y[:900], x[900:], y[900:], Cs=(0.01, 0.1, 1.0))
    assert result["top1"] > 0.85, result
    assert result["C"] in (0.01, 0.1, 1.0) and set(result["val_top1"]) == {0.01, 0.1, 1.0}
    assert result["val_top1"][result["C"]] == max(result["val_top1"].values())
    assert result["top5"] >= result["top1"] and isinstance(result["converged"], bool)


def test_linear_probe_on_tangent_vectors_and_numpy():
    """Head outputs of a Lorentz head, probed on their tangent vectors (logmap0), as numpy arrays."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    features = np.eye(3)[labels] * 2 + rng.normal(size=(300, 3)) * 0.5
    geometry = Lorentz()
    tangent = geometry.logmap0(geometry.expmap0(torch.tensor(features, dtype=torch.float32))).numpy()
    result = linear_probe(tangent[:200], labels[:200], tangent[200:], labels[200:])
    assert result["top1"] > 0.8 and "top5" not in result
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(tangent, labels, tangent, labels, val_fraction=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_search_acosh_matches_mpmath(dtype):
    """The product search's acosh(1 + w) (vectorised log2 with Goldberg's log1p correction) against 50-digit
    mpmath from w = 1e-14 (d ≈ 1.4e-7) to the dtype's overflow region; below 1 + a = 1 it reads 0; never NaN."""
    mpmath.mp.dps = 50
    top = 37 if dtype == torch.float32 else 300
    w = torch.logspace(-14, top, 1500, dtype=torch.float64).to(dtype)
    reference = torch.tensor([float(mpmath.acosh(1 + mpmath.mpf(float(v)))) for v in w.double()],
                             dtype=torch.float64)
    got = _acosh1p_log2(w.clone(), torch.empty_like(w)).double() * _LN2
    ulps = ((got - reference).abs() / reference / torch.finfo(dtype).eps).max().item()
    assert ulps < 4, ulps
    finfo = torch.finfo(dtype)
    edge = torch.tensor([-1e-7, 0.0, 1e-30, finfo.max, math.inf], dtype=dtype)
    out = _acosh1p_log2(edge.clone(), torch.empty_like(edge))
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert out[0] == out[1] == 0                      # rounding below 0 means coincident points
    assert out[3] == out[4] == out.max()              # beyond the cap every distance reads the same, finitely


# ---------------------------------------------------------------------------------------- bounded product search

def _mixed_product(c_lorentz, c_sphere):
    return Product([(Euclidean(normalize=False), 6), (Lorentz(curvature=c_lorentz), 6),
                    (Sphere(curvature=c_sphere), 5)])


@pytest.mark.parametrize("c", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 1.0, 3.0])
def test_product_bound_vectors_never_exceed_the_distance(c, scale):
    """‖b(x) - b(y)‖² ≤ d²(x, y) (Poincaré factor 2 for Lorentz, chord for the sphere), against float64 distances
    recomputed independently per factor; tight near the origin, where the ball's metric is 2‖dp‖."""
    geometry = _mixed_product(c, c)
    gen = torch.Generator().manual_seed(int(c * 10 + scale * 100))
    points = geometry.expmap0(torch.randn(200, 17, generator=gen, dtype=torch.float64) * scale)
    bound = _ranking_key(geometry).bound_points(points)
    bound_sq = torch.cdist(bound, bound).square()
    e, h, s = geometry.split(points)
    hyperbolic = torch.acosh((c * (h[:, :1] * h[:, :1].T - h[:, 1:] @ h[:, 1:].T)).clamp_min(1)) / math.sqrt(c)
    spherical = torch.acos((c * s @ s.T).clamp(-1, 1)) / math.sqrt(c)
    exact_sq = torch.cdist(e, e).square() + hyperbolic.square() + spherical.square()
    far = exact_sq > 1e-12 if scale > 1e-3 else exact_sq > 1e-14   # acos/acosh lose digits at coincidence
    assert (bound_sq[far] <= exact_sq[far] * (1 + 1e-9)).all()
    if scale == 1e-3:
        assert (bound_sq[far] / exact_sq[far]).min() > 0.99          # nearly exact near the origin


def _full_product_search(train, queries, geometry, k, dtype):
    return knn_topk(train, queries, geometry, k, dtype=dtype, bounded=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("data", ["clustered", "random"])
def test_bounded_product_search_equals_the_full_search(dtype, data, monkeypatch):
    """Certified queries and re-searched ones alike give the full search's neighbours; both paths run."""
    import hybridzoo.evaluation as evaluation

    geometry = _mixed_product(0.8, 1.5)
    if data == "clustered":
        train, _ = _clustered_points(geometry, 17, 3000, seed=7, dtype=dtype)
        queries, _ = _clustered_points(geometry, 17, 300, seed=8, dtype=dtype)
    else:     # concentrated distances: the bound's hardest case
        gen = torch.Generator().manual_seed(9)
        train = geometry.expmap0(torch.randn(3000, 17, generator=gen, dtype=dtype) / 17 ** 0.5)
        queries = geometry.expmap0(torch.randn(300, 17, generator=gen, dtype=dtype) / 17 ** 0.5)
    ks = (1, 5, evaluation.BOUNDED_MAX_K)
    references = {k: _full_product_search(train, queries, geometry, k, dtype) for k in ks}
    redone = []
    original = evaluation._search_blocks

    def spy(train_points, query_points, key, k, *args):
        if isinstance(key, evaluation._ProductKey):
            redone.append(len(query_points))
        return original(train_points, query_points, key, k, *args)

    monkeypatch.setattr(evaluation, "_search_blocks", spy)
    for k in ks:
        redone.clear()
        sims, indices = knn_topk(train, queries, geometry, k, dtype=dtype, query_block=128, train_block=500)
        ref_sims, ref_indices = references[k]
        assert torch.equal(indices, ref_indices), (k, (indices != ref_indices).sum())
        torch.testing.assert_close(sims, ref_sims, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
        assert sum(redone) < len(queries), "the bound certified some queries"
        if data == "clustered" and k == 1:
            assert sum(redone) < 0.2 * len(queries), redone
    monkeypatch.setattr(evaluation, "_bounded_candidates", lambda k: k + 1)   # too few: most are searched again
    redone.clear()
    assert torch.equal(knn_topk(train, queries, geometry, 5, dtype=dtype)[1], references[5][1])
    assert sum(redone) > 0
    redone.clear()                                       # bounded=True: beyond BOUNDED_MAX_K too
    k = evaluation.BOUNDED_MAX_K + 30
    assert torch.equal(knn_topk(train, queries, geometry, k, dtype=dtype, bounded=True)[1],
                       _full_product_search(train, queries, geometry, k, dtype)[1])


def test_bounded_product_search_keeps_ties_on_the_smaller_index():
    """40 copies of each point (more than the candidates kept for k = 1): the certificate cannot exclude the
    copies beyond the candidates, so the query is searched in full and the first copy wins."""
    geometry = _mixed_product(1.0, 1.0)
    base = geometry.expmap0(torch.randn(10, 17, generator=torch.Generator().manual_seed(3)))
    train = base.repeat(40, 1)                    # copy j of point i at index 10 j + i
    _, indices = knn_topk(train, base, geometry, k=1)
    assert torch.equal(indices[:, 0], torch.arange(10))
    sims, indices = knn_topk(train, base, geometry, k=3)        # k > 1: which tied copies is arbitrary
    assert torch.equal(indices % 10, torch.arange(10)[:, None].expand(10, 3))
    assert (sims > -5e-3).all()                                   # 0 up to fp32's distance floor

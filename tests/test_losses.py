"""Contrastive objectives against hand-written float64 references, for every geometry."""
import math

import pytest
import torch

from hybridzoo.geometry import Euclidean, Lorentz, Product, Sphere
from hybridzoo.losses import ContrastiveObjective, LogitScale, nt_xent, supcon

GEOMETRIES = {
    "euclidean": lambda: Euclidean(),
    "lorentz": lambda: Lorentz(curvature=0.7),
    "sphere": lambda: Sphere(curvature=1.3),
    "product": lambda: Product([(Euclidean(), 4), (Lorentz(curvature=2.0), 3), (Sphere(curvature=0.5), 3)]),
}
DIM = 10


def similarity(geometry_name: str, a: torch.Tensor, b: torch.Tensor, c_values) -> float:
    """The default logit numerator written out per geometry in float64: cosine, or minus the geodesic distance."""
    a, b = a.double(), b.double()
    if geometry_name == "euclidean":
        return float(a @ b / (a.norm() * b.norm()))
    if geometry_name == "lorentz":
        return -lorentz_distance(a, b, c_values[0])
    if geometry_name == "sphere":
        return -sphere_distance(a, b, c_values[0])
    e, h, s = (a[:4], b[:4]), (a[4:8], b[4:8]), (a[8:], b[8:])
    e = (e[0] / e[0].norm(), e[1] / e[1].norm())
    squared = (e[0] - e[1]).norm() ** 2 + lorentz_distance(*h, c_values[0]) ** 2 + sphere_distance(*s, c_values[1]) ** 2
    return -math.sqrt(squared)


def lorentz_distance(x, y, c):
    inner = -x[0] * y[0] + x[1:] @ y[1:]
    return math.acosh(max(1.0, float(-c * inner))) / math.sqrt(c)


def sphere_distance(x, y, c):
    return math.acos(min(1.0, max(-1.0, float(c * (x @ y))))) / math.sqrt(c)


def reference_nt_xent(name, z1, z2, temperature, c_values):
    views = list(z1) + list(z2)
    n, total = len(z1), 0.0
    for i, anchor in enumerate(views):
        positive = (i + n) % (2 * n)
        logits = {j: similarity(name, anchor, other, c_values) / temperature
                  for j, other in enumerate(views) if j != i}
        total += -logits[positive] + math.log(sum(math.exp(v) for v in logits.values()))
    return total / (2 * n)


def reference_supcon(name, z1, z2, labels, temperature, c_values):
    views = list(z1) + list(z2)
    view_labels = list(labels) * 2
    total = 0.0
    for i, anchor in enumerate(views):
        logits = {j: similarity(name, anchor, other, c_values) / temperature
                  for j, other in enumerate(views) if j != i}
        log_norm = math.log(sum(math.exp(v) for v in logits.values()))
        positives = [j for j in logits if view_labels[j] == view_labels[i]]
        total += -sum(logits[p] - log_norm for p in positives) / len(positives)
    return total / len(views)


def sample_points(geometry, n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    v1 = torch.randn(n, DIM, generator=generator, dtype=torch.float64) * 0.8
    v2 = v1 + 0.3 * torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    return geometry.expmap0(v1), geometry.expmap0(v2)


def curvatures(geometry) -> list[float]:
    """The geometry's curvature values (stored as log c in fp32: 0.7 is held as 0.69999998...)."""
    factors = geometry.factors if isinstance(geometry, Product) else [geometry]
    return [f.curvature.item() for f in factors if hasattr(f, "curvature")]


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_reference(name, temperature):
    geometry = GEOMETRIES[name]().double()
    z1, z2 = sample_points(geometry)
    got = nt_xent(z1, z2, geometry, torch.tensor(1 / temperature, dtype=torch.float64))
    assert got.item() == pytest.approx(reference_nt_xent(name, z1, z2, temperature, curvatures(geometry)), rel=1e-9)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_supcon_matches_reference(name):
    geometry = GEOMETRIES[name]().double()
    z1, z2 = sample_points(geometry, n=8, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    got = supcon(z1, z2, labels, geometry, torch.tensor(1 / 0.2, dtype=torch.float64))
    assert got.item() == pytest.approx(reference_supcon(name, z1, z2, labels.tolist(), 0.2, curvatures(geometry)), rel=1e-9)


def test_supcon_with_distinct_labels_equals_nt_xent():
    geometry = Lorentz(curvature=1.0).double()
    z1, z2 = sample_points(geometry)
    scale = torch.tensor(5.0, dtype=torch.float64)
    assert supcon(z1, z2, torch.arange(6), geometry, scale).item() == pytest.approx(
        nt_xent(z1, z2, geometry, scale).item(), rel=1e-12)


@pytest.mark.parametrize("kind", ["neg_sq_distance", "inner"])
def test_logit_variants_reach_the_loss(kind):
    geometry = Lorentz(curvature=1.0).double()
    z1, z2 = sample_points(geometry)
    rows, cols = torch.cat([z1, z2]), torch.cat([z1, z2])
    if kind == "inner":
        expected_scores = -rows[:, :1] * cols[:, 0] + rows[:, 1:] @ cols[:, 1:].T
    else:
        x0 = rows[:, :1] * cols[:, 0] - rows[:, 1:] @ cols[:, 1:].T
        expected_scores = -torch.acosh(x0.clamp_min(1)) ** 2
    logits = expected_scores / 0.1
    logits.fill_diagonal_(float("-inf"))
    expected = torch.nn.functional.cross_entropy(logits, torch.cat([torch.arange(6, 12), torch.arange(6)]))
    got = nt_xent(z1, z2, geometry, torch.tensor(10.0, dtype=torch.float64), kind=kind)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hybrid_objective_is_the_weighted_sum_of_factor_losses():
    geometry = Product([(Euclidean(), 4), (Lorentz(curvature=1.0), 6)]).double()
    v1 = torch.randn(5, 10, dtype=torch.float64)
    z1, z2 = geometry.expmap0(v1), geometry.expmap0(v1 + 0.2 * torch.randn(5, 10, dtype=torch.float64))
    objective = ContrastiveObjective("hybrid", temperature=0.1, factor_temperatures=[0.1, 0.2], num_factors=2,
                                     factor_names=["euclidean", "lorentz"]).double()
    assert objective.factor_weights == [1.0, 0.1]  # the literature's Euclidean + 0.1 × hyperbolic
    loss, metrics = objective(z1, z2, None, geometry)
    (e1, h1), (e2, h2) = geometry.split(z1), geometry.split(z2)
    # the temperatures as stored (log 1/τ in fp32), so the comparison can be float64-tight
    t_euclidean, t_lorentz = (1 / s().item() for s in objective.scales)
    expected = (reference_nt_xent("euclidean", e1, e2, t_euclidean, [])
                + 0.1 * reference_nt_xent("lorentz", h1, h2, t_lorentz, curvatures(geometry.factors[1])))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert metrics["temperature_1_lorentz"] == pytest.approx(0.2)


def test_objective_errors_name_the_fix():
    with pytest.raises(ValueError, match="product head"):
        ContrastiveObjective("hybrid", num_factors=1)
    objective = ContrastiveObjective("supcon")
    z = Lorentz().expmap0(torch.randn(4, 3))
    with pytest.raises(ValueError, match="labels"):
        objective(z, z, None, Lorentz())
    with pytest.raises(ValueError, match="unknown objective"):
        ContrastiveObjective("byol")


def test_logit_scale_is_capped_and_learnable():
    scale = LogitScale(temperature=0.07, learnable=True, max_scale=100.0)
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0)
    fixed = LogitScale(temperature=0.2)
    assert not list(fixed.parameters()) and fixed.temperature == pytest.approx(0.2)


def test_identical_views_give_finite_gradients_in_every_geometry():
    for name, make in GEOMETRIES.items():
        geometry = make()
        v = torch.randn(4, DIM, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = geometry.expmap0(v * 1e4)
            loss = nt_xent(z, z, geometry, torch.tensor(10.0))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(v.grad).all(), name

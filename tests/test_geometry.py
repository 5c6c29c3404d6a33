"""Numerics of hybridzoo.geometry checked against independent references.

* An mpmath reference (50 significant digits) written here from the formulas of design.md §2, never from the
  library code: Lorentz exp/log/distance (arccosh form)/Poincaré map, Sphere exp/log/distance (arccos form).
* geoopt (``geoopt.Lorentz(k=1/c)``, ``geoopt.PoincareBall(c)``, ``geoopt.Sphere``).
* numpy / scikit-learn for logits, and hand-built origins and manifold constraints for the properties.
* The numeric guards of design.md §3: finite gradients for coincident points, zero and huge features, fp32
  computation under bf16 autocast.

Tolerances. Every input is a float32/float64 number, converted exactly to mpmath, so the reference is the exact
answer for the very numbers the library received. What is left is (a) the rounding inside the library and
(b) the conditioning of the problem: a point is stored with a relative rounding of eps per coordinate, and no
algorithm can undo that. Each distance test therefore asserts two things:

1. a conditioning-aware bound on *all* pairs (``_distance_bound``): the first-order effect of the inputs'
   rounding and of the formula's own cancellation, derived term by term there (the measured errors sit at
   <= 0.25 of it), and
2. the plain relative tolerance -- 1e-4 in float32, 1e-10 in float64 -- on the pairs where the problem is well
   conditioned at that precision (row-wise forms: ``sqrt(c) d`` above 0.05 in float32, 1e-3 in float64, and in
   float32 only near the origin, where design.md §3 says fp32 is exact enough; pairwise: wherever the bound is
   below that tolerance, which must be most entries), so that the bound cannot silently become vacuous.

The curvature the library holds is ``exp(float32(log c))`` (0.1 becomes 0.099999994); the references use that
value, and ``test_fixed_curvature_is_exact_in_float64`` documents the difference as a known inaccuracy.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics.pairwise import cosine_similarity

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # geoopt's import emits torch.jit deprecation warnings
    import geoopt
    from geoopt.manifolds.lorentz import math as geoopt_lorentz_math

from hybridzoo.geometry import LOGIT_KINDS, Euclidean, Lorentz, Product, Sphere, build_geometry
from hybridzoo.heads import TangentGuard

MP_DPS = 50
CURVATURES = [0.1, 1.0, 2.0]
DTYPES = [torch.float32, torch.float64]
MAGNITUDES = [1e-4, 0.1, 1.0, 5.0]
EPS = {dtype: torch.finfo(dtype).eps for dtype in DTYPES}
# Plain relative tolerances, applied where the problem is well conditioned at that precision (module docstring).
PLAIN_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}
ROW_MIN_SCALED_D = {torch.float32: 0.05, torch.float64: 1e-3}



def _dtype_id(dtype):
    return {torch.float32: "fp32", torch.float64: "fp64"}[dtype]


# ----------------------------------------------------------------------------------------------------------------
# mpmath reference (design.md §2). Rows are lists of mpf; c is an mpf. Call inside mpmath.workdps(MP_DPS).
# ----------------------------------------------------------------------------------------------------------------

def _mp_norm(v):
    return mpmath.sqrt(mpmath.fsum(a * a for a in v))


def _mp_dot(u, v):
    return mpmath.fsum(a * b for a, b in zip(u, v))


def mp_lorentz_expmap0(v, c):
    """exp_o(v) = (cosh(√c‖v‖)/√c, sinh(√c‖v‖) v/(√c‖v‖)): time from cosh, not from the space part."""
    sc, n = mpmath.sqrt(c), _mp_norm(v)
    if n == 0:
        return [1 / sc] + [mpmath.mpf(0)] * len(v)
    return [mpmath.cosh(sc * n) / sc] + [mpmath.sinh(sc * n) / (sc * n) * a for a in v]


def mp_lorentz_project(x, c):
    """The hyperboloid point with the same space part (design.md §1: the space part is the parametrisation)."""
    return [mpmath.sqrt(1 / c + _mp_dot(x[1:], x[1:]))] + list(x[1:])


def mp_lorentz_logmap0(x, c):
    """log_o(x) = arccosh(√c x₀)/√c · x_s/‖x_s‖ (arccosh is harmless at 50 digits)."""
    x = mp_lorentz_project(x, c)
    sc, n = mpmath.sqrt(c), _mp_norm(x[1:])
    if n == 0:
        return [mpmath.mpf(0)] * (len(x) - 1)
    theta = mpmath.acosh(sc * x[0])
    return [theta / sc * a / n for a in x[1:]]


def mp_lorentz_inner(x, y):
    return -x[0] * y[0] + _mp_dot(x[1:], y[1:])


def mp_lorentz_distance(x, y, c):
    """d = arccosh(-c⟨x, y⟩_L)/√c."""
    x, y = mp_lorentz_project(x, c), mp_lorentz_project(y, c)
    return mpmath.acosh(max(-c * mp_lorentz_inner(x, y), mpmath.mpf(1))) / mpmath.sqrt(c)


def mp_lorentz_to_poincare(x, c):
    """Stereographic projection from the south pole (-R, 0) onto the plane x₀ = 0: p = R x_s / (x₀ + R)."""
    x = mp_lorentz_project(x, c)
    radius = 1 / mpmath.sqrt(c)
    return [radius * a / (x[0] + radius) for a in x[1:]]


def mp_sphere_expmap0(v, c):
    """exp_o(v) = (cos θ, sin θ v/‖v‖)/√c with θ = √c‖v‖."""
    sc, n = mpmath.sqrt(c), _mp_norm(v)
    if n == 0:
        return [1 / sc] + [mpmath.mpf(0)] * len(v)
    return [mpmath.cos(sc * n) / sc] + [mpmath.sin(sc * n) / (sc * n) * a for a in v]


def mp_sphere_project(x, c):
    """Radial projection onto the sphere of radius 1/√c."""
    scale = 1 / (mpmath.sqrt(c) * _mp_norm(x))
    return [a * scale for a in x]


def mp_sphere_logmap0(x, c):
    """log_o(x) = arccos(√c x₀)/√c · x_s/‖x_s‖."""
    x = mp_sphere_project(x, c)
    sc, n = mpmath.sqrt(c), _mp_norm(x[1:])
    if n == 0:
        return [mpmath.mpf(0)] * (len(x) - 1)
    theta = mpmath.acos(max(min(sc * x[0], mpmath.mpf(1)), mpmath.mpf(-1)))
    return [theta / sc * a / n for a in x[1:]]


def mp_sphere_distance(x, y, c):
    """d = arccos(c⟨x, y⟩)/√c."""
    x, y = mp_sphere_project(x, c), mp_sphere_project(y, c)
    z = max(min(c * _mp_dot(x, y), mpmath.mpf(1)), mpmath.mpf(-1))
    return mpmath.acos(z) / mpmath.sqrt(c)


def _as_mp_rows(t: torch.Tensor):
    # float(float32) and float(float64) are exact binary64 values, and mpf(float) is exact.
    return [[mpmath.mpf(float(a)) for a in row] for row in t.detach().double().cpu().numpy()]


def ref_rows(fn, t: torch.Tensor, c: float) -> np.ndarray:
    """Apply a row -> row reference to every row of ``t``; the result rounded once to float64."""
    with mpmath.workdps(MP_DPS):
        cc = mpmath.mpf(c)
        return np.array([[float(a) for a in fn(row, cc)] for row in _as_mp_rows(t)])


def ref_pairs(fn, x: torch.Tensor, y: torch.Tensor, c: float) -> np.ndarray:
    with mpmath.workdps(MP_DPS):
        cc = mpmath.mpf(c)
        return np.array([float(fn(a, b, cc)) for a, b in zip(_as_mp_rows(x), _as_mp_rows(y))])


def ref_matrix(fn, a: torch.Tensor, b: torch.Tensor, c: float) -> np.ndarray:
    with mpmath.workdps(MP_DPS):
        cc = mpmath.mpf(c)
        rows_b = _as_mp_rows(b)
        return np.array([[float(fn(p, q, cc)) for q in rows_b] for p in _as_mp_rows(a)])


MP = {
    "lorentz": dict(cls=Lorentz, expmap0=mp_lorentz_expmap0, logmap0=mp_lorentz_logmap0,
                    distance=mp_lorentz_distance),
    "sphere": dict(cls=Sphere, expmap0=mp_sphere_expmap0, logmap0=mp_sphere_logmap0,
                   distance=mp_sphere_distance),
}


# ----------------------------------------------------------------------------------------------------------------
# Inputs and independent float64 formulas
# ----------------------------------------------------------------------------------------------------------------

def features(n: int, dim: int, mag: float, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """``n`` random directions with norms spread over [0.5, 1.5] * mag (rows in increasing norm)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    norms = mag * torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True) * norms[:, None]).to(dtype)


def separated_pairs(n: int, dim: int, mag: float, dtype, seed: int = 0):
    """Features v and w = v + δ with ‖δ‖ spread log-uniformly over [1e-4, 3]: distances from tiny to large."""
    v = features(n, dim, mag, torch.float64, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    delta = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    delta = delta / delta.norm(dim=-1, keepdim=True) * torch.logspace(-4, 0.5, n, dtype=torch.float64)[:, None]
    return v.to(dtype), (v + delta).to(dtype)


def np_minkowski(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return -np.outer(a[:, 0], b[:, 0]) + a[:, 1:] @ b[:, 1:].T


def np_lorentz_pairwise(a, b, c):
    return np.arccosh(np.maximum(-c * np_minkowski(a, b), 1.0)) / math.sqrt(c)


def np_sphere_pairwise(a, b, c):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.arccos(np.clip(c * a @ b.T, -1.0, 1.0)) / math.sqrt(c)


def np_euclid_pairwise(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def lorentz_origin(c: float, dim: int, dtype=torch.float64) -> torch.Tensor:
    o = torch.zeros(1, dim + 1, dtype=dtype)
    o[0, 0] = 1 / math.sqrt(c)
    return o


def assert_on_lorentz(x: torch.Tensor, c: float, rtol: float):
    """⟨x, x⟩_L = -1/c (relative to the size x₀² of the terms that cancel) and x₀ > 0, in float64."""
    x = np64(x)
    quad = -x[:, 0] ** 2 + (x[:, 1:] ** 2).sum(-1)
    scale = x[:, 0] ** 2
    assert (x[:, 0] > 0).all()
    assert np.all(np.abs(quad + 1 / c) <= rtol * scale), np.abs(quad + 1 / c) / scale


def assert_on_sphere(x: torch.Tensor, c: float, rtol: float):
    x = np64(x)
    assert np.allclose((x ** 2).sum(-1), 1 / c, rtol=rtol, atol=0)


# Geometries for the interface-wide tests; every one takes 8-dim features.
FEATURE_DIM = 8


def make_product() -> Product:
    return Product([(Euclidean(normalize=False), 3), (Lorentz(curvature=0.5), 3), (Sphere(curvature=2.0), 2)])


GEOMETRY_FACTORIES = {
    "euclidean": lambda: Euclidean(),
    "flat": lambda: Euclidean(normalize=False),
    "lorentz": lambda: Lorentz(curvature=1.0),
    "lorentz_c0.1": lambda: Lorentz(curvature=0.1),
    "sphere": lambda: Sphere(curvature=2.0),
    "product": make_product,
}
ALL_GEOMETRIES = sorted(GEOMETRY_FACTORIES)


def valid_kinds(name: str):
    return LOGIT_KINDS if name in ("euclidean", "flat") else [k for k in LOGIT_KINDS if k != "cosine"]


def np_reference_pairwise(name: str, geometry, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Independent float64 pairwise distances for each geometry of GEOMETRY_FACTORIES."""
    if name in ("euclidean", "flat"):
        return np_euclid_pairwise(np64(a), np64(b))
    if name.startswith("lorentz"):
        return np_lorentz_pairwise(np64(a), np64(b), geometry.curvature.item())
    if name == "sphere":
        return np_sphere_pairwise(np64(a), np64(b), geometry.curvature.item())
    # product: E^3 (3 coords) x H^3 (4 coords) x S^2 (3 coords), curvatures 0.5 and 2.0
    a, b = np64(a), np64(b)
    sq = (np_euclid_pairwise(a[:, :3], b[:, :3]) ** 2 + np_lorentz_pairwise(a[:, 3:7], b[:, 3:7], 0.5) ** 2
          + np_sphere_pairwise(a[:, 7:], b[:, 7:], 2.0) ** 2)
    return np.sqrt(sq)


def np_reference_inner(name: str, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = np64(a), np64(b)
    if name.startswith("lorentz"):
        return np_minkowski(a, b)
    if name == "product":
        return a[:, :3] @ b[:, :3].T + np_minkowski(a[:, 3:7], b[:, 3:7]) + a[:, 7:] @ b[:, 7:].T
    return a @ b.T


# ================================================================================================================
# 1. mpmath references
# ================================================================================================================

@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_expmap0_matches_mpmath(kind, c, dtype, mag):
    g = MP[kind]["cls"](curvature=c)
    v = features(8, 5, mag, dtype, seed=1)
    x = g.expmap0(v)
    assert x.dtype == dtype and x.shape == (8, 6)
    ref = ref_rows(MP[kind]["expmap0"], v, g.curvature.item())
    out = np64(x)
    # θ = √c‖v‖ carries the rounding of ‖v‖ (a few eps relative), which moves sinh θ, cosh θ by eps·θ·coth θ
    # relative: allow 8 eps (1 + θ). The space part is checked against its own norm so that a tiny feature
    # (1e-4) is not hidden behind x₀ ≈ 1/√c; on the sphere sin θ crosses 0 (θ = π, 2π), where the rounding of θ
    # leaves an absolute error eps θ/√c, hence the second term.
    theta = math.sqrt(c) * np64(v.norm(dim=-1))
    tol = 8 * EPS[dtype] * (1 + theta)
    time_err = np.abs(out[:, 0] - ref[:, 0])
    space_err = np.linalg.norm(out[:, 1:] - ref[:, 1:], axis=-1)
    space_ref = np.linalg.norm(ref[:, 1:], axis=-1)
    radius = np.linalg.norm(ref, axis=-1)
    if kind == "lorentz":
        assert np.all(time_err <= tol * ref[:, 0]), time_err / ref[:, 0]
        assert np.all(space_err <= tol * space_ref), space_err / space_ref
    else:
        assert np.all(time_err <= tol * radius), time_err / radius
        slack = np.minimum(theta, 1.0) / math.sqrt(c)
        assert np.all(space_err <= tol * (space_ref + slack)), space_err / space_ref


@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_logmap0_matches_mpmath(kind, c, dtype, mag):
    g = MP[kind]["cls"](curvature=c)
    c_held = g.curvature.item()
    v = features(8, 5, mag, torch.float64, seed=2)
    # Input points: the exact exp_o(v), rounded once to dtype -- independent of the library's expmap0.
    x = torch.tensor(ref_rows(MP[kind]["expmap0"], v, c_held), dtype=dtype)
    out = g.logmap0(x)
    assert out.dtype == dtype and out.shape == (8, 5)
    ref = ref_rows(MP[kind]["logmap0"], x, c_held)
    # log_o is well conditioned in the space part (asinh / atan2 have relative condition number <= 1), so
    # only the library's own rounding is left: a few eps relative.
    err = np.linalg.norm(np64(out) - ref, axis=-1)
    assert np.all(err <= 8 * EPS[dtype] * np.linalg.norm(ref, axis=-1)), err / np.linalg.norm(ref, axis=-1)
    # and it is v itself -- on the sphere while √c‖v‖ < π (beyond, exp_o wraps around and log_o returns the
    # shorter tangent vector); for Lorentz while √c‖v‖ < asinh(2**15), the sinh clamp (norms <= 7.5 here)
    theta_max = math.sqrt(c) * 1.5 * mag
    if kind == "lorentz" or theta_max < math.pi:
        rel = np.linalg.norm(np64(out) - np64(v), axis=-1) / np64(v.norm(dim=-1))
        assert np.all(rel <= 16 * EPS[dtype] * (1 + theta_max)), rel


def _distance_bound(kind, x, y, d_ref, c, eps, expansion=False):
    """First-order bound on |d - d_ref| for points x, y (arrays that broadcast to (..., P)).

    Both geometries compute d from a squared chord q: Lorentz q = ⟨x-y, x-y⟩_L = (2/√c · sinh(√c d/2))², Sphere
    q = ‖x-y‖² = (2/√c · sin(√c d/2))²; the slope of q -> d is 1/(2√q sqrt(1 + c q/4)), resp. 1/(2√q cos(√c d/2)).
    The error of q has three sources:
    * the rounding of q's own terms: 8 eps (‖Δx_s‖² + Δx₀²);
    * the inputs. Lorentz: the reference takes the space part as exact and recomputes x₀, so each x₀ is off by
      up to 2 eps x₀: 8 eps x₀|Δx₀| to first order (and |Δx₀| <= ‖x_s‖‖Δx_s‖/x₀ is small near the origin),
      (2 eps x₀)² to second order (nearly equal x₀ round to at most adjacent floats). Sphere: the reference
      projects radially; radial scalings 1 + ε₁, 1 + ε₂ (|ε| <= 2 eps) change q by (ε₁ - ε₂) q + (ε₁ - ε₂)² R²
      since x is almost orthogonal to x - y: 4 eps q, and (2 eps R)² as for Lorentz. These are the terms
      that let fp32 resolve d << sqrt(eps) x₀ near the origin;
    * ``expansion``: the one-matmul pairwise forms expand ‖x_s - y_s‖² = ‖x_s‖² + ‖y_s‖² - 2 x_s·y_s, which
      cancels at the scale S = ‖x_s‖² + ‖y_s‖²: P eps S for P terms. Near the origin S is small, so pairwise
      fine structure survives fp32 (the textbook acosh(-c⟨x,y⟩_L) form cancels at the scale 1/c instead and
      cannot resolve d < ~1e-3 in fp32).
    Plus 16 eps d for the final asinh/asin and scalings, and the guard's floor: q is floored at 1e-12 (finite
    gradients for coincident points, design.md §3), so any d below 1e-6 reads as ~1e-6, in float64 too.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sc = math.sqrt(c)
    dx0 = np.abs(x[..., 0] - y[..., 0])
    dxs_sq = ((x[..., 1:] - y[..., 1:]) ** 2).sum(-1)
    q_err = 8 * eps * (dxs_sq + dx0 ** 2)
    if kind == "lorentz":
        time = np.maximum(np.abs(x[..., 0]), np.abs(y[..., 0]))
        q_err = q_err + 8 * eps * time * dx0 + (2 * eps * time) ** 2
        q = (2 / sc * np.sinh(sc * d_ref / 2)) ** 2
        slope = 1 / (2 * np.sqrt(q) * np.sqrt(1 + c * q / 4))
    else:
        radius = 1 / sc
        q_err = q_err + 4 * eps * (dxs_sq + dx0 ** 2) + (2 * eps * radius) ** 2
        q = (2 / sc * np.sin(sc * d_ref / 2)) ** 2
        slope = 1 / (2 * np.sqrt(q) * np.cos(sc * d_ref / 2))
    if expansion:
        q_err = q_err + x.shape[-1] * eps * ((x[..., 1:] ** 2).sum(-1) + (y[..., 1:] ** 2).sum(-1))
    floor = np.where(d_ref < 1e-6, 1.01e-6 - d_ref, 0.0)
    return 16 * eps * d_ref + slope * q_err + floor


@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_distance_matches_mpmath(kind, c, dtype, mag):
    g = MP[kind]["cls"](curvature=c)
    c_held = g.curvature.item()
    v, w = separated_pairs(14, 5, mag, dtype, seed=3)
    x, y = g.expmap0(v), g.expmap0(w)
    d = g.distance(x, y)
    assert d.dtype == dtype and d.shape == (14,)
    d, ref = np64(d), ref_pairs(MP[kind]["distance"], x, y, c_held)
    err, eps = np.abs(d - ref), EPS[dtype]
    bound = _distance_bound(kind, np64(x), np64(y), ref, c_held, eps)
    assert np.all(err <= bound), (err / bound).max()
    # Plain relative tolerance where the pair is resolvable at this precision. In float32 far from the origin
    # (mag 5: x₀ up to ~1e4) the coordinates themselves carry an absolute rounding eps x₀ ~ 1e-3 (design.md §3),
    # so there only the bound above applies.
    if dtype == torch.float32 and mag > 1:
        return
    well = math.sqrt(c_held) * ref > ROW_MIN_SCALED_D[dtype]
    assert well.sum() >= 4
    assert np.all(err[well] <= PLAIN_RTOL[dtype] * ref[well]), (err / ref)[well].max()


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_distance_accurate_for_near_points_near_origin(kind, c, dtype):
    """The row-wise forms (asinh of the Minkowski chord, asin of the chord) resolve tiny distances: near the
    origin the time coordinate enters only to second order, so the relative error stays tiny down to
    the guard's floor (d ≈ 1e-6: the squared distance is floored at 1e-12 for finite gradients) -- where the
    acosh/acos forms are useless (error ~ eps/d²)."""
    g = MP[kind]["cls"](curvature=c)
    v = features(8, 5, 1e-4, torch.float64, seed=4)
    gen = torch.Generator().manual_seed(5)
    delta = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    delta = delta / delta.norm(dim=-1, keepdim=True) * torch.logspace(-5.5, -4, 8, dtype=torch.float64)[:, None]
    x, y = g.expmap0(v.to(dtype)), g.expmap0((v + delta).to(dtype))
    d, ref = np64(g.distance(x, y)), ref_pairs(MP[kind]["distance"], x, y, g.curvature.item())
    # float32: 1e-5 (~80 eps) covers the second-order time term (2 eps x₀)²/d; float64: 1e-12.
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    assert ref.min() < 5e-6
    np.testing.assert_allclose(d, ref, rtol=rtol, atol=0)
    # below the floor the distance reads ≈ 1e-6 (never 0, never NaN)
    same = g.distance(x, x)
    assert torch.isfinite(same).all() and (same <= 1.01e-6).all()


@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_pairwise_distance_matches_mpmath(kind, c, dtype, mag):
    g = MP[kind]["cls"](curvature=c)
    c_held = g.curvature.item()
    # two independent sets plus, in b, near copies of a's first rows (relative offsets 1e-1 .. 1e-3)
    a = g.expmap0(features(7, 5, mag, dtype, seed=6))
    va = features(7, 5, mag, torch.float64, seed=6)[:3]
    offsets = features(3, 5, 1.0, torch.float64, seed=60) * torch.tensor([1e-1, 1e-2, 1e-3])[:, None] * mag
    b = g.expmap0(torch.cat([features(5, 5, mag, torch.float64, seed=7), va + offsets]).to(dtype))
    d = g.pairwise_distance(a, b)
    assert d.dtype == dtype and d.shape == (7, 8)
    d, ref = np64(d), ref_matrix(MP[kind]["distance"], a, b, c_held)
    err, eps = np.abs(d - ref), EPS[dtype]
    bound = _distance_bound(kind, np64(a)[:, None, :], np64(b)[None, :, :], ref, c_held, eps, expansion=True)
    assert np.all(err <= bound), (err / bound).max()
    # The bound is meaningful: on most entries (all but the far-out near copies) it is within the plain
    # relative tolerance -- 1e-4 in fp32, 1e-10 in fp64 -- and the error itself stays below it there.
    meaningful = bound <= PLAIN_RTOL[dtype] * ref
    assert meaningful.mean() >= 0.75, meaningful
    assert np.all(err[meaningful] <= PLAIN_RTOL[dtype] * ref[meaningful])


@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
def test_to_poincare_matches_mpmath(c, dtype, mag):
    g = Lorentz(curvature=c)
    x = g.expmap0(features(8, 5, mag, dtype, seed=8))
    p = g.to_poincare(x)
    assert p.dtype == dtype and p.shape == (8, 5)
    ref = ref_rows(mp_lorentz_to_poincare, x, g.curvature.item())
    # p = x_s/(1 + √c x₀): a ratio of rounded numbers, a few eps relative.
    err = np.linalg.norm(np64(p) - ref, axis=-1)
    assert np.all(err <= 8 * EPS[dtype] * np.linalg.norm(ref, axis=-1))
    # Inside the ball of radius 1/√c (design.md §2). Far out (mag 5) the norm rounds to the radius in float32.
    norms = np64(p.norm(dim=-1))
    if dtype == torch.float64 or mag <= 1:
        assert np.all(norms < 1 / math.sqrt(c))
    else:
        assert np.all(norms <= 1 / math.sqrt(g.curvature.item()) * (1 + EPS[dtype]))


def test_fixed_curvature_is_exact_in_float64():
    """log c is stored in float64: c = 0.1 must not be held as fp32's 0.099999994."""
    g = Lorentz(curvature=0.1)
    x = g.expmap0(features(4, 5, 1.0, torch.float64, seed=9))
    y = g.expmap0(features(4, 5, 1.0, torch.float64, seed=10))
    ref = ref_pairs(mp_lorentz_distance, x, y, 0.1)  # the nominal curvature
    np.testing.assert_allclose(np64(g.distance(x, y)), ref, rtol=1e-10)


def test_curvature_held_to_float64_precision():
    for c in (0.1, 1.0, 2.0, 0.37, 7.5):
        assert Lorentz(curvature=c).curvature.item() == pytest.approx(c, rel=4 * EPS[torch.float64])


# ================================================================================================================
# 2. geoopt
# ================================================================================================================

def _geoopt_lorentz(c: float, dtype) -> geoopt.Lorentz:
    # k = 1/c (design.md §1), with the curvature the library holds, in the dtype of the points
    return geoopt.Lorentz(k=torch.tensor(1 / Lorentz(curvature=c).curvature.item(), dtype=dtype))


@pytest.mark.parametrize("mag", [1e-4, 0.1, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
def test_geoopt_accepts_expmap0_output(c, dtype, mag):
    x = Lorentz(curvature=c).expmap0(features(16, 7, mag, dtype, seed=11))
    manifold = geoopt.Lorentz(k=1 / c) if dtype == torch.float32 else _geoopt_lorentz(c, dtype)
    ok, reason = manifold.check_point_on_manifold(x, explain=True)
    assert ok, reason


@pytest.mark.parametrize("c", CURVATURES)
def test_geoopt_rejects_points_off_the_hyperboloid(c):
    """The acceptance above is not vacuous: geoopt refuses the same points with the wrong k or rescaled."""
    x = Lorentz(curvature=c).expmap0(features(16, 7, 1.0, torch.float64, seed=11))
    wrong_k = torch.tensor(c if c != 1.0 else 2.0, dtype=torch.float64)  # k = c instead of 1/c
    assert not geoopt.Lorentz(k=wrong_k).check_point_on_manifold(x)
    assert not _geoopt_lorentz(c, torch.float64).check_point_on_manifold(x * 1.01)


@pytest.mark.parametrize("c", CURVATURES)
def test_geoopt_distance_matches(c):
    g = Lorentz(curvature=c)
    manifold = _geoopt_lorentz(c, torch.float64)
    a = g.expmap0(features(6, 5, 1.0, torch.float64, seed=12))
    b = g.expmap0(features(5, 5, 2.0, torch.float64, seed=13))
    d_geoopt = manifold.dist(a[:, None, :], b[None, :, :])
    # geoopt's arcosh floors z² - 1 at 1e-15 and computes in float64: accurate for separated points only
    assert d_geoopt.min() > 0.1
    torch.testing.assert_close(g.pairwise_distance(a, b), d_geoopt, rtol=1e-10, atol=0)
    torch.testing.assert_close(g.distance(a[:5], b), manifold.dist(a[:5], b), rtol=1e-10, atol=0)


@pytest.mark.parametrize("mag", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("c", CURVATURES)
def test_geoopt_expmap0_logmap0_match(c, mag):
    g = Lorentz(curvature=c)
    manifold = _geoopt_lorentz(c, torch.float64)
    v = features(6, 5, mag, torch.float64, seed=14)
    u = torch.cat([torch.zeros(6, 1, dtype=torch.float64), v], dim=-1)  # ambient tangent vector at the origin
    # geoopt floors the Minkowski norm at 1e-4 and logmap0 goes through acosh(√c x₀): 1e-9 is what it offers
    # (mag ≥ 0.1 keeps its floor and acosh's conditioning out of the way).
    torch.testing.assert_close(g.expmap0(v), manifold.expmap0(u), rtol=1e-10, atol=0)
    x = g.expmap0(v)
    log_geoopt = manifold.logmap0(x)
    torch.testing.assert_close(log_geoopt[:, 0], torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-9 * mag)
    torch.testing.assert_close(g.logmap0(x), log_geoopt[:, 1:], rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
def test_geoopt_lorentz_to_poincare(c, dtype):
    """geoopt's ``lorentz_to_poincare(x, k)`` returns x_s/(x₀ + √k), which lies in the *unit* ball whatever k
    (‖·‖² = (x₀ - √k)/(x₀ + √k)); the design's ball has radius 1/√c. So ours equals geoopt's at c = 1 and
    geoopt's / √c in general. That ours (not geoopt's) is the isometric one is checked against
    geoopt.PoincareBall(c) in the next test and against mpmath above."""
    g = Lorentz(curvature=c)
    c_held = g.curvature.item()
    x = g.expmap0(features(8, 5, 1.0, dtype, seed=15))
    p_geoopt = geoopt_lorentz_math.lorentz_to_poincare(x, k=torch.tensor(1 / c_held, dtype=dtype))
    p = g.to_poincare(x)
    tol = 16 * EPS[dtype]
    torch.testing.assert_close(p * math.sqrt(c_held), p_geoopt, rtol=tol, atol=tol)
    if c == 1.0:
        torch.testing.assert_close(p, p_geoopt, rtol=tol, atol=tol)
    assert (p.norm(dim=-1) < 1 / math.sqrt(c_held)).all()
    assert (p_geoopt.norm(dim=-1) < 1).all()


@pytest.mark.parametrize("c", CURVATURES)
def test_to_poincare_is_an_isometry_onto_geoopt_poincare_ball(c):
    g = Lorentz(curvature=c)
    ball = geoopt.PoincareBall(c=torch.tensor(g.curvature.item(), dtype=torch.float64))  # radius 1/√c
    x = g.expmap0(features(6, 5, 1.0, torch.float64, seed=16))
    y = g.expmap0(features(6, 5, 1.5, torch.float64, seed=17))
    p, q = g.to_poincare(x), g.to_poincare(y)
    assert ball.check_point_on_manifold(p) and ball.check_point_on_manifold(q)
    torch.testing.assert_close(ball.dist(p, q), g.distance(x, y), rtol=1e-9, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
def test_sphere_distance_matches_geoopt_sphere(c):
    g = Sphere(curvature=c)
    sc = math.sqrt(g.curvature.item())
    x = g.expmap0(features(6, 5, 1.0, torch.float64, seed=18))
    y = g.expmap0(features(6, 5, 1.0, torch.float64, seed=19))
    unit = geoopt.Sphere()  # the unit sphere: scale the points to it, and its distances by 1/√c
    assert unit.check_point_on_manifold(x * sc)
    torch.testing.assert_close(g.distance(x, y), unit.dist(x * sc, y * sc) / sc, rtol=1e-10, atol=0)


# ================================================================================================================
# 3. Properties
# ================================================================================================================

@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("name", ["flat", "lorentz", "lorentz_c0.1", "sphere", "product"])
def test_logmap0_inverts_expmap0(name, dtype, mag):
    g = GEOMETRY_FACTORIES[name]()
    if name in ("sphere", "product"):
        mag = min(mag, 1.0)  # √c‖v‖ < π on the sphere (c = 2, norms up to 1.5 mag): exp_o is injective there
    v = features(8, FEATURE_DIM, mag, dtype, seed=20)
    back = g.logmap0(g.expmap0(v))
    assert back.dtype == dtype
    # asinh(sinh θ), atan2(sin θ, cos θ): relative error ~ eps (1 + θ), θ <= √2·7.5 here
    rel = np64((back - v).norm(dim=-1) / v.norm(dim=-1))
    assert np.all(rel <= 32 * EPS[dtype] * (1 + math.sqrt(2) * 1.5 * mag)), rel


def test_euclidean_normalized_logmap0_is_right_inverse():
    g = Euclidean()
    x = F.normalize(features(5, 6, 3.0, torch.float64), dim=-1)
    torch.testing.assert_close(g.expmap0(g.logmap0(x)), x)


@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere"])
def test_expmap0_lands_on_manifold(kind, c, dtype, mag):
    g = MP[kind]["cls"](curvature=c)
    x = g.expmap0(features(8, 5, mag, dtype, seed=21))
    c_held = g.curvature.item()
    # ⟨x,x⟩_L = -x₀² + ‖x_s‖² cancels terms of size x₀²: the constraint holds to a few eps of x₀²; on the
    # sphere ‖x‖² = 1/c to a few eps.
    if kind == "lorentz":
        assert_on_lorentz(x, c_held, rtol=8 * EPS[dtype])
    else:
        assert_on_sphere(x, c_held, rtol=8 * EPS[dtype])
    assert np.all(np64(g.manifold_error(x)) <= 8 * EPS[dtype] * c_held * np64(x[:, 0] ** 2 + 1 / c_held))


def test_manifold_error_detects_points_off_the_manifold():
    g = Lorentz(curvature=2.0)
    x = g.expmap0(features(4, 5, 1.0, torch.float64))
    assert (g.manifold_error(x * 1.1) > 0.1).all()
    lower_sheet = x.clone()
    lower_sheet[:, 0] *= -1
    assert torch.isinf(g.manifold_error(lower_sheet)).all()
    s = Sphere(curvature=2.0)
    assert (s.manifold_error(s.expmap0(features(4, 5, 1.0, torch.float64)) * 1.1) > 0.1).all()
    e = Euclidean()
    assert (e.manifold_error(torch.ones(2, 4)) > 0.5).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("kind", ["lorentz", "sphere", "flat", "product"])
def test_distance_from_origin_is_feature_norm(kind, c, dtype):
    """d(o, exp_o(v)) = ‖v‖ with the origin built here: (1/√c, 0, …, 0) for Lorentz and the sphere, 0 for R^D,
    the concatenation for the product (whose d² = Σ‖v_i‖² = ‖v‖²)."""
    # the origin of the curvature the geometry holds (float32-rounded, see test_fixed_curvature_is_exact...)
    ch = Lorentz(curvature=c).curvature.item()
    if kind == "lorentz":
        g, dim = Lorentz(curvature=c), 5
        origin = lorentz_origin(ch, dim, dtype)
        mags = [1e-4, 0.1, 1.0, 3.0]
    elif kind == "sphere":
        g, dim = Sphere(curvature=c), 5
        origin = lorentz_origin(ch, dim, dtype)
        mags = [1e-4, 0.1, 1.0, 0.6 * math.pi / math.sqrt(c)]  # up to 0.9 π: below the cut locus
    elif kind == "flat":
        g, dim = Euclidean(normalize=False), 5
        origin = torch.zeros(1, dim, dtype=dtype)
        mags = [1e-4, 0.1, 1.0, 3.0]
    else:
        g = Product([(Euclidean(normalize=False), 2), (Lorentz(curvature=c), 3), (Sphere(curvature=c), 2)])
        dim = 7
        origin = torch.cat([torch.zeros(1, 2, dtype=dtype), lorentz_origin(ch, 3, dtype),
                            lorentz_origin(ch, 2, dtype)], dim=-1)
        mags = [0.1, 1.0, 1.5]
    v = torch.cat([features(4, dim, m, dtype, seed=22) for m in mags])
    x = g.expmap0(v)
    norms = np64(v.norm(dim=-1))
    d_row = np64(g.distance(origin.expand_as(x), x))
    # Row-wise form: near the origin a few eps; far out ‖x_s‖² and (x₀ - R)² cancel down to q ≈ 2 R x₀, leaving
    # ~eps √c x₀ relative in q and ~eps cosh(θ)/θ in d (θ = √c‖v‖ <= 6.4 here): within 64 eps (1 + θ). The
    # product's sqrt(Σ dᵢ²) adds the factors' 1e-6 floors (the coincident-point guard) as an absolute slack.
    rtol = 64 * EPS[dtype] * (1 + math.sqrt(c) * norms.max())
    np.testing.assert_allclose(d_row, norms, rtol=rtol, atol=2e-6 if kind == "product" else 0)
    # Pairwise (one-matmul) form: the same cancellation through the expansion of ‖x_s - o_s‖² (see
    # _distance_bound), ~eps P cosh(θ)/θ relative: below 1e-4 in fp32 for θ <= 6.4.
    d_pair = np64(g.pairwise_distance(origin, x))[0]
    rtol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    np.testing.assert_allclose(d_pair, norms, rtol=rtol, atol=2e-6 if kind == "product" else 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_distance_agrees_with_pairwise_diagonal(name, dtype):
    g = GEOMETRY_FACTORIES[name]()
    x = g.expmap0(features(6, FEATURE_DIM, 1.0, dtype, seed=23))
    y = g.expmap0(features(6, FEATURE_DIM, 1.0, dtype, seed=24))
    d = g.distance(x, y)
    assert d.min() > 0.1  # well separated: the pairwise form is accurate there
    torch.testing.assert_close(d, g.pairwise_distance(x, y).diagonal(), rtol=PLAIN_RTOL[dtype], atol=0)


@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_distance_symmetry_and_triangle_inequality(name):
    g = GEOMETRY_FACTORIES[name]()
    x, y, z = (g.expmap0(features(32, FEATURE_DIM, 1.0, torch.float64, seed=s)) for s in (25, 26, 27))
    torch.testing.assert_close(g.distance(x, y), g.distance(y, x), rtol=1e-14, atol=0)
    torch.testing.assert_close(g.pairwise_distance(x, y), g.pairwise_distance(y, x).T, rtol=1e-12, atol=0)
    # all 32³ triples of the pairwise matrices
    dxy, dyz, dxz = g.pairwise_distance(x, y), g.pairwise_distance(y, z), g.pairwise_distance(x, z)
    slack = dxz[:, None, :] - (dxy[:, :, None] + dyz[None, :, :])
    assert slack.max() <= 1e-12
    assert (g.distance(x, z) <= g.distance(x, y) + g.distance(y, z) + 1e-12).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2)])
@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_pairwise_distance_shapes(name, shape):
    g = GEOMETRY_FACTORIES[name]()
    n, m = shape
    a = g.expmap0(features(n, FEATURE_DIM, 1.0, seed=28))
    b = g.expmap0(features(m, FEATURE_DIM, 1.0, seed=29))
    for out in (g.pairwise_distance(a, b), g.inner(a, b), g.logits(a, b)):
        assert out.shape == (n, m)
    # the row-wise distance broadcasts over leading dimensions
    batched = g.expmap0(features(6, FEATURE_DIM, 1.0, seed=30).reshape(2, 3, FEATURE_DIM))
    assert g.distance(batched, batched.flip(0)).shape == (2, 3)
    assert g.point_dim(FEATURE_DIM) == a.shape[-1]
    assert g.tangent_dim(a.shape[-1]) == FEATURE_DIM


@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_euclidean_cosine_logits_match_sklearn(temperature):
    raw_a = features(5, 6, 3.0, torch.float64, seed=31)
    raw_b = features(4, 6, 0.5, torch.float64, seed=32)
    expected = cosine_similarity(np64(raw_a), np64(raw_b)) / temperature
    g = Euclidean()
    a, b = g.expmap0(raw_a), g.expmap0(raw_b)
    np.testing.assert_allclose(np64(a.norm(dim=-1)), 1.0, rtol=1e-15)
    np.testing.assert_allclose(np64(g.logits(a, b, temperature)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np64(g.logits(a, b, temperature, kind="cosine")), expected, rtol=1e-12, atol=1e-12)
    # the flat geometry's cosine logits normalise the raw features themselves
    flat = Euclidean(normalize=False)
    np.testing.assert_allclose(np64(flat.logits(raw_a, raw_b, temperature, kind="cosine")), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_logit_kinds_match_independent_formulas(name):
    g = GEOMETRY_FACTORIES[name]()
    tau = 0.2
    a = g.expmap0(features(5, FEATURE_DIM, 1.0, torch.float64, seed=33))
    b = g.expmap0(features(4, FEATURE_DIM, 1.2, torch.float64, seed=34))
    d = np_reference_pairwise(name, g, a, b)
    assert d.min() > 0.05  # away from the acosh/acos floors
    expected = {"neg_distance": -d / tau, "neg_sq_distance": -d ** 2 / tau,
                "inner": np_reference_inner(name, a, b) / tau}
    for kind, value in expected.items():
        np.testing.assert_allclose(np64(g.logits(a, b, tau, kind=kind)), value, rtol=1e-10, atol=1e-12,
                                   err_msg=kind)
    default = {"euclidean": "cosine"}.get(name, "neg_distance")
    torch.testing.assert_close(g.logits(a, b, tau), g.logits(a, b, tau, kind=default))


@pytest.mark.parametrize("name", ["lorentz", "sphere", "product"])
def test_cosine_logits_rejected_outside_euclidean(name):
    g = GEOMETRY_FACTORIES[name]()
    a = g.expmap0(features(3, FEATURE_DIM, 1.0))
    with pytest.raises(ValueError, match="cosine"):
        g.logits(a, a, kind="cosine")


@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_unknown_logit_kind_raises(name):
    g = GEOMETRY_FACTORIES[name]()
    a = g.expmap0(features(3, FEATURE_DIM, 1.0))
    with pytest.raises(ValueError, match="unknown logit kind"):
        g.logits(a, a, kind="dot")


def test_learned_temperature_gets_a_gradient():
    g = Lorentz(curvature=1.0)
    a = g.expmap0(features(4, 5, 1.0))
    tau = torch.tensor(0.1, requires_grad=True)
    F.cross_entropy(g.logits(a, a, tau), torch.arange(4)).backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and tau.grad != 0


# ================================================================================================================
# 4. Numeric guards (design.md §3)
# ================================================================================================================

PRECISIONS = ["fp32", "bf16-autocast"]


def _precision(mode: str):
    """fp32: plain float32 features. bf16-autocast: bfloat16 features inside torch.autocast("cpu", bfloat16).
    Returns (context manager, feature dtype)."""
    if mode == "bf16-autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16
    return contextlib.nullcontext(), torch.float32


def _leaf(v: torch.Tensor, dtype) -> torch.Tensor:
    return v.to(dtype).detach().requires_grad_()


def _assert_finite_grad(leaf: torch.Tensor):
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad.float()).all(), leaf.grad


def _contrastive_loss(g, x, y, kind):
    logits = g.logits(x, y, temperature=0.1, kind=kind)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    target = torch.arange(x.shape[0])
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def _guard_ops(name):
    return ["distance", "pairwise"] + [f"logits-{k}" for k in valid_kinds(name)]


GUARD_CASES = [(name, op) for name in ALL_GEOMETRIES for op in _guard_ops(name)]


def _loss_for(g, op, x, y):
    if op == "distance":
        return g.distance(x, y).sum()
    if op == "pairwise":
        return g.pairwise_distance(x, y).sum()
    return _contrastive_loss(g, x, y, op.split("-", 1)[1])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name,op", GUARD_CASES)
def test_finite_gradients_for_coincident_points(name, op, precision):
    """A positive pair of identical views: both views are the same features through the same map."""
    g = GEOMETRY_FACTORIES[name]()
    norms = torch.logspace(-3, math.log10(6.0), 6)
    v = features(6, FEATURE_DIM, 1.0, seed=35) * norms[:, None]
    context, dtype = _precision(precision)
    with context:
        leaf = _leaf(v, dtype)
        x, y = g.expmap0(leaf), g.expmap0(leaf)
        loss = _loss_for(g, op, x, y)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
    _assert_finite_grad(leaf)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name,op", GUARD_CASES)
def test_finite_gradients_for_zero_features(name, op, precision):
    g = GEOMETRY_FACTORIES[name]()
    v = features(4, FEATURE_DIM, 1.0, seed=36)
    v[::2] = 0.0  # rows 0 and 2 are zero features
    context, dtype = _precision(precision)
    with context:
        leaf = _leaf(v, dtype)
        x = g.expmap0(leaf)
        assert torch.isfinite(x).all()
        # a zero feature, against itself and against the others
        loss = _loss_for(g, op, x, x) + _loss_for(g, op, x, x.roll(1, 0))
        loss.backward()
    _assert_finite_grad(leaf)
    # and it maps to the origin: (1/√c, 0, …) on the curved factors, 0 on the flat and normalised ones
    zero_point = g.expmap0(torch.zeros(1, FEATURE_DIM, dtype=torch.float64))
    expected = torch.zeros_like(zero_point)
    if name.startswith("lorentz") or name == "sphere":
        expected[0, 0] = 1 / math.sqrt(g.curvature.item())
    elif name == "product":
        expected[0, 3], expected[0, 7] = 1 / math.sqrt(0.5), 1 / math.sqrt(2.0)
    torch.testing.assert_close(zero_point, expected)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("scale", [1e4, 1e8])
@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_huge_feature_norms_stay_finite(name, scale, precision):
    g = GEOMETRY_FACTORIES[name]()
    v = features(5, FEATURE_DIM, scale, seed=37)
    context, dtype = _precision(precision)
    with context:
        leaf = _leaf(v, dtype)
        x = g.expmap0(leaf)
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.isfinite(g.logmap0(x)).all()
        loss = sum(_loss_for(g, op, x, x.roll(1, 0)) for op in _guard_ops(name)) + g.distance(x, x).sum()
        assert torch.isfinite(loss)
        loss.backward()
    _assert_finite_grad(leaf)
    # still on the manifold (the sinh clamp keeps x₀² far from fp32 overflow; the fp32 rounding of x₀ ~ 1e5
    # leaves a constraint error of a few eps x₀², see assert_on_lorentz)
    if name.startswith("lorentz"):
        assert_on_lorentz(x, g.curvature.item(), rtol=8 * EPS[torch.float32])
        assert x[:, 0].max() < 1e6
    elif name == "sphere":
        assert_on_sphere(x, g.curvature.item(), rtol=8 * EPS[torch.float32])


@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_output_dtypes_under_autocast(name):
    g = GEOMETRY_FACTORIES[name]()
    v32 = features(4, FEATURE_DIM, 1.0, seed=38)
    x32 = g.expmap0(v32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vb, xb = v32.bfloat16(), x32.bfloat16()
        outs = {"expmap0": g.expmap0(vb), "logmap0": g.logmap0(xb), "distance": g.distance(xb, xb.flip(0)),
                "pairwise": g.pairwise_distance(xb, xb), "inner": g.inner(xb, xb), "logits": g.logits(xb, xb),
                "manifold_error": g.manifold_error(xb)}
        for key, out in outs.items():
            assert out.dtype == torch.float32, key
        # float64 stays float64 (evaluation in double precision)
        v64, x64 = v32.double(), x32.double()
        outs64 = {"expmap0": g.expmap0(v64), "logmap0": g.logmap0(x64), "distance": g.distance(x64, x64),
                  "pairwise": g.pairwise_distance(x64, x64), "inner": g.inner(x64, x64),
                  "logits": g.logits(x64, x64)}
        for key, out in outs64.items():
            assert out.dtype == torch.float64, key
    # half inputs without autocast are computed (and returned) in fp32 too
    assert g.pairwise_distance(x32.half(), x32.half()).dtype == torch.float32


@pytest.mark.parametrize("kind", ["inner", "neg_distance", "neg_sq_distance"])
@pytest.mark.parametrize("name", ALL_GEOMETRIES)
def test_logits_matmul_runs_in_fp32_under_autocast(name, kind):
    """Under bf16 autocast the logits must equal the plain fp32 computation to fp32 precision; a bf16 matmul
    (8 bits of mantissa) would be off by ~1e-2 relative."""
    g = GEOMETRY_FACTORIES[name]()
    dim = 64
    if name == "product":
        g = Product([(Euclidean(normalize=False), 32), (Lorentz(curvature=0.5), 16), (Sphere(curvature=2.0), 16)])
    a = g.expmap0(features(16, dim, 1.0, seed=39))
    b = g.expmap0(features(12, dim, 1.0, seed=40))
    expected = g.logits(a, b, 0.1, kind=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = g.logits(a, b, 0.1, kind=kind)
        lowered = a @ b.T  # what autocast does to a bare matmul
    assert got.dtype == torch.float32
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * scale)
    # the tolerance above would catch a bf16 matmul
    assert lowered.dtype == torch.bfloat16
    assert (lowered.float() - a @ b.T).abs().max() > 1e-4 * (a @ b.T).abs().max()


# ================================================================================================================
# 5. Curvature
# ================================================================================================================

@pytest.mark.parametrize("cls", [Lorentz, Sphere])
def test_learnable_curvature_has_parameter_and_gradient(cls):
    g = cls(curvature=1.0, learn_curvature=True)
    params = list(g.parameters())
    assert len(params) == 1 and params[0].requires_grad
    x = g.expmap0(features(6, 5, 1.0, seed=41))
    y = g.expmap0(features(6, 5, 1.0, seed=42))
    g.distance(x, y).sum().backward()
    assert params[0].grad is not None and torch.isfinite(params[0].grad) and params[0].grad.abs() > 0
    fixed = cls(curvature=1.0)
    assert list(fixed.parameters()) == []
    assert len(fixed.state_dict()) == 1  # the curvature is a buffer: it travels with the weights


@pytest.mark.parametrize("c0", [1.0, 0.3])
@pytest.mark.parametrize("cls", [Lorentz, Sphere])
def test_learnable_curvature_is_clamped(cls, c0):
    g = cls(curvature=c0, learn_curvature=True)
    (param,) = g.parameters()
    assert g.curvature.item() == pytest.approx(c0, rel=1e-6)
    with torch.no_grad():
        param.fill_(50.0)
    assert g.curvature.item() == pytest.approx(10 * c0, rel=1e-6)
    with torch.no_grad():
        param.fill_(-50.0)
    assert g.curvature.item() == pytest.approx(c0 / 10, rel=1e-6)
    # the clamped curvature is what the geometry uses: the origin distance scales with it
    x = g.expmap0(torch.zeros(1, 5))
    assert x[0, 0].item() == pytest.approx(1 / math.sqrt(c0 / 10), rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("cls", [Lorentz, Sphere])
def test_invalid_curvature_raises(cls, bad):
    with pytest.raises(ValueError):
        cls(curvature=bad)
    with pytest.raises(ValueError):
        cls(curvature=bad, learn_curvature=True)
    with pytest.raises(ValueError):
        build_geometry({"geometry": cls.name, "curvature": bad})


def test_curvature_outside_its_clamp_range_raises():
    with pytest.raises(ValueError):
        Lorentz(curvature=1.0, curvature_min=2.0)
    with pytest.raises(ValueError):
        Lorentz(curvature=1.0, curvature_max=0.5)


# ================================================================================================================
# 6. Product
# ================================================================================================================

def _four_factor_product():
    # dims 3, 4, 2, 3 -> point dims 3, 5, 3, 3
    return Product([(Euclidean(normalize=False), 3), (Lorentz(curvature=0.5), 4), (Sphere(curvature=2.0), 2),
                    (Euclidean(), 3)])


def test_product_dims_and_split_order():
    g = _four_factor_product()
    assert g.point_dim(12) == 14 and g.tangent_dim(14) == 12
    v = features(5, 12, 1.0, torch.float64, seed=43)
    x = g.expmap0(v)
    assert x.shape == (5, 14)
    parts, tangents = g.split(x), g.split_tangent(v)
    assert [p.shape for p in parts] == [(5, 3), (5, 5), (5, 3), (5, 3)]
    assert [t.shape for t in tangents] == [(5, 3), (5, 4), (5, 2), (5, 3)]
    torch.testing.assert_close(torch.cat(tangents, -1), v)
    # factor i of the point is factor i's own map of feature slice i (fresh, separately built factors)
    fresh = [Euclidean(normalize=False), Lorentz(curvature=0.5), Sphere(curvature=2.0), Euclidean()]
    slices = [v[:, :3], v[:, 3:7], v[:, 7:9], v[:, 9:]]
    for part, geom, sl in zip(parts, fresh, slices):
        torch.testing.assert_close(part, geom.expmap0(sl), rtol=0, atol=0)
    # each factor on its own manifold, checked independently
    np.testing.assert_allclose(np64(parts[0]), np64(v[:, :3]))
    assert_on_lorentz(parts[1], 0.5, rtol=8 * EPS[torch.float64])
    assert_on_sphere(parts[2], 2.0, rtol=8 * EPS[torch.float64])
    np.testing.assert_allclose(np64(parts[3].norm(dim=-1)), 1.0, rtol=1e-14)
    assert (g.manifold_error(x) < 1e-12).all()


def test_product_distance_is_root_sum_of_squares():
    g = _four_factor_product()
    fresh = [Euclidean(normalize=False), Lorentz(curvature=0.5), Sphere(curvature=2.0), Euclidean()]
    x = g.expmap0(features(6, 12, 1.0, torch.float64, seed=44))
    y = g.expmap0(features(6, 12, 1.0, torch.float64, seed=45))
    cuts = [(0, 3), (3, 8), (8, 11), (11, 14)]
    row = sum(f.distance(x[:, i:j], y[:, i:j]) ** 2 for f, (i, j) in zip(fresh, cuts)).sqrt()
    pair = sum(f.pairwise_distance(x[:, i:j], y[:, i:j]) ** 2 for f, (i, j) in zip(fresh, cuts)).sqrt()
    torch.testing.assert_close(g.distance(x, y), row, rtol=1e-14, atol=0)
    torch.testing.assert_close(g.pairwise_distance(x, y), pair, rtol=1e-14, atol=0)
    # and against independent float64 formulas
    X, Y = np64(x), np64(y)
    sq = (np_euclid_pairwise(X[:, :3], Y[:, :3]) ** 2 + np_lorentz_pairwise(X[:, 3:8], Y[:, 3:8], 0.5) ** 2
          + np_sphere_pairwise(X[:, 8:11], Y[:, 8:11], 2.0) ** 2 + np_euclid_pairwise(X[:, 11:], Y[:, 11:]) ** 2)
    np.testing.assert_allclose(np64(g.pairwise_distance(x, y)), np.sqrt(sq), rtol=1e-10)


@pytest.mark.parametrize("name", ALL_GEOMETRIES + ["four_factor", "learned"])
def test_build_geometry_round_trip(name):
    if name == "four_factor":
        g = _four_factor_product()
        dim = 12
    elif name == "learned":
        g = Product([(Euclidean(), 4), (Lorentz(curvature=1.0, learn_curvature=True), 4),
                     (Sphere(curvature=0.5, learn_curvature=True), 4)])
        with torch.no_grad():
            for i, p in enumerate(g.parameters()):
                p.add_(0.3 * (i + 1))  # as if trained
        dim = 12
    else:
        g = GEOMETRY_FACTORIES[name]()
        dim = FEATURE_DIM
    rebuilt = build_geometry(g.to_config())
    assert type(rebuilt) is type(g)
    assert rebuilt.to_config() == g.to_config()
    v = features(5, dim, 1.0, seed=46)
    x, x2 = g.expmap0(v), rebuilt.expmap0(v)
    # configs store the curvature rounded to 7 decimals: identical up to that rounding
    torch.testing.assert_close(x2, x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rebuilt.pairwise_distance(x, x.flip(0)), g.pairwise_distance(x, x.flip(0)),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rebuilt.logits(x, x), g.logits(x, x), rtol=1e-5, atol=1e-5)


def test_product_wrong_dims_raise():
    g = _four_factor_product()
    with pytest.raises(ValueError):
        g.point_dim(11)
    with pytest.raises(ValueError):
        g.tangent_dim(13)
    with pytest.raises((ValueError, RuntimeError)):
        g.expmap0(torch.randn(2, 11))
    with pytest.raises((ValueError, RuntimeError)):
        g.distance(torch.randn(2, 13), torch.randn(2, 13))
    with pytest.raises(ValueError):
        Product([])
    with pytest.raises(TypeError):
        Product([(Lorentz(), 0)])
    with pytest.raises(TypeError):
        Product([(Lorentz(), 2.0)])
    with pytest.raises(TypeError):
        Product([("lorentz", 2)])
    with pytest.raises(TypeError):
        Product([(make_product(), 8)])
    with pytest.raises(ValueError):
        build_geometry({"geometry": "product", "factors": [{"geometry": "lorentz"}]})  # no dim
    with pytest.raises(ValueError):
        build_geometry({"geometry": "poincare"})
    with pytest.raises(ValueError):
        build_geometry({"geometry": "lorentz", "radius": 2})


# ================================================================================================================
# 7. TangentGuard
# ================================================================================================================

@pytest.mark.parametrize("dim", [4, 64, 100])
def test_tangent_guard_auto_alpha(dim):
    guard = TangentGuard(dim, alpha_init="auto")
    assert guard.alpha.item() == pytest.approx(1 / math.sqrt(dim), rel=1e-6)
    v = features(3, dim, 2.0, seed=47)
    torch.testing.assert_close(guard(v), v / math.sqrt(dim))


def test_tangent_guard_alpha_stays_at_most_one():
    guard = TangentGuard(16, alpha_init="auto", learn_alpha=True)
    (param,) = guard.parameters()
    with torch.no_grad():
        param.fill_(3.0)  # log α pushed positive, e.g. by a large learning rate
    assert guard.alpha.item() == 1.0
    v = features(3, 16, 2.0, seed=48)
    torch.testing.assert_close(guard(v), v)
    with torch.no_grad():
        param.fill_(math.log(0.25))
    assert guard.alpha.item() == pytest.approx(0.25, rel=1e-6)
    # a learned α gets a gradient
    guard(v).sum().backward()
    assert param.grad is not None and torch.isfinite(param.grad)
    assert TangentGuard(8).alpha is None


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("radius", [1.0, 2.3])
def test_tangent_guard_clip_bounds_geodesic_radius(radius, c):
    guard = TangentGuard(6, clip_radius=radius)
    v = features(8, 6, 1.0, seed=49) * torch.logspace(-3, 8, 8)[:, None]
    out = guard(v)
    norms_in, norms_out = v.norm(dim=-1), out.norm(dim=-1)
    assert (norms_out <= radius * (1 + 1e-6)).all()
    small = norms_in < radius
    torch.testing.assert_close(out[small], v[small])  # short features untouched
    torch.testing.assert_close(norms_out[~small], torch.full_like(norms_out[~small], radius))
    cos = F.cosine_similarity(out, v, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # direction kept
    # so the geodesic radius of the point is <= r: asinh(√c‖x_s‖)/√c (Lorentz), atan2(‖x_s‖, x₀)/√c (sphere),
    # computed here in float64, and the geometry's own distance to the origin
    sc = math.sqrt(c)
    lorentz, sphere = Lorentz(curvature=c), Sphere(curvature=c)
    x, s = lorentz.expmap0(out), sphere.expmap0(out)
    xn, sn = np64(x), np64(s)
    radius_h = np.arcsinh(sc * np.linalg.norm(xn[:, 1:], axis=-1)) / sc
    radius_s = np.arctan2(np.linalg.norm(sn[:, 1:], axis=-1), sn[:, 0]) / sc
    for geodesic_radius in (radius_h, radius_s):
        assert np.all(geodesic_radius <= radius * (1 + 1e-5))
    np.testing.assert_allclose(radius_h, np64(norms_out), rtol=1e-5)
    if sc * radius < math.pi:  # beyond π/√c the sphere wraps around: the radius is then 2π/√c - ‖v‖ < r
        np.testing.assert_allclose(radius_s, np64(norms_out), rtol=1e-5)
    origin = lorentz_origin(lorentz.curvature.item(), 6, torch.float32)
    assert (lorentz.distance(origin.expand_as(x), x) <= radius * (1 + 1e-5)).all()
    assert (sphere.distance(origin.expand_as(s), s) <= radius * (1 + 1e-5)).all()


def test_tangent_guard_zero_feature_has_finite_gradient():
    guard = TangentGuard(6, alpha_init="auto", learn_alpha=True, clip_radius=1.0)
    v = torch.zeros(2, 6, requires_grad=True)
    Lorentz(curvature=1.0).expmap0(guard(v)).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_tangent_guard_invalid_arguments():
    for bad in (0.0, 2.0, -0.5):
        with pytest.raises(ValueError):
            TangentGuard(8, alpha_init=bad)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            TangentGuard(8, clip_radius=bad)
    with pytest.raises(ValueError):
        TangentGuard(8, learn_alpha=True)

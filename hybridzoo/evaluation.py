"""Evaluation on frozen embeddings: exact k-NN with the geometry's own distance, and a linear probe.

k-NN (InstDisc / DINO / solo-learn protocol)
--------------------------------------------
The similarity ``s(x, y)`` of a query x and a training point y is the geometry's default logit without the
temperature (``geometry.logits(x, y, temperature=1)``):

- ``Euclidean()`` (normalised, "cosine" heads): ``s = cos(x, y)``;
- ``Lorentz``, ``Sphere``, ``Product``, ``Euclidean(normalize=False)``: ``s = -d(x, y)``, minus the geodesic
  distance (for a product d² = Σ dᵢ² over the factors). Never cosine on raw Lorentz coordinates.

``k = 1`` predicts the label of the training point with the largest s. ``k > 1`` is a weighted vote over the k
points with the largest s::

    v_c = Σ_{j in top-k, y_j = c} exp(s_j / τ)        predicted label = argmax_c v_c        (τ = 0.07)

i.e. weights ``exp(cos/τ)`` for cosine heads and ``exp(-d/τ)`` for distance geometries. (The code divides every
weight by the nearest neighbour's, exp((s_j - s_max)/τ): the same argmax without overflow or underflow.) This
equals scikit-learn's ``KNeighborsClassifier(metric="precomputed", n_neighbors=k, weights=w)`` on the distance
matrix D (d, or 1 - cos) with ``w(D) = exp(-D/τ)`` (or ``exp((1 - D)/τ)``); tests/test_evaluation.py checks it.

Search
------
Exact, on the queries' device, blocked over the queries (``query_block`` rows, whose running top-k lists are kept
together) and over the training set (``train_block`` rows at a time; 2048 on CPU, 32768 on accelerators), so the
memory added to the inputs is O(query_block · (k + P) + tile · train_block), whatever N: 1,000,000 training points
need a few MiB beyond the points themselves (benchmarks/bench_knn.py). On CPU the queries are scored 128 rows at a
time so that the score tile stays in L2 cache. Only scores above a row's current k-th best are collected (found
from maxima of column groups), and merged into the running top-k lazily, so ``topk`` never runs over whole blocks
after the first.

Each (query tile, training block) pair is scored with ONE matmul of prepared vectors (a "key", larger = nearer):

- cosine: the L2-normalised points.
- Lorentz (curvature -c): ranking by d is ranking by -⟨x, y⟩_L (arccosh is monotone), a maximum-inner-product
  search with the query's time coordinate negated (design.md §2). **Precision**: in fp32 the plain Minkowski
  product cancels at the scale 1/c (x₀y₀ ≈ 1/c) exactly like the acosh distance (README, "Precision note"): on
  near-origin clusters like those of tests/test_precision.py, 1-NN by -⟨x, y⟩_L agrees with float64 for only
  0.2-4 % of the points at tangent scale 1e-3 (c = 0.1-2) and 86 % at scale 0.03 (c = 0.1). The key used instead is
  the same inner product with the training point's time coordinate replaced by its offset from the origin,
  u(y) = y₀ - 1/√c, computed without cancellation as ‖y_s‖² / (y₀ + 1/√c)::

      key = ⟨(-x₀, x_s), (u(y), y_s)⟩ = x_s·y_s - x₀·u(y) = -⟨x, y⟩_L - x₀/√c

  a per-query constant away from -⟨x, y⟩_L, so it ranks identically in exact arithmetic, and it rounds at the scale
  of the points' norms like ``Lorentz.pairwise_distance``: 1-NN then agrees with float64 on 99.8-100 % of those
  points. Still one matmul with P = D + 1 columns (the speed of cosine).
- sphere (curvature +c): the same construction with u(y) = 1/√c - y₀ (ranking by d is ranking by ⟨x, y⟩).
- flat Euclidean: ``x·y - ‖y‖²/2`` (one matmul with an appended column).
- product: **no inner-product shortcut exists** — d² = Σ dᵢ² adds non-linear (monotone) functions of each factor's
  inner product, so the real summed squared distances are computed: one matmul per factor giving its accurate key,
  then dᵢ² elementwise (Lorentz: acosh(1 + w)²/c from sqrt and log2 with Goldberg's log1p correction, because
  torch's CPU log1p, acosh and asinh are scalar loops, 17-28 ns per element, where log2 and sqrt take ~1 ns;
  sphere: (2/√c · asin √z)²; Euclidean factors: ‖x - y‖² added by the matmul itself). This elementwise work,
  several passes over every score tile on top of matmuls as costly as cosine's one, keeps a full product search
  well below cosine speed on CPU (benchmarks/README.md).
- product, bounded (k ≤ ``BOUNDED_MAX_K``, when every factor is Euclidean, Lorentz or spherical): each factor
  has a lower bound that is a plain Euclidean distance of per-point vectors — Lorentz d ≥ 2‖p_x - p_y‖ with p the
  Poincaré-ball coordinates, sphere arc ≥ chord — so ONE flat matmul search (cosine's cost, no transcendental
  functions) finds the m = 4k + 16 nearest by the bound; their exact distances give the answer, which is
  certified exact when the m-th bound exceeds the k-th exact distance (every other point is then farther). The
  few queries without that certificate are searched in full (:func:`_bounded_product_search`).
- any other geometry: ``geometry.logits(x, y, temperature=1)`` (its default logits).

The similarities of the k winners (for the weights, and returned by :func:`knn_topk`) follow from their keys
(-d from the same near-point-accurate forms as ``pairwise_distance``; cos is the key itself). Everything runs in
fp32 (half inputs are upcast) or in ``dtype`` (``torch.float64`` for maximal precision).

**Ties**: an exact tie between training points' keys (duplicate points) goes to the smaller training index for a
k = 1 search (strict ``>`` across blocks, first maximum within a block); for k > 1 the last place among exactly
tied keys is resolved arbitrarily (by ``torch.topk``, as in scikit-learn and faiss). Tied class votes go to the
smallest label (``argmax`` returns the first maximum, like scikit-learn).

Linear probe
------------
:func:`linear_probe`: multinomial logistic regression on standardised features (scikit-learn, L-BFGS), the L2
strength chosen on a stratified held-out fraction of the training set, then refitted on all of it.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Euclidean, Geometry, Lorentz, Product, Sphere

__all__ = ["knn_topk", "knn_votes", "knn_classify", "knn_accuracy", "knn_accuracies", "linear_probe"]

#: Queries whose running top-k lists are kept together (memory QUERY_BLOCK × k); each training block is prepared
#: once per query block.
QUERY_BLOCK = 4096
#: Training points scored at a time (the default ``train_block``): on CPU a 128 × 2048 fp32 score tile (1 MiB)
#: stays in a core's L2 cache, where the selection and the product's elementwise passes run several times faster
#: than from memory; accelerators want large matmuls.
TRAIN_BLOCK_CPU = 2048
TRAIN_BLOCK_ACCELERATOR = 32768
#: Largest k for which product spaces use the bounded search (:func:`_bounded_product_search`); beyond it keeping
#: 4k + 16 candidates per query costs more than the full search saves (benchmarks/README.md).
BOUNDED_MAX_K = 20
#: Query rows scored together against one training block on CPU (on accelerators: the whole query block).
_TILE_ROWS_CPU = 128

# Smallest norm divided by when L2-normalising (cosine key): a zero vector scores 0 instead of NaN, as in
# Euclidean._cosine.
_NORM_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Ranking keys: per geometry, vectors whose dot products rank neighbours (larger = nearer)
# ---------------------------------------------------------------------------------------------------------------

class _Workspace:
    """Scratch tensors reused from block to block.

    A fresh multi-MiB tensor per block costs page faults (~0.3 ns per element on CPU, as much as a matmul's
    output write); blocks of the same shape reuse one buffer per name instead.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


class _Key:
    """Scores query/training blocks so that a larger score means a nearer training point.

    ``prepare_queries`` / ``prepare_train`` map points (B, P) to what ``score`` consumes; ``score`` returns a
    (Bq, Bn) tensor that may live in the workspace (valid until the next call).
    """

    def prepare_queries(self, x: torch.Tensor):
        return x

    def prepare_train(self, y: torch.Tensor):
        return y

    def score(self, q, t, ws: _Workspace) -> torch.Tensor:
        return torch.mm(q, t.T, out=ws.get("score", (len(q), len(t)), q))

    def similarity(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The similarity s (cos, or -d) from the keys (B, k) of queries x (B, P): only k per query, so the
        transcendental functions cost nothing here."""
        return keys


class _CosineKey(_Key):
    """cos(x, y): normalised vectors, one matmul. The key is the similarity itself."""

    def prepare_queries(self, x):
        return F.normalize(x, dim=-1, eps=_NORM_EPS)

    prepare_train = prepare_queries


class _FlatKey(_Key):
    """x·y - ‖y‖²/2 = (‖x‖² - ‖x - y‖²)/2: one matmul with an appended column (1 | -‖y‖²/2)."""

    def prepare_queries(self, x):
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)

    def prepare_train(self, y):
        return torch.cat([y, -0.5 * y.square().sum(1, keepdim=True)], dim=1)

    def similarity(self, x, keys):
        # d² = ‖x‖² - 2·key ≥ 0; rounding can make it slightly negative for coincident points
        return -(x.square().sum(1, keepdim=True) - 2 * keys).clamp_min(0).sqrt()


def _origin_offset(x: torch.Tensor, c: float, hyperbolic: bool) -> torch.Tensor:
    """u = |x₀ - 1/√c| per point (B, P) -> (B, 1), without cancellation near the origin.

    Lorentz: x₀ = sqrt(1/c + ‖x_s‖²) > 1/√c, so u = x₀ - 1/√c = ‖x_s‖² / (x₀ + 1/√c) (no subtraction).
    Sphere: u = 1/√c - x₀ = ‖x_s‖² / (1/√c + x₀) on the upper hemisphere (x₀ > 0); on the lower one the plain
    difference has no cancellation (and the quotient's denominator vanishes at the antipode).
    """
    r = 1 / math.sqrt(c)
    x0, space_sq = x[:, :1], x[:, 1:].square().sum(1, keepdim=True)
    if hyperbolic:
        return space_sq / (x0 + r)
    # where() evaluates both branches: the clamp keeps the unused quotient finite at x₀ = -1/√c
    return torch.where(x0 > 0, space_sq / (r + x0).clamp_min(r), r - x0)


class _CurvedKey(_Key):
    """Lorentz (``hyperbolic=True``) or sphere: key = x_s·y_s - x₀·u(y) = ⟨(-x₀, x_s), (u(y), y_s)⟩.

    Lorentz: key = -⟨x, y⟩_L - x₀/√c; sphere: key = ⟨x, y⟩ - x₀/√c. Both rank like -d for a fixed query x.
    """

    def __init__(self, geometry: Lorentz | Sphere):
        self.c = float(geometry.curvature)
        self.hyperbolic = isinstance(geometry, Lorentz)

    def prepare_queries(self, x):
        return torch.cat([-x[:, :1], x[:, 1:]], dim=1)

    def prepare_train(self, y):
        return torch.cat([_origin_offset(y, self.c, self.hyperbolic), y[:, 1:]], dim=1)

    def similarity(self, x, keys):
        # z = (√c·u(x) - c·key)/2 = c·q/4 with q = ⟨x-y, x-y⟩_L (Lorentz) or the squared chord (sphere), so
        # d = (2/√c)·asinh(√z) or (2/√c)·asin(√z): the near-point forms of Lorentz/Sphere.pairwise_distance.
        c = self.c
        z = (math.sqrt(c) * _origin_offset(x, c, self.hyperbolic) - c * keys) / 2
        # z ≥ 0 in exact arithmetic (rounding: coincident points); the sphere's z ≤ 1 (rounding: antipodes)
        root = z.clamp_min(0).sqrt()
        return -2 / math.sqrt(c) * (torch.asinh(root) if self.hyperbolic else torch.asin(root.clamp_max(1)))


class _LogitsKey(_Key):
    """Fallback for other geometries: their default logits at temperature 1."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry

    def score(self, q, t, ws):
        return self.geometry.logits(q, t, temperature=1.0)


class _ProductKey(_Key):
    """Product spaces: key = -Σ dᵢ², the real summed squared distances (no inner-product shortcut exists).

    Per factor one matmul yields a quantity from which dᵢ² follows elementwise without cancellation:
    Euclidean factors ‖x - y‖² directly, [x, 1, ‖x‖²]·[-2y, ‖y‖², 1]; Lorentz factors
    w = √c·u(x) - c·key = c·q/2 with q = ⟨x-y, x-y⟩_L, via [-c·x_s, c·x₀, √c·u(x)]·[y_s, u(y), 1], then
    d² = acosh(1 + w)²/c (:func:`_acosh1p_log2`: only vectorised CPU functions); sphere factors z = c·chord²/4 by
    the same matmul halved, then d² = (4/c)·asin(sqrt(z))². Euclidean factors are added by the matmul itself
    (addmm), the curved ones by one fused multiply-add (addcmul).
    """

    def __init__(self, geometry: Product):
        self.geometry = geometry
        self.kinds = []
        for factor in geometry.factors:
            if isinstance(factor, Euclidean):
                self.kinds.append(("flat", None))
            elif isinstance(factor, (Lorentz, Sphere)):
                self.kinds.append(("lorentz" if isinstance(factor, Lorentz) else "sphere", float(factor.curvature)))
            else:
                self.kinds.append(("other", factor))

    def _prepare(self, x, query: bool):
        parts = []
        for (kind, c), p in zip(self.kinds, self.geometry.split(x)):
            ones = torch.ones_like(p[:, :1])
            if kind == "flat":
                sq = p.square().sum(1, keepdim=True)
                parts.append(torch.cat([p, ones, sq], 1) if query else torch.cat([-2 * p, sq, ones], 1))
            elif kind in ("lorentz", "sphere"):
                u = _origin_offset(p, c, kind == "lorentz")
                if query:
                    # the sphere's factor 1/2 is folded into the query: the matmul gives z = w/2 directly
                    half = 1.0 if kind == "lorentz" else 0.5
                    parts.append(half * torch.cat([-c * p[:, 1:], c * p[:, :1], math.sqrt(c) * u], 1))
                else:
                    parts.append(torch.cat([p[:, 1:], u, ones], 1))
            else:
                parts.append(p)
        return parts

    def prepare_queries(self, x):
        return self._prepare(x, query=True)

    def prepare_train(self, y):
        return self._prepare(y, query=False)

    def score(self, q, t, ws):
        shape = (len(q[0]), len(t[0]))
        total = ws.get("score", shape, q[0]).zero_()          # accumulates Σ dᵢ², negated at the end
        for (kind, c), qp, tp in zip(self.kinds, q, t):
            if kind == "flat":
                total.addmm_(qp, tp.T)                        # += ‖x - y‖², fused into the matmul
            elif kind == "other":
                total.add_(c.pairwise_distance(qp, tp).square())
            else:
                factor = torch.mm(qp, tp.T, out=ws.get("factor", shape, qp))
                _add_curved_sq_distance(total, kind, c, factor, ws.get("scratch", shape, qp))
        return total.neg_()

    @property
    def has_bounds(self) -> bool:
        """Whether every factor has a lower bound (:meth:`bound_points`) for the bounded search."""
        return all(kind != "other" for kind, _ in self.kinds)

    def candidate_sq_distances(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Exact d² between each query and its own candidates: queries (B, P), candidates (B, m, P) -> (B, m).

        The same per-factor quantities and elementwise forms as :meth:`score`, from batched row-wise products."""
        b, m, p = candidates.shape
        total = queries.new_zeros((b, m))
        q_parts, t_parts = self.prepare_queries(queries), self.prepare_train(candidates.reshape(b * m, p))
        for (kind, c), qp, tp in zip(self.kinds, q_parts, t_parts):
            factor = torch.bmm(tp.reshape(b, m, -1), qp.unsqueeze(2)).squeeze(2)
            if kind == "flat":
                total.add_(factor)
            else:
                _add_curved_sq_distance(total, kind, c, factor, torch.empty_like(factor))
        return total

    def bound_points(self, x: torch.Tensor) -> torch.Tensor | None:
        """Vectors whose squared Euclidean distance is a lower bound of d²: (B, P) -> (B, P'), or None when a
        factor has no such bound.

        Euclidean factors: the points themselves (exact). Lorentz factors: 2 × the Poincaré-ball coordinates
        p = x_s / (1 + √c·x₀) — the ball's metric is 2‖dp‖ / (1 - c‖p‖²) ≥ 2‖dp‖, so every path, the geodesic
        included, is at least twice as long as the straight segment: d ≥ 2‖p_x - p_y‖ (tight near the origin,
        looser by cosh²(√c·r/2) at radius r). Sphere factors: the ambient coordinates (the chord is no longer
        than the arc).
        """
        parts = []
        for (kind, c), p in zip(self.kinds, self.geometry.split(x)):
            if kind == "other":
                return None
            if kind == "lorentz":
                p = 2 * p[:, 1:] / (1 + math.sqrt(c) * p[:, :1])
            parts.append(p)
        return torch.cat(parts, 1)

    def similarity(self, x, keys):
        # key = -Σ dᵢ² ≤ 0; the clamp only absorbs rounding
        return -(-keys).clamp_min(0).sqrt()


def _add_curved_sq_distance(total: torch.Tensor, kind: str, c: float, factor: torch.Tensor,
                            scratch: torch.Tensor) -> None:
    """total += d² of a Lorentz or sphere factor, from its prepared product ``factor`` (w for Lorentz, z for the
    sphere; see :class:`_ProductKey`). ``factor`` is overwritten; ``scratch`` has its shape."""
    if kind == "lorentz":
        d = _acosh1p_log2(factor, scratch)                          # acosh(1 + w) / ln 2
        total.addcmul_(d, d, value=_LN2 ** 2 / c)
    else:
        # clamp to [0, 1]: rounding can leave sqrt's domain (coincident points) or asin's (antipodes)
        d = factor.clamp_(0, 1).sqrt_().asin_()
        total.addcmul_(d, d, value=4 / c)


_LN2 = math.log(2)
# Where 1 + a rounds to 1 (a < 6e-8), log2(1 + a) is exactly 0: clamping the divisor a/(v - 1) away from 0 keeps
# the quotient finite, so the product is 0 (d² < 4e-15, below the distances' floor) instead of 0·inf = NaN.
_TINY_DIVISOR = 1e-30


def _acosh1p_log2(w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """acosh(1 + w) / ln 2 for a Lorentz factor's w = c·⟨x-y, x-y⟩_L / 2 (any shape), into ``out`` (same shape);
    ``w`` is overwritten.

    acosh(1 + w) = log1p(a) with a = w + sqrt(w² + 2w) (no cancellation near 0), and log1p(a) = ln(v)·a/(v - 1)
    with v = fl(1 + a) (Goldberg 1991, Theorem 4): as accurate as log1p, but built on torch's vectorised log2
    (~1 ns per element on CPU) where torch.log1p, acosh and asinh are scalar loops (17-28 ns).
    """
    # w ≥ 0 in exact arithmetic; rounding can push it below 0, where sqrt(w + 2)·sqrt(w) is NaN. The upper bound
    # keeps a = 2w + 1 finite (inf/inf would be NaN); it only caps distances above ~88/√c (fp32) as equal.
    w.clamp_(0, torch.finfo(w.dtype).max / 4)
    a = torch.add(w, 2, out=out).sqrt_().mul_(w.sqrt()).add_(w)     # sqrt(w² + 2w) without overflowing w²
    v_minus_1 = torch.add(a, 1, out=w).sub_(1)                 # exact (Sterbenz): fl(1 + a) - 1
    a.div_(v_minus_1.clamp_min_(_TINY_DIVISOR))                 # a / (v - 1), 1 up to rounding
    return a.mul_(v_minus_1.add_(1).log2_())                    # log2(v) · a / (v - 1) = log1p(a) / ln 2


def _ranking_key(geometry: Geometry) -> _Key:
    """The fastest exact ranking key for ``geometry``'s default similarity."""
    if isinstance(geometry, Euclidean):
        return _CosineKey() if geometry.default_logits == "cosine" else _FlatKey()
    if isinstance(geometry, (Lorentz, Sphere)):
        return _CurvedKey(geometry)
    if isinstance(geometry, Product):
        return _ProductKey(geometry)
    return _LogitsKey(geometry)


# ---------------------------------------------------------------------------------------------------------------
# Blocked exact search with a running top-k merge
# ---------------------------------------------------------------------------------------------------------------

class _RunningTop1:
    """The best score (and its column) of each of ``rows`` rows over a stream of score blocks."""

    def __init__(self, rows: int, like: torch.Tensor):
        self.values = torch.full((rows, 1), -math.inf, dtype=like.dtype, device=like.device)
        self.indices = torch.zeros((rows, 1), dtype=torch.long, device=like.device)

    def add(self, scores: torch.Tensor, offset: int) -> None:
        """scores (rows, n) of training points offset, ..., offset + n - 1."""
        block_max = scores.amax(1, keepdim=True)
        # strict >: on an exact tie the earlier block (smaller training index) keeps the place
        improved = (block_max > self.values).squeeze(1).nonzero().squeeze(1)
        if len(improved):
            # argmax (the first maximum) only on the rows that improve: after a few blocks, a small fraction
            self.indices[improved] = scores[improved].argmax(1, keepdim=True) + offset
            self.values[improved] = block_max[improved]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.values, self.indices


class _RunningTopK:
    """The k best scores (and columns) of each row over a stream of score blocks, merged lazily.

    Only scores strictly above a row's current k-th best (``threshold``) can enter. Once the lists are full such
    scores are few, so instead of ``topk`` over every block (3-10 ns per element on CPU) they are found from the
    maxima of column groups (one vectorised pass, ~0.15 ns per element), collected as (row, column, value)
    triplets, and merged into the lists when about k per row are pending. A stale threshold is still a valid
    filter: it only rises.
    """

    #: Columns per group for the group-maximum filter. The groups are strided (group j = columns j, j + n/G, ...)
    #: so that the maximum reduces over a non-contiguous axis, which the CPU kernels vectorise.
    GROUP = 32
    #: Pending candidates (per row, in units of k) that trigger a merge, which refreshes the threshold.
    FLUSH = 1.0

    def __init__(self, rows: int, k: int, like: torch.Tensor):
        self.k = k
        self.values = torch.full((rows, k), -math.inf, dtype=like.dtype, device=like.device)
        self.indices = torch.zeros((rows, k), dtype=torch.long, device=like.device)
        self.threshold = self.values[:, :1].clone()
        self.filled = False                    # every row holds k real scores, so the threshold is finite
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending_count = 0

    def add(self, scores: torch.Tensor, offset: int) -> None:
        """scores (rows, n) of training points offset, ..., offset + n - 1."""
        if not self.filled:
            values, columns = scores.topk(min(self.k, scores.shape[1]), dim=1, sorted=False)
            self._merge(values, columns + offset)
            return
        rows, columns, values = self._candidates(scores)
        if len(rows):
            self.pending.append((rows, columns + offset, values))
            self.pending_count += len(rows)
            if self.pending_count >= self.FLUSH * len(scores) * self.k:
                self._flush()

    def _candidates(self, scores):
        """(row, column, value) of every score strictly above its row's threshold."""
        rows, n = scores.shape
        group = self.GROUP
        if n % group:
            r, c = (scores > self.threshold).nonzero(as_tuple=True)
            return r, c, scores[r, c]
        width = n // group
        grouped = scores.reshape(rows, group, width)       # [r, g, j] = scores[r, g * width + j]
        hit_rows, hit_groups = (grouped.amax(1) > self.threshold).nonzero(as_tuple=True)
        values = grouped[hit_rows, :, hit_groups]          # (hits, group)
        keep, member = (values > self.threshold[hit_rows]).nonzero(as_tuple=True)
        return hit_rows[keep], member * width + hit_groups[keep], values[keep, member]

    def _flush(self) -> None:
        """Merge the pending triplets, packed into a (rows, m) array padded with -inf."""
        if not self.pending:
            return
        rows, columns, values = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.pending_count = [], 0
        order = torch.argsort(rows, stable=True)
        rows, columns, values = rows[order], columns[order], values[order]
        counts = torch.bincount(rows, minlength=len(self.values))
        position = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        width = int(counts.max())
        packed_values = self.values.new_full((len(self.values), width), -math.inf)
        packed_columns = self.indices.new_zeros((len(self.values), width))
        packed_values[rows, position] = values
        packed_columns[rows, position] = columns
        self._merge(packed_values, packed_columns)

    def _merge(self, values: torch.Tensor, columns: torch.Tensor) -> None:
        merged, order = torch.cat([self.values, values], 1).topk(self.k, dim=1, sorted=False)
        self.indices = torch.cat([self.indices, columns], 1).gather(1, order)
        self.values = merged
        self.threshold = merged.amin(1, keepdim=True)
        self.filled = bool(self.threshold.gt(-math.inf).all())

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices), both (rows, k), best first."""
        self._flush()
        values, order = self.values.sort(1, descending=True)
        return values, self.indices.gather(1, order)


def _work_dtype(points: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype`` if given, else the points' dtype with half precision raised to fp32 (design.md §3)."""
    if dtype is not None:
        return dtype
    if points.dtype in (torch.float16, torch.bfloat16) or not points.is_floating_point():
        return torch.float32
    return points.dtype


def _check_finite(block: torch.Tensor, what: str) -> None:
    # A NaN score never wins a comparison, so a NaN point would silently vanish from (or corrupt) the search.
    # The sum is NaN or infinite if any coordinate is (or if they are so large that scores overflow anyway), and
    # costs 50x less than isfinite(block).all().
    if not torch.isfinite(block.sum()):
        raise ValueError(f"{what} contain NaN or infinite coordinates (or values too large for {block.dtype})")


def _search_blocks(train_points: torch.Tensor, query_points: torch.Tensor, key: _Key, k: int,
                   dtype: torch.dtype | None, query_block: int, train_block: int | None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (similarities (B, k), train indices (B, k)) per query block, nearest first: s = cos or -d
    (``key.similarity``).

    Each training block is prepared once per query block and scored against the query block tile by tile.
    """
    work = _work_dtype(train_points, dtype)
    device = query_points.device
    on_cpu = device.type == "cpu"
    train_block = train_block or (TRAIN_BLOCK_CPU if on_cpu else TRAIN_BLOCK_ACCELERATOR)
    workspace = _Workspace()
    for q_start in range(0, len(query_points), query_block):
        queries = query_points[q_start:q_start + query_block].to(work)
        _check_finite(queries, "query points")
        tile_rows = _TILE_ROWS_CPU if on_cpu else len(queries)
        tiles = []
        for t_start in range(0, len(queries), tile_rows):
            rows = queries[t_start:t_start + tile_rows]
            running = _RunningTop1(len(rows), rows) if k == 1 else _RunningTopK(len(rows), k, rows)
            tiles.append((key.prepare_queries(rows), running))
        for n_start in range(0, len(train_points), train_block):
            block = train_points[n_start:n_start + train_block].to(device=device, dtype=work)
            if q_start == 0:
                _check_finite(block, "training points")
            prepared = key.prepare_train(block)
            for tile, running in tiles:
                running.add(key.score(tile, prepared, workspace), n_start)
        keys, indices = (torch.cat(parts) for parts in zip(*(running.result() for _, running in tiles)))
        yield key.similarity(queries, keys), indices


def _check_inputs(train_points, query_points, k):
    if train_points.ndim != 2 or query_points.ndim != 2:
        raise ValueError(f"points must be 2-D (N, P); got train {tuple(train_points.shape)} and queries "
                         f"{tuple(query_points.shape)}")
    if train_points.shape[1] != query_points.shape[1]:
        raise ValueError(f"train points have {train_points.shape[1]} coordinates, queries {query_points.shape[1]}")
    if len(train_points) == 0:
        raise ValueError("k-NN needs at least one training point")
    if int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k}")


@torch.no_grad()
def knn_topk(train_points: torch.Tensor, query_points: torch.Tensor, geometry: Geometry, k: int = 1, *,
             dtype: torch.dtype | None = None, query_block: int = QUERY_BLOCK,
             train_block: int | None = None, bounded: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest training points of each query in ``geometry`` (see the module docstring).

    Args:
        train_points: (N, P) points (e.g. ``model(images)``), any float dtype, on any device: the search runs on
            the queries' device and moves one training block there at a time.
        query_points: (Q, P) points.
        geometry: the points' geometry; its default similarity defines "near".
        k: neighbours per query (capped at N).
        dtype: computation dtype (default fp32, float64 when the points are float64; half is raised to fp32).
        query_block: queries searched together (memory query_block · (k + P)).
        train_block: training points scored at a time (default 2048 on CPU, 32768 on accelerators).
        bounded: product spaces only: the bounded search (None: when k ≤ ``BOUNDED_MAX_K``; True: for any k;
            False: never, the full search). Either way the neighbours are exact.

    Returns:
        ``(similarity, indices)``, both (Q, k), nearest first: ``indices`` (int64) into ``train_points`` and the
        similarity of each neighbour — cos(x, y) for cosine heads, -d(x, y) (minus the geodesic distance) for
        the other geometries.
    """
    _check_inputs(train_points, query_points, k)
    k = min(int(k), len(train_points))
    if len(query_points) == 0:
        return (torch.empty((0, k), dtype=_work_dtype(train_points, dtype), device=query_points.device),
                torch.empty((0, k), dtype=torch.long, device=query_points.device))
    key = _ranking_key(geometry)
    if isinstance(key, _ProductKey) and key.has_bounds and (k <= BOUNDED_MAX_K if bounded is None else bounded):
        blocks = _bounded_product_search(train_points, query_points, key, k, dtype, query_block, train_block)
    else:
        blocks = _search_blocks(train_points, query_points, key, k, dtype, query_block, train_block)
    sims, indices = zip(*blocks)
    return torch.cat(sims), torch.cat(indices)


class _BoundKey(_FlatKey):
    """A flat search over a product key's lower-bound vectors (:meth:`_ProductKey.bound_points`): larger key =
    smaller lower bound of d². Records the largest squared bound-vector norm it prepares, for rounding margins."""

    def __init__(self, product: _ProductKey):
        self.bound_points = product.bound_points
        self.max_train_sq = 0.0

    def prepare_queries(self, x):
        return super().prepare_queries(self.bound_points(x))

    def prepare_train(self, y):
        bound = self.bound_points(y)
        self.max_train_sq = max(self.max_train_sq, float(bound.square().sum(1).max()))
        return super().prepare_train(bound)

    def similarity(self, x, keys):
        return super().similarity(self.bound_points(x), keys)        # -sqrt(lower bound of d²)


#: Elements (rows × candidates × coordinates) of gathered candidate points held at once (16 MiB in fp32).
_GATHER_ELEMENTS = 1 << 22


def _bounded_candidates(k: int) -> int:
    """Candidates per query kept by the lower-bound pass. On bench_knn's random product points (N = 100,000,
    d = 128, the hardest case: distances concentrate) the k-th exact neighbour was always among the 17 (k = 1),
    112 (k = 20) and 755 (k = 200) nearest by the bound; clustered data needs fewer."""
    return 4 * k + 16


def _bounded_product_search(train_points: torch.Tensor, query_points: torch.Tensor, key: _ProductKey, k: int,
                            dtype: torch.dtype | None, query_block: int, train_block: int | None
                            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Exact product-space k-NN at nearly the cost of one flat search: the :func:`_search_blocks` contract.

    1. A flat search (one matmul per tile, no transcendental functions) over lower-bound vectors
       (:meth:`_ProductKey.bound_points`, ‖b(x) - b(y)‖² ≤ d²(x, y)) keeps the m nearest by the bound.
    2. The exact d² of those m candidates (:meth:`_ProductKey.candidate_sq_distances`) gives the k nearest among
       them; ties go to the smaller training index, as in the full search.
    3. Certificate: every other training point has a bound of at least the m-th candidate's, L_m. Where
       L_m > d²_k (the k-th exact distance) by more than the rounding margin, no other point can be nearer, and the
       answer is exact. Queries without the certificate are searched again in full (:func:`_search_blocks`).
    """
    bound = _BoundKey(key)
    m = min(len(train_points), _bounded_candidates(k))
    work = _work_dtype(train_points, dtype)
    starts = range(0, len(query_points), query_block)
    for q_start, (bound_sims, candidates) in zip(starts, _search_blocks(train_points, query_points, bound, m, dtype,
                                                                          query_block, train_block)):
        queries = query_points[q_start:q_start + query_block].to(work)
        chunk = max(1, _GATHER_ELEMENTS // (m * train_points.shape[1]))
        sq = torch.cat([key.candidate_sq_distances(
            queries[r:r + chunk],
            train_points[candidates[r:r + chunk].to(train_points.device)].to(device=queries.device, dtype=work))
            for r in range(0, len(queries), chunk)])
        # nearest first by exact d²; the stable sort of index-ordered candidates sends ties to the smaller index
        by_index = candidates.argsort(1)
        candidates, sq = candidates.gather(1, by_index), sq.gather(1, by_index)
        nearest = sq.argsort(dim=1, stable=True)[:, :k]
        best_sq, best = sq.gather(1, nearest), candidates.gather(1, nearest)
        kth = best_sq[:, -1]
        if m == len(train_points):
            certified = torch.ones_like(kth, dtype=torch.bool)
        else:
            # Rounding margin: a dot product of P terms errs by at most P·eps·‖x‖‖y‖, and both the bound (from a
            # matmul of bound vectors) and d²_k (from the factors' products) carry such errors.
            bound_q_sq = bound.bound_points(queries).square().sum(1)
            eps = torch.finfo(work).eps
            margin = 2 * (train_points.shape[1] + 4) * eps * (bound_q_sq + bound.max_train_sq + kth)
            certified = bound_sims[:, -1].square() > kth + margin
        sims = key.similarity(queries, -best_sq)
        redo = (~certified).nonzero().squeeze(1)
        if len(redo):
            exact_sims, exact = next(iter(_search_blocks(train_points, queries[redo], key, k, dtype, len(redo),
                                                         train_block)))
            sims[redo], best[redo] = exact_sims, exact
        yield sims, best


def _labels(labels, device) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.is_floating_point() or labels.is_complex() or (len(labels) and int(labels.min()) < 0):
        raise ValueError("labels must be non-negative integers (class indices)")
    return labels.long()


def _vote(similarity: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float,
          weights: str) -> torch.Tensor:
    """Class votes (B, C) from the similarities (B, k) and labels (B, k) of the neighbours."""
    if weights == "uniform":
        w = torch.ones_like(similarity)
    else:
        # exp(s/τ) divided by exp(max s/τ): the same argmax, without overflow (cos/τ up to 14) or underflow
        # (-d/τ below -745 would make every weight 0 in float64 and every vote a tie)
        w = ((similarity - similarity.amax(1, keepdim=True)) / temperature).exp()
    votes = torch.zeros(len(similarity), num_classes, dtype=w.dtype, device=w.device)
    return votes.scatter_add_(1, neighbour_labels, w)


@torch.no_grad()
def knn_votes(train_points: torch.Tensor, train_labels: torch.Tensor, query_points: torch.Tensor,
              geometry: Geometry, k: int = 20, temperature: float = 0.07, *, weights: str = "exp",
              num_classes: int | None = None, dtype: torch.dtype | None = None, query_block: int = QUERY_BLOCK,
              train_block: int | None = None) -> torch.Tensor:
    """Class votes (Q, C) of the weighted k-NN: ``votes[q, c] = Σ_{j in top-k(q), y_j = c} w_j``.

    ``weights="exp"``: w_j = exp(s_j/τ) / max_j exp(s_j/τ) (s = cos or -d, module docstring); ``"uniform"``: 1.
    ``votes.topk(m)`` ranks classes, e.g. for :func:`hybridzoo.hierarchy.hierarchical_distance_at_k`.
    Other arguments as in :func:`knn_classify`.
    """
    if weights not in ("exp", "uniform"):
        raise ValueError(f"weights must be 'exp' or 'uniform', got {weights!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    labels = _labels(train_labels, train_points.device)
    if len(labels) != len(train_points):
        raise ValueError(f"{len(labels)} labels for {len(train_points)} training points")
    num_classes = num_classes or int(labels.max()) + 1
    sims, indices = knn_topk(train_points, query_points, geometry, k, dtype=dtype, query_block=query_block,
                             train_block=train_block)
    return _vote(sims, labels[indices.to(labels.device)].to(sims.device), num_classes, temperature, weights)


@torch.no_grad()
def knn_classify(train_points: torch.Tensor, train_labels: torch.Tensor, query_points: torch.Tensor,
                 geometry: Geometry, k: int = 1, temperature: float = 0.07, *, weights: str = "exp",
                 num_classes: int | None = None, dtype: torch.dtype | None = None, query_block: int = QUERY_BLOCK,
                 train_block: int | None = None) -> torch.Tensor:
    """Predicted labels (Q,) of the (weighted) k-NN classifier.

    Args:
        train_points: (N, P) points; train_labels: (N,) non-negative integer labels.
        query_points: (Q, P) points.
        geometry: the points' geometry (its distance, or cosine for cosine heads; module docstring).
        k: 1 = nearest neighbour's label; k > 1 = weighted vote (DINO: 20 and 200).
        temperature: τ of the vote weights w = exp(s/τ): exp(cos/τ) for cosine heads, exp(-d/τ) otherwise.
        weights: ``"exp"`` (above) or ``"uniform"`` (majority vote).
        num_classes: number of classes (default: max label + 1).
        dtype, query_block, train_block: see :func:`knn_topk`.

    Ties between classes go to the smallest label; see the module docstring for tied neighbours.
    """
    votes = knn_votes(train_points, train_labels, query_points, geometry, k, temperature, weights=weights,
                      num_classes=num_classes, dtype=dtype, query_block=query_block, train_block=train_block)
    return votes.argmax(1).to(torch.as_tensor(train_labels).device)


@torch.no_grad()
def knn_accuracies(train_points: torch.Tensor, train_labels: torch.Tensor, test_points: torch.Tensor,
                   test_labels: torch.Tensor, geometry: Geometry, ks: Sequence[int] = (1, 20, 200),
                   temperature: float = 0.07, *, weights: str = "exp", dtype: torch.dtype | None = None,
                   query_block: int = QUERY_BLOCK, train_block: int | None = None) -> dict[int, float]:
    """Top-1 accuracy for several k from ONE search (the top-max(ks) list holds every smaller top-k).

    Returns ``{k: accuracy}`` (e.g. ``{1: 0.91, 20: 0.93, 200: 0.92}``). Arguments as in :func:`knn_classify`;
    test_points (Q, P), test_labels (Q,). Exactly tied neighbours are ordered as in a k = max(ks) search.
    """
    labels = _labels(train_labels, train_points.device)
    targets = _labels(test_labels, train_points.device)
    if len(targets) != len(test_points):
        raise ValueError(f"{len(targets)} test labels for {len(test_points)} test points")
    if len(labels) != len(train_points):
        raise ValueError(f"{len(labels)} labels for {len(train_points)} training points")
    if weights not in ("exp", "uniform") or not temperature > 0:
        raise ValueError(f"need weights 'exp' or 'uniform' and a positive temperature; got {weights!r}, {temperature}")
    num_classes = int(max(labels.max(), targets.max() if len(targets) else 0)) + 1
    sims, indices = knn_topk(train_points, test_points, geometry, max(ks), dtype=dtype, query_block=query_block,
                             train_block=train_block)
    neighbour_labels = labels[indices.to(labels.device)]
    results = {}
    for k in ks:
        predicted = _vote(sims[:, :k], neighbour_labels[:, :k].to(sims.device), num_classes, temperature,
                          weights).argmax(1)
        results[int(k)] = (predicted.to(targets.device) == targets).double().mean().item()
    return results


def knn_accuracy(train_points: torch.Tensor, train_labels: torch.Tensor, test_points: torch.Tensor,
                 test_labels: torch.Tensor, geometry: Geometry, k: int = 1, temperature: float = 0.07, *,
                 weights: str = "exp", dtype: torch.dtype | None = None, query_block: int = QUERY_BLOCK,
                 train_block: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_classify` on labelled queries (test_points (Q, P), test_labels (Q,))."""
    return knn_accuracies(train_points, train_labels, test_points, test_labels, geometry, (k,), temperature,
                          weights=weights, dtype=dtype, query_block=query_block, train_block=train_block)[int(k)]


# ---------------------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------------------

def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() and x.dtype != torch.float64 else x
        return x.numpy()
    return np.asarray(x)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *,
                 Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0), val_fraction: float = 0.2,
                 max_iter: int = 1000, standardize: bool = True, seed: int = 0) -> dict:
    """Multinomial logistic regression on frozen features; returns test accuracy and the chosen regularisation.

    Works on any (N, D) features: pooled backbone features (``model.forward_features``), head outputs, or tangent
    vectors ``geometry.logmap0(points)`` — the caller chooses.

    Recipe: standardise (mean 0, variance 1 per feature, statistics from the fitting set only); scikit-learn
    ``LogisticRegression`` (L-BFGS, multinomial, L2 penalty with inverse strength C); pick C from ``Cs`` by
    accuracy on a stratified ``val_fraction`` of the training set (ties: the smallest C, i.e. the strongest
    regularisation); refit on the whole training set with that C.

    Args:
        train_feats: (N, D) array or tensor; train_labels: (N,) integer labels.
        test_feats: (M, D); test_labels: (M,).
        Cs: grid of inverse L2 strengths. val_fraction: held-out share of train for the choice (0 < f < 1).
        max_iter: L-BFGS iterations per fit. standardize: standardise features first. seed: split seed.

    Returns:
        dict with ``top1`` (test accuracy), ``top5`` (when there are more than 5 classes), ``C`` (chosen),
        ``val_top1`` ({C: held-out accuracy}), ``converged`` (the final fit reached ``tol`` within max_iter).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _to_numpy(train_feats), _to_numpy(train_labels).astype(np.int64)
    x_test, y_test = _to_numpy(test_feats), _to_numpy(test_labels).astype(np.int64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D); got {x_train.shape} and {x_test.shape}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")

    def fit(x, y, C):
        steps = [StandardScaler()] if standardize else []
        model = make_pipeline(*steps, LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return model, converged

    # stratify when every class can give a sample to both sides; otherwise a plain random split
    _, class_counts = np.unique(y_train, return_counts=True)
    stratify = y_train if class_counts.min() >= 2 else None
    x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=val_fraction, random_state=seed,
                                                  stratify=stratify)
    val_top1 = {}
    for C in sorted(Cs):
        model, _ = fit(x_fit, y_fit, C)
        val_top1[float(C)] = float((model.predict(x_val) == y_val).mean())
    best_C = max(val_top1, key=lambda C: (val_top1[C], -C))   # highest accuracy, then the smallest C

    model, converged = fit(x_train, y_train, best_C)
    result = {"top1": float((model.predict(x_test) == y_test).mean()), "C": best_C, "val_top1": val_top1,
              "converged": converged}
    classes = model.classes_
    if len(classes) > 5:
        proba = model.predict_proba(x_test)
        top5 = classes[np.argsort(-proba, axis=1)[:, :5]]
        result["top5"] = float((top5 == y_test[:, None]).any(1).mean())
    return result

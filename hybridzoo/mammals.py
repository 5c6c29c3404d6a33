"""WordNet mammals reconstruction (Nickel & Kiela 2017): a sanity benchmark for hybridzoo's geometry code.

Embed the transitive closure of WordNet's mammal subtree (``child<TAB>ancestor``, 6,541 edges, 1,181 nodes) in a
geometry, then check how well distances reconstruct it: for every node u with neighbours N(u) (closure edges taken
as undirected), each true neighbour v is ranked among {v} ∪ non-neighbours of u by distance to u.

- **mean rank**: mean over all (u, v ∈ N(u)) of 1 + #{non-neighbours w of u with d(u, w) ≤ d(u, v)};
- **MAP**: mean over u of the average precision of ranking N(u) above the non-neighbours by -d(u, ·)
  (scikit-learn's ``average_precision_score`` convention: tied distances form one threshold).

Ties count against the embedding (``≤``), so a collapsed embedding scores badly instead of perfectly.

Training follows Nickel & Kiela: the points are parameters *on the manifold* (``geoopt.ManifoldParameter``: flat
R^a for Euclidean factors, ``geoopt.Lorentz(k=1/c)`` for hyperbolic ones, time coordinate first as in hybridzoo),
updated by Riemannian SGD; the loss is a softmax of -d over one positive (u, v) against sampled non-neighbours
v' of u, with a burn-in at a lower learning rate, in float64. Two guards (:class:`TrainConfig`): no point moves
more than ``max_step`` per update, and Lorentz points stay within ``max_radius`` of the origin, where float64
distances are still exact. Every distance, in training and in scoring, is hybridzoo's own (``geometry.distance``
/ ``geometry.pairwise_distance``): geoopt only supplies the manifold updates (Riemannian gradient, exponential map).

>>> from hybridzoo.mammals import load_closure, train_embedding, evaluate_reconstruction
>>> torch.set_num_threads(1)                      # tiny tensor ops: one thread is fastest
>>> closure = load_closure()                      # $HYBRIDZOO_DATA_DIR or ../shared/data/wordnet-mammals
>>> emb = train_embedding(closure, "lorentz", dim=5, epochs=300, seed=0)      # ~1 min on one core
>>> evaluate_reconstruction(closure, emb)         # {'mean_rank': 3.0, 'map': 0.94, ...}
>>> evaluate_reconstruction(closure, emb.points, emb.geometry)      # the same, from points

``eval/mammals.py`` runs the grid and writes ``results/mammals/``.

Geometry specs (:func:`make_geometry`): ``"euclidean"`` (flat R^d, ``Euclidean(normalize=False)``),
``"lorentz"`` (H^d, curvature -c), ``"product"`` (E^⌊d/2⌋ × H^⌈d/2⌉, the zoo's hybrid head) and
``"product-hh"`` (H^⌊d/2⌋ × H^⌈d/2⌉); or any hybridzoo geometry made of ``Euclidean(normalize=False)`` and
``Lorentz`` factors.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import geoopt
import torch
import torch.nn.functional as F

from .errors import DataNotFoundError
from .geometry import Euclidean, Geometry, Lorentz, Product

__all__ = ["CLOSURE_FILE", "GEOMETRY_SPECS", "Closure", "TrainConfig", "Embedding", "default_closure_path",
           "load_closure", "make_geometry", "train_embedding", "reconstruction_metrics", "evaluate_reconstruction"]

#: File name of the closure inside the ``wordnet-mammals`` data folder.
CLOSURE_FILE = "mammal_closure.tsv"
#: Names accepted by :func:`make_geometry` (and so by :func:`train_embedding`).
GEOMETRY_SPECS = ("euclidean", "lorentz", "product", "product-hh")

_HOW_TO_GET = (
    "The file is `child<TAB>ancestor` lines of the WordNet 3.0 mammal transitive closure (Nickel & Kiela 2017), "
    "as made by facebookresearch/poincare-embeddings (wordnet/transitive_closure.py, then the Makefile's mammals "
    "step) from nltk's WordNet. Put it at $HYBRIDZOO_DATA_DIR/wordnet-mammals/" + CLOSURE_FILE + " or "
    "../shared/data/wordnet-mammals/" + CLOSURE_FILE + " beside the checkout, or pass its path.")


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Closure:
    """A transitive closure as a graph: node ``names`` (sorted) and directed ``edges`` (E, 2) = (child, ancestor).

    Reconstruction treats the edges as undirected (:meth:`adjacency`).
    """

    names: tuple[str, ...]
    edges: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def index(self, name: str) -> int:
        """The node id of a synset name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a node of this closure") from None

    def adjacency(self) -> torch.Tensor:
        """(n, n) bool, symmetric, False on the diagonal: u ~ v when (u, v) or (v, u) is an edge."""
        adj = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        adj[self.edges[:, 0], self.edges[:, 1]] = True
        adj[self.edges[:, 1], self.edges[:, 0]] = True
        adj.fill_diagonal_(False)
        return adj

    def subgraph(self, nodes) -> "Closure":
        """The closure restricted to ``nodes`` (names or ids): those nodes and the edges among them."""
        ids = sorted({self.index(n) if isinstance(n, str) else int(n) for n in nodes})
        keep = torch.zeros(self.num_nodes, dtype=torch.bool)
        keep[ids] = True
        new_id = torch.full((self.num_nodes,), -1, dtype=torch.int64)
        new_id[ids] = torch.arange(len(ids))
        edges = self.edges[keep[self.edges[:, 0]] & keep[self.edges[:, 1]]]
        return Closure(names=tuple(self.names[i] for i in ids), edges=new_id[edges])

    def subtree(self, root: str) -> "Closure":
        """``root`` and its descendants (the nodes with an edge to it), with the closure edges among them."""
        r = self.index(root)
        children = self.edges[self.edges[:, 1] == r, 0].tolist()
        return self.subgraph([r, *children])


def default_closure_path() -> Path:
    """$HYBRIDZOO_DATA_DIR/wordnet-mammals/mammal_closure.tsv if that variable is set, else the shared data folder
    beside the checkout (../shared/data/wordnet-mammals/mammal_closure.tsv)."""
    if os.environ.get("HYBRIDZOO_DATA_DIR"):
        return Path(os.environ["HYBRIDZOO_DATA_DIR"]) / "wordnet-mammals" / CLOSURE_FILE
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "wordnet-mammals" / CLOSURE_FILE


def load_closure(path: str | os.PathLike | None = None) -> Closure:
    """Read a ``child<TAB>ancestor`` closure file (default :func:`default_closure_path`); a folder means its
    ``mammal_closure.tsv``. Duplicate lines and self loops are dropped.

    Raises :class:`hybridzoo.errors.DataNotFoundError` (what is missing and how to get it) when the file is absent,
    and ``ValueError`` naming the line for a malformed one.
    """
    path = Path(path).expanduser() if path is not None else default_closure_path()
    if path.is_dir():
        path = path / CLOSURE_FILE
    if not path.is_file():
        raise DataNotFoundError(f"WordNet mammal closure not found at {path}. {_HOW_TO_GET}")
    pairs = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{path}:{number}: expected `child<TAB>ancestor`, got {line!r}")
            if parts[0] != parts[1]:
                pairs.add((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"{path} holds no edges")
    names = tuple(sorted({n for pair in pairs for n in pair}))
    ids = {n: i for i, n in enumerate(names)}
    edges = torch.tensor(sorted((ids[a], ids[b]) for a, b in pairs), dtype=torch.int64)
    return Closure(names=names, edges=edges)


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------

def make_geometry(spec: str | Geometry, dim: int | None = None, curvature: float = 1.0) -> Geometry:
    """A hybridzoo geometry for a spec name and a total (tangent) dimension ``dim``; see the module docstring.

    A :class:`~hybridzoo.geometry.Geometry` is returned unchanged (``dim`` ignored) after checking that it is
    made of flat Euclidean and Lorentz factors only (the ones :func:`train_embedding` can optimise).
    """
    if isinstance(spec, Geometry):
        _factor_layout(spec)
        return spec
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if spec == "euclidean":
        return Euclidean(normalize=False)
    if spec == "lorentz":
        return Lorentz(curvature=curvature)
    if spec in ("product", "product-hh"):
        if dim < 2:
            raise ValueError(f"a product of two factors needs dim >= 2, got {dim}")
        first = Euclidean(normalize=False) if spec == "product" else Lorentz(curvature=curvature)
        return Product([(first, dim // 2), (Lorentz(curvature=curvature), dim - dim // 2)])
    raise ValueError(f"unknown geometry spec {spec!r}; choose one of {GEOMETRY_SPECS} or pass a hybridzoo Geometry")


def _factor_layout(geometry: Geometry, dim: int | None = None) -> list[tuple[Geometry, int | None]]:
    """(factor, tangent dim) pairs; checks that every factor is flat Euclidean or Lorentz."""
    factors = list(zip(geometry.factors, geometry.dims)) if isinstance(geometry, Product) else [(geometry, dim)]
    for factor, _ in factors:
        if isinstance(factor, Euclidean) and factor.normalize:
            raise ValueError("reconstruction embeds in flat space: use Euclidean(normalize=False), not the "
                             "unit-sphere (cosine) Euclidean geometry")
        if not isinstance(factor, (Euclidean, Lorentz)):
            raise ValueError(f"train_embedding optimises Euclidean(normalize=False) and Lorentz factors only, "
                             f"not {type(factor).__name__}")
    return factors


def _describe(geometry: Geometry, dim: int) -> str:
    """E^a × H^b style description, e.g. 'E^2 x H^3 (c=1)'."""
    parts = []
    for factor, d in _factor_layout(geometry, dim):
        if isinstance(factor, Lorentz):
            parts.append(f"H^{d}")
        else:
            parts.append(f"E^{d}")
    curvatures = {round(f.curvature.item(), 6) for f, _ in _factor_layout(geometry, dim) if isinstance(f, Lorentz)}
    suffix = f" (c={', '.join(f'{c:g}' for c in sorted(curvatures))})" if curvatures else ""
    return " x ".join(parts) + suffix


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train_embedding` (Nickel & Kiela's recipe, at larger batches).

    - ``epochs``: passes over the positive pairs; every closure edge is a pair in both directions (13,082 pairs
      for the mammals). ``burn_in`` first epochs run at ``lr * burn_in_factor`` (Nickel & Kiela: a slow start
      lets the points settle their angular layout before they move outwards; 50 × 0.01 beat 20 × 0.01 by
      ~0.008 MAP at H^5 over three seeds).
    - ``lr``: the Riemannian SGD step on the *batch mean* of the loss: lr 100 at batch 1024 is ~0.1 per pair
      (Nickel & Kiela's Lorentz recipe: 0.3 on batches of 10, 0.03 per pair, but ~50x more steps per epoch).
    - ``negatives``: non-neighbours v' of u drawn uniformly per pair (u, v); the loss is the cross-entropy of the
      softmax of -d over (v, v'₁, …, v'ₖ). Pairs whose u has no non-neighbour (the root) contribute nothing.
    - ``init_scale``: space coordinates start uniform in [-init_scale, init_scale].
    - ``max_radius``: Lorentz points are kept within this geodesic distance of the origin (None: unbounded).
      Coordinates grow like e^(√c r)/2, so the squared Minkowski distance behind hybridzoo's float64
      ``pairwise_distance`` carries an absolute error ~1e-16 · e^(2√c r): ~1e-3 at r = 15, ~20 at r = 20 (where
      the ranks of near points would be noise). Unbounded runs at lr 100 overflow (NaN) within 50 epochs.
    - ``max_step``: no point moves farther than this (geodesic length) in one update (Nickel & Kiela 2018 clip
      the step at 1), or None.
    - ``curvature``: c of the Lorentz factors when the geometry is given by name.
    - ``dtype``: "float64" (geoopt's advice for the Lorentz model) or "float32".
    """

    epochs: int = 300
    lr: float = 100.0
    burn_in: int = 50
    burn_in_factor: float = 0.01
    negatives: int = 50
    batch_size: int = 1024
    init_scale: float = 1e-3
    max_radius: float | None = 15.0
    max_step: float | None = 1.0
    curvature: float = 1.0
    dtype: str = "float64"

    def __post_init__(self):
        if self.epochs < 0 or self.burn_in < 0 or self.negatives < 1 or self.batch_size < 1:
            raise ValueError(f"bad TrainConfig {self}")


@dataclass
class Embedding:
    """Trained points (n, P) in hybridzoo's layout for ``geometry`` (Lorentz factors time first)."""

    points: torch.Tensor
    geometry: Geometry
    names: tuple[str, ...]
    spec: str
    dim: int
    seed: int
    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def description(self) -> str:
        return _describe(self.geometry, self.dim)

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the points)."""
        return {"spec": self.spec, "geometry": self.description, "dim": self.dim, "seed": self.seed,
                "config": asdict(self.config), "final_loss": self.losses[-1] if self.losses else None,
                "seconds": round(self.seconds, 2)}


def _non_neighbour_table(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR of each node's non-neighbours (self excluded): flat ids, row offsets, row counts."""
    non = ~adj
    non.fill_diagonal_(False)
    counts = non.sum(1)
    offsets = torch.cumsum(counts, 0) - counts
    flat = non.nonzero()[:, 1]  # row-major, so grouped by row in order
    return flat, offsets, counts


def _init_parameters(layout, n: int, scale: float, dtype: torch.dtype, generator: torch.Generator):
    """One ManifoldParameter per factor, space parts uniform in [-scale, scale] (Nickel & Kiela)."""
    params = []
    for factor, d in layout:
        space = (torch.rand(n, d, generator=generator, dtype=dtype) * 2 - 1) * scale
        if isinstance(factor, Lorentz):
            c = factor.curvature.item()
            manifold = geoopt.Lorentz(k=torch.tensor(1 / c, dtype=dtype))
            point = torch.cat([Lorentz.time_from_space(space, torch.tensor(c, dtype=dtype)), space], dim=-1)
        else:
            manifold = geoopt.Euclidean(ndim=1)
            point = space
        params.append(geoopt.ManifoldParameter(point, manifold=manifold))
    return params


@torch.no_grad()
def _clip_step_(point: geoopt.ManifoldParameter, lr: float, max_step: float) -> None:
    """Scale the gradient rows of ``point`` so that no point moves farther than ``max_step`` (geodesic length of
    the SGD step lr · Riemannian gradient) in one update (Nickel & Kiela 2018 clip it to 1): a node that many
    negatives repel at once is otherwise flung outwards, past its subtree, and stays there."""
    if point.grad is None:
        return
    rgrad = point.manifold.egrad2rgrad(point, point.grad.clone())  # geoopt's Lorentz version works in place
    if isinstance(point.manifold, geoopt.Lorentz):
        sq = rgrad[:, 1:].square().sum(1) - rgrad[:, 0].square()  # Minkowski norm of a tangent vector
    else:
        sq = rgrad.square().sum(1)
    step = lr * sq.clamp_min(0).sqrt()
    point.grad.mul_((max_step / step.clamp_min(1e-300)).clamp_max(1.0)[:, None])


@torch.no_grad()
def _clamp_radius_(point: torch.Tensor, c: float, max_radius: float) -> None:
    """Pull Lorentz points (n, D+1) farther than ``max_radius`` from the origin back onto that sphere, in place:
    ‖x_s‖ ≤ sinh(√c R)/√c, x₀ recomputed. Keeps float64 distances exact (coordinates ~ e^(√c R)) and stops the
    softmax from inflating every distance without bound."""
    max_norm = math.sinh(math.sqrt(c) * max_radius) / math.sqrt(c)
    space = point[:, 1:]
    space.mul_((max_norm / space.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp_max(1.0))
    point[:, :1] = torch.sqrt(1 / c + space.square().sum(1, keepdim=True))


def train_embedding(closure: Closure, geometry: str | Geometry = "lorentz", dim: int | None = 5, *, seed: int = 0,
                    config: TrainConfig | None = None,
                    progress: Callable[[int, float, torch.Tensor], None] | None = None,
                    **overrides) -> Embedding:
    """Embed ``closure`` in a geometry (spec name and total dim, or a hybridzoo Geometry) by Riemannian SGD.

    ``config`` (default :class:`TrainConfig`) with keyword ``overrides`` (e.g. ``epochs=100``).
    ``progress(epoch, mean_loss, points)`` is called after every epoch (``points``: the current (n, P) points, a
    detached copy). The data order, negatives and initial points come from a private generator seeded with
    ``seed``, so the global RNG is untouched and a run repeats exactly (on the same machine and thread count).

    Raises ``FloatingPointError`` if the loss stops being finite (learning rate too high).
    """
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    dtype = getattr(torch, config.dtype)
    spec = geometry if isinstance(geometry, str) else geometry.name
    geometry = make_geometry(geometry, dim, curvature=config.curvature)
    if isinstance(geometry, Product):
        dim = sum(geometry.dims)
    elif dim is None:
        raise ValueError("dim is needed for a single-factor geometry")
    layout = _factor_layout(geometry, dim)

    generator = torch.Generator().manual_seed(seed)
    n = closure.num_nodes
    params = _init_parameters(layout, n, config.init_scale, dtype, generator)
    optimizer = geoopt.optim.RiemannianSGD(params, lr=config.lr)
    hyperbolic = [(p, f.curvature.item()) for p, (f, _) in zip(params, layout) if isinstance(f, Lorentz)]

    adj = closure.adjacency()
    flat, offsets, counts = _non_neighbour_table(adj)
    pairs = torch.cat([closure.edges, closure.edges.flip(1)])  # both directions: u is every endpoint
    has_negatives = (counts[pairs[:, 0]] > 0)[:, None]

    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        lr = config.lr * (config.burn_in_factor if epoch < config.burn_in else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(pairs), generator=generator)
        total = 0.0
        for batch in torch.split(order, config.batch_size):
            u, v = pairs[batch, 0], pairs[batch, 1]
            pick = (torch.rand(len(batch), config.negatives, generator=generator, dtype=torch.float64)
                    * counts[u, None]).long()
            negatives = flat[(offsets[u, None] + pick).clamp_max(len(flat) - 1)]
            candidates = torch.cat([v[:, None], negatives], dim=1)  # (B, 1 + K): the positive first
            points = torch.cat(list(params), dim=-1) if len(params) > 1 else params[0]
            d = geometry.distance(points[u][:, None, :], points[candidates])  # hybridzoo's distance
            logits = (-d).masked_fill(torch.cat([torch.zeros_like(has_negatives[batch]),
                                                 ~has_negatives[batch].expand(-1, config.negatives)], 1),
                                      -math.inf)
            loss = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.int64))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_step is not None:
                for p in params:
                    _clip_step_(p, lr, config.max_step)
            optimizer.step()
            if config.max_radius is not None:
                with torch.no_grad():
                    for p, c in hyperbolic:
                        _clamp_radius_(p, c, config.max_radius)
            total += loss.item() * len(batch)
        losses.append(total / len(pairs))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss became {losses[-1]} at epoch {epoch} ({spec}, dim {dim}, lr {lr}); "
                                     f"lower the learning rate")
        if progress is not None:
            progress(epoch, losses[-1], torch.cat([p.detach() for p in params], dim=-1))
    with torch.no_grad():
        points = torch.cat([p.detach() for p in params], dim=-1).clone()
    return Embedding(points=points, geometry=geometry, names=closure.names, spec=spec, dim=dim, seed=seed,
                     config=config, losses=losses, seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def reconstruction_metrics(distances: torch.Tensor, adjacency: torch.Tensor, block_size: int = 1024) -> dict:
    """Exact mean rank and MAP from an (n, n) distance matrix and a symmetric bool adjacency (n, n).

    For u and each neighbour v: rank = 1 + #{non-neighbours w ≠ u: d(u,w) ≤ d(u,v)}; the average precision of u
    is the mean over v ∈ N(u) of #{w ∈ N(u): d(u,w) ≤ d(u,v)} / #{w ≠ u: d(u,w) ≤ d(u,v)} (= scikit-learn's
    ``average_precision_score`` with scores -d, ties as one threshold). Nodes without neighbours are skipped.
    Vectorised: one sort per row, rows ``block_size`` at a time.

    Returns ``{"mean_rank", "map", "num_nodes", "num_pairs"}``.
    """
    n = distances.shape[0]
    if distances.shape != (n, n) or adjacency.shape != (n, n):
        raise ValueError(f"need square (n, n) distances and adjacency, got {tuple(distances.shape)} and "
                         f"{tuple(adjacency.shape)}")
    if torch.isnan(distances).any():
        raise ValueError("distances contain NaN")
    adjacency = adjacency.bool()
    rank_sum, pairs, ap_sum, nodes = 0.0, 0, 0.0, 0
    for start in range(0, n, block_size):
        rows = torch.arange(start, min(start + block_size, n))
        dist = distances[rows].to(torch.float64)
        pos = adjacency[rows].clone()
        pos[torch.arange(len(rows)), rows] = False
        neg = ~pos
        neg[torch.arange(len(rows)), rows] = False  # u itself is neither
        sorted_d, order = dist.sort(dim=1, stable=True)
        cum_pos = pos.gather(1, order).to(torch.float64).cumsum(1)
        cum_neg = neg.gather(1, order).to(torch.float64).cumsum(1)
        # the counts up to the last entry tied with each position: ties are one threshold
        last = torch.searchsorted(sorted_d.contiguous(), sorted_d.contiguous(), right=True) - 1
        pos_le = cum_pos.gather(1, last)
        neg_le = cum_neg.gather(1, last)
        is_pos = pos.gather(1, order)
        degree = pos.sum(1)
        rank_sum += ((1 + neg_le) * is_pos).sum().item()
        pairs += int(degree.sum())
        precision = torch.where(is_pos, pos_le / (pos_le + neg_le).clamp_min(1), torch.zeros_like(pos_le))
        has = degree > 0
        ap_sum += (precision.sum(1)[has] / degree[has]).sum().item()
        nodes += int(has.sum())
    if nodes == 0:
        raise ValueError("the adjacency has no edges")
    return {"mean_rank": rank_sum / pairs, "map": ap_sum / nodes, "num_nodes": nodes, "num_pairs": pairs}


@torch.no_grad()
def evaluate_reconstruction(closure: Closure, points: torch.Tensor | Embedding,
                            geometry: Geometry | None = None) -> dict:
    """Mean rank and MAP of ``points`` (n, P) (or an :class:`Embedding`) for ``closure``, scored with hybridzoo's
    ``geometry.pairwise_distance`` in float64. See :func:`reconstruction_metrics`."""
    if isinstance(points, Embedding):
        if points.names != closure.names:
            raise ValueError("this embedding was trained on another closure (its node names differ)")
        points, geometry = points.points, geometry or points.geometry
    if geometry is None:
        raise ValueError("pass the geometry of the points")
    if points.shape[0] != closure.num_nodes:
        raise ValueError(f"{points.shape[0]} points for {closure.num_nodes} nodes")
    points = points.to(torch.float64)
    distances = geometry.pairwise_distance(points, points)
    return reconstruction_metrics(distances, closure.adjacency())

"""Figures of hyperbolic embeddings and training runs (matplotlib, Agg backend, PNG written atomically).

- :func:`plot_poincare_disk`: embeddings in the Poincaré disk of radius 1/√c.
- :func:`plot_radius_vs_depth`: per class, mean geodesic distance to the origin against the class's depth in a tree.
- :func:`plot_knn_vs_epochs`: k-NN accuracy against epochs for several runs (``knn_history`` of metrics.json).
- :func:`plot_sweep`: a hyperparameter sweep's score per trial (with the running best) and against each parameter.

Projection to the disk (:func:`poincare_projection`)
-----------------------------------------------------
A Lorentz head with a 2-D space part (3 coordinates) is drawn exactly: ``geometry.to_poincare``. For more
dimensions the points are mapped to the tangent space at the origin, ``v = logmap0(x)`` (the origin is the head's
natural centre: ``expmap0`` of the projection MLP's output), the tangent vectors are projected onto their top-2
principal directions there (uncentred PCA, i.e. SVD of V: directions through the origin, so the origin stays the
centre), and each projected vector is rescaled to the full norm ‖v‖; the 2-D vector is then mapped back with the
``expmap0`` of a 2-D Lorentz model of the same curvature and to its Poincaré disk. Hence **every point's geodesic
distance to the origin is preserved exactly** (its disk radius is tanh(√c‖v‖/2)/√c) and directions are the PCA's
best 2-D view of the tangent vectors; distances between points are not preserved (no 2-D picture can). For a
product geometry its first Lorentz factor is drawn.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .geometry import Geometry, Lorentz, Product
from .hub import atomic_write

__all__ = ["poincare_projection", "class_radii", "plot_poincare_disk", "plot_radius_vs_depth", "plot_knn_vs_epochs",
           "plot_sweep"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """PNG bytes rendered in memory, then written to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def _lorentz_factor(points: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, Lorentz]:
    if isinstance(geometry, Lorentz):
        return points, geometry
    if isinstance(geometry, Product):
        for part, factor in zip(geometry.split(points), geometry.factors):
            if isinstance(factor, Lorentz):
                return part, factor
    raise ValueError(f"the Poincaré disk needs a Lorentz geometry (or a product with a Lorentz factor); "
                     f"got {type(geometry).__name__}")


@torch.no_grad()
def poincare_projection(points, geometry: Geometry) -> tuple[np.ndarray, float]:
    """(N, D+1) Lorentz points -> ((N, 2) Poincaré-disk coordinates, curvature c); see the module docstring.

    Exact (``to_poincare``) for D = 2; for D > 2 the radius-preserving tangent-PCA projection. Computed in float64.
    """
    x, lorentz = _lorentz_factor(torch.as_tensor(points), geometry)
    x = x.detach().double().cpu()
    c = float(lorentz.curvature)
    if x.shape[-1] == 3:
        disk = lorentz.to_poincare(x)
    else:
        v = lorentz.logmap0(x)                                          # (N, D) tangent vectors at the origin
        if v.shape[1] < 2:
            raise ValueError(f"need at least 2 space dimensions to draw a disk; got {v.shape[1]}")
        _, _, vt = torch.linalg.svd(v, full_matrices=False)            # uncentred PCA: directions through 0
        projected = v @ vt[:2].T                                        # (N, 2)
        norm, full = projected.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
        # rescale to the full tangent norm (distance to the origin); a zero projection stays at the origin
        v2 = torch.where(norm > 0, projected * full / norm.clamp_min(1e-300), torch.zeros_like(projected))
        plane = Lorentz(curvature=c, learn_curvature=False).double()
        disk = plane.to_poincare(plane.expmap0(v2))
    return disk.numpy(), c


def _class_colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "viridis")
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def plot_poincare_disk(points, labels, geometry: Geometry, path: str | Path,
                       class_names: Sequence[str] | None = None, title: str | None = None) -> np.ndarray:
    """Scatter the points in the Poincaré disk, coloured by label, with the boundary circle of radius 1/√c.

    Returns the (N, 2) disk coordinates that were drawn.
    """
    plt = _pyplot()
    disk, c = poincare_projection(points, geometry)
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
    radius = 1 / math.sqrt(c)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="black", linewidth=1))
    classes = np.unique(labels)
    colors = _class_colors(int(classes.max()) + 1 if len(classes) else 1)
    for label in classes:
        mask = labels == label
        name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
        ax.scatter(disk[mask, 0], disk[mask, 1], s=6, color=colors[label], label=name, alpha=0.8)
    ax.set_xlim(-1.05 * radius, 1.05 * radius)
    ax.set_ylim(-1.05 * radius, 1.05 * radius)
    ax.set_aspect("equal")
    ax.set_axis_off()
    exact = torch.as_tensor(points).shape[-1] == 3 and isinstance(geometry, Lorentz)
    ax.set_title(title or f"Poincaré disk (c = {c:.3g}{'' if exact else ', tangent PCA, radii exact'})")
    if len(classes) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, markerscale=2, frameon=False)
    _save(fig, path)
    return disk


@torch.no_grad()
def class_radii(points, labels, geometry: Geometry, num_classes: int) -> np.ndarray:
    """(C,) per class the mean geodesic distance to the origin, ‖logmap0(x)‖ (NaN for a class without points)."""
    x = torch.as_tensor(points).detach().double().cpu()
    r = geometry.logmap0(x).norm(dim=-1).numpy()
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
    sums = np.bincount(labels, weights=r, minlength=num_classes)[:num_classes]
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_radius_vs_depth(points, labels, geometry: Geometry, tree, path: str | Path, title: str | None = None) -> dict:
    """Per class: mean geodesic distance to the origin (norm of ``logmap0``) against the class's depth in ``tree``
    (:func:`hybridzoo.hierarchy.class_depths`); one dot per class plus the mean per depth.

    Returns ``{"radii": (C,) per-class mean radius, "depths": (C,) depths, "depth_means": {depth: mean radius}}``.
    """
    from .hierarchy import class_depths

    plt = _pyplot()
    depths = class_depths(tree)
    radii = class_radii(points, labels, geometry, len(depths))
    present = ~np.isnan(radii)
    depth_means = {int(d): float(radii[present & (depths == d)].mean())
                   for d in np.unique(depths[present])}
    fig, ax = plt.subplots(figsize=(5, 4))
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(depths))
    ax.scatter(depths[present] + jitter[present], radii[present], s=14, alpha=0.6, label="class")
    if depth_means:
        xs = sorted(depth_means)
        ax.plot(xs, [depth_means[d] for d in xs], "o-", color="black", label="mean per depth")
    ax.set_xlabel("class depth in the tree")
    ax.set_ylabel("mean distance to the origin")
    ax.set_xticks(sorted(set(int(d) for d in depths)))
    ax.set_title(title or "radius vs depth")
    ax.legend(frameon=False)
    _save(fig, path)
    return {"radii": radii, "depths": depths, "depth_means": depth_means}


def plot_knn_vs_epochs(histories: Mapping[str, Sequence[Mapping]], path: str | Path,
                       baseline: float | Mapping[str, float] | None = None, metric: str = "knn_top1_k1",
                       title: str | None = None) -> Path:
    """One line per run: ``histories = {name: [{"epoch": e, "knn_top1_k1": acc}, ...]}`` (the ``knn_history`` of
    training/pretrain.py's metrics.json). ``baseline``: a value (or ``{label: value}``) drawn as dashed lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        rows = [row for row in history if metric in row]
        if rows:
            ax.plot([row["epoch"] for row in rows], [row[metric] for row in rows], marker="o", markersize=3,
                    label=name)
    baselines = {"baseline": baseline} if isinstance(baseline, (int, float)) else dict(baseline or {})
    for i, (label, value) in enumerate(baselines.items()):
        ax.axhline(value, linestyle="--", color=f"C{7 + i % 3}", linewidth=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} during training")
    if histories or baselines:
        ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def plot_sweep(trials: Sequence[Mapping], space: Mapping[str, Mapping], metric: str, path: str | Path) -> Path:
    """Score against trial number (with the running best), then one panel per searched parameter.

    ``trials``: ``[{"number": n, "value": score or None, "params": {name: value}}, ...]`` (unscored trials are
    skipped); ``space``: the sweep's space (a ``"log": true`` parameter gets a log axis; categorical values are
    placed at their index in ``"choices"``).
    """
    plt = _pyplot()
    from matplotlib import ticker

    scored = [t for t in trials if t.get("value") is not None]
    fig, axes = plt.subplots(1, 1 + len(space), figsize=(3.2 * (1 + len(space)), 3.2), sharey=True, squeeze=False)
    axes = axes[0]
    numbers = [t["number"] for t in scored]
    values = [t["value"] for t in scored]
    axes[0].scatter(numbers, values, s=14)
    axes[0].step(numbers, np.maximum.accumulate(values) if values else [], where="post", color="C1",
                 label="best so far")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(metric)
    axes[0].legend(frameon=False, fontsize=8)
    best = max(scored, key=lambda t: t["value"]) if scored else None
    for ax, (name, param) in zip(axes[1:], space.items()):
        choices = list(param.get("choices", []))

        def position(trial, name=name, choices=choices):
            return choices.index(trial["params"][name]) if choices else trial["params"][name]

        ax.scatter([position(t) for t in scored], values, s=14)
        if best is not None:                                   # the best trial circled
            ax.scatter([position(best)], [best["value"]], s=60, facecolors="none", edgecolors="C3")
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices], fontsize=7)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        else:
            if param.get("log"):
                ax.set_xscale("log")
                # Plain numbers at 1, 2, 5 per decade; the default minor-tick labels overlap.
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            pad = (param["high"] / param["low"]) ** 0.03 if param.get("log") else None
            low, high = (param["low"] / pad, param["high"] * pad) if pad else (param["low"], param["high"])
            ax.set_xlim(low, high)  # the whole searched range, so its unexplored parts show
        ax.set_xlabel(name)
    fig.suptitle(f"sweep: {metric} on the validation split ({len(scored)} scored trials)", fontsize=10)
    return _save(fig, path)

"""End-to-end evaluation of a model on a labelled dataset, on frozen embeddings.

:func:`evaluate_model` loads both splits (:func:`hybridzoo.data.load_image_set`), embeds them with
:func:`hybridzoo.extract` (deterministic :func:`hybridzoo.data.eval_transform` sized from ``model.pretrained_cfg``)
and computes:

- ``knn_top1_k{k}``: k-NN top-1 accuracy with the model's own geometry (:func:`hybridzoo.evaluation.knn_accuracies`,
  one search for every k; k larger than the training set is clamped to it, with a note), votes weighted by
  exp(s/0.07); and for k > 1 ``knn_top1_k{k}_uniform``, the majority vote of the same neighbours, which does not
  depend on the scale of s (cosine in [-1, 1] vs distances in [0, ∞));
- ``linear_probe_top1_features``: linear probe (:func:`hybridzoo.evaluation.linear_probe`) on the pooled backbone
  features, and ``linear_probe_top1_tangent`` on the head's tangent vectors at the origin,
  ``model.geometry.logmap0(embeddings)``;
- ``mistake_severity_knn1``: mean LCA height of the 1-NN mistakes, and ``hierarchical_distance_at_5``: mean LCA height
  between the true class and the 5 classes with the most k-NN votes (k = 20, or the largest k asked for when smaller;
  min(5, classes) when there are fewer classes), when :func:`hybridzoo.hierarchy.dataset_tree` knows the dataset;
  otherwise a note says they were skipped;
- optionally ``delta_rel`` / ``suggested_curvature`` of the backbone features of the training split
  (:func:`hybridzoo.hyperbolicity.delta_hyperbolicity`, Euclidean distances).

:func:`write_results` writes ``results.json`` and a markdown table ``results.md`` (atomically), and can rewrite the
model card of a ``save_pretrained`` folder with the results. ``hybridzoo eval`` and ``eval/evaluate.py`` call both.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .data import ImageSet, TransformedDataset, eval_transform, load_image_set
from .evaluation import knn_topk, linear_probe as _linear_probe, _vote
from .extract import extract
from .hub import CARD_NAME, CONFIG_NAME, atomic_write, model_card, read_config
from .model import HybridModel
from .zoo import load

__all__ = ["evaluate_model", "write_results", "extract_split", "dataset_key", "HIERARCHY_K"]

#: k of the k-NN vote whose ranking gives hierarchical distance@5 (clamped to the largest k evaluated).
HIERARCHY_K = 20
#: Points per draw of the δ-hyperbolicity estimate (its cost grows with the cube).
DELTA_SAMPLES = 1000
_KNN_TEMPERATURE = 0.07


def dataset_key(image_set_or_name: ImageSet | str) -> str:
    """The dataset name used for :func:`hybridzoo.hierarchy.dataset_tree`: ``"fashion-mnist:train"`` (an
    ImageSet's name) or ``"fashion-mnist:/some/root"`` (a source) -> ``"fashion-mnist"``."""
    from .data import DATASET_NAMES, _builtin_key

    name = image_set_or_name.name if isinstance(image_set_or_name, ImageSet) else str(image_set_or_name)
    key = _builtin_key(name.partition(":")[0])
    if key in DATASET_NAMES:
        return key
    return name.rsplit(":", 1)[0] if isinstance(image_set_or_name, ImageSet) else name


def extract_split(model: HybridModel, images: ImageSet, *, batch_size: int = 256, device=None, amp: str | None = None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """``{"embeddings", "features", "labels"}`` of an ImageSet, preprocessed with the model's eval transform."""
    cfg = model.pretrained_cfg
    in_chans, height, width = (int(v) for v in cfg["input_size"])
    transform = eval_transform(height if height == width else (height, width), cfg["mean"], cfg["std"], in_chans)
    return extract(model, TransformedDataset(images, transform), batch_size=batch_size, device=device, amp=amp,
                   return_features=True, progress=progress)


def _hierarchy_metrics(sims, neighbour_labels, targets, num_classes, ks, tree) -> dict[str, float]:
    from .hierarchy import hierarchical_distance_at_k, mistake_severity

    k_vote = min(HIERARCHY_K, max(ks))
    votes = _vote(sims[:, :k_vote], neighbour_labels[:, :k_vote], num_classes, _KNN_TEMPERATURE, "exp")
    top = votes.topk(min(5, num_classes), dim=1).indices
    predicted_1nn = neighbour_labels[:, 0]
    severity = mistake_severity(predicted_1nn.numpy(), targets.numpy(), tree)
    return {"mistake_severity_knn1": severity,
            "hierarchical_distance_at_5": hierarchical_distance_at_k(top.numpy(), targets.numpy(), tree),
            "hierarchy_vote_k": k_vote}


def evaluate_model(model_or_name: HybridModel | str | Path, dataset: str, *, split_train: str = "train",
                   split_test: str = "test", max_train_samples: int | None = None,
                   max_test_samples: int | None = None, ks: Sequence[int] = (1, 20, 200), linear_probe: bool = True,
                   hierarchy: bool = True, delta: bool = False, batch_size: int = 256, device=None,
                   amp: str | None = None, seed: int = 0, pretrained: bool = True, progress: bool = False,
                   probe_options: dict | None = None) -> dict:
    """Evaluate a model (or a zoo name, ``save_pretrained`` folder or ``hf-hub:`` id, loaded with ``pretrained``)
    on ``dataset`` (any source of :func:`load_image_set`). See the module docstring for the metrics.

    ``max_train_samples`` / ``max_test_samples``: class-stratified subsets (``seed`` for the training split).
    ``device``: where the model runs (default cuda if available); the k-NN search runs there as well.
    ``probe_options``: keyword arguments of :func:`hybridzoo.evaluation.linear_probe` (``Cs``, ``max_iter``, ...).

    Returns ``{"model", "dataset", "train_samples", "test_samples", "geometry", "metrics": {name: float},
    "linear_probe": {"features": ..., "tangent": ...} (full probe results), "delta": {...} (with delta=True),
    "notes": [str], "seconds"}``. Every accuracy in ``metrics`` lies in [0, 1].
    """
    started = time.perf_counter()
    if isinstance(model_or_name, HybridModel):
        model = model_or_name
    else:
        model = load(model_or_name, pretrained=pretrained)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    train_set = load_image_set(dataset, split_train, max_samples=max_train_samples, seed=seed)
    test_set = load_image_set(dataset, split_test, max_samples=max_test_samples, seed=seed)
    if (train_set.labels < 0).any() or (test_set.labels < 0).any():
        raise ValueError(f"{dataset}: evaluation needs labelled images in both splits")
    train_out = extract_split(model, train_set, batch_size=batch_size, device=device, amp=amp, progress=progress)
    test_out = extract_split(model, test_set, batch_size=batch_size, device=device, amp=amp, progress=progress)
    geometry = model.geometry     # curvature follows its inputs' device (Geometry._c)
    notes: list[str] = []
    metrics: dict[str, float] = {}

    # k-NN: one search for the largest k; every smaller k votes on a prefix of the same neighbour list
    n_train = len(train_set)
    used_ks = sorted({min(k, n_train) for k in ks})
    if used_ks != ks:
        notes.append(f"k clamped to the {n_train} training points: {ks} -> {used_ks}")
    knn_device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    train_points, test_points = train_out["embeddings"].to(knn_device), test_out["embeddings"].to(knn_device)
    sims, indices = knn_topk(train_points, test_points, geometry, max(used_ks))
    sims, indices = sims.cpu(), indices.cpu()
    labels, targets = train_set.labels, test_set.labels
    num_classes = int(max(labels.max(), targets.max())) + 1
    neighbour_labels = labels[indices]
    for k in used_ks:
        for weights, suffix in (("exp", ""), ("uniform", "_uniform")) if k > 1 else (("exp", ""),):
            predicted = _vote(sims[:, :k], neighbour_labels[:, :k], num_classes, _KNN_TEMPERATURE, weights).argmax(1)
            metrics[f"knn_top1_k{k}{suffix}"] = (predicted == targets).double().mean().item()

    probes = {}
    if linear_probe:
        options = {"seed": seed, **(probe_options or {})}
        probes["features"] = _linear_probe(train_out["features"], labels, test_out["features"], targets, **options)
        with torch.no_grad():
            tangent_train = geometry.logmap0(train_out["embeddings"])
            tangent_test = geometry.logmap0(test_out["embeddings"])
        probes["tangent"] = _linear_probe(tangent_train, labels, tangent_test, targets, **options)
        for where, probe in probes.items():
            metrics[f"linear_probe_top1_{where}"] = probe["top1"]

    if hierarchy:
        from .hierarchy import dataset_tree

        key = dataset_key(dataset)
        try:
            tree = dataset_tree(key, train_set.class_names)
        except (ValueError, OSError) as err:     # unknown dataset, or its hierarchy file is missing
            notes.append(f"hierarchy metrics skipped: {err}")
        else:
            extra = _hierarchy_metrics(sims, neighbour_labels, targets, num_classes, used_ks, tree)
            k_vote = extra.pop("hierarchy_vote_k")
            metrics.update(extra)
            notes.append(f"mistake severity: mean LCA height of 1-NN errors; hierarchical distance@5: top-5 classes "
                         f"of the {k_vote}-NN vote ({key} class tree)")

    delta_result = None
    if delta:
        from .hyperbolicity import delta_hyperbolicity

        delta_result = delta_hyperbolicity(train_out["features"], n_samples=DELTA_SAMPLES, n_draws=3, seed=seed)
        metrics["delta_rel"] = delta_result["delta_rel"]
        metrics["suggested_curvature"] = delta_result["suggested_curvature"]

    results = {
        "model": model.name,
        "dataset": dataset,
        "train_split": train_set.name,
        "test_split": test_set.name,
        "train_samples": n_train,
        "test_samples": len(test_set),
        "geometry": model.geometry.to_config(),
        "metrics": metrics,
        "notes": notes,
    }
    if probes:
        results["linear_probe"] = probes
    if delta_result is not None:
        results["delta"] = delta_result
    results["seconds"] = time.perf_counter() - started
    return results


def _json_safe(value):
    """inf / nan are not JSON: written as strings ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def results_markdown(results: dict) -> str:
    """A markdown table of ``results["metrics"]`` with the model, data and notes."""
    lines = [f"# {results['model']} on {results['dataset']}", "",
             f"Train: {results['train_split']} ({results['train_samples']} images); test: {results['test_split']} "
             f"({results['test_samples']} images).", "", "| metric | value |", "|---|---|"]
    for name, value in results["metrics"].items():
        lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    if results.get("notes"):
        lines += ["", *[f"- {note}" for note in results["notes"]]]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def _card_table(card: str, section: str) -> dict[str, str]:
    """``{key: value}`` from the two-column table under ``## {section}`` of a model card."""
    rows, inside = {}, False
    for line in card.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == section
            continue
        if inside and line.startswith("| ") and line.endswith(" |"):
            key, _, value = line[2:-2].partition(" | ")
            if (key, value) not in (("metric", "value"), ("setting", "value")):
                rows[key] = value
    return rows


def update_model_card(folder: str | Path, results: dict) -> Path:
    """Rewrite ``folder/README.md`` (a ``save_pretrained`` folder) with the evaluation metrics in its Results table.

    The card's Training table and earlier results are kept (re-read from the old card); metrics of the same name
    are replaced by the new values.
    """
    folder = Path(folder)
    config = read_config(folder)
    card_path = folder / CARD_NAME
    old = card_path.read_text() if card_path.is_file() else ""
    training = _card_table(old, "Training") or None
    card_results = {**_card_table(old, "Results"), **results["metrics"],
                    "evaluation data": f"{results['dataset']} ({results['train_samples']} train / "
                                       f"{results['test_samples']} test images)"}
    atomic_write(card_path, model_card(config, results=card_results, training=training).encode())
    return card_path


def write_results(results: dict, out_dir: str | Path, *, model_card_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (created if needed), atomically; with
    ``model_card_dir`` (a folder written by ``save_pretrained``), also rewrite its model card with the results.

    Returns ``{"json": path, "markdown": path[, "card": path]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    atomic_write(paths["json"], (json.dumps(_json_safe(results), indent=2) + "\n").encode())
    atomic_write(paths["markdown"], results_markdown(results).encode())
    if model_card_dir is not None:
        folder = Path(model_card_dir)
        if not (folder / CONFIG_NAME).is_file():
            raise ValueError(f"{folder} is not a save_pretrained folder (no {CONFIG_NAME}): cannot update its card")
        paths["card"] = update_model_card(folder, results)
    return paths


def command_line() -> str:
    """The command that is running, for the record."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])

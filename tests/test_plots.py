"""hybridzoo.plots and eval/plots.py: valid PNGs, the disk projection's geometry, per-class radii."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridzoo.geometry import Lorentz
from hybridzoo.hierarchy import ClassTree, class_depths
from hybridzoo.plots import (plot_knn_vs_epochs, plot_poincare_disk, plot_radius_vs_depth, poincare_projection)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def check_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 100 and height > 100
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))     # the temporary file was renamed away
    return width, height


def disk_distance(disk: np.ndarray, c: float) -> np.ndarray:
    """Geodesic distance to the origin of Poincaré-disk points of a radius-1/√c disk."""
    r = np.linalg.norm(disk, axis=1)
    return 2 / math.sqrt(c) * np.arctanh(math.sqrt(c) * r)


@pytest.mark.parametrize("dim", [2, 6])
def test_poincare_disk_inside_and_preserves_distance_to_origin(tmp_path, dim):
    c = 0.5
    geometry = Lorentz(curvature=c, learn_curvature=False)
    points = geometry.expmap0(torch.randn(60, dim, dtype=torch.float64) * 1.2)
    labels = torch.arange(60) % 3
    disk = plot_poincare_disk(points, labels, geometry, tmp_path / "disk.png", class_names=["a", "b", "c"])
    check_png(tmp_path / "disk.png")
    assert disk.shape == (60, 2)
    assert (np.linalg.norm(disk, axis=1) < 1 / math.sqrt(c)).all()
    expected = geometry.logmap0(points).norm(dim=1).numpy()
    np.testing.assert_allclose(disk_distance(disk, c), expected, rtol=1e-6, atol=1e-9)
    if dim == 2:   # exact: the Poincaré coordinates themselves
        np.testing.assert_allclose(disk, geometry.to_poincare(points).numpy(), rtol=1e-12)


def test_poincare_projection_keeps_a_planar_configuration():
    """Points already in a 2-D plane of the tangent space keep their mutual geodesic distances."""
    c = 1.0
    geometry = Lorentz(curvature=c, learn_curvature=False)
    v = torch.zeros(20, 5, dtype=torch.float64)
    v[:, [1, 3]] = torch.randn(20, 2, dtype=torch.float64)
    points = geometry.expmap0(v)
    disk, _ = poincare_projection(points, geometry)
    plane = Lorentz(curvature=c, learn_curvature=False).double()
    sq = (torch.as_tensor(disk) ** 2).sum(1, keepdim=True)      # disk -> hyperboloid (c = 1)
    lorentz_points = torch.cat([(1 + sq) / (1 - sq), 2 * torch.as_tensor(disk) / (1 - sq)], 1)
    np.testing.assert_allclose(plane.pairwise_distance(lorentz_points, lorentz_points).numpy(),
                               geometry.pairwise_distance(points, points).numpy(), atol=1e-4)


def test_radius_vs_depth_radii_match_hand_computation(tmp_path):
    tree = ClassTree.from_paths({"a": ["root", "a"], "b": ["root", "x", "b"], "c": ["root", "x", "y", "c"],
                                 "d": ["root", "x", "d"]})
    geometry = Lorentz(curvature=2.0, learn_curvature=False)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    points = geometry.expmap0(torch.randn(8, 4, dtype=torch.float64) * (1 + labels[:, None]))
    out = plot_radius_vs_depth(points, labels, geometry, tree, tmp_path / "radius.png")
    check_png(tmp_path / "radius.png")
    norms = geometry.logmap0(points).norm(dim=1)
    expected = np.array([norms[labels == k].mean().item() for k in range(4)])
    np.testing.assert_allclose(out["radii"], expected, rtol=1e-10)
    np.testing.assert_array_equal(out["depths"], class_depths(tree))
    np.testing.assert_array_equal(out["depths"], [1, 2, 3, 2])
    assert out["depth_means"][2] == pytest.approx((expected[1] + expected[3]) / 2)
    # the distance to the origin really is the geodesic distance to (1/√c, 0, ...)
    origin = geometry.expmap0(torch.zeros(1, 4, dtype=torch.float64))
    np.testing.assert_allclose(geometry.pairwise_distance(points, origin)[:, 0].numpy(), norms.numpy(), rtol=1e-5)


def _load_eval_plots():
    spec = importlib.util.spec_from_file_location("eval_plots", ROOT / "eval" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_knn_vs_epochs_png_and_cli(tmp_path):
    histories = {"lorentz": [{"epoch": e, "knn_top1_k1": 0.5 + 0.1 * e, "knn_top1_k20": 0.6} for e in (1, 2, 3)],
                 "euclidean": [{"epoch": e, "knn_top1_k1": 0.4 + 0.1 * e} for e in (1, 2, 3)]}
    path = plot_knn_vs_epochs(histories, tmp_path / "sub" / "knn.png", baseline=0.45)
    check_png(path)
    for name, history in histories.items():
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"knn_history": history, "knn_top1_k1": 0.8}))
    plots = _load_eval_plots()
    assert plots.read_histories([str(tmp_path / "lorentz")]) == {"lorentz": histories["lorentz"]}
    assert plots.main(["runs", str(tmp_path / "lorentz"), str(tmp_path / "euclidean"), "--out",
                       str(tmp_path / "cli.png"), "--baseline", "0.5"]) == 0
    check_png(tmp_path / "cli.png")


def test_eval_plots_model_command(tmp_path, tiny_model_factory):
    model = tiny_model_factory("lorentz")
    model.save_pretrained(tmp_path / "model")
    plots = _load_eval_plots()
    assert plots.main(["model", str(tmp_path / "model"), "--dataset", "digits", "--max-samples", "30",
                       "--out", str(tmp_path / "figs")]) == 0
    check_png(tmp_path / "figs" / "poincare_disk.png")
    assert not (tmp_path / "figs" / "radius_vs_depth.png").exists()     # digits has no class tree

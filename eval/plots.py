"""Figures from training runs and models.

    # k-NN accuracy vs epochs from run folders (their metrics.json "knn_history", written by training/pretrain.py)
    python eval/plots.py runs outputs/run-a outputs/run-b --out figures/knn_vs_epochs.png [--baseline 0.85]

    # a model on a dataset: Poincaré disk of the test embeddings, and radius vs class depth (datasets with a tree)
    python eval/plots.py model outputs/resnet10t-lorentz-digits --dataset digits --out figures/ [--max-samples 500]
                         [--split test] [--no-pretrained]

``runs`` writes one PNG; ``model`` writes DIR/poincare_disk.png and, when hybridzoo.hierarchy.dataset_tree knows
the dataset, DIR/radius_vs_depth.png. See hybridzoo/plots.py for the disk projection used above 2 dimensions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridzoo.plots import plot_knn_vs_epochs, plot_poincare_disk, plot_radius_vs_depth  # noqa: E402


def read_histories(run_dirs: list[str]) -> dict[str, list[dict]]:
    """``{run folder name: knn_history}`` from each folder's metrics.json."""
    histories = {}
    for run in map(Path, run_dirs):
        metrics_file = run / "metrics.json" if run.is_dir() else run
        if not metrics_file.is_file():
            raise SystemExit(f"{run}: no metrics.json (is it a training/pretrain.py output folder?)")
        histories[run.name if run.is_dir() else run.parent.name] = json.loads(metrics_file.read_text()).get(
            "knn_history", [])
    return histories


def plot_runs(args) -> list[Path]:
    path = plot_knn_vs_epochs(read_histories(args.runs), args.out, baseline=args.baseline, metric=args.metric)
    return [path]


def plot_model(args) -> list[Path]:
    import hybridzoo
    from hybridzoo.data import load_image_set
    from hybridzoo.evaluate import dataset_key, extract_split
    from hybridzoo.hierarchy import dataset_tree

    model = hybridzoo.load(args.model, pretrained=args.pretrained)
    images = load_image_set(args.dataset, args.split, max_samples=args.max_samples)
    out = extract_split(model, images, batch_size=args.batch_size, device=args.device)
    folder = Path(args.out)
    written = []
    plot_poincare_disk(out["embeddings"], images.labels, model.geometry, folder / "poincare_disk.png",
                       class_names=images.class_names, title=f"{model.name} on {images.name}")
    written.append(folder / "poincare_disk.png")
    try:
        tree = dataset_tree(dataset_key(args.dataset), images.class_names)
    except (ValueError, OSError) as err:
        print(f"radius vs depth skipped: {err}", file=sys.stderr)
    else:
        plot_radius_vs_depth(out["embeddings"], images.labels, model.geometry, tree, folder / "radius_vs_depth.png",
                             title=f"{model.name} on {images.name}")
        written.append(folder / "radius_vs_depth.png")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("runs", help="k-NN accuracy vs epochs of training runs")
    p.add_argument("runs", nargs="+", help="training output folders (or their metrics.json files)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--baseline", type=float, default=None, help="a reference accuracy drawn dashed")
    p.add_argument("--metric", default="knn_top1_k1")
    p.set_defaults(func=plot_runs)
    p = sub.add_parser("model", help="Poincaré disk and radius vs depth of a model's embeddings")
    p.add_argument("model", help="zoo name, save_pretrained folder or hf-hub: id")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=plot_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in args.func(args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

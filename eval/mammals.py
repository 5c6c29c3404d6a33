"""WordNet mammals reconstruction (Nickel & Kiela 2017) for hybridzoo's geometries: train, score, write the table.

Runs the grid {euclidean, lorentz, product} × {2, 5, 10} (product = E^⌊d/2⌋ × H^⌈d/2⌉) with
:mod:`hybridzoo.mammals`, scores every embedding with hybridzoo's own ``pairwise_distance`` (mean rank, MAP), and
writes ``results/mammals/results.json`` and ``results/mammals/results.md`` (the markdown table with the command
that produced it), then prints the table.

    python eval/mammals.py                                  # the full grid, ~10 minutes on 2 CPU cores
    python eval/mammals.py --geometries lorentz --dims 5 --epochs 1000 --out results/mammals/lorentz5-long
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

# geoopt scripts functions with torch.jit at import, which torch 2.14 deprecates: noise for a CLI user
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
from hybridzoo.mammals import (GEOMETRY_SPECS, TrainConfig, evaluate_reconstruction, load_closure, make_geometry,
                               train_embedding)

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_NOTE = ("product = E^⌊d/2⌋ × H^⌈d/2⌉ (the zoo's hybrid head), product-hh = H^⌊d/2⌋ × H^⌈d/2⌉, "
                "d² = Σ dᵢ². At d = 2 the product E^1 × H^1 is isometric to the flat plane (H^1 is a line), "
                "so it matches Euclidean d = 2 up to optimisation.")
ANCHOR = "Nickel & Kiela 2017 report MAP 0.927 for the Poincaré ball at d = 5 (reconstruction)."


def parse_args(argv=None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None, help="closure file or folder (default: $HYBRIDZOO_DATA_DIR/"
                        "wordnet-mammals or ../shared/data/wordnet-mammals)")
    parser.add_argument("--geometries", nargs="+", default=["euclidean", "lorentz", "product"],
                        choices=GEOMETRY_SPECS)
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 5, 10])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--negatives", type=int, default=defaults.negatives)
    parser.add_argument("--burn-in", type=int, default=defaults.burn_in)
    parser.add_argument("--max-radius", type=_float_or_none, default=defaults.max_radius,
                        help="bound on the Lorentz points' distance from the origin; 'none' for unbounded")
    parser.add_argument("--curvature", type=float, default=defaults.curvature)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also score every N epochs and store the curve in results.json (0: only at the end)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for these small tensors, and robust on a busy machine)")
    parser.add_argument("--out", default=str(ROOT / "results" / "mammals"), help="folder for results.json/.md")
    return parser.parse_args(argv)


def _scores(metrics: dict) -> dict:
    return {"mean_rank": metrics["mean_rank"], "map": metrics["map"]}


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| geometry | d | space | mean rank | MAP | final loss | train s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['dim']} | {r['geometry']} | {r['mean_rank']:.2f} | {r['map']:.3f} | "
                     f"{r['final_loss']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _curves(rows: list[dict]) -> str:
    """Markdown of the scores along training (--eval-every), or nothing."""
    parts = []
    for r in rows:
        if r.get("history"):
            points = ", ".join(f"{h['epoch']}: {h['map']:.3f} / {h['mean_rank']:.2f}" for h in r["history"])
            parts.append(f"- {r['spec']} d={r['dim']} (epoch: MAP / mean rank): {points}")
    return "\nAlong training:\n\n" + "\n".join(parts) + "\n" if parts else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in ([_display(Path(sys.argv[0]))] + sys.argv[1:]
                                                             if argv is None else ["eval/mammals.py", *argv]))
    closure = load_closure(args.data)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, negatives=args.negatives,
                         burn_in=args.burn_in, max_radius=args.max_radius, curvature=args.curvature)
    grid = [(spec, dim) for spec in args.geometries for dim in args.dims]
    rows = []
    start = time.perf_counter()
    with tqdm(total=len(grid) * args.epochs, unit="epoch", dynamic_ncols=True) as bar:
        for spec, dim in grid:
            bar.set_description(f"{spec} d={dim}")

            geometry = make_geometry(spec, dim, curvature=config.curvature)
            history = []

            def progress(epoch, loss, points):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
                    history.append({"epoch": epoch + 1, "loss": loss,
                                    **_scores(evaluate_reconstruction(closure, points, geometry))})

            embedding = train_embedding(closure, geometry, dim, seed=args.seed, config=config, progress=progress)
            metrics = evaluate_reconstruction(closure, embedding)
            row = {**embedding.to_dict(), "spec": spec, **_scores(metrics)}
            row.pop("config")
            if args.eval_every:
                row["history"] = history + [{"epoch": args.epochs, "loss": embedding.losses[-1], **_scores(metrics)}]
            rows.append(row)
            bar.write(f"{spec:>10} d={dim:<3} {embedding.description:<20} mean rank {metrics['mean_rank']:7.2f}  "
                      f"MAP {metrics['map']:.3f}  ({embedding.seconds:.0f} s)")
    total = time.perf_counter() - start

    table = markdown_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "data": str(args.data or "default"), "num_nodes": closure.num_nodes,
            "num_edges": closure.num_edges, "config": asdict(config), "seed": args.seed,
            "threads": args.threads, "total_seconds": round(total, 1), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "anchor": ANCHOR}
    (out / "results.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    radius = ("unbounded" if config.max_radius is None
              else f"within radius {config.max_radius:g} of the origin")
    training = (f"Riemannian SGD (geoopt), softmax of -d over 1 positive vs {config.negatives} uniform "
                f"non-neighbours, {config.epochs} epochs (the first {min(config.burn_in, config.epochs)} at lr × "
                f"{config.burn_in_factor}), lr {config.lr:g} on the batch mean, batch {config.batch_size}, "
                f"steps ≤ {config.max_step}, Lorentz points {radius}, curvature -{config.curvature:g}, "
                f"seed {args.seed}")
    (out / "results.md").write_text(
        "# WordNet mammals reconstruction\n\n"
        f"Produced by `{command}` ({total / 60:.1f} min, {args.threads} CPU thread(s), torch {torch.__version__}).\n\n"
        f"Closure: {closure.num_nodes} nodes, {closure.num_edges} edges, treated as undirected. Mean rank: of each "
        "true neighbour v of u among {v} ∪ non-neighbours of u (ties count against); MAP: mean over u of the "
        f"average precision. Distances: hybridzoo's `pairwise_distance` in float64. Training: {training}.\n\n"
        f"{table}\n\n{PRODUCT_NOTE}\n\n{ANCHOR}\n" + _curves(rows))
    print()
    print(table)
    print(f"\n{len(rows)} runs in {total / 60:.1f} min; wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _display(path: Path) -> str:
    """The script path relative to the repository root when it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())

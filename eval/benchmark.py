"""The project's central benchmark: Euclidean vs Lorentz vs product vs hybrid heads at equal budget.

    python eval/benchmark.py                 # CPU size (about 70 min on 2 quiet cores): resnet10t, 32 px, subsets
    python eval/benchmark.py --full          # the real size, for a GPU: resnet18, full train sets, 200 epochs
    python eval/benchmark.py --seeds 0 1 2   # repeat every run with three seeds; tables give mean ± std

Every variant trains with the same backbone, epochs, batch, augmentations and seed (SimCLR, training/pretrain.py in
a subprocess, so each run's exact command is recorded), then is evaluated on frozen embeddings: 1-NN and 20-NN with
the geometry's own distance, a linear probe on the backbone features, mistake severity (mean LCA height of 1-NN
errors in the dataset's class tree), and training throughput. The raw-pixel 1-NN baseline is printed beside them.
Runs whose output folder is complete are not repeated, so an interrupted benchmark resumes.

Outputs: model folders under --work-dir/<dataset>/<variant>/seed<N> (not committed), and under --out a results.json
(every seed's numbers and their mean/std), a results.md table with the command, and knn_vs_epochs_<dataset>.png.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridzoo.data import load_image_set  # noqa: E402
from hybridzoo.evaluation import knn_accuracy  # noqa: E402
from hybridzoo.geometry import Euclidean  # noqa: E402
from hybridzoo.hub import atomic_write  # noqa: E402
from hybridzoo.sweep import apply_params  # noqa: E402

#: Head variants: zoo head and the recipe fields that differ. "lorentz" copies the Euclidean hyperparameters;
#: "lorentz-tuned" uses what the hyperbolic literature recommends (Hyp-ViT: τ = 0.2, clip radius 2.3; fixed c);
#: a "sweep" entry takes the best trial of that sweep (results/sweeps/<name>/best.json, made by
#: training/sweep.py on a validation split of CIFAR-10's training images), so both heads get tuned settings.
VARIANTS = {
    "euclidean": {"head": "euclidean", "temperature": 0.1},
    "lorentz": {"head": "lorentz", "temperature": 0.1},
    "product": {"head": "product", "temperature": 0.1},
    "hybrid": {"head": "hybrid", "objective": "hybrid", "factor_temperatures": [0.1, 0.1]},
    "lorentz-tuned": {"head": "lorentz", "temperature": 0.2,
                      "model_overrides": {"clip_radius": 2.3, "learn_curvature": False}},
    "lorentz-swept": {"head": "lorentz", "sweep": "lorentz-cifar10"},
    "euclidean-swept": {"head": "euclidean", "sweep": "euclidean-cifar10"},
}
SWEEP_RESULTS = ROOT / "results" / "sweeps"
CPU_SIZE = {"name": "CPU", "backbone": "resnet10t", "epochs": 6, "batch_size": 128, "train_samples": 8000,
            "test_samples": 2000,
            "image_size": 32}
FULL_SIZE = {"name": "full", "backbone": "resnet18", "epochs": 200, "batch_size": 512, "train_samples": None,
             "test_samples": None,
             "image_size": 32}


def variant_recipe(variant: str) -> dict:
    """The recipe fields of ``variant``: its VARIANTS entry, a ``sweep`` entry replaced by that sweep's best
    parameters (floats rounded to 3 significant digits; head settings in ``model_overrides``)."""
    spec = dict(VARIANTS[variant])
    sweep = spec.pop("sweep", None)
    if sweep is None:
        return spec
    best_file = SWEEP_RESULTS / sweep / "best.json"
    if not best_file.is_file():
        raise SystemExit(f"variant {variant!r} uses the best trial of sweep {sweep!r}, but {best_file} is missing; "
                         f"run: python training/sweep.py training/sweeps/{sweep}.json")
    best = json.loads(best_file.read_text())
    params = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in best["params"].items()}
    recipe = apply_params(spec, best["space"], params)
    return {k: v for k, v in recipe.items() if v != {}}  # no empty model_overrides


def pretrain_command(dataset: str, variant: str, size: dict, output: Path, seed: int) -> list[str]:
    spec = variant_recipe(variant)
    flags = {"model": f"{size['backbone']}-{spec.pop('head')}", "dataset": dataset, "output-dir": str(output),
             "epochs": size["epochs"], "batch-size": size["batch_size"], "image-size": size["image_size"],
             "seed": seed, "lr": 2e-3, "warmup-epochs": 1, "knn-every": 1, "knn-train-samples": size["train_samples"],
             "max-train-samples": size["train_samples"], "max-eval-samples": size["test_samples"],
             "no-knn-before-training": None, "report-to": "", "checkpointing-steps": "epoch",
             "checkpoints-total-limit": 1}
    for key, value in spec.items():
        flags[key.replace("_", "-")] = json.dumps(value) if isinstance(value, (list, dict)) else value
    command = [sys.executable, str(ROOT / "training" / "pretrain.py")]
    for key, value in flags.items():
        if value is None and key.startswith("no-"):
            command.append(f"--{key}")
        elif value is not None:
            command += [f"--{key}", str(value)]
    return command


def train(command: list[str], output: Path, log: Path) -> None:
    """Run pretrain.py unless ``output`` already holds a finished run; resume an interrupted one."""
    if (output / "metrics.json").is_file():
        return
    if list(output.glob("checkpoints/step_*/trainer_state.json")):
        command = [*command, "--resume-from-checkpoint", "latest"]  # an interrupted run continues exactly
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"training failed ({shlex.join(command)}); see {log}")


def evaluate(output: Path, dataset: str, size: dict, seed: int) -> dict:
    """Frozen-embedding metrics of a trained model folder (hybridzoo.evaluate), plus its training figures.

    The evaluation is kept in ``output/benchmark-eval.json`` and reused while the model file, the evaluation
    subset and the list of metrics are unchanged, so evaluating more seeds later does not repeat finished ones."""
    from hybridzoo.evaluate import evaluate_model

    cache = output / "benchmark-eval.json"
    key = {"dataset": dataset, "train_samples": size["train_samples"], "test_samples": size["test_samples"],
           "seed": seed, "weights_mtime_ns": (output / "model.safetensors").stat().st_mtime_ns,
           "metrics": list(METRICS)}
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") == key:
        return cached["result"]
    result = evaluate_model(output, dataset, max_train_samples=size["train_samples"],
                            max_test_samples=size["test_samples"], ks=(1, 20), seed=seed)["metrics"]
    metrics = json.loads((output / "metrics.json").read_text())
    row = {
        "knn1": result["knn_top1_k1"], "knn20": result["knn_top1_k20"],
        "knn20_majority": result["knn_top1_k20_uniform"], "linear_probe": result["linear_probe_top1_features"],
        "mistake_severity": result.get("mistake_severity_knn1", float("nan")),
        "train_images_per_second": metrics["train_images_per_second"],
        "knn_history": metrics.get("knn_history", []),
        **{k: v for k, v in metrics.items() if k.startswith(("curvature", "alpha"))},
    }
    atomic_write(cache, json.dumps({"key": key, "result": row}, indent=2).encode())
    return row


def raw_pixel_knn(train_set, test_set) -> float:
    flat = lambda images: images.images.flatten(1).float() / 255  # noqa: E731
    geometry = Euclidean(normalize=False)
    return knn_accuracy(flat(train_set), train_set.labels, flat(test_set), test_set.labels, geometry, k=1)


#: Per-run numbers that the tables summarise over seeds (mean ± sample std).
METRICS = ("knn1", "knn20", "knn20_majority", "linear_probe", "mistake_severity", "train_images_per_second")


def summarize(runs: list[dict]) -> dict:
    """Mean, sample std (0 for one run) and count of every numeric entry shared by ``runs`` (one dict per seed)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and all(k in r for r in runs)]
    summary = {}
    for key in keys:
        values = [float(r[key]) for r in runs]
        if not all(math.isfinite(v) for v in values):
            # A metric a run could not compute (NaN, e.g. mistake severity without a class tree) has no mean;
            # statistics.stdev raises on non-finite input rather than returning NaN.
            summary[key] = {"mean": math.nan, "std": math.nan, "n": len(values)}
            continue
        summary[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return summary


def format_stat(stat: dict, digits: int = 3) -> str:
    """``0.354`` for one seed, ``0.354 ± 0.004`` for several, ``n/a`` where the runs had no value."""
    if not math.isfinite(stat["mean"]):
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    return text + f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else text


def write_tables(results: dict, size: dict, command: str, seeds: list[int], out: Path) -> None:
    """``results[dataset] = {"seeds": {seed: {"raw_pixel_knn1", "variants": {variant: metrics}}}, "summary": ...}``."""
    out.mkdir(parents=True, exist_ok=True)
    document = {"size": size, "command": command, "seeds": seeds, "results": results}
    variants = {v for rows in results.values() for v in rows["summary"]["variants"]}
    atomic_write(out / "results.json", json.dumps(document, indent=2).encode())
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    lines = [f"# Head benchmark ({size['name']} size)", "",
             f"Command: `{command}`", "",
             (f"Backbone `{size['backbone']}` at {size['image_size']} px, SimCLR, {size['epochs']} epochs, batch "
              f"{size['batch_size']}, {seed_text}; train subset {size['train_samples'] or 'all'} images, test subset "
              f"{size['test_samples'] or 'all'} (class-stratified; the train subset is drawn with the seed, the test "
              f"subset is fixed). k-NN uses each geometry's own distance; 20-NN weights the votes by exp(s/0.07) "
              f"(s = cos for the euclidean head, -d for the others), 20-NN majority counts them equally; the linear "
              f"probe uses backbone features; mistake severity = mean LCA height of 1-NN errors in the class tree "
              f"(lower is better). Throughput is training images/s (two views per image count twice), wall-clock "
              f"over the whole run including per-epoch k-NN."), "",
             "Heads (recipe fields that differ; everything else is shared): " + "; ".join(
                 f"**{name}** `{json.dumps(variant_recipe(name))}`"
                 + (f" (best trial of results/sweeps/{VARIANTS[name]['sweep']})" if "sweep" in VARIANTS[name] else "")
                 for name in VARIANTS if name in variants), ""]
    for dataset, rows in results.items():
        summary = rows["summary"]
        lines += [f"## {dataset}", "", f"Raw-pixel 1-NN: {format_stat(summary['raw_pixel_knn1'])}", "",
                  "| head | 1-NN | 20-NN | 20-NN majority | linear probe | mistake severity | train img/s "
                  "| learned scalars |",
                  "|---|---|---|---|---|---|---|---|"]
        for variant, stats in summary["variants"].items():
            scalars = ", ".join(f"{k}={v['mean']:.3g}" for k, v in stats.items()
                                if k.startswith(("curvature", "alpha")))
            cells = [format_stat(stats[m], 0 if m == "train_images_per_second" else 3) for m in METRICS]
            lines.append(f"| {variant} | {' | '.join(cells)} | {scalars} |")
        lines.append("")
    atomic_write(out / "results.md", "\n".join(lines).encode())


def summarize_dataset(per_seed: dict) -> dict:
    """Summary over seeds of one dataset's ``{seed: {"raw_pixel_knn1", "variants"}}``."""
    seeds = list(per_seed.values())
    variants = seeds[0]["variants"]
    return {"raw_pixel_knn1": summarize([{"raw_pixel_knn1": s["raw_pixel_knn1"]} for s in seeds])["raw_pixel_knn1"],
            "variants": {v: summarize([s["variants"][v] for s in seeds]) for v in variants}}


def plot_histories(results: dict, out: Path) -> None:
    """k-NN accuracy vs epoch per head: the mean over seeds, with the min-max band when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset, rows in results.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        per_seed = list(rows["seeds"].values())
        for variant in per_seed[0]["variants"]:
            curves: dict[int, list[float]] = {}
            for seed_rows in per_seed:
                for h in seed_rows["variants"][variant]["knn_history"]:
                    curves.setdefault(h["epoch"], []).append(h["knn_top1_k1"])
            epochs = sorted(curves)
            mean = [sum(curves[e]) / len(curves[e]) for e in epochs]
            (line,) = ax.plot(epochs, mean, marker="o", label=variant)
            if len(per_seed) > 1:
                ax.fill_between(epochs, [min(curves[e]) for e in epochs], [max(curves[e]) for e in epochs],
                                color=line.get_color(), alpha=0.15)
        ax.axhline(rows["summary"]["raw_pixel_knn1"]["mean"], color="gray", linestyle="--", label="raw pixels")
        ax.set(xlabel="epoch", ylabel="1-NN top-1 (held-out)", title=f"{dataset}: k-NN accuracy during training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"knn_vs_epochs_{dataset}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "tiny-imagenet-32"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--full", action="store_true", help="the real size (a GPU job)")
    parser.add_argument("--epochs", type=int, help="override the size's epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and variant")
    parser.add_argument("--train-only", action="store_true", help="train (or resume) the runs, evaluate later")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmark")
    args = parser.parse_args()
    size = dict(FULL_SIZE if args.full else CPU_SIZE)
    if args.epochs:
        size["epochs"] = args.epochs
    command = shlex.join(["python", "eval/benchmark.py", *sys.argv[1:]])
    runs = [(d, s, v) for d in args.datasets for s in args.seeds for v in args.variants]
    for dataset, seed, variant in tqdm(runs, desc="benchmark", unit="run"):
        output = args.work_dir / dataset / variant / f"seed{seed}"
        started = time.perf_counter()
        train(pretrain_command(dataset, variant, size, output, seed), output, output.with_suffix(".log"))
        tqdm.write(f"{dataset}/{variant}/seed{seed}: trained ({time.perf_counter() - started:.0f} s)")
    if args.train_only:
        return
    results = {}
    for dataset in args.datasets:
        per_seed = {}
        test_set = load_image_set(dataset, "test", max_samples=size["test_samples"])    # fixed: same for every seed
        for seed in args.seeds:
            train_set = load_image_set(dataset, "train", max_samples=size["train_samples"], seed=seed)
            per_seed[seed] = {"raw_pixel_knn1": raw_pixel_knn(train_set, test_set), "variants": {
                v: evaluate(args.work_dir / dataset / v / f"seed{seed}", dataset, size, seed) for v in args.variants}}
        results[dataset] = {"seeds": per_seed, "summary": summarize_dataset(per_seed)}
        write_tables(results, size, command, args.seeds, args.out)
    plot_histories(results, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()

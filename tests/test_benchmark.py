"""eval/benchmark.py: equal-budget commands, resumable runs, seed statistics, tables and plots, end to end on digits."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("eval_benchmark", ROOT / "eval" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_flags(command: list[str]) -> dict:
    """``[python, pretrain.py, --a, 1, --flag, ...]`` -> ``{"a": "1", "flag": None}``."""
    flags, key = {}, None
    for token in command[2:]:
        if token.startswith("--"):
            key = token[2:]
            flags[key] = None
        else:
            flags[key] = token
    return flags


def test_every_variant_gets_the_same_budget(benchmark, tmp_path):
    """Backbone, epochs, batch, image size, seed, optimiser and data agree across heads; only head fields differ."""
    size = benchmark.CPU_SIZE
    commands = {v: parse_flags(benchmark.pretrain_command("cifar10", v, size, tmp_path / v, seed=3))
                for v in benchmark.VARIANTS}
    budget = ("dataset", "epochs", "batch-size", "image-size", "seed", "lr", "warmup-epochs", "max-train-samples",
              "max-eval-samples", "knn-train-samples")
    for flags in commands.values():
        assert {k: flags[k] for k in budget} == {k: commands["euclidean"][k] for k in budget}
        assert flags["model"].startswith(size["backbone"] + "-")
        assert flags["seed"] == "3" and flags["epochs"] == str(size["epochs"])
    assert commands["euclidean"]["model"] == "resnet10t-euclidean"
    assert commands["lorentz"]["model"] == commands["lorentz-tuned"]["model"] == "resnet10t-lorentz"
    # the tuned variant differs in exactly the hyperbolic knobs, given as JSON the recipe parser reads back
    assert commands["lorentz-tuned"]["temperature"] != commands["lorentz"]["temperature"]
    assert json.loads(commands["lorentz-tuned"]["model-overrides"]) == {"clip_radius": 2.3, "learn_curvature": False}
    assert json.loads(commands["hybrid"]["factor-temperatures"]) == [0.1, 0.1]
    assert "no-knn-before-training" in commands["product"]


def test_swept_variants_take_the_best_trial_of_their_sweep(benchmark, tmp_path, monkeypatch):
    best = {"params": {"temperature": 0.036288738, "curvature": 0.2304205, "learn_curvature": True},
            "space": {"temperature": {"type": "float", "low": 0.03, "high": 0.5},
                      "curvature": {"type": "float", "low": 0.1, "high": 2, "target": "model"},
                      "learn_curvature": {"type": "categorical", "choices": [True, False], "target": "model"}}}
    (tmp_path / "lorentz-cifar10").mkdir()
    (tmp_path / "lorentz-cifar10" / "best.json").write_text(json.dumps(best))
    monkeypatch.setattr(benchmark, "SWEEP_RESULTS", tmp_path)
    assert benchmark.variant_recipe("lorentz-swept") == {
        "head": "lorentz", "temperature": 0.0363, "model_overrides": {"curvature": 0.23, "learn_curvature": True}}
    flags = parse_flags(benchmark.pretrain_command("cifar10", "lorentz-swept", benchmark.CPU_SIZE, tmp_path, 0))
    assert flags["temperature"] == "0.0363" and flags["model"] == "resnet10t-lorentz"
    assert json.loads(flags["model-overrides"]) == {"curvature": 0.23, "learn_curvature": True}
    with pytest.raises(SystemExit, match="training/sweep.py training/sweeps/euclidean-cifar10.json"):
        benchmark.variant_recipe("euclidean-swept")  # no best.json there


def test_committed_sweep_results_feed_the_swept_variants(benchmark):
    for name, spec in benchmark.VARIANTS.items():
        if "sweep" in spec:
            best = json.loads((benchmark.SWEEP_RESULTS / spec["sweep"] / "best.json").read_text())
            recipe = benchmark.variant_recipe(name)
            for key, value in best["params"].items():
                got = recipe["model_overrides"][key] if best["space"][key].get("target") == "model" else recipe[key]
                assert got == pytest.approx(value, rel=5e-3)


def test_summarize_matches_numpy(benchmark):
    runs = [{"knn1": 0.31, "knn20": 0.40, "name": "x"}, {"knn1": 0.35, "knn20": 0.42}, {"knn1": 0.30, "knn20": 0.47}]
    summary = benchmark.summarize(runs)
    assert set(summary) == {"knn1", "knn20"}            # non-numeric entries are not averaged
    for key in summary:
        values = np.array([r[key] for r in runs])
        assert summary[key]["mean"] == pytest.approx(values.mean(), abs=1e-15)
        assert summary[key]["std"] == pytest.approx(values.std(ddof=1), abs=1e-15)
        assert summary[key]["n"] == 3
    single = benchmark.summarize(runs[:1])["knn1"]
    assert single == {"mean": 0.31, "std": 0.0, "n": 1}
    assert benchmark.format_stat(single) == "0.310"
    assert benchmark.format_stat(summary["knn1"]) == f"0.320 ± {np.std([0.31, 0.35, 0.30], ddof=1):.3f}"


def test_summarize_reports_nan_for_a_metric_a_run_could_not_compute(benchmark):
    runs = [{"knn1": 0.31, "mistake_severity": float("nan")}, {"knn1": 0.35, "mistake_severity": float("nan")}]
    summary = benchmark.summarize(runs)
    assert summary["knn1"]["mean"] == pytest.approx(0.33)
    assert np.isnan(summary["mistake_severity"]["mean"]) and np.isnan(summary["mistake_severity"]["std"])
    assert benchmark.format_stat(summary["mistake_severity"]) == "n/a"


def test_train_skips_finished_runs_and_reports_failures(benchmark, tmp_path):
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    benchmark.train(touch, finished, tmp_path / "done.log")
    assert not marker.exists()                       # a finished run is not repeated
    benchmark.train(touch, tmp_path / "fresh", tmp_path / "fresh.log")
    assert marker.exists()
    failing = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(SystemExit, match="training failed.*failing.log"):
        benchmark.train(failing, tmp_path / "failing", tmp_path / "failing.log")
    assert "boom" in (tmp_path / "failing.log").read_text()


def synthetic_run(knn1: float, epochs: int = 3) -> dict:
    return {"knn1": knn1, "knn20": knn1 + 0.05, "knn20_majority": knn1 + 0.04, "linear_probe": 0.5,
            "mistake_severity": 1.3, "train_images_per_second": 400.0, "curvature_0_lorentz": 0.8,
            "knn_history": [{"epoch": e, "knn_top1_k1": knn1 * e / epochs} for e in range(1, epochs + 1)]}


def test_tables_and_plot_over_seeds(benchmark, tmp_path):
    per_seed = {seed: {"raw_pixel_knn1": 0.28, "variants": {"euclidean": synthetic_run(0.35 + 0.01 * seed),
                                                            "lorentz": synthetic_run(0.33 - 0.02 * seed)}}
                for seed in (0, 1)}
    results = {"cifar10": {"seeds": per_seed, "summary": benchmark.summarize_dataset(per_seed)}}
    benchmark.write_tables(results, benchmark.CPU_SIZE, "python eval/benchmark.py --seeds 0 1", [0, 1], tmp_path)
    benchmark.plot_histories(results, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "mean ± std over seeds 0, 1" in table
    assert f"| euclidean | 0.355 ± {np.std([0.35, 0.36], ddof=1):.3f} |" in table
    assert f"| lorentz | 0.320 ± {np.std([0.33, 0.31], ddof=1):.3f} |" in table
    assert "curvature_0_lorentz=0.8" in table
    assert '**lorentz** `{"head": "lorentz", "temperature": 0.1}`' in table   # each benchmarked head's settings
    assert "**product**" not in table                                        # only the heads in this table
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["seeds"] == [0, 1]
    assert document["results"]["cifar10"]["summary"]["variants"]["lorentz"]["knn1"]["n"] == 2
    assert document["results"]["cifar10"]["seeds"]["1"]["variants"]["lorentz"]["knn1"] == pytest.approx(0.31)
    with Image.open(tmp_path / "knn_vs_epochs_cifar10.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_benchmark_end_to_end_on_digits(tmp_path):
    """The real command, tiny: one head × two seeds, one epoch each on digits; every number lands in the table."""
    command = [sys.executable, str(ROOT / "eval" / "benchmark.py"), "--datasets", "digits", "--variants",
               "lorentz", "--epochs", "1", "--seeds", "0", "1", "--work-dir", str(tmp_path / "work"),
               "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    digits = document["results"]["digits"]
    assert set(digits["seeds"]) == {"0", "1"}
    for seed_rows in digits["seeds"].values():
        assert 0.5 < seed_rows["raw_pixel_knn1"] <= 1.0          # raw pixels are strong on digits
        for run in seed_rows["variants"].values():
            for metric in ("knn1", "knn20", "knn20_majority", "linear_probe"):
                assert 0.1 < run[metric] <= 1.0                      # far above chance (0.1) even after one epoch
            assert [h["epoch"] for h in run["knn_history"]] == [1]
    assert digits["summary"]["variants"]["lorentz"]["knn1"]["n"] == 2
    for seed in (0, 1):
        assert (tmp_path / "work" / "digits" / "lorentz" / f"seed{seed}" / "model.safetensors").is_file()
    assert "| lorentz |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "knn_vs_epochs_digits.png").is_file()
    # a second invocation trains nothing and reuses every evaluation (planted value shows it was not recomputed)
    cache = tmp_path / "work" / "digits" / "lorentz" / "seed1" / "benchmark-eval.json"
    planted = json.loads(cache.read_text())
    planted["result"]["knn1"] = 0.123
    cache.write_text(json.dumps(planted))
    weights = tmp_path / "work" / "digits" / "lorentz" / "seed0" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["digits"]
    assert again["seeds"]["1"]["variants"]["lorentz"]["knn1"] == 0.123
    assert again["seeds"]["0"]["variants"]["lorentz"] == digits["seeds"]["0"]["variants"]["lorentz"]
    assert weights.stat().st_mtime_ns == mtime

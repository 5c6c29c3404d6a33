"""Hyperparameter sweeps: the spec's checks, how a trial's recipe is built, resuming, failed trials, the report,
training on a held-out validation split, and a real two-trial sweep."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import hybridzoo.training as training
from hybridzoo.sweep import SweepSpec, run_sweep, trial_config, write_report

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "training" / "sweeps"

SPACE = {"temperature": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
         "clip_radius": {"type": "float", "low": 0.5, "high": 8.0, "log": True, "target": "model"},
         "learn_curvature": {"type": "categorical", "choices": [True, False], "target": "model"}}
BASE = {"model": "resnet10t-lorentz", "dataset": "digits", "epochs": 1, "validation_fraction": 0.2,
        "model_overrides": {"dim": 16}}


def spec(**changes) -> SweepSpec:
    return SweepSpec(**{"base": dict(BASE), "space": dict(SPACE), "n_trials": 6, **changes})


def fake_score(config: training.TrainConfig) -> float:
    """A smooth score with its peak at temperature 0.2, clip radius 2, learned curvature."""
    overrides = config.model_overrides
    return (0.9 - math.log(config.temperature / 0.2) ** 2 - 0.1 * math.log(overrides["clip_radius"] / 2) ** 2
            - 0.05 * (not overrides["learn_curvature"]))


@pytest.mark.parametrize("change, message", [
    ({"base": {"model": "resnet10t-lorentz"}}, "validation_fraction"),
    ({"base": {**BASE, "epoch": 3}}, "unknown recipe fields.*epoch"),
    ({"space": {}}, "at least one"),
    ({"space": {"temperature": {"type": "uniform", "low": 0.1, "high": 1}}}, "type 'uniform'"),
    ({"space": {"curvature": {"type": "float", "low": 0.1, "high": 1}}}, "not a recipe field.*target"),
    ({"space": {"clip_radius": {"type": "float", "low": 1, "high": 2, "target": "head"}}}, "target 'head'"),
    ({"space": {"temperature": {"type": "float", "low": 0.5, "high": 0.1}}}, "low < high"),
    ({"space": {"logits": {"type": "categorical", "choices": []}}}, "non-empty 'choices'"),
])
def test_spec_refuses_what_cannot_run(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_committed_sweep_files_load_and_score_on_validation():
    files = sorted(SWEEPS.glob("*.json"))
    assert files, "training/sweeps/ holds the benchmark's sweeps"
    for path in files:
        loaded = SweepSpec.from_file(path)
        assert 0 < loaded.base["validation_fraction"] < 1
        assert loaded.base["dataset"] and loaded.n_trials > 0
    with pytest.raises(FileNotFoundError, match="training/sweeps"):
        SweepSpec.from_file(SWEEPS / "nope.json")


def test_trial_config_routes_head_settings_into_model_overrides(tmp_path):
    config = trial_config(spec(), {"temperature": 0.3, "clip_radius": 2.5, "learn_curvature": False}, tmp_path / "t")
    assert config.temperature == 0.3
    assert config.model_overrides == {"dim": 16, "clip_radius": 2.5, "learn_curvature": False}
    assert BASE["model_overrides"] == {"dim": 16}, "the spec's base is not modified"
    assert (config.epochs, config.validation_fraction, config.output_dir) == (1, 0.2, str(tmp_path / "t"))
    assert config.report_to == "" and config.checkpointing_steps is None and not config.knn_before_training
    # A trial's model actually builds with those overrides.
    factor = training._build_model(config).head.to_config()["factors"][0]
    assert (factor["dim"], factor["clip_radius"], factor["learn_curvature"]) == (16, 2.5, False)


def test_sweep_finds_the_peak_resumes_without_repeating_and_reports(tmp_path):
    seen = []

    def train_fn(config):
        seen.append(config)
        return {"knn_top1_k1": fake_score(config), "curvature_0_lorentz": 0.8, "steps": 3}

    study = run_sweep(spec(), tmp_path / "work", train_fn=train_fn)
    assert len(study.trials) == 6 and len(seen) == 6
    assert all(c.validation_fraction == 0.2 for c in seen)
    assert [Path(c.output_dir).name for c in seen] == [f"{i:03d}" for i in range(6)]
    study = run_sweep(spec(), tmp_path / "work", n_trials=14, train_fn=train_fn)  # extends, does not restart
    assert len(study.trials) == 14 and len(seen) == 14
    drawn = [(c.temperature, c.model_overrides["clip_radius"]) for c in seen]
    assert len(set(drawn)) == 14, "a resumed sweep must not redraw the first trials' values"
    assert study.best_value == max(fake_score(c) for c in seen)
    for config in seen:
        assert 0.05 <= config.temperature <= 0.5 and 0.5 <= config.model_overrides["clip_radius"] <= 8.0

    best = write_report(study, spec(), tmp_path / "report", command="python training/sweep.py x.json")
    assert best["value"] == study.best_value and best["params"] == study.best_params
    assert best["attributes"]["curvature_0_lorentz"] == 0.8
    assert json.loads((tmp_path / "report" / "best.json").read_text())["params"] == study.best_params
    trials = json.loads((tmp_path / "report" / "trials.json").read_text())
    assert len(trials) == 14 and all(t["state"] == "COMPLETE" for t in trials)
    table = (tmp_path / "report" / "results.md").read_text()
    ranked = [float(line.split("|")[6]) for line in table.splitlines() if line.startswith("| ") and
              line.split("|")[1].strip().isdigit()]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == 14
    assert "python training/sweep.py x.json" in table and "validation split" in table
    with Image.open(tmp_path / "report" / "sweep.png") as image:
        assert image.width > 3 * image.height  # one panel per parameter beside the history


def test_diverged_trials_fail_and_do_not_count(tmp_path):
    calls = []

    def train_fn(config):
        calls.append(config)
        return {"knn_top1_k1": float("nan") if len(calls) == 2 else 0.5}

    study = run_sweep(spec(n_trials=3), tmp_path, train_fn=train_fn)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    study = run_sweep(spec(n_trials=3), tmp_path, train_fn=train_fn)  # the rerun makes up for the failed one
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    write_report(study, spec(n_trials=3), tmp_path / "report")
    assert "Failed or unfinished trials (no score): [1]" in (tmp_path / "report" / "results.md").read_text()


def test_resuming_with_another_space_is_refused(tmp_path):
    run_sweep(spec(n_trials=1), tmp_path, train_fn=lambda config: {"knn_top1_k1": 0.5})
    other = spec(n_trials=2, space={"temperature": SPACE["temperature"]})
    with pytest.raises(ValueError, match="another recipe, space"):
        run_sweep(other, tmp_path, train_fn=lambda config: {"knn_top1_k1": 0.5})
    run_sweep(spec(n_trials=2), tmp_path, train_fn=lambda config: {"knn_top1_k1": 0.5})  # more trials: fine


def test_report_without_finished_trials_says_so(tmp_path):
    study = run_sweep(spec(n_trials=1), tmp_path, train_fn=lambda config: {"knn_top1_k1": float("nan")})
    with pytest.raises(ValueError, match="no finished trial"):
        write_report(study, spec(n_trials=1), tmp_path / "report")
    assert not (tmp_path / "report" / "best.json").exists()


def test_training_with_a_validation_split_never_reads_the_test_split(tmp_path, monkeypatch):
    real_load = training.load_image_set

    def load_train_only(source, split="train", **kwargs):
        assert split == "train", f"the {split} split was read during a validation run"
        return real_load(source, split, **kwargs)

    monkeypatch.setattr(training, "load_image_set", load_train_only)
    config = training.TrainConfig(model="resnet10t-lorentz", dataset="digits", output_dir=str(tmp_path / "run"),
                                  epochs=1, batch_size=32, image_size=16, max_train_samples=200,
                                  validation_fraction=0.25, knn_train_samples=None, num_workers=0, report_to="",
                                  knn_before_training=False, model_overrides={"dim": 8})
    results = training.train(config)
    # 200 images, 20 per class: 5 per class held out -> 150 fit / 50 validation; k-NN accuracy is a count of 50.
    assert round(results["knn_top1_k1"] * 50, 9).is_integer()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "150 train / 50 validation (held out of train) images" in card


@pytest.mark.slow
def test_sweep_script_end_to_end_on_digits(tmp_path):
    sweep_file = tmp_path / "digits.json"
    sweep_file.write_text(json.dumps({"description": "digits test", "base": {
        "model": "resnet10t-lorentz", "dataset": "digits", "epochs": 1, "batch_size": 64, "image_size": 16,
        "validation_fraction": 0.2, "num_workers": 0}, "space": SPACE, "n_trials": 2}))
    command = [sys.executable, str(ROOT / "training" / "sweep.py"), str(sweep_file), "--work-dir",
               str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert len(trials) == 2 and best["value"] == max(t["value"] for t in trials)
    for trial in trials:
        metrics = json.loads((tmp_path / "work" / "trials" / f"{trial['number']:03d}" / "metrics.json").read_text())
        assert metrics["knn_top1_k1"] == trial["value"]  # the score is the trial run's validation 1-NN
        assert 0.2 < trial["value"] <= 1.0
    assert "best trial" in result.stdout

"""Hyperparameter search for a head's recipe (Optuna, TPE), scored on a validation split held out of training.

A sweep is data: a JSON file (``training/sweeps/<name>.json``) with

- ``base``: :class:`~hybridzoo.training.TrainConfig` fields every trial shares (model, dataset, epochs, ...); it must
  set ``validation_fraction`` so that no trial is scored on the test split;
- ``space``: one entry per searched hyperparameter, ``{"type": "float", "low": .., "high": .., "log": true}``,
  ``{"type": "int", "low": .., "high": ..}`` or ``{"type": "categorical", "choices": [..]}``, plus ``"target"``:
  ``"train"`` (a TrainConfig field, the default) or ``"model"`` (a head-factor setting passed through
  ``model_overrides``: ``curvature``, ``clip_radius``, ``learn_curvature``, ...);
- ``metric``: the result to maximise (default ``knn_top1_k1``), ``n_trials`` and ``seed``.

:func:`run_sweep` keeps the study in ``<out>/study.db`` (SQLite), so an interrupted or extended sweep continues
where it stopped; :func:`write_report` writes trials.json, best.json, results.md and sweep.png.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from .hub import atomic_write
from .training import TrainConfig

__all__ = ["SweepSpec", "suggest", "apply_params", "trial_config", "run_sweep", "write_report"]

PARAM_TYPES = ("float", "int", "categorical")
TARGETS = ("train", "model")


@dataclasses.dataclass
class SweepSpec:
    """A search: shared recipe fields, the searched space, the metric to maximise, trial count and sampler seed."""

    base: dict
    space: dict
    metric: str = "knn_top1_k1"
    n_trials: int = 20
    seed: int = 0
    description: str = ""

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.base) - fields)
        if unknown:
            raise ValueError(f"sweep base has unknown recipe fields {unknown}; valid fields are {sorted(fields)}")
        if not self.base.get("validation_fraction"):
            raise ValueError("a sweep must score trials on a validation split: set base.validation_fraction "
                             "(e.g. 0.2), never the test split")
        if not self.space:
            raise ValueError("a sweep needs at least one searched hyperparameter in 'space'")
        for name, param in self.space.items():
            kind, target = param.get("type"), param.get("target", "train")
            if kind not in PARAM_TYPES:
                raise ValueError(f"sweep parameter {name!r} has type {kind!r}; choose one of {PARAM_TYPES}")
            if target not in TARGETS:
                raise ValueError(f"sweep parameter {name!r} has target {target!r}; choose one of {TARGETS}")
            if target == "train" and name not in fields:
                raise ValueError(f"sweep parameter {name!r} is not a recipe field; use \"target\": \"model\" for "
                                 f"head settings (curvature, clip_radius, ...)")
            if kind == "categorical" and not param.get("choices"):
                raise ValueError(f"categorical sweep parameter {name!r} needs a non-empty 'choices' list")
            if kind != "categorical" and not param.get("low", 0) < param.get("high", 0):
                raise ValueError(f"sweep parameter {name!r} needs low < high; got {param.get('low')}, "
                                 f"{param.get('high')}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "SweepSpec":
        """Read a sweep JSON file; ``overrides`` (None values ignored) replace its top-level keys."""
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"sweep file {path} does not exist; sweeps live in training/sweeps/") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"sweep file {path} has unknown keys {unknown}; valid keys are {sorted(names)}")
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def suggest(trial, space: dict) -> dict:
    """One value per searched hyperparameter, drawn by the Optuna ``trial``: {name: value}."""
    values = {}
    for name, param in space.items():
        if param["type"] == "float":
            values[name] = trial.suggest_float(name, param["low"], param["high"], log=param.get("log", False))
        elif param["type"] == "int":
            values[name] = trial.suggest_int(name, param["low"], param["high"], log=param.get("log", False))
        else:
            values[name] = trial.suggest_categorical(name, param["choices"])
    return values


def apply_params(recipe: dict, space: dict, params: dict) -> dict:
    """``recipe`` (TrainConfig fields) with ``params`` applied: recipe fields set, head settings (``"target":
    "model"`` in ``space``) merged into ``model_overrides``. Returns a new dict; ``recipe`` is not modified."""
    recipe = {**recipe, "model_overrides": dict(recipe.get("model_overrides", {}))}
    for name, value in params.items():
        if space[name].get("target", "train") == "model":
            recipe["model_overrides"][name] = value
        else:
            recipe[name] = value
    return recipe


def trial_config(spec: SweepSpec, params: dict, output_dir: str | Path) -> TrainConfig:
    """The recipe of one trial: ``spec.base`` with ``params`` applied (head settings into ``model_overrides``)."""
    # Trials are scored once at the end; per-run trackers, checkpoints and the untrained k-NN would only cost time.
    quiet = {"report_to": "", "checkpointing_steps": None, "knn_before_training": False}
    return TrainConfig(**{**quiet, **apply_params(spec.base, spec.space, params), "output_dir": str(output_dir)})


def run_sweep(spec: SweepSpec, out_dir: str | Path, n_trials: int | None = None,
              train_fn: Callable[[TrainConfig], dict] | None = None):
    """Run as many trials as the study in ``out_dir/study.db`` lacks of ``n_trials`` (default ``spec.n_trials``)
    finished ones; a new folder starts a study, an existing one continues it.

    Each trial trains with :func:`hybridzoo.training.train` (or ``train_fn``: TrainConfig -> results dict) into
    ``out_dir/trials/<number>`` and is scored by ``results[spec.metric]`` on the validation split. A trial whose
    metric is not finite (a diverged run) is recorded as failed and does not count, so a rerun makes up for it.
    Returns the optuna Study.
    """
    import optuna

    if train_fn is None:
        from .training import train as train_fn
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{out_dir / 'study.db'}", load_if_exists=True,
                                direction="maximize")
    # A resumed sweep reseeds its sampler past the trials already drawn: the same seed would redraw the same
    # random start-up points.
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    # Resuming with another recipe, space or metric would rank incomparable trials together.
    identity = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("n_trials", "description")}
    recorded = study.user_attrs.get("spec")
    if recorded is not None and recorded != json.loads(json.dumps(identity)):
        raise ValueError(f"{out_dir / 'study.db'} holds a sweep with another recipe, space, metric or seed; "
                         f"use a new output folder (or delete that one) to start this sweep")
    study.set_user_attr("spec", identity)

    def objective(trial) -> float:
        params = suggest(trial, spec.space)
        results = train_fn(trial_config(spec, params, out_dir / "trials" / f"{trial.number:03d}"))
        score = float(results[spec.metric])
        for key, value in results.items():  # learned curvatures and scales (curvature_0_lorentz, ...), final loss
            if key.startswith(("curvature", "alpha", "final_loss")) and isinstance(value, (int, float)):
                trial.set_user_attr(key, float(value))
        return score if math.isfinite(score) else float("nan")  # optuna marks NaN trials as failed

    target = spec.n_trials if n_trials is None else n_trials
    finished = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if finished < target:
        study.optimize(objective, n_trials=target - finished, show_progress_bar=True)
    return study


def _trial_rows(study) -> list[dict]:
    """Every trial as a JSON-ready dict: number, state, value, params, user attributes, seconds."""
    rows = []
    for trial in study.trials:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
        rows.append({"number": trial.number, "state": trial.state.name, "value": value, "params": trial.params,
                     "attributes": trial.user_attrs, "seconds": seconds})
    return rows


def write_report(study, spec: SweepSpec, out_dir: str | Path, command: str | None = None) -> dict:
    """Write trials.json, best.json, results.md (trials ranked by score) and sweep.png to ``out_dir``.

    Returns the best trial's row. Raises ValueError when no trial has finished.
    """
    from .plots import plot_sweep

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _trial_rows(study)
    done = sorted((r for r in rows if r["value"] is not None), key=lambda r: -r["value"])
    if not done:
        raise ValueError(f"no finished trial in {out_dir / 'study.db'}: nothing to report")
    best = {**done[0], "metric": spec.metric, "base": spec.base, "space": spec.space}
    atomic_write(out_dir / "trials.json", (json.dumps(rows, indent=2) + "\n").encode())
    atomic_write(out_dir / "best.json", (json.dumps(best, indent=2) + "\n").encode())
    names = list(spec.space)
    lines = [f"# Sweep: {spec.description or spec.base.get('model', '')}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Score: `{spec.metric}` on a validation split ({spec.base['validation_fraction']:.0%} of the "
              f"training images, held out; the test split is never read). "
              f"{len(done)} finished trial(s) of {len(rows)}; TPE sampler, seed {spec.seed}.", "",
              "Shared recipe: `" + json.dumps(spec.base) + "`", "",
              "| rank | trial | " + " | ".join(names) + f" | {spec.metric} | learned c | seconds |",
              "|" + "---|" * (len(names) + 5)]
    for rank, row in enumerate(done, 1):
        cells = [_format_value(row["params"].get(n)) for n in names]
        curvature = next((v for k, v in row["attributes"].items() if k.startswith("curvature")), None)
        lines.append(f"| {rank} | {row['number']} | " + " | ".join(cells) + f" | {row['value']:.4f} | "
                     f"{'' if curvature is None else f'{curvature:.3f}'} | {row['seconds'] or 0:.0f} |")
    failed = [r["number"] for r in rows if r["value"] is None]
    if failed:
        lines += ["", f"Failed or unfinished trials (no score): {failed}"]
    atomic_write(out_dir / "results.md", ("\n".join(lines) + "\n").encode())
    plot_sweep(rows, spec.space, spec.metric, out_dir / "sweep.png")
    return best


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

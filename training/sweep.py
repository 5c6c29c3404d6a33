"""Hyperparameter sweep of a head's recipe with Optuna, scored on a validation split held out of training.

    python training/sweep.py training/sweeps/lorentz-cifar10.json                 # the file's trial count
    python training/sweep.py training/sweeps/lorentz-cifar10.json --n-trials 30   # extend the same study

The study (SQLite) and every trial's model folder live under --work-dir (default outputs/sweeps/<name>); a rerun
continues the study. The report (trials.json, best.json, results.md, sweep.png) goes to --out (default
results/sweeps/<name>). See hybridzoo.sweep for the file format.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hybridzoo.sweep import SweepSpec, run_sweep, write_report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="sweep JSON file (training/sweeps/<name>.json)")
    parser.add_argument("--n-trials", type=int, default=None, help="finished trials to reach (default: the file's)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="study and trial runs (default outputs/sweeps/<name>)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default results/sweeps/<name>)")
    args = parser.parse_args(argv)
    spec = SweepSpec.from_file(args.sweep)
    work_dir = args.work_dir or Path("outputs/sweeps") / args.sweep.stem
    out = args.out or Path("results/sweeps") / args.sweep.stem
    study = run_sweep(spec, work_dir, n_trials=args.n_trials)
    command = "python training/sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    best = write_report(study, spec, out, command=command)
    print(f"best trial {best['number']}: {spec.metric} = {best['value']:.4f} with {best['params']}")
    print(f"report in {out}; trial models in {work_dir / 'trials'}")
    return best


if __name__ == "__main__":
    main()

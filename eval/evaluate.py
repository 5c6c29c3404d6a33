"""Evaluate a model on a dataset: k-NN with its geometry, linear probes, hierarchy metrics, optional δ.

    python eval/evaluate.py MODEL --dataset D [--out DIR] [--max-train-samples N] [--max-test-samples N]
                            [--k 1 20 200] [--no-linear-probe] [--delta] [--update-card] [--no-pretrained]

MODEL is a zoo name, a save_pretrained folder or an hf-hub: id. The same code path as ``hybridzoo eval``
(hybridzoo.evaluate.evaluate_model + write_results): writes DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridzoo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))

"""Pieces shared by the benchmark scripts: interleaved round order, per-round ratio rows, table cells, JSON output.

Every script times its variants in interleaved rounds so that slow drifts of a shared machine (other jobs, thermal
throttling) hit all variants alike; figures are medians over rounds and ratios are medians of per-round ratios.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Sequence, TypeVar

from hybridzoo.hub import atomic_write

T = TypeVar("T")


def round_order(items: Sequence[T], round_index: int) -> list[T]:
    """The order of round ``round_index``: rotated by one place per round, reversed on odd rounds, so that no
    variant always runs first or always follows the same one."""
    shift = round_index % len(items)
    order = list(items[shift:]) + list(items[:shift])
    return order[::-1] if round_index % 2 else order


def ratio_row(name: str, values: Sequence[float], references: Sequence[float]) -> dict:
    """Summary of one variant's per-round rates ``values`` against the reference's rates of the same rounds:
    median, min, max, median per-round ratio, ratio of the two bests and the per-round ratio range."""
    ratios = [v / ref for v, ref in zip(values, references)]
    return {"variant": name, "images_per_s": statistics.median(values), "min": min(values), "max": max(values),
            "ratio": statistics.median(ratios), "ratio_of_best": max(values) / max(references),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "per_round": list(values)}


def rate_cells(row: dict) -> str:
    """``images/s (median) | min–max`` table cells of a :func:`ratio_row`."""
    return f"{row['images_per_s']:.1f} | {row['min']:.1f}–{row['max']:.1f}"


def ratio_cells(row: dict, digits: int = 3) -> str:
    """``ratio (median) | ratio of bests | ratio range`` table cells of a :func:`ratio_row`."""
    return (f"{row['ratio']:.{digits}f} | {row['ratio_of_best']:.{digits}f} | "
            f"{row['ratio_min']:.{digits}f}–{row['ratio_max']:.{digits}f}")


def write_json(path: str | Path, results: dict) -> None:
    """Write ``results`` as indented JSON, atomically, and say so."""
    atomic_write(Path(path), json.dumps(results, indent=2).encode())
    print(f"wrote {path}")

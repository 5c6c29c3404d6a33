"""Exact k-NN search speed per geometry, relative to cosine, and peak memory at a million training points.

    python benchmarks/bench_knn.py                      # N = 100,000, d = 128, Q = 2,000, k = 1, 20, 200; memory at 1M
    python benchmarks/bench_knn.py --rounds 5 --threads 1 --json knn.json
    python benchmarks/bench_knn.py --skip-memory --n 20000 --queries 500        # a quick look

Speed: ``hybridzoo.evaluation.knn_topk`` (the search behind knn_classify / knn_accuracy) on random head outputs of
the zoo's head presets — euclidean (cosine, 128 coordinates), lorentz (H¹²⁸, 129), hybrid (E⁶⁴ × H⁶⁴, 129) and
product (E⁴⁸ × H⁴⁸ × S³², 130), the last two also with the bounded search off ("-full") — timed in interleaved rounds (the order rotates every round); a figure is the
median over rounds and a ratio the median of the per-round ratios to cosine (1.0 = as fast as cosine).

Memory: one subprocess per geometry generates N points block by block into one preallocated tensor, then resets
the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) and runs the search for every k; the figure is the
peak RSS during the searches (``VmHWM``) minus the RSS before them (``VmRSS``), i.e. the memory the search adds to
the inputs. Where the counter cannot be reset it falls back to ``ru_maxrss`` minus the RSS before the searches (an
upper bound, since the peak then includes the data generation).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
from _rounds import round_order, write_json

from hybridzoo.evaluation import knn_topk
from hybridzoo.geometry import Euclidean, Lorentz, Product, Sphere

#: "-full": the same geometry with the bounded product search switched off (knn_topk(..., bounded=False)).
GEOMETRIES = ("cosine", "lorentz", "hybrid", "product", "hybrid-full", "product-full")


def search(train, queries, name: str, geometry, k):
    """knn_topk as the benchmark row ``name`` runs it."""
    return knn_topk(train, queries, geometry, k, bounded=False if name.endswith("-full") else None)


def make_geometry(name: str):
    name = name.removesuffix("-full")
    return {"cosine": lambda: Euclidean(),
            "lorentz": lambda: Lorentz(curvature=1.0),
            "hybrid": lambda: Product([(Euclidean(), 64), (Lorentz(curvature=1.0), 64)]),
            "product": lambda: Product([(Euclidean(), 48), (Lorentz(curvature=1.0), 48), (Sphere(curvature=1.0), 32)]),
            }[name]()


def make_points(geometry, n: int, dim: int, seed: int, chunk: int = 65536) -> torch.Tensor:
    """n head outputs: tangent vectors of norm ~1 (α = 1/√d times unit-variance features) mapped by expmap0,
    written block by block into one tensor so that generation adds no transient peak."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty((n, geometry.point_dim(dim)))
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        out[start:start + rows] = geometry.expmap0(torch.randn(rows, dim, generator=gen) / dim ** 0.5)
    return out


def time_search(train, queries, name, geometry, k) -> float:
    start = time.perf_counter()
    search(train, queries, name, geometry, k)
    return time.perf_counter() - start


def speed(args) -> dict:
    data = {}
    for name in args.geometries:
        geometry = make_geometry(name)
        data[name] = (geometry, make_points(geometry, args.n, args.dim, seed=0),
                      make_points(geometry, args.queries, args.dim, seed=1))
        search(data[name][1][:4096], data[name][2][:64], name, geometry, max(args.ks))    # warm-up
    times = {(name, k): [] for name in args.geometries for k in args.ks}
    for round_index in range(args.rounds):
        for k in args.ks:
            for name in round_order(args.geometries, round_index):
                geometry, train, queries = data[name]
                times[name, k].append(time_search(train, queries, name, geometry, k))
        print(f"round {round_index + 1}/{args.rounds}: " + "  ".join(
            f"{name} k={k} {times[name, k][-1]:.2f}s" for k in args.ks for name in args.geometries),
            file=sys.stderr, flush=True)
    rows = []
    for k in args.ks:
        reference = times["cosine", k] if "cosine" in args.geometries else None
        for name in args.geometries:
            ts = times[name, k]
            row = {"k": k, "geometry": name, "seconds": statistics.median(ts), "min": min(ts), "max": max(ts),
                   "queries_per_s": args.queries / statistics.median(ts), "per_round": ts}
            if reference:
                ratios = [r / t for r, t in zip(reference, ts)]
                row.update(ratio=statistics.median(ratios), ratio_of_bests=min(reference) / min(ts),
                           ratio_min=min(ratios), ratio_max=max(ratios))
            rows.append(row)
    return {"rows": rows}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def memory_worker(args) -> None:
    """Runs in a subprocess: one geometry, N = --memory-n; prints one JSON line."""
    geometry = make_geometry(args.memory_worker)
    train = make_points(geometry, args.memory_n, args.dim, seed=0)
    queries = make_points(geometry, args.memory_queries, args.dim, seed=1)
    baseline = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # reset the peak-RSS counter (VmHWM) to the current RSS
        method = "VmHWM after reset - VmRSS before"
    except OSError:
        method = "ru_maxrss - VmRSS before (upper bound)"
    seconds = {}
    for k in args.ks:
        start = time.perf_counter()
        search(train, queries, args.memory_worker, geometry, k)
        seconds[k] = time.perf_counter() - start
    peak = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"geometry": args.memory_worker, "n": args.memory_n, "queries": args.memory_queries,
                      "data_mib": (train.numel() + queries.numel()) * 4 / 2**20, "baseline_mib": baseline / 1024,
                      "extra_peak_mib": (peak - baseline) / 1024, "method": method,
                      "seconds": {str(k): s for k, s in seconds.items()}}))


def memory(args) -> list[dict]:
    results = []
    for name in args.geometries:
        command = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--memory-n",
                   str(args.memory_n), "--memory-queries", str(args.memory_queries), "--dim", str(args.dim),
                   "--ks", ",".join(map(str, args.ks)), "--threads", str(torch.get_num_threads())]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"memory {name}: +{results[-1]['extra_peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return results


def print_tables(args, result) -> None:
    if result.get("speed"):
        print_speed_table(args, result["speed"]["rows"])
    if result.get("memory"):
        print_memory_table(args, result["memory"])


def print_speed_table(args, rows) -> None:
    print(f"\nExact k-NN (knn_topk), N = {args.n:,} train, Q = {args.queries:,} queries, d = {args.dim}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print("| k | geometry | seconds (median) | queries/s | ratio to cosine (median) | ratio of bests | ratio range |"
          " target ≥ 0.9× |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = row.get("ratio")
        head = f"| {row['k']} | {row['geometry']} | {row['seconds']:.2f} | {row['queries_per_s']:,.0f} |"
        if ratio is None:                      # no cosine reference in --geometries
            print(head + " — | — | — | — |")
            continue
        target = "—" if row["geometry"] == "cosine" else ("yes" if ratio >= 0.9 else "no")
        print(head + f" {ratio:.2f} | {row['ratio_of_bests']:.2f} | {row['ratio_min']:.2f}–{row['ratio_max']:.2f} |"
                     f" {target} |")


def print_memory_table(args, results) -> None:
    first = results[0]
    print(f"\nPeak memory of the search at N = {first['n']:,} train points, {first['queries']:,} queries, "
          f"k = {', '.join(map(str, args.ks))} ({first['method']})")
    print("| geometry | inputs (MiB) | search adds (MiB) | seconds per k |")
    print("|---|---|---|---|")
    for m in results:
        secs = ", ".join(f"{s:.1f}" for s in m["seconds"].values())
        print(f"| {m['geometry']} | {m['data_mib']:.0f} | {m['extra_peak_mib']:.0f} | {secs} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="training points for the speed table")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128, help="tangent (feature) dimension")
    parser.add_argument("--ks", default="1,20,200")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--geometries", default=",".join(GEOMETRIES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-n", type=int, default=1_000_000)
    parser.add_argument("--memory-queries", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", help="write config and results to this file")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.geometries = [g for g in args.geometries.split(",") if g]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        return memory_worker(args)
    result = {"config": {**{k: v for k, v in vars(args).items() if k != "memory_worker"},
                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    if not args.skip_speed:
        result["speed"] = speed(args)
    if not args.skip_memory:
        result["memory"] = memory(args)
    print_tables(args, result)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()

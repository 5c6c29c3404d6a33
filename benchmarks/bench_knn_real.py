"""Exact k-NN on real head outputs: the bounded product search vs the full one, and cosine on the same images.

    python benchmarks/bench_knn_real.py            # CIFAR-10 train (50,000) vs test (10,000), the benchmark's models

bench_knn.py times random points, where distances concentrate and the bound certifies least; this script embeds
CIFAR-10 with the head benchmark's trained models (outputs/benchmark/cifar10/<head>/seed0, from
``python eval/benchmark.py``) and times knn_topk with the bounded search on and off, in interleaved rounds, with
the share of queries the bound certified (the rest are searched in full).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _rounds import round_order

import hybridzoo
import hybridzoo.evaluation as evaluation
from hybridzoo.data import load_image_set
from hybridzoo.evaluate import extract_split

ROOT = Path(__file__).resolve().parents[1]


def embed(run: Path, train_set, test_set):
    model = hybridzoo.load(run)
    points = [extract_split(model, images)["embeddings"] for images in (train_set, test_set)]
    return model.geometry, *points


def uncertified(train, queries, geometry, k) -> int:
    """Queries the bound could not certify (searched again in full)."""
    redone, original = [], evaluation._search_blocks

    def spy(train_points, query_points, key, *args):
        if isinstance(key, evaluation._ProductKey):
            redone.append(len(query_points))
        return original(train_points, query_points, key, *args)

    evaluation._search_blocks = spy
    try:
        evaluation.knn_topk(train, queries, geometry, k)
    finally:
        evaluation._search_blocks = original
    return sum(redone)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "benchmark" / "cifar10")
    parser.add_argument("--heads", default="euclidean,product,hybrid")
    parser.add_argument("--ks", default="1,20")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    train_set, test_set = load_image_set("cifar10", "train"), load_image_set("cifar10", "test")
    data = {head: embed(args.runs / head / "seed0", train_set, test_set) for head in args.heads.split(",")}
    torch.set_num_threads(args.threads)          # embedding uses every core; the searches are timed on --threads
    cases = [(head, bounded) for head in data for bounded in ((None,) if head == "euclidean" else (None, False))]
    times = {(case, k): [] for case in cases for k in ks}
    for round_index in range(args.rounds):
        for k in ks:
            for case in round_order(cases, round_index):
                geometry, train, test = data[case[0]]
                start = time.perf_counter()
                evaluation.knn_topk(train, test, geometry, k, bounded=case[1])
                times[case, k].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"\nExact k-NN on CIFAR-10 head outputs: {len(train_set):,} train, {len(test_set):,} queries, "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} rounds")
    print("| k | head | search | seconds | ratio to cosine | uncertified queries |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        cosine = statistics.median(times[("euclidean", None), k]) if "euclidean" in data else None
        for case in cases:
            head, bounded = case
            seconds = statistics.median(times[case, k])
            search = "cosine" if head == "euclidean" else ("full" if bounded is False else "bounded")
            redone = uncertified(data[head][1], data[head][2], data[head][0], k) if search == "bounded" else None
            ratio = f"{cosine / seconds:.2f}" if cosine else "—"
            print(f"| {k} | {head} | {search} | {seconds:.2f} | {ratio} | "
                  f"{'—' if redone is None else f'{redone:,} of {len(data[head][2]):,}'} |")


if __name__ == "__main__":
    main()

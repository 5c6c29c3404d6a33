#!/usr/bin/env python
"""Training throughput on real data: the heads' training step and the data pipeline, side by side in one run.

(a) Model step (images/s): ``ContrastiveLearner`` forward on two views + backward + gradient clipping + AdamW
    step + LR schedule, built from exactly the pieces ``hybridzoo.training.train`` uses (``hybridzoo.load(name,
    pretrained=False, preprocessing=...)``, ``ContrastiveObjective`` — "simclr", or "hybrid" for the hybrid head —
    ``build_optimizer``, ``warmup_cosine_schedule``, ``TrainConfig``'s defaults), for the heads euclidean,
    lorentz, product and hybrid on the same backbone and the same real batches (CIFAR-10 with the SimCLR train
    transform of ``transforms_for(model)``), with the ratio to the Euclidean head.
(b) Data pipeline alone (images/s): a ``DataLoader`` over ``EpochSeededViews(train_set, transform)`` with
    num_workers 0, 1, 2 (as ``train()`` builds it), against the model step's images/s: is the loader the
    bottleneck on this CPU?
(c) End to end: the Euclidean head's step fed by a live ``DataLoader(num_workers=2)`` (TrainConfig's default),
    i.e. ``train()``'s inner loop, with the share of the loop spent waiting for data.
(d) Cost of each transform of the SimCLR pipeline per view (and of the per-item seeding and the collation).

Images are counted per view everywhere, as ``train()`` counts ``train_images_per_second``: a batch of B images
is 2·B images (``bench_heads.py`` counts B). The variants of (a)-(c) run in interleaved rounds whose order
rotates; figures are medians over rounds and ratios medians of per-round ratios, so clock drift and other
processes affect all variants of a round alike.

    python benchmarks/bench_training.py                   # resnet18, 32 px, batch 128, CIFAR-10 (~3 min, 2 idle cores)
    python benchmarks/bench_training.py --quick           # ~1 min on idle cores, noisier
    python benchmarks/bench_training.py --json training_bench.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time

import numpy as np
import timm
import torch
import torchvision
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

import hybridzoo
from _rounds import rate_cells, ratio_cells, ratio_row, round_order, write_json
from hybridzoo.data import load_image_set, transforms_for
from hybridzoo.errors import DataNotFoundError
from hybridzoo.geometry import Product
from hybridzoo.losses import ContrastiveObjective
from hybridzoo.optim import build_optimizer, warmup_cosine_schedule
from hybridzoo.training import ContrastiveLearner, EpochSeededViews, TrainConfig

#: Issue target: every head's training step ≥ 0.98 × the Euclidean head's.
TRAIN_TARGET = 0.98
HEADS = ("euclidean", "lorentz", "product", "hybrid")
#: Defaults, and the --quick values for the options left unset.
DEFAULTS = dict(rounds=12, steps=2, warmup=2, train_batches=4, loader_batches=6, e2e_steps=6, max_samples=10_000,
                profile_images=256, profile_repeats=3)
QUICK = dict(rounds=4, steps=1, warmup=1, train_batches=2, loader_batches=3, e2e_steps=3, max_samples=2_560,
             profile_images=64, profile_repeats=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18", help="any timm model name (default: resnet18); zoo names "
                   "<backbone>-<head> are loaded with hybridzoo.load, other backbones with create_model")
    p.add_argument("--heads", default=",".join(HEADS), help="comma-separated head presets (euclidean always runs)")
    p.add_argument("--image-size", type=int, default=32, help="square input size in pixels (default: 32)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (each seen in 2 views)")
    p.add_argument("--dataset", default="cifar10",
                   help="load_image_set source (default: cifar10; falls back to digits if it is unavailable)")
    p.add_argument("--max-samples", type=int, help=f"training images loaded (default {DEFAULTS['max_samples']})")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {DEFAULTS['rounds']})")
    p.add_argument("--steps", type=int, help=f"timed model steps per head per round (default {DEFAULTS['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps per head before round 1 (default {DEFAULTS['warmup']})")
    p.add_argument("--train-batches", type=int,
                   help=f"distinct real batches the model steps cycle through (default {DEFAULTS['train_batches']})")
    p.add_argument("--loader-batches", type=int,
                   help=f"timed DataLoader batches per variant per round (default {DEFAULTS['loader_batches']})")
    p.add_argument("--workers", default="0,1,2", help="num_workers values for (b) (default: 0,1,2)")
    p.add_argument("--e2e-workers", default="2",
                   help="num_workers values for the end-to-end loop (c) (default: 2, TrainConfig's; '' skips (c))")
    p.add_argument("--e2e-steps", type=int, help=f"timed end-to-end steps per round (default {DEFAULTS['e2e_steps']})")
    p.add_argument("--profile-images", type=int,
                   help=f"images for the per-transform costs (d) (default {DEFAULTS['profile_images']}; 0 skips)")
    p.add_argument("--profile-repeats", type=int, help=f"passes per thread setting in (d) "
                   f"(default {DEFAULTS['profile_repeats']})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in the main process (default: torch's, as train() leaves it; "
                        "DataLoader workers always use 1 thread, torch's default in workers)")
    p.add_argument("--no-flush-denormal", action="store_true",
                   help="leave flush-to-zero off (on by default, as in bench_heads.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer rounds, steps and images (~1 min, noisier)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("batch_size", "image_size", "steps", "rounds", "train_batches", "loader_batches", "e2e_steps",
                 "max_samples", "profile_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.warmup < 0 or args.profile_images < 0:
        p.error("--warmup and --profile-images must be ≥ 0")
    args.heads = ["euclidean"] + [h for h in args.heads.split(",") if h and h != "euclidean"]
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
        args.e2e_workers = [int(w) for w in args.e2e_workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers and --e2e-workers take comma-separated integers")
    if any(w < 0 for w in args.workers + args.e2e_workers):
        p.error("num_workers must be ≥ 0")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Model and data: the pieces train() uses


def build_model(backbone: str, head: str, image_size: int, seed: int) -> hybridzoo.HybridModel:
    """As ``training._build_model``; the same seed for every head, so all backbones start from the same weights."""
    preprocessing = {"input_size": (3, image_size, image_size), "crop_pct": 1.0, "interpolation": "bilinear"}
    seed_everything(seed)
    name = f"{backbone}-{head}"
    if name in hybridzoo.list_models():
        return hybridzoo.load(name, pretrained=False, preprocessing=preprocessing)
    return hybridzoo.create_model(backbone, head=head, preprocessing=preprocessing)


def load_train_set(args) -> tuple:
    """(ImageSet, note): the requested dataset, or digits (with a note saying why) if it cannot be loaded."""
    try:
        return load_image_set(args.dataset, "train", max_samples=args.max_samples, seed=args.seed), None
    except (DataNotFoundError, ImportError, OSError) as err:
        if args.dataset == "digits":
            raise
        note = (f"NOTE: dataset {args.dataset!r} is unavailable ({type(err).__name__}: {err}); falling back to "
                f"scikit-learn's digits (8x8 gray, upscaled by the crop; far smaller and cheaper to decode than "
                f"CIFAR-10, so the loader figures are not comparable)")
        print(note, file=sys.stderr, flush=True)
        return load_image_set("digits", "train", max_samples=args.max_samples, seed=args.seed), note


def make_loader(views: EpochSeededViews, batch_size: int, num_workers: int, epoch: int, seed: int) -> DataLoader:
    """As ``train()`` builds it (shuffle, drop_last; pin_memory only on CUDA), with a seeded shuffle per epoch."""
    views.set_epoch(epoch)
    return DataLoader(views, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class BatchStream:
    """Batches from a fresh DataLoader, epoch after epoch (a new epoch restarts the workers, as in train(), whose
    loader is not persistent). ``close()`` shuts the workers down."""

    _epochs = itertools.count(1)  # epoch 0 makes the model-step batches; every stream gets new epochs (new views)

    def __init__(self, views: EpochSeededViews, batch_size: int, num_workers: int, seed: int):
        self.args = views, batch_size, num_workers, seed
        self.iterator = None

    def next(self):
        while True:
            if self.iterator is None:
                views, batch_size, num_workers, seed = self.args
                self.iterator = iter(make_loader(views, batch_size, num_workers, next(self._epochs), seed))
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None

    def close(self) -> None:
        if self.iterator is not None and hasattr(self.iterator, "_shutdown_workers"):
            self.iterator._shutdown_workers()
        self.iterator = None


# ----------------------------------------------------------------------------------------------------------------
# Variants: run() -> (images, seconds, extras)


class HeadVariant:
    """One head: model + objective in a ContrastiveLearner, AdamW, warm-up/cosine schedule, TrainConfig defaults."""

    kind = "model"

    def __init__(self, head: str, args, config: TrainConfig, batches: list):
        self.name = head
        self.head = head
        self.model = build_model(args.backbone, head, args.image_size, args.seed).train()
        geometry = self.model.geometry
        factor_names = [f.name for f in geometry.factors] if isinstance(geometry, Product) else [geometry.name]
        self.objective_name = "hybrid" if head == "hybrid" else "simclr"
        objective = ContrastiveObjective(
            self.objective_name, temperature=config.temperature, learn_temperature=config.learn_temperature,
            max_logit_scale=config.max_logit_scale, logits=config.logits, factor_weights=config.factor_weights,
            factor_temperatures=config.factor_temperatures, num_factors=len(factor_names), factor_names=factor_names)
        self.learner = ContrastiveLearner(self.model, objective).train()
        self.optimizer = build_optimizer(config.optimizer, [self.learner], config.lr, config.weight_decay)
        self.scheduler = warmup_cosine_schedule(self.optimizer, 10, 10_000, config.min_lr_ratio)
        self.max_grad_norm = config.max_grad_norm
        self.batches, self.steps, self.i = batches, args.steps, 0
        self.last_loss = float("nan")

    def step(self, view1, view2, labels) -> None:
        """train()'s inner loop body (one process, no accumulation: accelerate adds nothing on one CPU)."""
        loss, z1, metrics = self.learner(view1, view2, labels)
        loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        self.loss = loss

    def run(self, steps: int | None = None):
        steps = steps or self.steps
        start = time.perf_counter()
        images = 0
        for _ in range(steps):
            view1, view2, labels = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.step(view1, view2, labels)
            images += 2 * len(view1)
        elapsed = time.perf_counter() - start
        self.last_loss = float(self.loss.detach())
        return images, elapsed, {}


class LoaderVariant:
    """DataLoader(EpochSeededViews) alone: a fresh loader per round (worker start-up timed separately), the
    first max(1, 2·num_workers) batches untimed (start-up and the initial prefetch), then the timed batches."""

    kind = "loader"

    def __init__(self, num_workers: int, args, views: EpochSeededViews):
        self.name = f"DataLoader(num_workers={num_workers})"
        self.num_workers, self.args, self.views = num_workers, args, views

    def run(self, batches: int | None = None):
        batches = batches or self.args.loader_batches
        stream = BatchStream(self.views, self.args.batch_size, self.num_workers, self.args.seed)
        try:
            start = time.perf_counter()
            stream.next()
            first = time.perf_counter() - start
            for _ in range(max(1, 2 * self.num_workers) - 1):
                stream.next()
            images, start = 0, time.perf_counter()
            for _ in range(batches):
                view1, view2, _ = stream.next()
                images += len(view1) + len(view2)
            elapsed = time.perf_counter() - start
        finally:
            stream.close()
        return images, elapsed, {"first_batch_s": first}


class EndToEndVariant:
    """train()'s loop: a head's step fed by a live DataLoader. One batch and step untimed (worker start-up), then
    ``--e2e-steps`` timed iterations; ``data_wait`` is the share of them spent waiting for the next batch."""

    kind = "e2e"

    def __init__(self, num_workers: int, head: HeadVariant, args, views: EpochSeededViews):
        self.name = f"{head.name} step fed by DataLoader(num_workers={num_workers})"
        self.num_workers, self.head, self.args, self.views = num_workers, head, args, views

    def run(self, steps: int | None = None):
        steps = steps or self.args.e2e_steps
        stream = BatchStream(self.views, self.args.batch_size, self.num_workers, self.args.seed)
        try:
            self.head.step(*stream.next())
            images, wait, start = 0, 0.0, time.perf_counter()
            for _ in range(steps):
                fetch = time.perf_counter()
                view1, view2, labels = stream.next()
                wait += time.perf_counter() - fetch
                self.head.step(view1, view2, labels)
                images += 2 * len(view1)
            elapsed = time.perf_counter() - start
        finally:
            stream.close()
        return images, elapsed, {"data_wait": wait / elapsed}


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def measure(variants: list, args) -> tuple[dict, dict]:
    """Warm-up, then ``args.rounds`` interleaved rounds with a rotating (and, on odd rounds, reversed) order.
    Returns ({name: [images/s per round]}, {name: {extra: [per round]}})."""
    with tqdm(variants, desc="warm-up", unit="variant", file=sys.stderr, leave=False) as bar:
        for v in bar:
            bar.set_postfix_str(v.name)
            if v.kind == "model":
                if args.warmup:
                    v.run(args.warmup)
            else:
                v.run(1)
    rates = {v.name: [] for v in variants}
    extras: dict = {v.name: {} for v in variants}
    with tqdm(total=args.rounds * len(variants), desc="rounds", unit="run", file=sys.stderr) as bar:
        for r in range(args.rounds):
            for v in round_order(variants, r):
                bar.set_description(f"round {r + 1}/{args.rounds}: {v.name}")
                images, seconds, extra = v.run()
                rates[v.name].append(images / seconds)
                for key, value in extra.items():
                    extras[v.name].setdefault(key, []).append(value)
                bar.update(1)
            bar.write("  round {}/{} (images/s): {}".format(
                r + 1, args.rounds, ", ".join(f"{short(name)} {values[-1]:.0f}" for name, values in rates.items())),
                file=sys.stderr)
    return rates, extras


def short(name: str) -> str:
    return (name.replace("DataLoader(num_workers=", "loader w=").replace(" step fed by ", "+")
            .replace("loader w=", "w=").replace(")", "") if "DataLoader" in name else name)


def summarize(rates: dict, names: list[str], reference) -> list[dict]:
    """Rows for ``names``; ``reference(r)`` is the reference images/s of round r (for the per-round ratios)."""
    return [ratio_row(name, rates[name], [reference(r) for r in range(len(rates[name]))]) for name in names]


# ----------------------------------------------------------------------------------------------------------------
# (d) per-transform costs


def _op_name(op) -> str:
    if isinstance(op, v2.RandomApply):
        inner = "+".join(type(t).__name__ for t in op.transforms)
        return f"RandomApply({inner}, p={op.p:g})"
    if isinstance(op, v2.RandomResizedCrop):
        return f"RandomResizedCrop({op.size[0]}x{op.size[1]}, scale={tuple(round(s, 2) for s in op.scale)})"
    if hasattr(op, "p") and isinstance(getattr(op, "p"), float):
        return f"{type(op).__name__}(p={op.p:g})"
    return type(op).__name__


def profile_transforms(transform, views: EpochSeededViews, args, threads_list: list[int]) -> dict:
    """Median (over repeats) µs per view of each op of the SimCLR pipeline, per thread setting, plus the
    EpochSeededViews per-item seeding, the batch collation, ColorJitter's four ops when applied, and the whole
    ``EpochSeededViews.__getitem__`` measured directly (a cross-check of the sum)."""
    ops = list(transform.transforms)
    count = min(args.profile_images, len(views.images))
    images = [views.images.images[i] for i in range(count)]
    # ColorJitter's input: the output of the ops before it (channels adapted, cropped)
    jitter_at = next((k for k, op in enumerate(ops) if isinstance(op, v2.RandomApply)
                      and any(isinstance(t, v2.ColorJitter) for t in op.transforms)), None)
    before_jitter = v2.Compose(ops[:jitter_at]) if jitter_at else None
    sub_ops = {}
    if before_jitter is not None and images and before_jitter(images[0]).shape[-3] == 3:
        sub_ops = {"  ColorJitter: brightness (when applied)": lambda x: TF.adjust_brightness(x, 1.2),
                   "  ColorJitter: contrast (when applied)": lambda x: TF.adjust_contrast(x, 1.2),
                   "  ColorJitter: saturation (when applied)": lambda x: TF.adjust_saturation(x, 1.2),
                   "  ColorJitter: hue (when applied)": lambda x: TF.adjust_hue(x, 0.05)}
    names = [_op_name(op) for op in ops]
    before = torch.get_num_threads()
    samples: dict = {t: {} for t in threads_list}  # threads -> row -> [µs per view per repeat]
    try:
        for rep in range(args.profile_repeats):
            for threads in threads_list:
                torch.set_num_threads(threads)
                rec = samples[threads]
                seed_everything(args.seed + rep)
                totals = [0.0] * len(ops)
                for image in images:  # two views per image, as EpochSeededViews makes them
                    for _ in range(2):
                        x = image
                        for k, op in enumerate(ops):
                            start = time.perf_counter()
                            x = op(x)
                            totals[k] += time.perf_counter() - start
                for name, total in zip(names, totals):
                    rec.setdefault(name, []).append(1e6 * total / (2 * count))
                start = time.perf_counter()
                for i in range(count):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(hash((args.seed, 0, i)) % (2**63))
                rec.setdefault("EpochSeededViews seeding (fork_rng + manual_seed)", []).append(
                    1e6 * (time.perf_counter() - start) / (2 * count))
                items = [views[i] for i in range(min(count, args.batch_size))]
                start = time.perf_counter()
                default_collate(items)
                rec.setdefault("default_collate (batch)", []).append(
                    1e6 * (time.perf_counter() - start) / (2 * len(items)))
                start = time.perf_counter()
                for i in range(count):
                    views[i]
                rec.setdefault("whole EpochSeededViews item, measured", []).append(
                    1e6 * (time.perf_counter() - start) / (2 * count))
                if sub_ops:
                    cropped = [before_jitter(image) for image in images]
                    for name, fn in sub_ops.items():
                        start = time.perf_counter()
                        for x in cropped:
                            fn(x)
                        rec.setdefault(name, []).append(1e6 * (time.perf_counter() - start) / count)
    finally:
        torch.set_num_threads(before)
    per_view = {t: {name: statistics.median(v) for name, v in rec.items()} for t, rec in samples.items()}
    pipeline = names + ["EpochSeededViews seeding (fork_rng + manual_seed)", "default_collate (batch)"]
    return {"images": count, "threads": threads_list, "pipeline": pipeline, "sub_ops": list(sub_ops),
            "us_per_view": {str(t): v for t, v in per_view.items()},
            "total_us_per_view": {str(t): sum(v[n] for n in pipeline) for t, v in per_view.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Tables


def head_table(rows: list[dict]) -> str:
    lines = ["| head | objective | images/s (median) | min–max | ratio to euclidean (median) | ratio of bests "
             "| ratio range | target |", "|---|---|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        verdict = "—" if row["variant"] == "euclidean" else (
            f"≥ {TRAIN_TARGET:.2f} " + ("✅" if row["ratio"] >= TRAIN_TARGET else "❌"))
        lines.append(f"| {row['variant']} | {row['objective']} | {rate_cells(row)} | {ratio_cells(row)} | {verdict} |")
    return "\n".join(lines)


def loader_table(rows: list[dict]) -> str:
    lines = ["| loader | images/s (median) | min–max | first batch (s, median) | loader / model step (median) "
             "| ratio of bests | ratio range | bottleneck? |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        verdict = "**yes** ❌" if row["ratio"] < 1 else "no ✅"
        lines.append(f"| {row['variant']} | {rate_cells(row)} | {row['first_batch_s']:.2f} | {ratio_cells(row, 2)} "
                     f"| {verdict} |")
    return "\n".join(lines)


def e2e_table(rows: list[dict]) -> str:
    lines = ["| loop | images/s (median) | min–max | ratio to the head's model step alone (median) | ratio of bests "
             "| ratio range | waiting for data (median share) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {rate_cells(row)} | {ratio_cells(row)} | {100 * row['data_wait']:.1f}% |")
    return "\n".join(lines)


def profile_table(profile: dict) -> str:
    threads = [str(t) for t in profile["threads"]]
    labels = {threads[0]: "1 thread (a DataLoader worker)"} if threads[0] == "1" else {}
    header = " | ".join(f"µs/view, {labels.get(t, f'{t} threads')}" for t in threads)
    lines = [f"| step | {header} | share of total ({labels.get(threads[0], threads[0] + ' threads')}) |",
             "|---|" + "---:|" * len(threads) + "---:|"]
    us = profile["us_per_view"]
    total0 = profile["total_us_per_view"][threads[0]]
    for name in profile["pipeline"]:
        cells = " | ".join(f"{us[t][name]:.1f}" for t in threads)
        lines.append(f"| {name} | {cells} | {100 * us[threads[0]][name] / total0:.1f}% |")
    cells = " | ".join(f"**{profile['total_us_per_view'][t]:.1f}**" for t in threads)
    lines.append(f"| **total (sum of the rows above)** | {cells} | 100% |")
    name = "whole EpochSeededViews item, measured"
    lines.append(f"| {name} (cross-check, no collate) | " + " | ".join(f"{us[t][name]:.1f}" for t in threads) + " | |")
    for name in profile["sub_ops"]:
        lines.append(f"| {name} | " + " | ".join(f"{us[t][name]:.1f}" for t in threads) + " | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_flush_denormal:
        torch.set_flush_denormal(True)
    seed_everything(args.seed)
    config = TrainConfig()  # the defaults train() runs with: lr, weight decay, temperature, clipping, num_workers
    env = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
           "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "train_batches": args.train_batches,
           "loader_batches": args.loader_batches, "e2e_steps": args.e2e_steps, "workers": args.workers,
           "e2e_workers": args.e2e_workers, "quick": args.quick, "seed": args.seed,
           "main_threads": torch.get_num_threads(), "worker_threads": 1, "cpu_count": os.cpu_count(),
           "flush_denormal": not args.no_flush_denormal, "optimizer": config.optimizer, "lr": config.lr,
           "weight_decay": config.weight_decay, "temperature": config.temperature,
           "max_grad_norm": config.max_grad_norm, "trainconfig_num_workers": config.num_workers,
           "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
           "hybridzoo": hybridzoo.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine()}
    if hasattr(os, "getloadavg"):
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
        if env["load_average_1min"] > 0.5:
            print(f"warning: load average {env['load_average_1min']}: other processes compete for the CPU; expect "
                  f"noisy rounds (the medians absorb a few; 'ratio of bests' is the least affected)",
                  file=sys.stderr, flush=True)

    print("loading data ...", file=sys.stderr, flush=True)
    train_set, data_note = load_train_set(args)
    env.update(dataset=train_set.name, train_images=len(train_set), image_shape=list(train_set.images.shape[1:]))
    heads = [HeadVariant(h, args, config, []) for h in tqdm(args.heads, desc="building models", file=sys.stderr,
                                                              leave=False)]
    transform, _ = transforms_for(heads[0].model, **config.augment)
    views = EpochSeededViews(train_set, transform, seed=args.seed)
    # The same real batches for every head (epoch 0 of the loader, made once, before timing).
    loader = make_loader(views, args.batch_size, 0, 0, args.seed)
    batches = list(itertools.islice(itertools.cycle(loader), args.train_batches))
    for head in heads:
        head.batches = batches
    env["transform"] = [_op_name(op) for op in transform.transforms]

    print(f"# hybridzoo training-throughput benchmark\n\n{json.dumps(env)}\n")
    if data_note:
        print(data_note + "\n")
    print("Images are counted per view (a batch of B images = 2·B images), as train() counts them.\n")

    loaders = [LoaderVariant(w, args, views) for w in args.workers]
    e2e = [EndToEndVariant(w, heads[0], args, views) for w in args.e2e_workers]
    variants = heads + loaders + e2e
    print(f"{len(heads)} heads × {args.steps} steps, {len(loaders)} loaders × {args.loader_batches} batches, "
          f"{len(e2e)} end-to-end loops × {args.e2e_steps} steps; {args.rounds} rounds", file=sys.stderr, flush=True)
    rates, extras = measure(variants, args)

    head_names = [h.name for h in heads]
    head_rows = summarize(rates, head_names, lambda r: rates["euclidean"][r])
    for row, head in zip(head_rows, heads):
        row.update(objective=head.objective_name, final_loss=head.last_loss,
                   parameters=sum(p.numel() for p in head.learner.parameters()))
    fastest_model = lambda r: max(rates[n][r] for n in head_names)  # noqa: E731
    loader_rows = summarize(rates, [v.name for v in loaders], fastest_model)
    for row, v in zip(loader_rows, loaders):
        row.update(num_workers=v.num_workers, first_batch_s=statistics.median(extras[v.name]["first_batch_s"]))
    e2e_rows = summarize(rates, [v.name for v in e2e], lambda r: rates[heads[0].name][r])
    for row, v in zip(e2e_rows, e2e):
        row.update(num_workers=v.num_workers, data_wait=statistics.median(extras[v.name]["data_wait"]))

    backbone = f"{args.backbone}, {args.image_size}px, batch {args.batch_size} (2 views), {train_set.name}"
    print(f"### (a) model step: {backbone}, ContrastiveLearner + backward + clip + AdamW\n")
    print(head_table(head_rows) + "\n")
    print(f"### (b) data pipeline alone: DataLoader(EpochSeededViews(SimCLR transform)), workers at 1 thread, "
          f"main process at {env['main_threads']}; compared with the fastest head's model step in the same round\n")
    print(loader_table(loader_rows) + "\n")
    if e2e_rows:
        print("### (c) end to end: train()'s loop, the euclidean head fed by a live DataLoader\n")
        print(e2e_table(e2e_rows) + "\n")

    profile = None
    if args.profile_images:
        threads_list = sorted({1, env["main_threads"]})
        print("profiling the transforms ...", file=sys.stderr, flush=True)
        profile = profile_transforms(transform, views, args, threads_list)
        print(f"### (d) cost per view of each step of the data pipeline ({profile['images']} images × 2 views, "
              f"median of {args.profile_repeats} passes)\n")
        print(profile_table(profile) + "\n")

    # ---- verdict --------------------------------------------------------------------------------------------
    model_rate = statistics.median(fastest_model(r) for r in range(args.rounds))
    lines = ["### Verdict", "", f"- Model step (fastest head per round, median): **{model_rate:.0f} images/s**"
             + ("; heads vs euclidean: " + ", ".join(f"{row['variant']} {row['ratio']:.3f}" for row in head_rows[1:])
                + f" (target ≥ {TRAIN_TARGET}: "
                + ("all met" if all(row["ratio"] >= TRAIN_TARGET for row in head_rows[1:]) else "NOT all met") + ")"
                if len(head_rows) > 1 else "") + "."]
    for row in loader_rows:
        if row["ratio"] < 1:
            lines.append(f"- DataLoader num_workers={row['num_workers']}: {row['images_per_s']:.0f} images/s = "
                         f"{row['ratio']:.2f}× the model step: **the loader is the bottleneck** at this setting.")
        else:
            lines.append(f"- DataLoader num_workers={row['num_workers']}: {row['images_per_s']:.0f} images/s = "
                         f"{row['ratio']:.2f}× the model step: not the bottleneck.")
    default = next((row for row in loader_rows if row["num_workers"] == config.num_workers), None)
    bottleneck = default is not None and default["ratio"] < 1
    if default is None:
        lines.append(f"- TrainConfig's default num_workers={config.num_workers} was not measured (--workers).")
    elif bottleneck:
        lines.append(f"- **With TrainConfig's default num_workers={config.num_workers} THE DATA LOADER IS THE "
                     f"BOTTLENECK on this CPU ({os.cpu_count()} cores): it delivers {default['ratio']:.2f}× what the "
                     f"model step consumes.**")
    else:
        lines.append(f"- With TrainConfig's default num_workers={config.num_workers} the loader is not the "
                     f"bottleneck on this CPU ({os.cpu_count()} cores): {default['ratio']:.2f}× the model step.")
    for row in e2e_rows:
        lines.append(f"- End to end with num_workers={row['num_workers']}: {row['images_per_s']:.0f} images/s = "
                     f"{row['ratio']:.3f}× the euclidean model step alone; the loop waits for data "
                     f"{100 * row['data_wait']:.1f}% of the time. "
                     + ("With num_workers=0 the transforms run inside the loop, one batch after the other."
                        if row["num_workers"] == 0 else
                        "The rest of the gap is CPU the workers take from the model (they share the same cores)."))
    if profile is not None:
        t1 = str(profile["threads"][0])
        us = profile["us_per_view"][t1]
        total = profile["total_us_per_view"][t1]
        worst = max(profile["pipeline"], key=lambda n: us[n])
        core_share = model_rate * total * 1e-6
        lines.append(f"- Data costs {total:.0f} µs of CPU per view at {t1} thread: feeding {model_rate:.0f} images/s "
                     f"takes {core_share:.2f} of a core (of {os.cpu_count()}). Costliest step: **{worst}** "
                     f"({us[worst]:.0f} µs/view, {100 * us[worst] / total:.0f}%).")
        if profile["sub_ops"]:
            sub = max(profile["sub_ops"], key=lambda n: us[n])
            lines.append(f"- Inside ColorJitter the costliest op is {sub.strip()}: {us[sub]:.0f} µs per application.")
    if hasattr(os, "getloadavg"):
        env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        busiest = max(env["load_average_1min"], env["load_average_1min_end"])
        if busiest > 0.5:
            lines.append(f"- Caution: the 1-minute load average was {env['load_average_1min']} at the start and "
                         f"{env['load_average_1min_end']} at the end ({os.cpu_count()} cores): other processes "
                         f"shared the CPU, so absolute figures are low and noisy; trust the per-round ratios and the "
                         f"'ratio of bests' more, and rerun on an idle machine for clean numbers.")
    print("\n".join(lines) + "\n")
    elapsed = time.perf_counter() - started
    print(f"(benchmark took {elapsed:.0f} s)")

    if args.json:
        results = {"config": env, "data_note": data_note, "train": head_rows, "loader": loader_rows,
                   "end_to_end": e2e_rows, "transform_profile": profile,
                   "verdict": {"model_images_per_s": model_rate, "default_num_workers": config.num_workers,
                               "loader_is_bottleneck_at_default": bottleneck,
                               "all_heads_meet_target": all(r["ratio"] >= TRAIN_TARGET for r in head_rows[1:])},
                   "seconds": elapsed}
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

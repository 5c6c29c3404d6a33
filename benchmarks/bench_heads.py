#!/usr/bin/env python
"""Throughput of hybridzoo heads on one backbone, measured side by side in one run.

(a) Training step (images/s): two augmented views -> model -> InfoNCE on ``model.geometry.logits(z1, z2, τ)``
    (cross-entropy on the diagonal, both directions) -> backward -> SGD step, for each head preset, with the
    ratio to the Euclidean head.
(b) Extraction (images/s): ``hybridzoo.extract`` (eval, inference mode) against a bare
    ``timm.create_model(backbone, num_classes=0)`` forward under ``torch.inference_mode`` on the same tensor
    batches, with the ratio to the bare backbone.

Variants are measured in interleaved rounds (the order rotates every round) and each figure is a median over
rounds; ratios are medians of per-round ratios, so slow drifts of the clock (turbo, thermal limits, other
processes) cancel instead of favouring whichever variant ran first.

    python benchmarks/bench_heads.py                                  # resnet18, 32 px, batch 128, CPU
    python benchmarks/bench_heads.py --device cuda --image-size 224 --batch-size 256 --json bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext

import timm
import torch
import torch.nn.functional as F

import hybridzoo
from _rounds import rate_cells, ratio_cells, ratio_row, round_order, write_json

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Issue targets: minimum ratios (head vs euclidean for training, extract vs bare timm for extraction).
TRAIN_TARGET = 0.98
EXTRACT_TARGET = 0.97


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18", help="any timm model name (default: resnet18)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32, help="square input size in pixels (default: 32)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per variant per round")
    p.add_argument("--extract-batches", type=int, default=8,
                   help="batches per hybridzoo.extract call (and per bare-timm run) in each extraction round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the first round")
    p.add_argument("--rounds", type=int, default=12,
                   help="interleaved training rounds (medians are reported); many short rounds keep each "
                        "variant's timing close in time to the others'")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--heads", default="euclidean,lorentz,product,hybrid",
                   help="comma-separated head presets for the training benchmark (euclidean is always included)")
    p.add_argument("--extract-heads", default="euclidean,lorentz,product,hybrid",
                   help="comma-separated head presets for the extraction benchmark")
    p.add_argument("--extract-rounds", type=int, default=None,
                   help="rounds for the extraction benchmark (default: 2 × --rounds; extraction rounds are short)")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                   help="autocast the training forward and both extraction variants")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.extract_rounds is None:
        args.extract_rounds = 2 * args.rounds
    for name in ("batch_size", "image_size", "steps", "rounds", "extract_rounds", "extract_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    args.heads = ["euclidean"] + [h for h in args.heads.split(",") if h and h != "euclidean"]
    args.extract_heads = [h for h in args.extract_heads.split(",") if h]
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def build(backbone: str, head: str, image_size: int, seed: int) -> hybridzoo.HybridModel:
    # Same seed for every head: the backbones start from identical weights.
    torch.manual_seed(seed)
    return hybridzoo.create_model(backbone, head=head, preprocessing={"input_size": (3, image_size, image_size)})


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A cheap tensor augmentation: random horizontal flip, random shift (roll), brightness/contrast jitter."""
    n = x.shape[0]
    flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=generator))
    x = x.roll((dy, dx), dims=(-2, -1))
    scale = 1 + 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    shift = 0.4 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    return x * scale + shift


class TrainVariant:
    """One head's model, optimizer and the two-view contrastive step."""

    def __init__(self, head: str, args, device: torch.device, views: list[tuple[torch.Tensor, torch.Tensor]]):
        self.name = head
        self.model = build(args.backbone, head, args.image_size, args.seed).to(device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.views = views
        self.device = device
        self.amp = args.amp
        self.temperature = args.temperature
        self.targets = torch.arange(args.batch_size, device=device)
        self.i = 0
        self.last_loss = float("nan")

    def step(self) -> None:
        v1, v2 = self.views[self.i % len(self.views)]
        self.i += 1
        with autocast(self.device, self.amp):
            z1, z2 = self.model(v1), self.model(v2)
        logits = self.model.geometry.logits(z1, z2, self.temperature)
        loss = (F.cross_entropy(logits, self.targets) + F.cross_entropy(logits.T, self.targets)) / 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss = loss

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        elapsed = time.perf_counter() - start
        self.last_loss = float(self.loss.detach())
        return elapsed


class ExtractVariant:
    """``hybridzoo.extract`` of a head's model over the benchmark batches."""

    def __init__(self, head: str, args, device: torch.device, data: torch.Tensor):
        self.name = f"hybridzoo.extract ({head})"
        self.model = build(args.backbone, head, args.image_size, args.seed).to(device).eval()
        self.args, self.device, self.data = args, device, data

    def run(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        hybridzoo.extract(self.model, self.data[: steps * self.args.batch_size], batch_size=self.args.batch_size,
                          device=self.device, amp=self.args.amp, progress=False)
        sync(self.device)
        return time.perf_counter() - start


class BareTimmVariant:
    """The bare timm backbone: the same batches, moved to the device, forward, features collected on the CPU."""

    def __init__(self, args, device: torch.device, data: torch.Tensor):
        self.name = f"bare timm {args.backbone} (num_classes=0)"
        torch.manual_seed(args.seed)
        self.model = timm.create_model(args.backbone, pretrained=False, num_classes=0).to(device).eval()
        self.args, self.device, self.data = args, device, data

    @torch.inference_mode()
    def run(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        outputs = []
        for chunk in torch.split(self.data[: steps * self.args.batch_size], self.args.batch_size):
            with autocast(self.device, self.args.amp):
                features = self.model(chunk.to(self.device, non_blocking=True))
            outputs.append(features.float().cpu())
        torch.cat(outputs)
        sync(self.device)
        return time.perf_counter() - start


def measure(variants: list, args, steps: int, images_per_run: int, rounds: int) -> dict[str, list[float]]:
    """Warm up each variant, then ``rounds`` interleaved rounds (rotating order); images/s per variant per round."""
    for v in variants:
        if args.warmup:
            v.run(min(args.warmup, steps))
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in round_order(variants, r):
            rates[v.name].append(images_per_run / v.run(steps))
        progress = ", ".join(f"{name} {values[-1]:.0f}" for name, values in rates.items())
        print(f"  round {r + 1}/{rounds} (images/s): {progress}", file=sys.stderr, flush=True)
    return rates


def summarize(rates: dict[str, list[float]], reference: str) -> list[dict]:
    return [ratio_row(name, values, rates[reference]) for name, values in rates.items()]


def table(title: str, rows: list[dict], reference: str, target: float | None, reference_label: str) -> str:
    lines = [f"### {title}", "",
             f"| variant | images/s (median) | min–max | ratio to {reference_label} (median) | ratio of bests "
             f"| ratio range | target |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        is_ref = row["variant"] == reference
        verdict = "—" if is_ref or target is None else (f"≥ {target:.2f} ✅" if row["ratio"] >= target
                                                        else f"≥ {target:.2f} ❌")
        lines.append(f"| {row['variant']} | {rate_cells(row)} | {ratio_cells(row)} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals in slowly shrinking weights can slow CPU kernels many-fold
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    env = {"backbone": args.backbone, "batch_size": args.batch_size, "image_size": args.image_size,
           "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
           "extract_rounds": args.extract_rounds, "extract_batches": args.extract_batches, "device": str(device),
           "amp": args.amp, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "timm": timm.__version__, "hybridzoo": hybridzoo.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
        if device.type == "cpu" and env["load_average_1min"] > 0.5:
            print(f"warning: load average {env['load_average_1min']} — other processes compete for the CPU; "
                  f"expect noisy rounds (the medians absorb a few)", file=sys.stderr)
    print(f"# hybridzoo head benchmark\n\n{json.dumps(env)}\n")
    results: dict = {"config": env}

    if not args.skip_train:
        base = torch.randn(shape, generator=gen)
        # Two augmented views per batch, made up front (same for every head) so only the model step is timed.
        views = [(augment(base, gen).to(device), augment(base, gen).to(device)) for _ in range(2)]
        variants = [TrainVariant(h, args, device, views) for h in args.heads]
        print(f"training step: {len(variants)} heads, {args.rounds} rounds × {args.steps} steps of "
              f"2 views × {args.batch_size} images", file=sys.stderr, flush=True)
        rates = measure(variants, args, args.steps, images_per_run=args.steps * args.batch_size, rounds=args.rounds)
        rows = summarize(rates, "euclidean")
        for row, v in zip(rows, variants):
            row["final_loss"] = v.last_loss
            row["parameters"] = sum(p.numel() for p in v.model.parameters())
        results["train"] = rows
        print(table(f"(a) training step: {args.backbone}, {args.image_size}px, batch {args.batch_size} "
                    f"(2 views), InfoNCE on geometry.logits, SGD", rows, "euclidean", TRAIN_TARGET, "euclidean"))
        print()
        del variants

    if not args.skip_extract:
        data = torch.randn((args.extract_batches * args.batch_size, *shape[1:]), generator=gen)
        bare = BareTimmVariant(args, device, data)
        variants = [bare] + [ExtractVariant(h, args, device, data) for h in args.extract_heads]
        print(f"extraction: {len(variants)} variants, {args.extract_rounds} rounds × {args.extract_batches} batches "
              f"of {args.batch_size}", file=sys.stderr, flush=True)
        rates = measure(variants, args, args.extract_batches, images_per_run=args.extract_batches * args.batch_size,
                        rounds=args.extract_rounds)
        rows = summarize(rates, bare.name)
        results["extract"] = rows
        print(table(f"(b) extraction (eval, inference): {args.backbone}, {args.image_size}px, batch "
                    f"{args.batch_size}", rows, bare.name, EXTRACT_TARGET, "bare timm"))
        print()

    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

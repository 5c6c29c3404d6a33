"""Contrastive pretraining with accelerate: one CPU to many GPUs, any head geometry.

:class:`TrainConfig` is the recipe (a JSON file; command-line flags override it), :func:`train` runs it.
``training/pretrain.py`` is a thin command-line wrapper.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import ImageSet, TransformedDataset, load_image_set, split_validation, transforms_for
from .evaluation import knn_accuracies
from .extract import extract
from .geometry import CurvedGeometry, Product
from .hub import atomic_write
from .losses import ContrastiveObjective
from .model import HybridModel
from .optim import build_optimizer, warmup_cosine_schedule
from .zoo import load

__all__ = ["TrainConfig", "ContrastiveLearner", "EpochSeededViews", "train", "find_checkpoint", "geometry_scalars"]

CHECKPOINT_PREFIX = "step_"
TRAINER_STATE = "trainer_state.json"


@dataclasses.dataclass
class TrainConfig:
    """A pretraining recipe. Every field is a ``training/pretrain.py`` flag (``--batch-size`` for batch_size)."""

    model: str = "resnet10t-lorentz"
    dataset: str = "digits"
    output_dir: str = "outputs/resnet10t-lorentz-digits"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    cpu: bool = False
    objective: str = "simclr"
    temperature: float = 0.2
    learn_temperature: bool = False
    max_logit_scale: float = 100.0
    logits: str | None = None
    factor_weights: list | None = None
    factor_temperatures: list | None = None
    image_size: int = 32
    model_overrides: dict = dataclasses.field(default_factory=dict)
    augment: dict = dataclasses.field(default_factory=dict)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    #: Hold out this class-stratified fraction of the (subsampled) training split, never trained on, and report
    #: k-NN on it instead of on the test split (for hyperparameter search; the test split is then not read).
    validation_fraction: float | None = None
    knn_train_samples: int | None = 10000
    knn_every: int = 0
    knn_before_training: bool = True
    num_workers: int = 2
    log_every: int = 10
    checkpointing_steps: str | None = None
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    report_to: str | None = "tensorboard"
    push_to_hub: str | None = None
    max_steps: int | None = None

    @classmethod
    def from_recipe(cls, path: str | Path | None = None, **overrides) -> "TrainConfig":
        """Defaults, then the recipe file's values, then ``overrides`` (None values in overrides are kept)."""
        values = {}
        if path is not None:
            try:
                values = json.loads(Path(path).read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"recipe {path} does not exist; recipes live in training/recipes/") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - {"description"})
        if unknown:
            raise ValueError(f"recipe {path} has unknown keys {unknown}; valid keys are {sorted(names)}")
        values = {k: v for k, v in values.items() if k in names}
        return cls(**{**values, **overrides})

    def checkpoint_every(self) -> int | str | None:
        """``checkpointing_steps`` parsed: an int (optimizer steps), ``"epoch"``, or None."""
        if self.checkpointing_steps in (None, "", "none"):
            return None
        if self.checkpointing_steps == "epoch":
            return "epoch"
        if not str(self.checkpointing_steps).isdigit() or int(self.checkpointing_steps) < 1:
            raise ValueError(f"--checkpointing-steps takes a positive number of steps or 'epoch'; "
                             f"got {self.checkpointing_steps!r}")
        return int(self.checkpointing_steps)


class ContrastiveLearner(nn.Module):
    """Model + objective in one module, so DDP averages the gradients of every trainable parameter (including a
    learnable temperature) and the whole forward runs inside the DDP wrapper.

    ``forward(view1, view2, labels)``: two (B, C, H, W) batches -> (loss, z1 (B, P), metrics).
    """

    def __init__(self, model: HybridModel, objective: ContrastiveObjective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor | None = None):
        # one backbone pass over both views: batch-norm statistics cover 2B images, as in SimCLR
        z1, z2 = self.model(torch.cat([view1, view2])).chunk(2)
        loss, metrics = self.objective(z1, z2, labels, self.model.geometry)
        return loss, z1, metrics


class EpochSeededViews(Dataset):
    """Two augmented views per image, with augmentation randomness fixed by (seed, epoch, index).

    Deterministic per item whatever the worker, process count or resume point: a run resumed from a checkpoint
    sees exactly the views of an uninterrupted run. Items: (view1, view2, label).
    """

    def __init__(self, images: ImageSet, transform, seed: int = 0):
        self.images = images
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images.images[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % (2**63))
            return self.transform(image), self.transform(image), self.images.labels[index]


def geometry_scalars(model: HybridModel) -> dict[str, float]:
    """Curvature and α of every head factor, for logging: ``{"curvature_1_lorentz": 0.93, "alpha_1": 0.08}``."""
    geometry = model.geometry
    factors = list(geometry.factors) if isinstance(geometry, Product) else [geometry]
    scalars = {}
    for i, (factor, guard) in enumerate(zip(factors, model.head.guards)):
        if isinstance(factor, CurvedGeometry):
            scalars[f"curvature_{i}_{factor.name}"] = factor.curvature.item()
        if guard.alpha is not None:
            scalars[f"alpha_{i}_{factor.name}"] = guard.alpha.item()
    return scalars


def _embedding_norms(model: HybridModel, points: torch.Tensor) -> dict[str, float]:
    """Mean and max tangent norm ‖logmap0(z)‖ (the geodesic radius for Lorentz and sphere heads)."""
    radius = model.geometry.logmap0(points.detach()).norm(dim=-1)
    return {"embedding_radius_mean": radius.mean().item(), "embedding_radius_max": radius.max().item()}


def find_checkpoint(root: Path, which: str) -> Path:
    """``which``: a checkpoint folder, or ``"latest"`` = the newest complete checkpoint under ``root``.

    Only folders renamed into place after a complete save count (see :func:`_save_checkpoint`), so a run killed
    mid-save never resumes from half a checkpoint.
    """
    if which != "latest":
        path = Path(which)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE}); pass a folder "
                                    f"{root}/{CHECKPOINT_PREFIX}N or 'latest'")
        return path
    complete = sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / TRAINER_STATE).is_file())
    if not complete:
        raise FileNotFoundError(f"no complete checkpoint under {root} to resume from; drop "
                                f"--resume-from-checkpoint to start afresh")
    return complete[-1]


def _save_checkpoint(accelerator, root: Path, state: dict, keep: int) -> Path:
    """accelerate ``save_state`` into a hidden temporary folder, then one rename: the folder ``step_N`` exists
    only once complete. Older checkpoints beyond ``keep`` are deleted."""
    final = root / f"{CHECKPOINT_PREFIX}{state['global_step']:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)  # before the barrier: every process writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write(tmp / TRAINER_STATE, json.dumps(state, indent=2).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        complete = sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / TRAINER_STATE).is_file())
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _knn_metrics(model: HybridModel, train_set: ImageSet, test_set: ImageSet, eval_transform, device,
                 amp: str | None, batch_size: int) -> dict[str, float]:
    """1-NN and 20-NN top-1 with the geometry's own similarity, on frozen embeddings."""
    def embed(images: ImageSet):
        return extract(model, TransformedDataset(images, eval_transform), batch_size=batch_size, device=device,
                       amp=amp, progress=False)["embeddings"]

    accuracies = knn_accuracies(embed(train_set), train_set.labels, embed(test_set), test_set.labels,
                                model.geometry, ks=(1, 20))
    return {f"knn_top1_k{k}": accuracy for k, accuracy in accuracies.items()}


def _build_model(config: TrainConfig) -> HybridModel:
    overrides = dict(config.model_overrides)
    in_chans = int(overrides.get("in_chans", 3))
    preprocessing = {"input_size": (in_chans, config.image_size, config.image_size), "crop_pct": 1.0,
                     "interpolation": "bilinear", **overrides.pop("preprocessing", {})}
    return load(config.model, pretrained=False, preprocessing=preprocessing, **overrides)


def train(config: TrainConfig) -> dict:
    """Run a recipe; returns the final metrics. Writes a ``save_pretrained`` folder to ``config.output_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    output_dir = Path(config.output_dir)
    checkpoint_every = config.checkpoint_every()
    accelerator = Accelerator(
        # On a machine without an accelerator, accelerate 1.16 sets up multi-process CPU training (gloo) only
        # when told it runs on the CPU; otherwise every process trains alone as rank 0.
        cpu=config.cpu or not torch.accelerator.is_available(),
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed))
    set_seed(config.seed)
    model = _build_model(config)
    train_set = load_image_set(config.dataset, "train", max_samples=config.max_train_samples, seed=config.seed)
    if config.validation_fraction:
        train_set, test_set = split_validation(train_set, config.validation_fraction)
        test_set = _subset(test_set, config.max_eval_samples)
    else:
        test_set = load_image_set(config.dataset, "test", max_samples=config.max_eval_samples)
    knn_train_set = _subset(train_set, config.knn_train_samples)
    train_transform, eval_transform = transforms_for(model, **config.augment)
    views = EpochSeededViews(train_set, train_transform, seed=config.seed)
    loader = DataLoader(views, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.num_workers, pin_memory=accelerator.device.type == "cuda")
    geometry = model.geometry
    factor_names = [f.name for f in geometry.factors] if isinstance(geometry, Product) else [geometry.name]
    objective = ContrastiveObjective(
        config.objective, temperature=config.temperature, learn_temperature=config.learn_temperature,
        max_logit_scale=config.max_logit_scale, logits=config.logits, factor_weights=config.factor_weights,
        factor_temperatures=config.factor_temperatures, num_factors=len(factor_names), factor_names=factor_names)
    learner = ContrastiveLearner(model, objective)
    optimizer = build_optimizer(config.optimizer, [learner], config.lr, config.weight_decay)
    learner, optimizer, loader = accelerator.prepare(learner, optimizer, loader)
    if len(loader) < config.gradient_accumulation_steps:
        raise ValueError(f"{len(train_set)} training images make {len(loader)} batch(es) of {config.batch_size} "
                         f"per process: lower --batch-size")
    steps_per_epoch = len(loader) // config.gradient_accumulation_steps
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    # Stepped by hand once per optimizer step (an accelerate-prepared scheduler would step once per process).
    scheduler = warmup_cosine_schedule(optimizer, round(config.warmup_epochs * steps_per_epoch), total_steps,
                                       config.min_lr_ratio)
    accelerator.register_for_checkpointing(scheduler)
    amp = config.mixed_precision if config.mixed_precision in ("bf16", "fp16") else None
    unwrapped = accelerator.unwrap_model(learner).model

    global_step, start_epoch, skip_batches, results = 0, 0, 0, {}
    if config.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir / "checkpoints", config.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        global_step, start_epoch, skip_batches = state["global_step"], state["epoch"], state["batches_in_epoch"]
        results = state.get("results", {})
        accelerator.print(f"resumed from {checkpoint} at step {global_step}")
    elif config.knn_before_training and accelerator.is_main_process:
        results["knn_top1_untrained"] = _knn_metrics(unwrapped, knn_train_set, test_set, eval_transform,
                                                     accelerator.device, amp, config.batch_size)["knn_top1_k1"]
    accelerator.init_trackers("pretrain", config={k: v for k, v in dataclasses.asdict(config).items()
                                                  if isinstance(v, (int, float, str, bool))})

    def checkpoint_state(epoch: int, batches_in_epoch: int) -> dict:
        return {"global_step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "results": results}

    progress = tqdm(total=total_steps, initial=global_step, desc=f"pretrain {model.name}", unit="step",
                    disable=not accelerator.is_local_main_process)
    started, images_seen, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    for epoch in range(start_epoch, config.epochs):
        if global_step >= total_steps:
            break
        views.set_epoch(epoch)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batch_index = skip_batches
        for view1, view2, labels in batches:
            batch_index += 1
            with accelerator.accumulate(learner):
                loss, z1, metrics = learner(view1, view2, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(learner.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            images_seen += 2 * len(view1) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            global_step += 1
            progress.update(1)
            if global_step % config.log_every == 0 or global_step == total_steps:
                logs = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], **metrics,
                        **geometry_scalars(unwrapped), **_embedding_norms(unwrapped, z1)}
                accelerator.log(logs, step=global_step)
                progress.set_postfix(loss=f"{logs['loss']:.3f}")
            if isinstance(checkpoint_every, int) and global_step % checkpoint_every == 0:
                _save_checkpoint(accelerator, output_dir / "checkpoints", checkpoint_state(epoch, batch_index),
                                 config.checkpoints_total_limit)
            if global_step >= total_steps:
                break
        skip_batches = 0
        if config.knn_every and (epoch + 1) % config.knn_every == 0 and accelerator.is_main_process:
            epoch_knn = _knn_metrics(unwrapped, knn_train_set, test_set, eval_transform, accelerator.device, amp,
                                     config.batch_size)
            accelerator.log({f"eval/{k}": v for k, v in epoch_knn.items()}, step=global_step)
            results.setdefault("knn_history", []).append({"epoch": epoch + 1, **epoch_knn})
        if checkpoint_every == "epoch":  # after the epoch's k-NN, so a resumed run keeps it in its history
            _save_checkpoint(accelerator, output_dir / "checkpoints", checkpoint_state(epoch + 1, 0),
                             config.checkpoints_total_limit)
    progress.close()
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        results.update(_knn_metrics(unwrapped, knn_train_set, test_set, eval_transform, accelerator.device, amp,
                                    config.batch_size))
        results.update(final_loss=loss.item(), steps=global_step, train_images_per_second=images_seen / elapsed,
                       **geometry_scalars(unwrapped))
        _write_outputs(unwrapped, config, results, train_set, test_set)
    accelerator.log({f"eval/{k}": v for k, v in results.items() if isinstance(v, float)}, step=global_step)
    accelerator.end_training()
    return results


def _subset(images: ImageSet, size: int | None) -> ImageSet:
    """A fixed random subset of ``size`` images (seed 0: the same k-NN reference set for every run)."""
    if size is None or size >= len(images):
        return images
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:size]
    return images.select(keep)


def _write_outputs(model: HybridModel, config: TrainConfig, results: dict, train_set: ImageSet,
                   test_set: ImageSet) -> None:
    """The save_pretrained folder (with the recipe, data and command in the card), metrics.json, recipe.json."""
    output_dir = Path(config.output_dir)
    recipe = dataclasses.asdict(config)
    command = "accelerate launch training/pretrain.py " + " ".join(sys.argv[1:])
    card_results = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    held_out = "validation (held out of train)" if config.validation_fraction else "test"
    training = {"dataset": f"{config.dataset} ({len(train_set)} train / {len(test_set)} {held_out} images)",
                "objective": config.objective, "epochs": config.epochs, "batch size per process": config.batch_size,
                "image size": config.image_size, "command": f"`{command}`",
                "recipe": f"`{json.dumps({k: v for k, v in recipe.items() if v not in (None, {}, [])})}`"}
    model.save_pretrained(output_dir, results=card_results, training=training)
    atomic_write(output_dir / "metrics.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write(output_dir / "recipe.json", (json.dumps(recipe, indent=2) + "\n").encode())
    if config.push_to_hub:
        model.push_to_hub(config.push_to_hub, results=card_results, training=training)

"""Feature extraction: images (tensors, datasets, loaders or a folder of files) -> embeddings on the manifold."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import safetensors.torch
import timm.data
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import ImageInputError
from .hub import atomic_write
from .model import HybridModel

__all__ = ["IMAGE_EXTENSIONS", "AMP_DTYPES", "create_transform", "ImageFolderDataset", "extract", "save_features"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: ``amp`` names accepted by :func:`extract` and the CLI.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# PIL modes that give the channel count a model expects.
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def create_transform(model: HybridModel, is_training: bool = False):
    """timm's eval (or train) transform for the model's preprocessing config."""
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=is_training)


class ImageFolderDataset(Dataset):
    """Image files under ``root``: directly in it (label -1), or one sub-folder per class (labels = indices of the
    sorted sub-folder names). Items are ``(image_tensor, label)``; ``file_names`` are paths relative to ``root``.
    """

    def __init__(self, root: str | Path, transform=None, in_chans: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageInputError(f"image folder {self.root} does not exist or is not a folder")
        if in_chans not in _PIL_MODES:
            raise ImageInputError(f"image files give 1, 3 or 4 channels; a model with in_chans={in_chans} needs "
                                  f"tensors built by hand (pass them to hybridzoo.extract)")
        self.mode = _PIL_MODES[in_chans]
        self.transform = transform
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ImageInputError(f"no images found in {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)} "
                                  f"files, directly or in one sub-folder per class)")
        self.class_names = sorted({p.relative_to(self.root).parts[0] for p in files
                                   if len(p.relative_to(self.root).parts) > 1})
        class_index = {name: i for i, name in enumerate(self.class_names)}
        self.files = files
        self.file_names = [p.relative_to(self.root).as_posix() for p in files]
        self.labels = [class_index.get(p.relative_to(self.root).parts[0], -1) if len(p.relative_to(self.root).parts)
                       > 1 else -1 for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        """The PIL image of file ``index`` in the mode the model needs; unreadable files raise ImageInputError."""
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return image.convert(self.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageInputError(f"cannot read image file {path}: {err}. Remove or re-export the file.") from None

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (self.transform(image) if self.transform else image), self.labels[index]


def _as_batches(data, model: HybridModel, batch_size: int, num_workers: int, pin_memory: bool) -> Iterable:
    """Turn any supported input into an iterable of batches."""
    if isinstance(data, torch.Tensor):
        model.check_images(data)
        return [(chunk, None) for chunk in torch.split(data, batch_size)]
    if isinstance(data, (str, Path)):
        data = ImageFolderDataset(data, create_transform(model), in_chans=model.in_chans)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          pin_memory=pin_memory)
    return data


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels | None) from a tensor, an (images, labels, ...) sequence or a dict with 'image'/'label'."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        images = next((batch[k] for k in ("image", "pixel_values", "img") if k in batch), None)
        labels = next((batch[k] for k in ("label", "labels") if k in batch), None)
        if images is None:
            raise ImageInputError(f"batch dict has no 'image' or 'pixel_values' key (keys: {sorted(batch)})")
        return images, labels
    if isinstance(batch, (tuple, list)) and batch:
        labels = batch[1] if len(batch) > 1 else None
        return batch[0], (torch.as_tensor(labels) if labels is not None else None)
    raise ImageInputError(f"cannot read a batch of type {type(batch).__name__}: yield image tensors, "
                          f"(images, labels) pairs, or dicts with 'image' and 'label'")


def extract(model: HybridModel, data, *, batch_size: int = 128, device: str | torch.device | None = None,
            amp: str | None = None, return_features: bool = False, num_workers: int = 0,
            progress: bool = True) -> dict[str, torch.Tensor]:
    """Embed images with a model in eval mode (the model is moved to ``device``).

    ``data``: a float tensor (N, C, H, W) already preprocessed, a Dataset or DataLoader yielding images or
    (images, labels), or a folder of image files (see :class:`ImageFolderDataset`; preprocessing from the model).
    ``amp``: ``"bf16"`` / ``"fp16"`` autocast for the backbone; the head and geometry stay fp32.

    Returns ``{"embeddings": (N, P) fp32, "features": (N, F) (if return_features), "labels": (N,) (if given)}``
    on the CPU, as ordinary tensors (usable in autograd, e.g. to train a linear probe). The model's train/eval
    mode is restored afterwards.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None; got {amp!r}")
    was_training = model.training
    model = model.to(device).eval()
    try:
        outputs = _extract_batches(model, data, batch_size, device, amp, return_features, num_workers, progress)
    finally:
        model.train(was_training)
    if not outputs["embeddings"]:
        raise ImageInputError("no images to extract: the input is empty")
    # Concatenated outside inference mode, so the results are normal tensors rather than inference tensors.
    return {k: torch.cat(v) for k, v in outputs.items() if v}


@torch.inference_mode()
def _extract_batches(model: HybridModel, data, batch_size: int, device: torch.device, amp: str | None,
                     return_features: bool, num_workers: int, progress: bool) -> dict[str, list[torch.Tensor]]:
    batches = _as_batches(data, model, batch_size, num_workers, pin_memory=device.type == "cuda")
    outputs: dict[str, list[torch.Tensor]] = {"embeddings": [], "features": [], "labels": []}
    try:
        total = len(batches)
    except TypeError:  # generators, IterableDatasets and DataLoaders over them have no length
        total = None
    for batch in tqdm(batches, total=total, desc=f"extract {model.name}", unit="batch", disable=not progress):
        images, labels = _split_batch(batch)
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp is not None):
            features = model.forward_features(images)
            embeddings = model.forward_head(features)
        outputs["embeddings"].append(embeddings.float().cpu())
        if return_features:
            outputs["features"].append(features.float().cpu())
        if labels is not None:
            outputs["labels"].append(torch.as_tensor(labels).cpu())
    return outputs


def save_features(path: str | Path, result: dict[str, torch.Tensor], *, file_names: list[str] | None = None,
                  class_names: list[str] | None = None, model: HybridModel | None = None) -> Path:
    """Write :func:`extract` output to a safetensors file (atomically). File names, class names and the model's
    name and geometry go into the header metadata as JSON strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"file_names": json.dumps(file_names or []), "class_names": json.dumps(class_names or [])}
    if model is not None:
        metadata.update(model=model.name, geometry=json.dumps(model.geometry.to_config()))
    tensors = {k: v.contiguous() for k, v in result.items()}
    atomic_write(path, safetensors.torch.save(tensors, metadata=metadata))
    return path

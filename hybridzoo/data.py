"""Image sets for contrastive pretraining (SimCLR two views, SupCon labels) and k-NN evaluation.

:func:`load_image_set` reads a dataset once and decodes every image into one uint8 tensor in memory, so training
epochs never touch files or JPEG decoders again; the transforms are ``torchvision.transforms.v2`` pipelines on those
uint8 tensors (no PIL per item).

>>> train = load_image_set("../shared/data/cifar10", "train", max_samples=10_000)
>>> train.images.shape, train.images.dtype          # (10000, 3, 32, 32) torch.uint8
>>> two_view, evaluate = transforms_for(model)       # image size, mean and std from model.pretrained_cfg
>>> loader = DataLoader(TwoViewDataset(train, two_view), batch_size=256, shuffle=True, drop_last=True)

Sources (``source`` argument):

- ``"digits"``: scikit-learn's bundled 8x8 digits, a fixed stratified 80/20 train/test split.
- ``"fashion-mnist"`` (Debian package ``dataset-fashion-mnist``) or ``"fashion-mnist:ROOT"`` (a torchvision root
  ``ROOT/FashionMNIST/raw/`` or a folder with the idx files).
- a Hugging Face datasets folder (parquet + README, e.g. ``../shared/data/cifar10``), a ``save_to_disk`` folder,
  a ``.parquet`` file or a glob of them.
- an ImageFolder tree: ``root/<split>/<class>/*.png`` or ``root/<class>/*.png`` (fixed stratified 80/20 split).
- a Hub dataset id ``org/name`` (needs the network).

Splits: ``"train"`` and ``"test"`` (the held-out split for k-NN); ``"val"`` / ``"validation"`` / ``"valid"`` and
``"test"`` stand in for each other when the source has only one of them.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import io
import os
import re
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from .errors import DataNotFoundError, ImageInputError
from .extract import IMAGE_EXTENSIONS

__all__ = ["DATASET_NAMES", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "ImageSet", "load_image_set",
           "simclr_transform", "eval_transform", "transforms_for", "TwoViewDataset", "TransformedDataset"]

#: Built-in dataset names; any other source is a path or a Hub dataset id.
DATASET_NAMES = ("digits", "fashion-mnist")
#: Where the Debian package ``dataset-fashion-mnist`` puts the four idx ``.gz`` files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The standard class order (torchvision's ``FashionMNIST.classes``).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FASHION_MNIST_HINT = ("Install it with `apt-get install dataset-fashion-mnist` (files in {debian}), or download "
                       "it with torchvision.datasets.FashionMNIST(ROOT, download=True) and pass "
                       "'fashion-mnist:ROOT'.")

#: Names of the held-out split, in the order they are tried when the requested one is absent.
_HELD_OUT_SPLITS = ("test", "validation", "val", "valid")
#: Seed of every fixed choice (the digits / ImageFolder 80/20 split, held-out subsets): never the caller's seed, so
#: the evaluation data is the same in every run.
_FIXED_SEED = 0
_TEST_FRACTION = 0.2
#: Show a decoding progress bar from this many images on (smaller sets decode in well under a second).
_PROGRESS_MIN = 10_000
# Aliases of the built-in names (lower case, '_' read as '-').
_NAME_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}
# org/name, as the Hub spells dataset ids (optionally with the zoo's "hf-hub:" prefix).
_HUB_ID = re.compile(r"^(?:hf-hub:)?([A-Za-z0-9][\w.-]*/[\w.-]+)$")
# PIL modes without colour: converted to "L" (1 channel); every other mode is converted to "RGB".
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(repr=False)
class ImageSet:
    """A whole split decoded into memory.

    ``images``: (N, C, H, W) uint8 with C = 1 or 3 as stored; ``labels``: (N,) int64, -1 where unlabelled;
    ``class_names[k]`` names label k; ``name``: ``"<source>:<split>"``; ``indices``: (N,) int64 ascending, where each
    image sits in the source: its row in the source's split, or, for digits and ``root/<class>`` trees (whose 80/20
    split is hybridzoo's), its row in the whole dataset (load_digits() order, sorted file paths).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    indices: torch.Tensor | None = None

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != torch.uint8 or self.images.shape[1] not in (1, 3):
            raise ImageInputError(f"ImageSet.images must be (N, 1 or 3, H, W) uint8; got {self.images.dtype} "
                                  f"{tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),) or self.labels.dtype != torch.int64:
            raise ImageInputError(f"ImageSet.labels must be ({len(self.images)},) int64; got {self.labels.dtype} "
                                  f"{tuple(self.labels.shape)}")
        if self.indices is None:
            self.indices = torch.arange(len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def select(self, rows: torch.Tensor | np.ndarray, name: str | None = None) -> "ImageSet":
        """The images at ``rows`` ((M,) integer positions in this set), keeping their source indices."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        return ImageSet(images=self.images[rows], labels=self.labels[rows], class_names=self.class_names,
                        name=name or self.name, indices=self.indices[rows])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:  # the default would print the tensors
        return (f"ImageSet(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype}, "
                f"labelled={int((self.labels >= 0).sum())}, classes={self.num_classes})")


# ----------------------------------------------------------------------------------------------------------------
# load_image_set


def load_image_set(source: str | Path, split: str = "train", *, max_samples: int | None = None, seed: int = 0,
                   cache_dir: str | Path | None = None, image_size: int | None = None) -> ImageSet:
    """Load one split of ``source`` (see the module docstring) into memory, decoding every image once.

    ``max_samples``: keep a deterministic, class-stratified subset of that many images, chosen with ``seed`` for
    the training split and with a fixed seed for held-out splits (so every run evaluates on the same images).
    ``cache_dir``: where Hugging Face ``datasets`` may write its Arrow files (and downloads, for Hub ids); by
    default a temporary directory removed after loading, so nothing is ever written under ``~/.cache``.
    ``image_size``: resize (shorter side, antialiased) and centre-crop every image to ``image_size`` squared while
    decoding; needed only for image files of different sizes, since the set is one tensor.

    Returns an :class:`ImageSet`: images (N, C, H, W) uint8, labels (N,) int64.
    Raises :class:`DataNotFoundError` (what is missing and how to get it) for missing data, paths, splits or an
    unreachable Hub; :class:`ImageInputError` for unreadable files.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive number of images or None; got {max_samples}")
    source = os.fspath(source)

    def pick(labels: np.ndarray, resolved_split: str) -> np.ndarray:
        """Rows of the resolved split to keep: (N,) labels -> (M,) sorted row indices."""
        if max_samples is None or max_samples >= len(labels):
            return np.arange(len(labels))
        held_out = resolved_split.lower() in _HELD_OUT_SPLITS
        return _stratified_subset(labels, max_samples, _FIXED_SEED if held_out else seed)

    builtin, _, root = source.partition(":")
    key = _builtin_key(builtin)
    if key in DATASET_NAMES and (key == "fashion-mnist" or not root):
        if key == "digits":
            images, labels, class_names, rows, resolved = _load_digits(split, pick)
        else:
            root_path = Path(root).expanduser() if root else None
            images, labels, class_names, rows, resolved = _load_fashion_mnist(root_path, split, pick)
        name = key
        if image_size is not None:  # one batched resize; the file sources below resize each image as decoded
            images = _fit_size(images, image_size)
    else:
        name = source if source in NAMED_FOLDERS else _display_name(source)
        source = _resolve_named_folder(source)
        images, labels, class_names, rows, resolved = _load_path_or_hub(source, split, pick, cache_dir, image_size)
    return ImageSet(images=images, labels=torch.as_tensor(labels, dtype=torch.int64), class_names=list(class_names),
                    name=f"{name}:{resolved}", indices=torch.as_tensor(rows, dtype=torch.int64))


def split_validation(images: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet]:
    """Hold out a fixed, class-stratified ``fraction`` of ``images`` (a training split) as a validation set.

    For hyperparameter search: choose settings on images the model never trains on without touching the test
    split. The split uses the fixed seed, so every trial of a sweep sees the same validation images.
    Returns (train, validation), disjoint and together ``images``; names end in ``-fit`` / ``-validation``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie strictly between 0 and 1; got {fraction}")
    train_rows, validation_rows = _stratified_split(images.labels.numpy(), fraction)
    if len(train_rows) == 0 or len(validation_rows) == 0:
        raise ValueError(f"holding out {fraction:.0%} of {len(images)} images leaves an empty split; "
                         f"use more images or another fraction")
    return (images.select(train_rows, name=f"{images.name}-fit"),
            images.select(validation_rows, name=f"{images.name}-validation"))


#: Named datasets kept as Hugging Face parquet folders: looked up under $HYBRIDZOO_DATA_DIR/<name>, then
#: ../shared/data/<name> beside the project checkout, then the Hub id (None: no Hub copy with this layout).
NAMED_FOLDERS = {"cifar10": "uoft-cs/cifar10", "tiny-imagenet-32": None}


def _resolve_named_folder(source: str) -> str:
    """A named folder dataset -> the local folder or Hub id to load; any other source unchanged."""
    if source not in NAMED_FOLDERS:
        return source
    roots = [Path(os.environ["HYBRIDZOO_DATA_DIR"])] if os.environ.get("HYBRIDZOO_DATA_DIR") else []
    roots.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for root in roots:
        if (root / source).is_dir():
            return str(root / source)
    if NAMED_FOLDERS[source]:
        return NAMED_FOLDERS[source]
    raise DataNotFoundError(f"dataset {source!r} not found in {' or '.join(str(r) for r in roots)}: put its Hugging "
                            f"Face parquet folder at $HYBRIDZOO_DATA_DIR/{source}, or pass the folder's path")


def _load_path_or_hub(source: str, split: str, pick: Callable, cache_dir, image_size) -> tuple:
    """Dispatch a non-built-in source: ImageFolder tree, local datasets folder / parquet, Hub id, or an error."""
    path = Path(source).expanduser()
    if path.is_dir() and _is_image_tree(path):
        return _load_image_folder(path, split, pick, image_size)
    if path.exists() or "*" in source:
        return _load_hf_local(source, split, pick, cache_dir, image_size)
    if (match := _HUB_ID.match(source)) and not source.startswith(("./", "../", "~")):
        return _load_hf_hub(match.group(1), split, pick, cache_dir, image_size)
    if "/" in source or os.sep in source or source.startswith((".", "~")):
        raise DataNotFoundError(
            f"no such file or folder: {source} (resolved to {path.absolute()}). Pass a Hugging Face datasets "
            f"folder (e.g. ../shared/data/cifar10), .parquet file(s), an ImageFolder tree (root/<split>/<class>/"
            f"*.png or root/<class>/*.png), a Hub id org/name, or one of {', '.join(DATASET_NAMES)}.")
    close = difflib.get_close_matches(_builtin_key(source), DATASET_NAMES, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataNotFoundError(f"unknown dataset {source!r}: not a built-in name ({', '.join(DATASET_NAMES)}), not an "
                            f"existing path, and not a Hub dataset id (org/name).{hint}")


def _builtin_key(name: str) -> str:
    """Normalise a built-in name: case-insensitive, '_' for '-', a few aliases."""
    key = name.strip().lower().replace("_", "-")
    return _NAME_ALIASES.get(key.replace("-", ""), key)


def _display_name(source: str) -> str:
    """Short name of a path or Hub id for ``ImageSet.name``: the folder or file stem, or the id itself."""
    if (match := _HUB_ID.match(source)) and not Path(source).exists():
        return match.group(1)
    path = Path(source.split("*")[0] or ".").expanduser()  # a glob: its fixed leading part
    path = path.resolve() if path.name in ("", ".", "..") else path
    return path.stem if path.suffix == ".parquet" else path.name


def _resolve_split(split: str, available: Sequence[str], source: str) -> str:
    """The split of ``available`` that ``split`` names: itself, or a held-out alias (test <-> validation/val)."""
    if split in available:
        return split
    lowered = {s.lower(): s for s in available}
    if split.lower() in lowered:
        return lowered[split.lower()]
    if split.lower() in _HELD_OUT_SPLITS:
        for alias in _HELD_OUT_SPLITS:
            if alias in lowered:
                return lowered[alias]
    raise DataNotFoundError(f"{source} has no split {split!r}; available splits: {', '.join(available)}"
                            f" ('test', 'val' and 'validation' name whichever held-out split there is)")


# ---- subsets and splits ------------------------------------------------------------------------------------------


def _class_groups(labels: np.ndarray) -> list[np.ndarray]:
    """(N,) labels -> one ascending array of row indices per distinct label (-1 counts as a label)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(counts)[:-1])


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn per class in proportion to the class sizes (largest remainders get the leftover rows),
    seeded; (N,) labels -> (size,) sorted row indices."""
    groups = _class_groups(labels)
    counts = np.array([len(g) for g in groups])
    exact = size * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    # Stable sort: equal remainders go to the smaller label first, so the subset does not depend on sort internals.
    quota[np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(group)[:q] for group, q in zip(groups, quota)]
    return np.sort(np.concatenate(picked))


def _stratified_split(labels: np.ndarray, test_fraction: float = _TEST_FRACTION,
                      seed: int = _FIXED_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A seeded per-class split: (N,) labels -> (train rows, test rows), both sorted, disjoint, covering all rows.
    Each class gives round(test_fraction * its size) rows to the test split."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for group in _class_groups(labels):
        shuffled = rng.permutation(group)
        n_test = int(np.floor(test_fraction * len(group) + 0.5))
        test.append(shuffled[:n_test])
        train.append(shuffled[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ---- built-in datasets -------------------------------------------------------------------------------------------


def _load_digits(split: str, pick: Callable) -> tuple:
    """scikit-learn's digits: 1,797 8x8 gray images, values 0..16 scaled to 0..255 -> (N, 1, 8, 8) uint8."""
    from sklearn.datasets import load_digits

    resolved = _resolve_split(split, ("train", "test"), "digits")
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    # Always the fixed seed: the test split must never change with the caller's seed.
    train_rows, test_rows = _stratified_split(labels)
    split_rows = train_rows if resolved == "train" else test_rows
    keep = pick(labels[split_rows], resolved)
    images = np.round(digits.images[split_rows[keep]] * (255 / 16)).astype(np.uint8)[:, None]
    return (torch.from_numpy(images), labels[split_rows[keep]], [str(c) for c in digits.target_names],
            split_rows[keep], resolved)


def _load_fashion_mnist(root: Path | None, split: str, pick: Callable) -> tuple:
    """Fashion-MNIST from its idx files (Debian package, or ``root``) -> (N, 1, 28, 28) uint8."""
    resolved = _resolve_split(split, ("train", "test"), "fashion-mnist")
    folder = _find_fashion_mnist(root, resolved)
    image_file, label_file = (_idx_path(folder, stem) for stem in _FASHION_MNIST_FILES[resolved])
    images, labels = _read_idx(image_file), _read_idx(label_file).astype(np.int64)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ImageInputError(f"Fashion-MNIST files in {folder} do not match: images {images.shape}, labels "
                              f"{labels.shape}; re-install or re-download them")
    keep = pick(labels, resolved)
    # images[keep] is a writable copy (fancy indexing), as torch.from_numpy wants
    return torch.from_numpy(images[keep][:, None]), labels[keep], FASHION_MNIST_CLASSES, keep, resolved


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The idx file ``stem`` in ``folder``, unpacked or ``.gz`` (None if neither is there)."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _find_fashion_mnist(root: Path | None, split: str) -> Path:
    """The folder holding the idx files of ``split``: the Debian folder, or ``root``, ``root/FashionMNIST/raw``
    or ``root/raw``; a DataNotFoundError naming what is missing and how to get it otherwise."""
    candidates = [FASHION_MNIST_DIR] if root is None else [root, root / "FashionMNIST" / "raw", root / "raw"]
    for folder in candidates:
        if all(_idx_path(folder, stem) for stem in _FASHION_MNIST_FILES[split]):
            return folder
    wanted = " and ".join(f"{stem}[.gz]" for stem in _FASHION_MNIST_FILES[split])
    where = ", ".join(str(c) for c in candidates)
    hint = _FASHION_MNIST_HINT.format(debian=FASHION_MNIST_DIR)
    raise DataNotFoundError(f"Fashion-MNIST {split} split not found: looked for {wanted} in {where}. {hint}")


# idx type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip-compressed or not, told by its magic bytes) into an array of its stored shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ImageInputError(f"{path} is not an idx file (magic {raw[:4].hex()}); re-install or re-download it")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ImageInputError(f"{path} is truncated or corrupt: header says {shape}, found {len(raw) - offset} "
                              f"data bytes; re-install or re-download it")
    # Native byte order; no copy for uint8 (the array is read-only, callers index it into new arrays).
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


# ---- ImageFolder trees -------------------------------------------------------------------------------------------


def _is_image_tree(root: Path) -> bool:
    """True for a folder of image files with no dataset files (parquet, arrow, a datasets README or save_to_disk
    metadata): those go to Hugging Face ``datasets`` instead."""
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file() or _has_dataset_card(root):
        return False
    has_images = False
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".arrow"):
            return False
        has_images = has_images or suffix in IMAGE_EXTENSIONS
    return has_images


def _has_dataset_card(root: Path) -> bool:
    """A README.md whose YAML header declares dataset_info or configs (a Hub dataset repository)."""
    readme = root / "README.md"
    if not readme.is_file():
        return False
    head = readme.read_text(errors="replace")[:20_000]
    return head.startswith("---") and bool(re.search(r"^(dataset_info|configs):", head, re.MULTILINE))


def _load_image_folder(root: Path, split: str, pick: Callable, image_size: int | None) -> tuple:
    """``root/<split>/<class>/*`` or ``root/<class>/*`` (then a fixed stratified 80/20 split) -> decoded images.
    Class indices are those of the sorted class-folder names over all splits, so they agree between splits."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = {p.name: p for p in subdirs if p.name.lower() in ("train", *_HELD_OUT_SPLITS)}
    if split_dirs:  # root/<split>/<class>/*; other top-level folders are ignored
        resolved = _resolve_split(split, list(split_dirs), str(root))
        class_names = sorted({c.name for d in split_dirs.values() for c in d.iterdir()
                              if c.is_dir() and not c.name.startswith(".")})
        files, labels = _scan_images(split_dirs[resolved], class_names)
    else:  # root/<class>/*: images directly in root are unlabelled (-1)
        resolved = _resolve_split(split, ("train", "test"), str(root))
        class_names = [p.name for p in subdirs]
        files, labels = _scan_images(root, class_names)
        train_rows, test_rows = _stratified_split(labels)
        rows = train_rows if resolved == "train" else test_rows
        files, labels = [files[i] for i in rows], labels[rows]
    keep = pick(labels, resolved)
    images = _decode_images((files[i] for i in keep), len(keep), f"decoding {root.name}:{resolved}", image_size)
    # Rows in the whole tree for root/<class> (the split is ours), in the split folder otherwise.
    return images, labels[keep], class_names, (keep if split_dirs else rows[keep]), resolved


def _scan_images(folder: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files under ``folder`` sorted by relative path, labelled by their first folder (-1 if none)."""
    index = {name: i for i, name in enumerate(class_names)}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    labels = [index.get(p.relative_to(folder).parts[0], -1) if len(p.relative_to(folder).parts) > 1 else -1
              for p in files]
    return files, np.asarray(labels, dtype=np.int64)


# ---- Hugging Face datasets ---------------------------------------------------------------------------------------


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("reading Hugging Face datasets folders, parquet files or Hub ids needs the `datasets` "
                          "package: pip install 'datasets>=4'") from None
    return datasets


@contextlib.contextmanager
def _arrow_cache(cache_dir: str | Path | None) -> Iterator[str]:
    """The folder for ``datasets``' Arrow files: ``cache_dir``, or a temporary one removed on exit (the images are
    decoded into memory before that, so the memory-mapped Arrow files are no longer needed)."""
    if cache_dir is not None:
        yield os.fspath(cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="hybridzoo-datasets-") as tmp:
        yield tmp


@contextlib.contextmanager
def _quiet_datasets(quiet: bool = True) -> Iterator[None]:
    """Hide ``datasets``' per-split progress bars (converting local parquet takes well under a second), then
    restore the caller's setting."""
    datasets = _import_datasets()
    was_enabled = datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and was_enabled:
            datasets.enable_progress_bars()


def _load_hf_local(source: str, split: str, pick: Callable, cache_dir, image_size) -> tuple:
    """A local datasets folder, a save_to_disk folder, or parquet file(s) (a path or a glob)."""
    datasets = _import_datasets()
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        # save_to_disk output: memory-mapped where it is, nothing is written.
        loaded = datasets.load_from_disk(os.fspath(path))
        splits = loaded if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or "train"): loaded}
        resolved = _resolve_split(split, list(splits), source)
        return _decode_hf(splits[resolved], resolved, pick, source, image_size)
    if path.is_dir():
        builder_args = {"path": os.fspath(path)}
    else:  # .parquet file(s): one "train" split, as in datasets
        builder_args = {"path": "parquet", "data_files": os.fspath(path) if path.exists() else source}
    with _arrow_cache(cache_dir) as cache, _quiet_datasets():
        try:
            builder = datasets.load_dataset_builder(**builder_args, cache_dir=cache)
        except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
            raise DataNotFoundError(f"no readable dataset at {source}: {err}. Expected a Hugging Face datasets "
                                    f"folder (parquet files + README.md), .parquet file(s), or an ImageFolder "
                                    f"tree") from None
        return _decode_hf_builder(builder, split, pick, source, image_size)


def _load_hf_hub(repo_id: str, split: str, pick: Callable, cache_dir, image_size) -> tuple:
    """A Hub dataset id: downloaded by ``datasets`` into ``cache_dir`` (a temporary folder by default)."""
    from huggingface_hub import constants

    fix = (f"On a machine with internet, download it with `hf download {repo_id} --repo-type dataset --local-dir "
           f"DIR` (or datasets.load_dataset({repo_id!r}).save_to_disk(DIR)), copy DIR here and pass its path; or "
           f"pass cache_dir= where it was loaded before, with HF_HUB_OFFLINE=1.")
    # datasets retries an unreachable Hub for about 20 s before it gives up: probe the endpoint once instead.
    offline_cache = constants.HF_HUB_OFFLINE and cache_dir is not None
    if not offline_cache and not _hub_reachable():
        raise DataNotFoundError(f"cannot load Hub dataset {repo_id!r}: no network connection to "
                                f"{constants.ENDPOINT} (or HF_HUB_OFFLINE is set), and {repo_id} is not a local "
                                f"folder. {fix}")
    datasets = _import_datasets()
    with _arrow_cache(cache_dir) as cache, _quiet_datasets(quiet=False):
        try:
            builder = datasets.load_dataset_builder(repo_id, cache_dir=cache)
        except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
            raise DataNotFoundError(f"cannot load Hub dataset {repo_id!r}: {err}. {fix}") from None
        return _decode_hf_builder(builder, split, pick, repo_id, image_size)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens (always True behind a proxy, which cannot be probed)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _decode_hf_builder(builder, split: str, pick: Callable, source: str, image_size) -> tuple:
    """Prepare the builder's Arrow files (all splits, in its cache_dir) and decode the rows ``pick`` keeps."""
    available = list(builder.config.data_files or builder.info.splits or ["train"])
    resolved = _resolve_split(split, available, source)
    builder.download_and_prepare()
    return _decode_hf(builder.as_dataset(split=resolved), resolved, pick, source, image_size)


def _decode_hf(ds, resolved: str, pick: Callable, source: str, image_size) -> tuple:
    """datasets.Dataset -> (images (M, C, H, W) uint8, labels (M,), class names, kept rows, split).

    The image column is the first ``Image`` feature (or a column named image/img); labels come from the first
    ``ClassLabel`` (whose names become the class names) or a column named label/labels; -1 where missing.
    """
    import pyarrow.compute as pc
    datasets = _import_datasets()

    if ds._indices is not None:  # a selected/shuffled Dataset: materialise the row order in memory
        ds = ds.flatten_indices(keep_in_memory=True)
    features = ds.features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    image_col = image_col or next((k for k in ("image", "img") if k in features), None)
    if image_col is None:
        raise ImageInputError(f"{source} has no image column (columns: {', '.join(features)}); hybridzoo reads "
                              f"an Image feature or a column named 'image'")
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((k for k in ("label", "labels") if k in features), None)
    class_names = list(features[label_col].names) if isinstance(features.get(label_col),
                                                                datasets.ClassLabel) else []
    if label_col is None:
        labels = np.full(len(ds), -1, dtype=np.int64)
    else:
        labels = pc.fill_null(ds.data.column(label_col), -1).to_numpy().astype(np.int64)
    if class_names and len(labels) and labels.max() >= len(class_names):
        # e.g. datasets globbing the parquet files of several datasets under a parent folder into one split
        raise ImageInputError(f"{source}:{resolved} has labels up to {labels.max()} but {len(class_names)} class "
                              f"names: does the folder mix several datasets? Point to one dataset's folder")
    keep = pick(labels, resolved)
    column = ds.data.column(image_col).take(keep)
    images = _decode_images(_arrow_images(column), len(keep), f"decoding {_display_name(source)}:{resolved}",
                            image_size)
    return images, labels[keep], class_names, keep, resolved


def _arrow_images(column) -> Iterator[bytes | str]:
    """Encoded images of an Arrow image column, chunk by chunk: the bytes, or the file path where bytes are null
    (datasets' Image feature stores struct<bytes, path>; a plain binary column holds the bytes)."""
    for chunk in column.chunks:
        if hasattr(chunk, "field"):
            blobs, paths = chunk.field("bytes").to_pylist(), chunk.field("path").to_pylist()
            yield from (b if b is not None else p for b, p in zip(blobs, paths))
        else:
            yield from chunk.to_pylist()


# ---- decoding ----------------------------------------------------------------------------------------------------


def _decode_images(items: Iterable[bytes | str | Path], count: int, desc: str,
                   image_size: int | None = None) -> torch.Tensor:
    """Decode ``count`` encoded images (bytes or file paths) with PIL into (count, C, H, W) uint8.

    C is 1 if every image is gray, else 3 (gray images among colour ones are repeated to 3 channels). Serial on
    purpose: a 32x32 JPEG decodes in ~0.1 ms, mostly Python overhead under the GIL; two threads were slower and a
    two-process pool only ~25% faster on this 2-core machine.
    """
    out = None  # (count, H, W, C), allocated at the first image
    for i, item in enumerate(tqdm(items, total=count, desc=desc, unit="img", disable=count < _PROGRESS_MIN or None)):
        array = _decode_one(item)
        if image_size is not None:
            # torch.tensor copies: PIL's array is read-only
            array = _fit_size(torch.tensor(array).permute(2, 0, 1), image_size).permute(1, 2, 0).numpy()
        if out is None:
            out = np.empty((count, *array.shape), dtype=np.uint8)
        if array.shape[:2] != out.shape[1:3]:
            where = item if isinstance(item, (str, Path)) else f"image {i}"
            raise ImageInputError(f"{where} is {array.shape[1]}x{array.shape[0]} but earlier images are "
                                  f"{out.shape[2]}x{out.shape[1]}: an ImageSet is one tensor; pass image_size= to "
                                  f"resize and centre-crop every image to one size")
        if array.shape[2] > out.shape[3]:  # the first colour image after gray ones: the set becomes RGB (once)
            out = np.repeat(out, 3, axis=3)
        out[i] = array  # a gray (H, W, 1) image in a colour set broadcasts to 3 equal channels
    if out is None:
        raise DataNotFoundError(f"{desc}: no images to decode")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _decode_one(item: bytes | str | Path) -> np.ndarray:
    """One encoded image -> (H, W, C) uint8 with C = 1 (gray modes) or 3 (every other mode, via RGB)."""
    try:
        with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
            if image.mode not in ("L", "RGB"):
                # Note: PIL clips 16-bit/float gray to 0..255 when converting to "L" rather than rescaling.
                image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        where = item if isinstance(item, (str, Path)) else f"{len(item)} bytes of image data"
        raise ImageInputError(f"cannot decode {where}: {err}") from None
    return array[:, :, None] if array.ndim == 2 else array


def _fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, H, W) uint8 -> (..., C, size, size): shorter side to ``size`` (antialiased), then centre crop."""
    return TF.center_crop(TF.resize(images, size, antialias=True), [size, size])


# ----------------------------------------------------------------------------------------------------------------
# Transforms


class _ToChannels(torch.nn.Module):
    """(..., C, H, W) -> (..., in_chans, H, W): gray repeated to 3 channels, RGB converted to 1 (luma)."""

    def __init__(self, in_chans: int):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3; got {in_chans}")
        self.in_chans = in_chans

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[-3]
        if channels == self.in_chans:
            return image
        if channels == 1:
            return image.repeat_interleave(3, dim=-3)  # a real copy: later ops may work in place
        if channels == 3:
            return TF.rgb_to_grayscale(image, num_output_channels=1)
        raise ImageInputError(f"images with {channels} channels cannot be made {self.in_chans}-channel; "
                              f"expected 1 or 3 channels")

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}"


def _size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(s) for s in image_size)
    return height, width


def _normalize(mean: Sequence[float], std: Sequence[float], in_chans: int) -> v2.Normalize:
    """Normalize whose mean/std have 1 or ``in_chans`` entries (3 would silently broadcast 1 channel to 3)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
        raise ValueError(f"mean/std need 1 or in_chans={in_chans} values; got {len(mean)} and {len(std)}")
    return v2.Normalize(mean, std)


def _blur_kernel(size: int) -> int:
    """SimCLR's Gaussian blur kernel: about 10% of the image side, odd, at least 3 (23 for 224 px)."""
    kernel = max(3, int(round(0.1 * size)))
    return kernel if kernel % 2 else kernel + 1


def simclr_transform(image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                     in_chans: int = 3, *, crop_scale: tuple[float, float] = (0.2, 1.0), flip: bool = True,
                     color_jitter: float = 0.4, grayscale_p: float = 0.2, blur: bool | None = None) -> v2.Compose:
    """SimCLR augmentation of one uint8 image (C, H, W) -> float (in_chans, size, size), normalised.

    Channels adapted to ``in_chans`` first, then RandomResizedCrop(scale=crop_scale, antialiased) -> horizontal
    flip -> ColorJitter(brightness=contrast=saturation=color_jitter, hue=color_jitter/4) with p=0.8 -> random
    grayscale (p=grayscale_p) -> Gaussian blur (kernel ~10% of the size, sigma 0.1..2, p=0.5) -> [0, 1] floats ->
    Normalize(mean, std). The colour ops apply to 3-channel inputs only. ``blur=None`` blurs from 64 px up: SimCLR
    drops blur for CIFAR-size images, where it destroys most of the signal. Randomness comes from torch's global
    generator, so ``torch.manual_seed`` makes the views reproducible. Works on a batch (N, C, H, W) too, with one
    random draw for the whole batch.
    """
    height, width = _size_hw(image_size)
    ops: list[Callable] = [_ToChannels(in_chans),
                           v2.RandomResizedCrop((height, width), scale=tuple(crop_scale), antialias=True)]
    if flip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    if in_chans == 3:
        if color_jitter > 0:
            # SimCLR's jitter of strength s is (0.8s, 0.8s, 0.8s, 0.2s); color_jitter = 0.8s, so hue = color_jitter/4
            # (CIFAR's s = 0.5 gives the defaults 0.4, 0.4, 0.4, 0.1).
            jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(0.5, color_jitter / 4))
            ops.append(v2.RandomApply([jitter], p=0.8))
        if grayscale_p > 0:
            ops.append(v2.RandomGrayscale(p=grayscale_p))  # keeps 3 channels
    if blur or (blur is None and min(height, width) >= 64):
        ops.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(min(height, width)), sigma=(0.1, 2.0))], p=0.5))
    ops += [v2.ToDtype(torch.float32, scale=True), _normalize(mean, std, in_chans)]
    return v2.Compose(ops)


def eval_transform(image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                   in_chans: int = 3) -> v2.Compose:
    """Deterministic preprocessing: uint8 (C, H, W) -> float (in_chans, size, size), normalised.

    Channels adapted to ``in_chans``, shorter side resized to the output size (antialiased; a no-op when the
    image already has it), centre crop (keeps the aspect ratio of non-square images), [0, 1] floats,
    Normalize(mean, std).
    """
    height, width = _size_hw(image_size)
    return v2.Compose([_ToChannels(in_chans), v2.Resize(max(height, width), antialias=True),
                       v2.CenterCrop((height, width)), v2.ToDtype(torch.float32, scale=True),
                       _normalize(mean, std, in_chans)])


def transforms_for(model, **simclr_kwargs) -> tuple[v2.Compose, v2.Compose]:
    """(two-view training transform, eval transform) for a model: input size, channels, mean and std from
    ``model.pretrained_cfg`` (a HybridModel or any timm model); ``simclr_kwargs`` go to :func:`simclr_transform`.
    """
    cfg = model.pretrained_cfg
    in_chans, height, width = (int(v) for v in cfg["input_size"])
    size = height if height == width else (height, width)
    return (simclr_transform(size, cfg["mean"], cfg["std"], in_chans, **simclr_kwargs),
            eval_transform(size, cfg["mean"], cfg["std"], in_chans))


# ----------------------------------------------------------------------------------------------------------------
# Datasets


class TransformedDataset(Dataset):
    """Items ``(transform(image), label)`` of an ImageSet: image (C, H, W) uint8 in, whatever the transform gives
    out (the raw uint8 image without one); label an int (-1 if unlabelled)."""

    def __init__(self, image_set: ImageSet, transform: Callable | None = None):
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set)

    def _image(self, index: int) -> torch.Tensor:
        return self.image_set.images[index]

    def __getitem__(self, index: int):
        image = self._image(index)
        return (self.transform(image) if self.transform else image), int(self.image_set.labels[index])


class TwoViewDataset(TransformedDataset):
    """Items ``(view1, view2, label)``: two independent draws of ``transform`` on the same image (SimCLR pairs;
    SupCon uses the label)."""

    def __init__(self, image_set: ImageSet, transform: Callable):
        super().__init__(image_set, transform)

    def __getitem__(self, index: int):
        image = self._image(index)
        return self.transform(image), self.transform(image), int(self.image_set.labels[index])

"""hybridzoo.data: image sets (digits, Fashion-MNIST, Hugging Face folders, ImageFolder trees, Hub ids), their
errors, the SimCLR / eval transforms and the datasets built on them. Large sets are read with max_samples."""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import hybridzoo.data as data
from hybridzoo.data import (DATASET_NAMES, FASHION_MNIST_CLASSES, ImageSet, TransformedDataset, TwoViewDataset,
                            eval_transform, load_image_set, simclr_transform, split_validation, transforms_for)
from hybridzoo.errors import DataNotFoundError, HybridZooError, ImageInputError

SHARED_DATA = Path(os.environ.get("HYBRIDZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR10 = SHARED_DATA / "cifar10"
TINY_IMAGENET = SHARED_DATA / "tiny-imagenet-32"
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Hugging Face `datasets` reads the parquet folders (and brings pyarrow).
HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
# CI installs every dataset (.ci/run): there a missing one must fail the run, not skip its tests silently.
IN_CI = bool(os.environ.get("CI"))
needs_cifar10 = pytest.mark.skipif(not IN_CI and not (CIFAR10.is_dir() and HAVE_DATASETS),
                                   reason=f"needs the `datasets` package and the CIFAR-10 folder {CIFAR10}")
needs_tiny = pytest.mark.skipif(not IN_CI and not (TINY_IMAGENET.is_dir() and HAVE_DATASETS),
                                reason=f"needs the `datasets` package and the Tiny-ImageNet folder {TINY_IMAGENET}")
needs_fmnist = pytest.mark.skipif(not IN_CI and not (FMNIST_DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist is not installed")


@pytest.fixture
def hf_default_cache(monkeypatch, tmp_path):
    """Point datasets' default cache and tempfile's folder into tmp_path; yield both to check they stay empty."""
    datasets = pytest.importorskip("datasets")
    default_cache, temp = tmp_path / "hf_datasets_default", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", default_cache)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    yield default_cache, temp
    assert not default_cache.exists(), "datasets wrote to its default cache"
    assert list(temp.iterdir()) == [], "the temporary Arrow cache was not removed"


# ---- digits --------------------------------------------------------------------------------------------------------


def test_digits_shapes_labels_and_pixels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = load_image_set("digits", "train"), load_image_set("digits", "test")
    assert (train.name, test.name) == ("digits:train", "digits:test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    for part in (train, test):
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
        assert part.class_names == [str(d) for d in range(10)] and part.num_classes == 10
        # 0..16 scaled to 0..255, rows traceable to load_digits()
        expected = np.round(digits.images[part.indices.numpy()] * 255 / 16).astype(np.uint8)
        assert np.array_equal(part.images[:, 0].numpy(), expected)
        assert np.array_equal(part.labels.numpy(), digits.target[part.indices.numpy()])
        # stratified 80/20: every class gives about a fifth of its images to the test split
    counts_test, counts_all = test.labels.bincount(minlength=10), torch.from_numpy(np.bincount(digits.target))
    assert ((counts_test - 0.2 * counts_all).abs() <= 0.5).all()
    assert train.images.max() == 255 and train.images.min() == 0
    assert "digits:train" in repr(train) and "1438" in repr(train)


def test_digits_split_is_disjoint_deterministic_and_seed_independent():
    train, test = load_image_set("digits", "train"), load_image_set("digits", "test")
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(1797))
    assert torch.equal(load_image_set("digits", "test", seed=123).indices, test.indices)
    assert torch.equal(load_image_set("digits", "train", seed=7).indices, train.indices)
    assert torch.equal(load_image_set("digits", "validation").images, test.images)  # alias of the held-out split


def test_max_samples_is_stratified_seeded_on_train_and_fixed_on_test():
    a = load_image_set("digits", "train", max_samples=100, seed=0)
    assert len(a) == 100 and a.labels.bincount(minlength=10).tolist() == [10] * 10
    assert torch.equal(load_image_set("digits", "train", max_samples=100, seed=0).indices, a.indices)
    assert not torch.equal(load_image_set("digits", "train", max_samples=100, seed=1).indices, a.indices)
    assert (a.indices.diff() > 0).all()  # source order
    t0 = load_image_set("digits", "test", max_samples=50, seed=0)
    assert torch.equal(load_image_set("digits", "test", max_samples=50, seed=99).indices, t0.indices)
    assert set(t0.indices.tolist()) <= set(load_image_set("digits", "test").indices.tolist())
    assert len(load_image_set("digits", "test", max_samples=10_000)) == 359  # more than there is: all of it
    with pytest.raises(ValueError, match="max_samples"):
        load_image_set("digits", max_samples=0)


def test_split_validation_is_stratified_disjoint_fixed_and_keeps_source_rows():
    train = load_image_set("digits", "train", max_samples=500, seed=3)
    fit, validation = split_validation(train, 0.2)
    assert len(fit) + len(validation) == len(train)
    assert set(fit.indices.tolist()).isdisjoint(validation.indices.tolist())
    assert sorted(fit.indices.tolist() + validation.indices.tolist()) == train.indices.tolist()
    per_class = train.labels.bincount(minlength=10)
    assert validation.labels.bincount(minlength=10).tolist() == [int(n * 0.2 + 0.5) for n in per_class.tolist()]
    for part in (fit, validation):  # images and labels still belong to the same source rows
        rows = [train.indices.tolist().index(i) for i in part.indices.tolist()]
        assert torch.equal(part.images, train.images[rows]) and torch.equal(part.labels, train.labels[rows])
    assert torch.equal(split_validation(train, 0.2)[1].indices, validation.indices)  # same split every call
    assert validation.name == "digits:train-validation" and fit.name == "digits:train-fit"
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            split_validation(train, bad)
    with pytest.raises(ValueError, match="empty split"):
        split_validation(train.select(torch.arange(10)), 0.01)


def test_stratified_subset_allocates_by_class_size():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10 + [-1] * 100)  # -1 (unlabelled) is a group of its own
    rows = data._stratified_subset(labels, 40, seed=3)
    assert len(rows) == len(set(rows.tolist())) == 40
    assert np.bincount(labels[rows] + 1).tolist() == [20, 14, 4, 2]


# ---- Fashion-MNIST ---------------------------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_debian_files_counts_and_classes():
    train = load_image_set("fashion-mnist", "train")
    test = load_image_set("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.class_names == list(FASHION_MNIST_CLASSES) and train.class_names[9] == "Ankle boot"
    assert train.name == "fashion-mnist:train" and train.images.dtype == torch.uint8
    small = load_image_set("fashion_mnist", "test", max_samples=200)  # '_' spelling; 20 per class
    assert small.labels.bincount().tolist() == [20] * 10
    assert torch.equal(small.images, test.images[small.indices])


@needs_fmnist
def test_fashion_mnist_matches_torchvision_reader(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout, unpacked files, test split only
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(gzip.decompress((FMNIST_DEBIAN / f"{stem}.gz").read_bytes()))
    ours = load_image_set(f"fashion-mnist:{tmp_path}", "test")
    assert torch.equal(ours.images[:, 0], read_image_file(str(raw / "t10k-images-idx3-ubyte")))
    assert torch.equal(ours.labels, read_label_file(str(raw / "t10k-labels-idx1-ubyte")).long())
    # a plain folder holding the .gz files gives the same
    flat = tmp_path / "flat"
    flat.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (flat / f"{stem}.gz").symlink_to(FMNIST_DEBIAN / f"{stem}.gz")
    assert torch.equal(load_image_set(f"fashion-mnist:{flat}", "test", max_samples=300).images,
                       ours.images[load_image_set(f"fashion-mnist:{flat}", "test", max_samples=300).indices])


def test_idx_parser_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")  # says 5 bytes, has 2
    with pytest.raises(ImageInputError, match="truncated"):
        data._read_idx(bad)
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ImageInputError, match="not an idx file"):
        data._read_idx(bad)


# ---- Hugging Face folders ------------------------------------------------------------------------------------------


@needs_cifar10
def test_cifar10_folder_subset_matches_pil_decode_of_same_rows(hf_default_cache):
    import pyarrow.parquet as pq

    subset = load_image_set(CIFAR10, "test", max_samples=300)
    assert subset.name == "cifar10:test" and subset.images.shape == (300, 3, 32, 32)
    assert subset.class_names == CIFAR10_CLASSES
    assert subset.labels.min() >= 0 and subset.labels.max() <= 9
    assert subset.labels.bincount().tolist() == [30] * 10
    table = pq.read_table(CIFAR10 / "data" / "test-00000-of-00001.parquet")
    rows = subset.indices.tolist()
    for j in (0, 137, 299):
        encoded = table.column("image")[rows[j]]["bytes"].as_py()
        expected = torch.from_numpy(np.array(Image.open(io.BytesIO(encoded)).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(subset.images[j], expected)
        assert subset.labels[j] == table.column("label")[rows[j]].as_py()
    assert torch.equal(load_image_set(CIFAR10, "validation", max_samples=300).indices, subset.indices)


@needs_cifar10
def test_parquet_file_source_and_kept_cache_dir(tmp_path):
    file = CIFAR10 / "data" / "test-00000-of-00001.parquet"
    subset = load_image_set(file, "train", max_samples=20, cache_dir=tmp_path / "cache")  # a lone file: "train"
    assert subset.name == "test-00000-of-00001:train" and len(subset) == 20
    assert subset.class_names == CIFAR10_CLASSES  # the ClassLabel travels in the parquet schema metadata
    assert any((tmp_path / "cache").rglob("*.arrow"))  # an explicit cache_dir is used and kept
    with pytest.raises(DataNotFoundError, match="available splits: train"):
        load_image_set(file, "test", cache_dir=tmp_path / "cache")


@needs_tiny
def test_tiny_imagenet_validation_subset(hf_default_cache):
    val = load_image_set(TINY_IMAGENET, "validation", max_samples=400)
    assert val.name == "tiny-imagenet-32:validation" and val.images.shape == (400, 3, 32, 32)
    assert len(val.class_names) == 200 and all(n.startswith("n") for n in val.class_names)
    assert val.labels.bincount(minlength=200).tolist() == [2] * 200  # 50 per class -> 2 per class
    hierarchy = json.loads((TINY_IMAGENET / "hierarchy.json").read_text())
    assert val.class_names == [entry["wnid"] for entry in sorted(hierarchy, key=lambda e: e["label"])]
    # "test" names the held-out split, which Tiny-ImageNet calls validation
    assert torch.equal(load_image_set(TINY_IMAGENET, "test", max_samples=400).images, val.images)


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)) for i in range(5)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, -1]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_set(tmp_path / "saved", "test")
    assert loaded.class_names == ["a", "b"] and loaded.labels.tolist() == [0, 1, 0, 1, -1]
    assert loaded.images.shape == (5, 3, 6, 6) and loaded.images[3].unique().tolist() == [120]


# ---- ImageFolder trees ---------------------------------------------------------------------------------------------


def _write_png(path: Path, value: int, size=(6, 6), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    Image.fromarray(np.full((*size, channels), value, np.uint8).squeeze(-1) if channels == 1 else
                    np.full((*size, 3), value, np.uint8), mode).save(path)


def test_image_folder_with_split_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                _write_png(tmp_path / split / cls / f"{i}.png", 10 * c + i)
    # gray images before and after colour ones: repeated to RGB either way; RGBA and palette images -> RGB
    _write_png(tmp_path / "train" / "bird" / "0.png", 200, mode="L")
    _write_png(tmp_path / "train" / "dog" / "7.png", 77, mode="L")
    Image.fromarray(np.full((6, 6, 4), 90, np.uint8), "RGBA").save(tmp_path / "train" / "cat" / "8.png")
    palette = Image.fromarray(np.full((6, 6, 3), 60, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "train" / "cat" / "9.png")
    train, val = load_image_set(tmp_path, "train"), load_image_set(tmp_path, "test")  # "test" -> val/
    assert train.class_names == val.class_names == ["bird", "cat", "dog"]  # union over splits, sorted
    assert val.name == f"{tmp_path.name}:val" and len(val) == 4 and train.images.shape == (10, 3, 6, 6)
    assert train.labels.tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert [im.unique().tolist() for im in train.images] == [[200], [0], [1], [2], [90], [60], [10], [11], [12], [77]]
    with pytest.raises(DataNotFoundError, match=r"no split 'unlabeled'; available splits: train, val"):
        load_image_set(tmp_path, "unlabeled")


def test_image_folder_with_class_folders_is_split_80_20(tmp_path):
    for c, cls in enumerate(("a", "b")):
        for i in range(10):
            _write_png(tmp_path / cls / f"{i:02d}.png", 20 * c + i, mode="L")
    train, test = load_image_set(tmp_path, "train"), load_image_set(tmp_path, "test")
    assert train.images.shape == (16, 1, 6, 6) and test.images.shape == (4, 1, 6, 6)  # gray stays 1 channel
    assert test.labels.bincount().tolist() == [2, 2]
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(20))
    # files sorted a/00..a/09, b/00..b/09: row r holds value 20*(r // 10) + r % 10
    assert [int(im.max()) for im in test.images] == [20 * (r // 10) + r % 10 for r in test.indices.tolist()]
    assert torch.equal(load_image_set(tmp_path, "test", seed=5).indices, test.indices)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    _write_png(tmp_path / "a" / "0.png", 10, size=(6, 6))
    _write_png(tmp_path / "a" / "1.png", 10, size=(8, 12))
    _write_png(tmp_path / "b" / "0.png", 10, size=(6, 6))
    _write_png(tmp_path / "b" / "1.png", 10, size=(6, 6))
    with pytest.raises(ImageInputError, match="image_size"):
        load_image_set(tmp_path, "train")
    fitted = load_image_set(tmp_path, "train", image_size=4)
    assert fitted.images.shape == (4, 3, 4, 4)  # 2 per class: round(0.2 * 2) = 0 go to the test split
    assert load_image_set("digits", "test", image_size=16).images.shape == (359, 1, 16, 16)


# ---- errors ----------------------------------------------------------------------------------------------------------


def _raises(match: str, *args, **kwargs) -> DataNotFoundError:
    with pytest.raises(DataNotFoundError, match=match) as info:
        load_image_set(*args, **kwargs)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, HybridZooError)
    return info.value


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    err = _raises("Fashion-MNIST train split not found", "fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in str(err)
    assert "torchvision.datasets.FashionMNIST(ROOT, download=True)" in str(err) and "fashion-mnist:ROOT" in str(err)
    err = _raises("t10k-images-idx3-ubyte", f"fashion-mnist:{tmp_path}", "test")
    assert str(tmp_path / "FashionMNIST" / "raw") in str(err)


def test_missing_path_unknown_name_and_missing_split():
    _raises(r"no such file or folder: /nonexistent/cifar10", "/nonexistent/cifar10")
    _raises(r"no such file or folder: \./nope", "./nope")
    err = _raises(r"unknown dataset 'fashion-mnst'", "fashion-mnst")
    assert "Did you mean 'fashion-mnist'?" in str(err)
    assert "Did you mean 'digits'?" in str(_raises("unknown dataset", "digit"))
    assert "Did you mean" not in str(_raises("unknown dataset", "imagenet"))
    _raises(r"digits has no split 'unlabeled'; available splits: train, test", "digits", "unlabeled")
    _raises(r"no split 'extra'; available splits: train, test", "fashion-mnist", "extra")


@needs_cifar10
def test_hf_folder_missing_split_lists_available(hf_default_cache):
    _raises(r"cifar10 has no split 'unlabeled'; available splits: train, test", CIFAR10, "unlabeled")


def test_hub_id_offline_gives_one_clear_error(monkeypatch):
    # conftest points HF_ENDPOINT at 127.0.0.1:9, where nothing listens: the real probe fails at once.
    err = _raises(r"cannot load Hub dataset 'someone/cifar10': no network", "someone/cifar10")
    assert "hf download someone/cifar10 --repo-type dataset --local-dir DIR" in str(err)
    assert "pass its path" in str(err)
    monkeypatch.setattr(data, "_hub_reachable", lambda: False)
    _raises("no network", "hf-hub:someone/cifar10", "test")


def test_hub_id_errors_from_datasets_are_wrapped(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(data, "_hub_reachable", lambda: True)

    def unreachable(path, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset_builder", unreachable)
    err = _raises(r"cannot load Hub dataset 'someone/cifar10': Couldn't reach", "someone/cifar10",
                  cache_dir=tmp_path)
    assert "local-dir" in str(err)


@needs_cifar10
def test_hub_id_loads_through_datasets(monkeypatch, hf_default_cache):
    """The Hub path end to end, with the loader redirected to the local CIFAR-10 copy."""
    datasets = pytest.importorskip("datasets")
    real, asked = datasets.load_dataset_builder, []

    def local_builder(path, **kwargs):
        asked.append((path, kwargs))
        return real(str(CIFAR10), **kwargs)

    monkeypatch.setattr(data, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset_builder", local_builder)
    subset = load_image_set("someone/cifar10", "test", max_samples=50)
    assert subset.name == "someone/cifar10:test" and subset.class_names == CIFAR10_CLASSES and len(subset) == 50
    assert asked[0][0] == "someone/cifar10" and asked[0][1]["cache_dir"] is not None
    _raises(r"someone/cifar10 has no split 'unlabeled'; available splits: train, test", "someone/cifar10",
            "unlabeled")


@needs_cifar10
def test_nothing_is_written_to_home_cache(tmp_path):
    """A fresh interpreter with HOME in tmp_path and no HF_HOME: loading a datasets folder leaves HOME empty."""
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE")}
    env.update(HOME=str(home), TMPDIR=str(temp))
    script = (f"from hybridzoo.data import load_image_set as load\n"
              f"s = load({str(CIFAR10)!r}, 'test', max_samples=20)\n"
              f"try: load('someone/cifar10')\n"
              f"except FileNotFoundError: pass\n"
              f"print(len(s), s.images.shape[1])\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20", "3"]
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"written under HOME: {written}"
    assert sorted(p.name for p in temp.iterdir() if "hybridzoo-datasets" in p.name) == []


# ---- transforms ------------------------------------------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _random_image(channels=3, size=32) -> torch.Tensor:
    return torch.randint(0, 256, (channels, size, size), dtype=torch.uint8)


def _has(transform, kind) -> list:
    """The ops of type ``kind`` inside a v2 pipeline (Compose / RandomApply keep them in plain lists)."""
    found = [transform] if isinstance(transform, kind) else []
    for inner in getattr(transform, "transforms", []):
        found += _has(inner, kind)
    return found


def test_eval_transform_shapes_and_normalisation():
    t = eval_transform(32, MEAN, STD)
    zeros = t(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert zeros.shape == (3, 32, 32) and zeros.dtype == torch.float32
    assert torch.allclose(zeros, (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None].expand(3, 32, 32))
    white = t(torch.full((3, 32, 32), 255, dtype=torch.uint8))
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    image = _random_image()
    assert torch.allclose(t(image), (image.float() / 255 - torch.tensor(MEAN)[:, None, None])
                          / torch.tensor(STD)[:, None, None], atol=1e-6)  # same size: no resampling
    gray = t(torch.full((1, 8, 8), 255, dtype=torch.uint8))  # gray -> 3 channels, resized to 32
    assert gray.shape == (3, 32, 32) and torch.allclose(gray[:, 5, 5], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert eval_transform(16, [0.5], [0.5], in_chans=1)(_random_image()).shape == (1, 16, 16)  # RGB -> 1 channel
    assert eval_transform((24, 32), [0.5], [0.5], in_chans=1)(_random_image(1, 40)).shape == (1, 24, 32)
    with pytest.raises(ValueError, match="mean/std"):
        eval_transform(32, MEAN, STD, in_chans=1)


def test_simclr_views_differ_and_are_reproducible_with_the_seed():
    t = simclr_transform(32, MEAN, STD)
    image = _random_image()
    v1, v2_ = t(image), t(image)
    assert v1.shape == v2_.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2_)
    torch.manual_seed(11)
    a = t(image)
    torch.manual_seed(11)
    assert torch.equal(t(image), a)
    # normalised: with mean 0, std 1 the output is the [0, 1] image
    plain = simclr_transform(32, [0.0], [1.0])(image)
    assert plain.min() >= 0 and plain.max() <= 1 and plain.max() > 0.5


def test_simclr_channels_and_recipe():
    gray = simclr_transform(32, MEAN, STD)(_random_image(1, 8))
    assert gray.shape == (3, 32, 32)
    one = simclr_transform(28, [0.5], [0.5], in_chans=1)
    assert one(_random_image(3, 28)).shape == (1, 28, 28)
    assert not _has(one, v2.ColorJitter) and not _has(one, v2.RandomGrayscale)  # colour ops: 3 channels only
    full = simclr_transform(32, MEAN, STD)
    jitter = _has(full, v2.ColorJitter)[0]
    assert jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    assert _has(full, v2.RandomGrayscale)[0].p == 0.2
    assert _has(full, v2.RandomResizedCrop)[0].scale == (0.2, 1.0)
    assert not _has(simclr_transform(32, MEAN, STD, flip=False, color_jitter=0), v2.RandomHorizontalFlip)


def test_simclr_blur_depends_on_image_size():
    assert not _has(simclr_transform(32, MEAN, STD), v2.GaussianBlur)  # CIFAR size: SimCLR skips blur
    assert _has(simclr_transform(64, MEAN, STD), v2.GaussianBlur)[0].kernel_size == (7, 7)
    assert _has(simclr_transform(224, MEAN, STD), v2.GaussianBlur)[0].kernel_size == (23, 23)
    assert _has(simclr_transform(32, MEAN, STD, blur=True), v2.GaussianBlur)[0].kernel_size == (3, 3)
    assert not _has(simclr_transform(224, MEAN, STD, blur=False), v2.GaussianBlur)
    assert simclr_transform(64, MEAN, STD)(_random_image(3, 32)).shape == (3, 64, 64)


def test_transforms_for_reads_the_model_preprocessing(tiny_model_factory):
    model = tiny_model_factory("lorentz")
    train_t, eval_t = transforms_for(model, blur=True)
    cfg = model.pretrained_cfg
    assert train_t(_random_image(1, 20)).shape == tuple(cfg["input_size"])
    assert _has(train_t, v2.GaussianBlur)
    zeros = eval_t(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert torch.allclose(zeros[:, 0, 0], -torch.tensor(cfg["mean"]) / torch.tensor(cfg["std"]))
    with torch.no_grad():
        assert model.eval()(torch.stack([train_t(_random_image()), eval_t(_random_image())])).isfinite().all()
    fake = SimpleNamespace(pretrained_cfg={"input_size": (1, 24, 32), "mean": (0.5,), "std": (0.25,)})
    train_t, eval_t = transforms_for(fake)
    assert train_t(_random_image(3, 40)).shape == eval_t(_random_image(3, 40)).shape == (1, 24, 32)


# ---- datasets --------------------------------------------------------------------------------------------------------


def test_two_view_and_transformed_datasets():
    images = load_image_set("digits", "test", max_samples=40)
    two = TwoViewDataset(images, simclr_transform(16, [0.5] * 3, [0.5] * 3))
    view1, view2, label = two[3]
    assert view1.shape == view2.shape == (3, 16, 16) and not torch.equal(view1, view2)
    assert label == int(images.labels[3]) and len(two) == 40
    batch = next(iter(DataLoader(two, batch_size=8)))
    assert batch[0].shape == batch[1].shape == (8, 3, 16, 16) and batch[2].dtype == torch.int64
    assert torch.equal(batch[2], images.labels[:8])

    plain = TransformedDataset(images, eval_transform(16, [0.5], [0.5], in_chans=1))
    image, label = plain[0]
    assert image.shape == (1, 16, 16) and label == int(images.labels[0])
    raw, _ = TransformedDataset(images)[1]
    assert torch.equal(raw, images.images[1])


def test_image_set_validates_its_tensors():
    with pytest.raises(ImageInputError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), [], "x")
    with pytest.raises(ImageInputError, match="labels"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), [], "x")
    ok = ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([-1, 0]), ["a"], "x")
    assert len(ok) == 2 and ok.indices.tolist() == [0, 1]
    assert set(DATASET_NAMES) == {"digits", "fashion-mnist"}


@needs_cifar10
@needs_tiny
def test_folder_mixing_two_datasets_is_refused(tmp_path, hf_default_cache):
    """datasets globs every split-named parquet file below a folder into one split: CIFAR-10's class names with
    Tiny-ImageNet's labels up to 199 must not pass silently."""
    (tmp_path / "mix" / "a").mkdir(parents=True)
    (tmp_path / "mix" / "b").mkdir()
    (tmp_path / "mix" / "a" / "train-00000-of-00001.parquet").symlink_to(
        CIFAR10 / "data" / "train-00000-of-00001.parquet")
    (tmp_path / "mix" / "b" / "train-00000-of-00001.parquet").symlink_to(
        TINY_IMAGENET / "data" / "validation-00000-of-00001.parquet")
    with pytest.raises(ImageInputError, match="labels up to 199 but 10 class names"):
        load_image_set(tmp_path / "mix", "train", max_samples=10)


def test_missing_datasets_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install 'datasets"):
        load_image_set(tmp_path / "x.parquet")


@needs_cifar10
def test_named_folder_datasets_resolve_to_local_copies(monkeypatch, tmp_path):
    by_name = load_image_set("cifar10", "test", max_samples=20)
    by_path = load_image_set(str(CIFAR10), "test", max_samples=20)
    assert torch.equal(by_name.images, by_path.images) and by_name.class_names == CIFAR10_CLASSES
    assert by_name.name == "cifar10:test"
    (tmp_path / "tiny-imagenet-32").mkdir()
    monkeypatch.setenv("HYBRIDZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError):  # an empty folder under HYBRIDZOO_DATA_DIR takes precedence
        load_image_set("tiny-imagenet-32", "test")

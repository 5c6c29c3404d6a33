"""Tests of hybridzoo.extract: extract(), ImageFolderDataset, create_transform, save_features, and the input checks of
HybridModel. Small models only (resnet10t at 32 px, CPU), so the file runs in seconds."""
from __future__ import annotations

import io
import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import hybridzoo
from hybridzoo import ImageFolderDataset, ImageInputError, create_transform, extract, save_features

SIZE = 32


def tiny(head: str = "lorentz", **kwargs) -> hybridzoo.HybridModel:
    """A small model: resnet10t backbone, 32 px input, narrow MLP; in eval mode."""
    torch.manual_seed(0)
    kwargs.setdefault("hidden_dim", 64)
    in_chans = (kwargs.get("backbone_kwargs") or {}).get("in_chans", 3)
    return hybridzoo.create_model("resnet10t", head=head, preprocessing={"input_size": (in_chans, SIZE, SIZE)},
                                  **kwargs).eval()


@pytest.fixture(scope="module")
def lorentz_model():
    return tiny("lorentz")


def images(n: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def lorentz_constraint(points: torch.Tensor) -> torch.Tensor:
    """-x0² + |xs|² of time-first hyperboloid coordinates, computed in float64 independently of the library."""
    x = points.double()
    return -x[:, 0] ** 2 + x[:, 1:].pow(2).sum(-1)


def save_image(path, mode: str = "RGB", size=(40, 30), seed: int = 0, fmt: str | None = None):
    """Write a random image of ``mode`` to ``path`` (format from the suffix unless given)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def class_folder(tmp_path):
    """root/cat/{a.png, b.jpg}, root/dog/{c.png (grayscale), d.png (RGBA), sub/e.jpeg}, root/bird/f.png + notes.txt."""
    root = tmp_path / "classes"
    save_image(root / "dog" / "c.png", "L", seed=1)
    save_image(root / "dog" / "d.png", "RGBA", seed=2)
    save_image(root / "dog" / "sub" / "e.jpeg", "RGB", seed=3)
    save_image(root / "cat" / "b.jpg", "RGB", seed=4, size=(64, 20))
    save_image(root / "cat" / "a.png", "RGB", seed=5)
    save_image(root / "bird" / "f.PNG", "RGB", seed=6)
    (root / "bird" / "notes.txt").write_text("not an image")
    return root


# --------------------------------------------------------------------------- extract() on tensors


@pytest.mark.parametrize("head", ["lorentz", "euclidean", "hybrid", "product"])
def test_extract_tensor_matches_model_forward(head):
    model = tiny(head)
    x = images(10)
    result = extract(model, x, batch_size=4, device="cpu", return_features=True, progress=False)  # 4 ∤ 10
    assert set(result) == {"embeddings", "features"}
    with torch.no_grad():
        expected = model(x)
        expected_features = model.forward_features(x)
    emb, feats = result["embeddings"], result["features"]
    assert emb.shape == (10, model.head.out_dim) == expected.shape
    assert feats.shape == (10, model.feature_dim) == expected_features.shape
    for t in (emb, feats):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats, expected_features, rtol=1e-5, atol=1e-5)
    # Rows stay in input order across the uneven batches: each row equals the single-image forward.
    with torch.no_grad():
        torch.testing.assert_close(emb[9:], model(x[9:]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(emb[4:5], model(x[4:5]), rtol=1e-5, atol=1e-5)


def test_extract_uses_eval_mode_and_restores_training_mode():
    model = tiny("lorentz").train()
    x = images(6)
    result = extract(model, x, batch_size=3, device="cpu", progress=False)
    assert model.training, "extract must restore the model's training mode"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result["embeddings"], model(x), rtol=1e-5, atol=1e-5)
    # In training mode batch norm would use the batch statistics: a different answer.
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), result["embeddings"], atol=1e-4)


def test_extract_results_are_ordinary_tensors(lorentz_model):
    """The outputs can be fed to autograd (e.g. a linear probe), so they must not be inference tensors."""
    result = extract(lorentz_model, images(5), device="cpu", return_features=True, progress=False)
    for t in result.values():
        assert not t.is_inference() and not t.requires_grad
    probe = torch.nn.Linear(result["features"].shape[1], 3)
    loss = torch.nn.functional.cross_entropy(probe(result["features"]), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert probe.weight.grad is not None


def test_extract_lorentz_points_on_manifold(lorentz_model):
    emb = extract(lorentz_model, images(7), batch_size=3, device="cpu", progress=False)["embeddings"]
    c = lorentz_model.geometry.curvature.item()
    assert emb.shape == (7, 129)
    assert (emb[:, 0] > 0).all()
    torch.testing.assert_close(lorentz_constraint(emb), torch.full((7,), -1 / c, dtype=torch.float64),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("head", ["lorentz", "product"])
def test_extract_bf16_amp(head):
    # alpha_init=1 (fixed) pushes the points away from the origin, so the manifold check is not trivial.
    if head == "lorentz":
        model = tiny(head, alpha_init=1.0, learn_alpha=False, curvature=0.5)
    else:
        model = tiny(head)
    x = images(9, seed=3)
    ref = extract(model, x, batch_size=4, device="cpu", return_features=True, progress=False)
    low = extract(model, x, batch_size=4, device="cpu", amp="bf16", return_features=True, progress=False)
    for key in ("embeddings", "features"):
        assert low[key].dtype == torch.float32 and low[key].device.type == "cpu"
        assert torch.isfinite(low[key]).all()
        assert low[key].shape == ref[key].shape
    # bf16 has ~3 significant digits: close, but not equal.
    torch.testing.assert_close(low["features"], ref["features"], rtol=0.05, atol=0.05)
    torch.testing.assert_close(low["embeddings"], ref["embeddings"], rtol=0.05, atol=0.05)
    if head == "lorentz":
        c = model.geometry.curvature.item()
        assert c == pytest.approx(0.5)
        assert (low["embeddings"][:, 1:].norm(dim=-1) > 0.3).any(), "points should not all sit at the origin"
        constraint = lorentz_constraint(low["embeddings"])
        torch.testing.assert_close(constraint, torch.full_like(constraint, -1 / c), rtol=1e-5, atol=1e-4)
    else:
        # Every factor of the product point lies on its own manifold, to fp32 accuracy.
        for geometry, part in zip(model.geometry.factors, model.geometry.split(low["embeddings"])):
            assert geometry.manifold_error(part).abs().max().item() < 1e-4


def test_extract_rejects_unknown_amp(lorentz_model):
    with pytest.raises(ValueError, match="amp"):
        extract(lorentz_model, images(2), device="cpu", amp="fp8", progress=False)


def test_extract_checks_tensor_input_up_front(lorentz_model):
    with pytest.raises(ImageInputError, match="float"):
        extract(lorentz_model, (images(3) * 50).clamp(0, 255).to(torch.uint8), device="cpu", progress=False)
    with pytest.raises(ImageInputError, match="permute"):
        extract(lorentz_model, images(3).permute(0, 2, 3, 1), device="cpu", progress=False)


def test_extract_empty_input_raises(lorentz_model):
    with pytest.raises(ImageInputError, match="empty"):
        extract(lorentz_model, [], device="cpu", progress=False)


# --------------------------------------------------------------------------- extract() on datasets and loaders


def test_extract_dataloader_with_labels(lorentz_model):
    x, y = images(11, seed=4), torch.arange(11) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    result = extract(lorentz_model, loader, device="cpu", return_features=True, progress=False)
    assert set(result) == {"embeddings", "features", "labels"}
    assert torch.equal(result["labels"], y)
    with torch.no_grad():
        torch.testing.assert_close(result["embeddings"], lorentz_model(x), rtol=1e-5, atol=1e-5)


def test_extract_dataset_and_dict_batches(lorentz_model):
    x, y = images(5, seed=5), torch.tensor([4, 3, 2, 1, 0])
    from_dataset = extract(lorentz_model, TensorDataset(x, y), batch_size=2, device="cpu", progress=False)
    assert torch.equal(from_dataset["labels"], y)
    dict_batches = [{"image": x[:3], "label": y[:3]}, {"pixel_values": x[3:], "labels": y[3:]}]
    from_dicts = extract(lorentz_model, dict_batches, device="cpu", progress=False)
    assert torch.equal(from_dicts["labels"], y)
    torch.testing.assert_close(from_dicts["embeddings"], from_dataset["embeddings"], rtol=1e-5, atol=1e-5)
    # Batches of bare tensors give no labels.
    assert "labels" not in extract(lorentz_model, [x[:2], x[2:]], device="cpu", progress=False)


def test_extract_iterable_dataset_and_generator(lorentz_model):
    x = images(5, seed=6)

    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(len(x)):
                yield x[i], i

    for data in (Stream(), DataLoader(Stream(), batch_size=2), ((x[i:i + 2], torch.arange(i, min(i + 2, 5)))
                                                                 for i in range(0, 5, 2))):
        result = extract(lorentz_model, data, batch_size=2, device="cpu", progress=True)
        assert torch.equal(result["labels"], torch.arange(5))
        assert result["embeddings"].shape == (5, 129)


def test_extract_bad_batch_type(lorentz_model):
    with pytest.raises(ImageInputError, match="batch"):
        extract(lorentz_model, [42], device="cpu", progress=False)
    with pytest.raises(ImageInputError, match="image"):
        extract(lorentz_model, [{"x": images(1)}], device="cpu", progress=False)


def test_extract_folder_path(lorentz_model, class_folder):
    result = extract(lorentz_model, class_folder, batch_size=4, device="cpu", return_features=True,
                     progress=False)
    dataset = ImageFolderDataset(class_folder, create_transform(lorentz_model))
    assert result["embeddings"].shape == (len(dataset), 129) == (6, 129)
    assert result["features"].shape == (6, lorentz_model.feature_dim)
    assert result["labels"].tolist() == dataset.labels
    # The same as preprocessing the files by hand and calling the model.
    transform = create_transform(lorentz_model)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in dataset.files])
    with torch.no_grad():
        torch.testing.assert_close(result["embeddings"], lorentz_model(batch), rtol=1e-5, atol=1e-5)
    # str paths work too.
    torch.testing.assert_close(extract(lorentz_model, str(class_folder), device="cpu", progress=False)["embeddings"],
                               result["embeddings"], rtol=1e-5, atol=1e-5)


def test_extract_folder_with_bad_file_names_it(lorentz_model, class_folder):
    bad = class_folder / "cat" / "x.png"
    bad.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(500)))
    with pytest.raises(ImageInputError, match="x.png"):
        extract(lorentz_model, class_folder, device="cpu", progress=False)


# --------------------------------------------------------------------------- ImageFolderDataset


def test_image_folder_with_classes(class_folder):
    dataset = ImageFolderDataset(class_folder)
    assert dataset.class_names == ["bird", "cat", "dog"]
    assert dataset.file_names == ["bird/f.PNG", "cat/a.png", "cat/b.jpg", "dog/c.png", "dog/d.png", "dog/sub/e.jpeg"]
    assert dataset.labels == [0, 1, 1, 2, 2, 2]
    assert len(dataset) == 6
    assert all(not os.path.isabs(name) for name in dataset.file_names)
    image, label = dataset[3]
    assert isinstance(image, Image.Image) and label == 2


def test_image_folder_flat(tmp_path):
    for i, suffix in enumerate([".png", ".jpg", ".bmp"]):
        save_image(tmp_path / f"img{i}{suffix}", seed=i)
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.class_names == []
    assert dataset.labels == [-1, -1, -1]
    assert dataset.file_names == ["img0.png", "img1.jpg", "img2.bmp"]


def test_image_folder_converts_modes_to_model_channels(class_folder):
    model = tiny("euclidean")
    transform = create_transform(model)
    dataset = ImageFolderDataset(class_folder, transform, in_chans=model.in_chans)
    for i, name in enumerate(dataset.file_names):
        image, _ = dataset[i]
        assert image.shape == (3, SIZE, SIZE), name
        assert image.dtype == torch.float32
    # Grayscale file -> 3 equal channels after undoing the per-channel normalisation.
    gray = dataset[dataset.file_names.index("dog/c.png")][0]
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    raw = gray * std + mean
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)
    # A one-channel model gets one channel from RGB and RGBA files.
    mono = tiny("euclidean", backbone_kwargs={"in_chans": 1})
    assert mono.in_chans == 1
    mono_dataset = ImageFolderDataset(class_folder, create_transform(mono), in_chans=1)
    for i in range(len(mono_dataset)):
        assert mono_dataset[i][0].shape == (1, SIZE, SIZE)
    result = extract(mono, class_folder, device="cpu", progress=False)
    assert result["embeddings"].shape == (6, 128)
    # A four-channel model gets RGBA.
    rgba = ImageFolderDataset(class_folder, in_chans=4)
    assert rgba[0][0].mode == "RGBA"
    with pytest.raises(ImageInputError, match="in_chans=2"):
        ImageFolderDataset(class_folder, in_chans=2)


def test_image_folder_random_bytes_png(tmp_path):
    save_image(tmp_path / "good.png")
    bad = tmp_path / "x.png"
    bad.write_bytes(os.urandom(300))
    dataset = ImageFolderDataset(tmp_path)
    dataset[0]  # good.png loads
    with pytest.raises(ImageInputError) as info:
        dataset[dataset.file_names.index("x.png")]
    assert str(bad) in str(info.value)
    assert "cannot read" in str(info.value)


def test_image_folder_truncated_jpeg(tmp_path):
    data = jpeg_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(ImageInputError) as info:
        dataset[0]
    assert str(bad) in str(info.value)


def test_image_folder_empty_and_missing(tmp_path):
    with pytest.raises(ImageInputError, match="no images found"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hi")
    with pytest.raises(ImageInputError, match="no images found"):
        ImageFolderDataset(tmp_path)
    missing = tmp_path / "missing"
    with pytest.raises(ImageInputError, match="does not exist"):
        ImageFolderDataset(missing)
    # A file is not a folder.
    save_image(tmp_path / "file.png")
    with pytest.raises(ImageInputError, match="not a folder"):
        ImageFolderDataset(tmp_path / "file.png")
    model = tiny("euclidean")
    with pytest.raises(ImageInputError):
        extract(model, missing, device="cpu", progress=False)


# --------------------------------------------------------------------------- input checks of the model


def test_model_rejects_single_image(lorentz_model):
    with pytest.raises(ImageInputError, match=r"unsqueeze\(0\)"):
        lorentz_model(images(1)[0])


def test_model_rejects_wrong_channel_count(lorentz_model):
    with pytest.raises(ImageInputError) as info:
        lorentz_model(torch.randn(2, 1, SIZE, SIZE))
    message = str(info.value)
    assert "3 input channel" in message and "(2, 1, 32, 32)" in message
    assert "convert" in message or "in_chans" in message


def test_model_rejects_channels_last(lorentz_model):
    with pytest.raises(ImageInputError, match=r"permute\(0, 3, 1, 2\)"):
        lorentz_model(torch.randn(2, SIZE, SIZE, 3))


def test_model_rejects_uint8(lorentz_model):
    with pytest.raises(ImageInputError) as info:
        lorentz_model(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))
    message = str(info.value)
    assert "uint8" in message and "create_transform" in message


@pytest.mark.parametrize("value", [np.zeros((1, 3, SIZE, SIZE), dtype=np.float32), [[0.0]],
                                   Image.new("RGB", (SIZE, SIZE))])
def test_model_rejects_non_tensor(lorentz_model, value):
    with pytest.raises(ImageInputError, match="torch.Tensor"):
        lorentz_model(value)


def test_model_rejects_wrong_rank(lorentz_model):
    with pytest.raises(ImageInputError, match=r"\(N, 3, H, W\)"):
        lorentz_model(torch.randn(2, 3, SIZE))
    with pytest.raises(ImageInputError, match=r"\(N, 3, H, W\)"):
        lorentz_model.forward_features(torch.randn(1, 2, 3, SIZE, SIZE))


def test_image_input_error_is_value_error():
    assert issubclass(ImageInputError, ValueError)
    assert issubclass(ImageInputError, hybridzoo.HybridZooError)


# --------------------------------------------------------------------------- save_features


def test_save_features_round_trip(tmp_path, lorentz_model, class_folder):
    dataset = ImageFolderDataset(class_folder, create_transform(lorentz_model))
    result = extract(lorentz_model, dataset, device="cpu", return_features=True, progress=False)
    out = tmp_path / "nested" / "out" / "feats.safetensors"
    written = save_features(out, result, file_names=dataset.file_names, class_names=dataset.class_names,
                            model=lorentz_model)
    assert written == out and out.is_file()
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == {"embeddings", "features", "labels"}
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), result[key])
        metadata = f.metadata()
    assert json.loads(metadata["file_names"]) == dataset.file_names
    assert json.loads(metadata["class_names"]) == ["bird", "cat", "dog"]
    assert metadata["model"] == lorentz_model.name
    geometry = json.loads(metadata["geometry"])
    assert geometry["geometry"] == "lorentz" and geometry["curvature"] == pytest.approx(1.0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["feats.safetensors"]


def test_save_features_without_names_and_overwrite(tmp_path):
    out = tmp_path / "f.safetensors"
    first = {"embeddings": torch.randn(3, 4)}
    save_features(out, first)
    second = {"embeddings": torch.randn(2, 5), "labels": torch.tensor([1, 0])}
    save_features(out, second, file_names=["ä b.png", "c/d.jpg"])
    with safe_open(str(out), framework="pt") as f:
        assert torch.equal(f.get_tensor("embeddings"), second["embeddings"])
        assert torch.equal(f.get_tensor("labels"), second["labels"])
        assert json.loads(f.metadata()["file_names"]) == ["ä b.png", "c/d.jpg"]
        assert json.loads(f.metadata()["class_names"]) == []
        assert "model" not in f.metadata()
    assert os.listdir(tmp_path) == ["f.safetensors"]


def test_save_features_is_atomic(tmp_path, monkeypatch):
    """A write that fails before the rename leaves the old file intact and no temporary file behind."""
    out = tmp_path / "f.safetensors"
    old = {"embeddings": torch.ones(2, 3)}
    save_features(out, old)
    before = out.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_features(out, {"embeddings": torch.zeros(5, 3)})
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.safetensors"]


# --------------------------------------------------------------------------- create_transform


def test_create_transform_follows_pretrained_cfg():
    model = tiny("euclidean")
    assert model.pretrained_cfg["input_size"] == (3, SIZE, SIZE)
    transform = create_transform(model)
    for size in [(100, 60), (20, 20), (SIZE, SIZE)]:
        out = transform(Image.new("RGB", size, (10, 200, 30)))
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    train = create_transform(model, is_training=True)
    assert train(Image.new("RGB", (90, 70))).shape == (3, SIZE, SIZE)


def test_create_transform_uses_mean_std_and_non_square_size():
    torch.manual_seed(0)
    model = hybridzoo.create_model("resnet10t", head="euclidean", hidden_dim=32,
                                   preprocessing={"input_size": (3, 40, 24), "mean": (0.5, 0.25, 0.0),
                                                  "std": (0.5, 0.25, 1.0)})
    out = create_transform(model)(Image.new("RGB", (77, 51), (255, 0, 255)))
    assert out.shape == (3, 40, 24)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, 1.0]), atol=1e-4, rtol=0)
    # hybridzoo.create_transform is timm's resolution of model.pretrained_cfg.
    import timm.data
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 40, 24)

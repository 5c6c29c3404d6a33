"""save_pretrained / load: bit-identical round trips, safetensors only, and clear errors for bad files."""
import json
import os

import pytest
import safetensors.torch
import torch

import hybridzoo
from hybridzoo import hub


@pytest.fixture
def trained_like(tiny_model_factory):
    """A small product model whose learnable scalars and BN statistics differ from their initial values."""
    model = tiny_model_factory("product")
    with torch.no_grad():
        model.geometry.factors[1]._curvature.log_c.fill_(0.7)
        model.head.guards[1].log_alpha.fill_(-1.3)
    model.train()(torch.randn(8, 3, 32, 32))  # moves BN running statistics
    return model.eval()


def test_save_load_is_bit_identical(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = hybridzoo.load(folder).eval()
    original, restored = trained_like.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype, key
        assert torch.equal(original[key], restored[key]), key
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(trained_like(images), loaded(images))
    assert loaded.config == trained_like.config
    assert loaded.geometry.factors[1].curvature.item() == pytest.approx(torch.tensor(0.7).exp().item())


def test_config_records_conventions_and_preprocessing(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    lorentz = config["geometry"]["factors"][1]
    assert lorentz["geometry"] == "lorentz"
    assert lorentz["curvature"] == pytest.approx(torch.tensor(0.7).exp().item(), rel=1e-6)
    assert "-c" in lorentz["convention"] and "time first" in lorentz["convention"]
    assert config["preprocessing"]["input_size"] == [3, 32, 32]
    assert config["output_dim"] == 48 + 49 + 33
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: hybridzoo\n")
    assert "geoopt.Lorentz(k=1/c)" in card and "hybridzoo.load(" in card


def test_card_lists_results_and_training(tiny_model_factory, tmp_path):
    folder = tiny_model_factory("euclidean").save_pretrained(tmp_path / "m", results={"knn_top1": 0.8125},
                                                             training={"dataset": "digits", "epochs": 3})
    card = (folder / "README.md").read_text()
    assert "| knn_top1 | 0.8125 |" in card and "| dataset | digits |" in card


def test_pretrained_false_ignores_weights(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    model = hybridzoo.load(folder, pretrained=False)
    assert model.config["head"] == trained_like.config["head"]


def test_writes_are_atomic(trained_like, tmp_path, monkeypatch):
    folder = trained_like.save_pretrained(tmp_path / "m")
    before = (folder / "model.safetensors").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        trained_like.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == before, "a failed save must not touch the old file"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"], \
        "no temporary file may be left behind"


def test_pickle_only_folder_is_refused_without_unpickling(trained_like, tmp_path, monkeypatch):
    folder = trained_like.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    torch.save(trained_like.state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called on a downloaded file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(hybridzoo.UnsafeWeightsError, match=r"pytorch_model\.bin.*safetensors only"):
        hybridzoo.load(folder)


def test_missing_weights_suggest_pretrained_false(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="pretrained=False"):
        hybridzoo.load(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "json", "empty"])
def test_corrupt_weights_are_a_clear_error(trained_like, tmp_path, damage):
    folder = trained_like.save_pretrained(tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096),
                         "json": b'{"not": "weights"}', "empty": b""}[damage])
    with pytest.raises(hybridzoo.CorruptWeightsError, match="safetensors"):
        hybridzoo.load(folder)


def test_weights_of_another_architecture_are_refused(tiny_model_factory, tmp_path):
    lorentz = tiny_model_factory("lorentz").save_pretrained(tmp_path / "lorentz")
    euclidean = tiny_model_factory("euclidean").save_pretrained(tmp_path / "euclidean")
    (lorentz / "model.safetensors").write_bytes((euclidean / "model.safetensors").read_bytes())
    with pytest.raises(hybridzoo.ArchitectureMismatchError, match="log_alpha"):
        hybridzoo.load(lorentz)
    with pytest.raises(hybridzoo.ArchitectureMismatchError, match="shape"):
        hybridzoo.load(euclidean, dim=64)  # an override that changes the architecture


def test_checksum_mismatch(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    weights = folder / "model.safetensors"
    assert hub.sha256_file(weights) == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(hybridzoo.ChecksumMismatchError, match="sha256"):
        hub.load_weights(trained_like, weights, expected_sha256="0" * 64)
    hub.load_weights(trained_like, weights, expected_sha256=hub.sha256_file(weights))


@pytest.mark.parametrize("content", [None, "{broken json", '{"architectures": ["BertModel"], "model_type": "bert"}'])
def test_bad_config_is_a_clear_error(trained_like, tmp_path, content):
    folder = trained_like.save_pretrained(tmp_path / "m")
    if content is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(content)
    with pytest.raises(hybridzoo.HybridZooError, match="config.json|hybridzoo config"):
        hybridzoo.load(folder)


def test_weights_file_is_plain_safetensors_with_metadata(trained_like, tmp_path):
    folder = trained_like.save_pretrained(tmp_path / "m")
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt" and metadata["geometry"] == "product"
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    assert set(tensors) == set(trained_like.state_dict())

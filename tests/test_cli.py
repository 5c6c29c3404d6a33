"""Tests of the ``hybridzoo`` console script (hybridzoo/cli.py): mostly in-process through ``main(argv)``, plus one
run of the installed entry point."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import hybridzoo
from hybridzoo.cli import main

ZOO_MODEL = "resnet10t-lorentz"  # small zoo model without published weights


def run_cli(capsys, *argv):
    """``hybridzoo ARGV`` in-process -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_images(root: Path, names: list[str]) -> list[str]:
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = ("RGB", "L", "RGBA")[i % 3] if path.suffix == ".png" else ("RGB", "L")[i % 2]  # no RGBA JPEG
        shape = (24 + i, 30, {"RGB": 3, "L": 1, "RGBA": 4}[mode])
        array = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode).save(path)
    return sorted(names)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    write_images(root, ["b_class/1.png", "a_class/2.jpg", "a_class/1.png", "b_class/3.png", "b_class/2.png"])
    return root


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A small trained-looking model (random weights, shifted BN stats) saved with save_pretrained."""
    torch.manual_seed(1)
    model = hybridzoo.create_model("resnet10t", head="hybrid", preprocessing={"input_size": (3, 32, 32)},
                                   hidden_dim=64, name="tiny-hybrid")
    with torch.no_grad():  # non-default buffers, so random re-initialisation could not reproduce the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("saved") / "tiny-hybrid"
    model.save_pretrained(folder)
    return model.eval(), folder


# --------------------------------------------------------------------------- list


def test_list_all(capsys):
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["model", "backbone", "head", "geometry", "weights"]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == hybridzoo.list_models()
    assert {"resnet18-lorentz", "resnet50-euclidean", ZOO_MODEL} <= set(listed)
    row = next(line for line in lines if line.startswith("resnet18-hybrid "))
    assert row.split()[1:] == ["resnet18", "euclidean×lorentz", "no"]


def test_list_pattern(capsys):
    code, out, _ = run_cli(capsys, "list", "*-lorentz")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == hybridzoo.list_models("*-lorentz")
    assert listed and all(name.endswith("-lorentz") for name in listed)
    assert "resnet18-euclidean" not in out
    code, out, _ = run_cli(capsys, "list", "no-such-*")
    assert code == 0 and out.splitlines()[1:] == []


# --------------------------------------------------------------------------- info


def test_info_no_pretrained(capsys):
    code, out, err = run_cli(capsys, "info", ZOO_MODEL, "--no-pretrained")
    assert code == 0, err
    info = json.loads(out)
    assert info["name"] == ZOO_MODEL and info["backbone"] == "resnet10t"
    assert info["geometry"]["geometry"] == "lorentz"
    assert info["geometry"]["curvature"] == pytest.approx(1.0)
    assert "time first" in info["geometry"]["convention"]
    assert info["output_dim"] == 129
    model = hybridzoo.load(ZOO_MODEL, pretrained=False)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["weights"] == {"hub_repo": None, "revision": None, "sha256": None}


def test_info_product_geometry(capsys):
    code, out, _ = run_cli(capsys, "info", "resnet10t-product", "--no-pretrained")
    assert code == 0
    geometry = json.loads(out)["geometry"]
    assert geometry["geometry"] == "product"
    assert [f["geometry"] for f in geometry["factors"]] == ["euclidean", "lorentz", "sphere"]


def test_info_unknown_model(capsys):
    code, out, err = run_cli(capsys, "info", "resnet10-lorentz", "--no-pretrained")
    assert code == 2 and out == ""
    assert err.startswith("hybridzoo info: error:")
    assert "unknown model 'resnet10-lorentz'" in err
    assert ZOO_MODEL in err  # close match suggested
    assert "Traceback" not in err


def test_info_pretrained_default_without_weights(capsys):
    code, out, err = run_cli(capsys, "info", ZOO_MODEL)
    assert code == 2 and out == ""
    assert "no published weights" in err
    assert "pretrained=False" in err and "--no-pretrained" in err


def test_info_saved_folder(capsys, saved_model):
    model, folder = saved_model
    code, out, err = run_cli(capsys, "info", folder)
    assert code == 0, err
    info = json.loads(out)
    assert info["name"] == "tiny-hybrid"
    assert [f["geometry"] for f in info["geometry"]["factors"]] == ["euclidean", "lorentz"]
    assert info["preprocessing"]["input_size"] == [3, 32, 32]
    assert "weights" not in info  # not a zoo entry


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["extract", ZOO_MODEL, "somewhere"])  # --out missing
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# --------------------------------------------------------------------------- extract


def test_extract_zoo_model_with_features(capsys, tmp_path, class_folder):
    out_file = tmp_path / "out" / "f.safetensors"
    code, out, err = run_cli(capsys, "extract", ZOO_MODEL, class_folder, "--out", out_file, "--no-pretrained",
                             "--features", "--batch-size", "2", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert f"wrote {out_file}" in out
    assert "embeddings (5, 129)" in out and "features (5, 512)" in out and "labels (5,)" in out
    tensors, metadata = read_safetensors(out_file)
    assert tensors["embeddings"].shape == (5, 129) and tensors["embeddings"].dtype == torch.float32
    assert tensors["features"].shape == (5, 512)
    assert tensors["labels"].tolist() == [0, 0, 1, 1, 1]
    assert json.loads(metadata["file_names"]) == ["a_class/1.png", "a_class/2.jpg", "b_class/1.png",
                                                  "b_class/2.png", "b_class/3.png"]
    assert json.loads(metadata["class_names"]) == ["a_class", "b_class"]
    assert metadata["model"] == ZOO_MODEL
    assert json.loads(metadata["geometry"])["geometry"] == "lorentz"
    # Points on the hyperboloid (c = 1): -x0² + |xs|² = -1.
    x = tensors["embeddings"].double()
    torch.testing.assert_close(-x[:, 0] ** 2 + x[:, 1:].pow(2).sum(-1), torch.full((5,), -1.0, dtype=torch.float64),
                               rtol=0, atol=1e-4)
    assert sorted(os.listdir(out_file.parent)) == ["f.safetensors"]


def test_extract_flat_folder_has_no_labels(capsys, tmp_path, saved_model):
    _, folder = saved_model
    images = tmp_path / "flat"
    names = write_images(images, ["z.png", "a.png", "m.jpg"])
    out_file = tmp_path / "flat.safetensors"
    code, out, err = run_cli(capsys, "extract", folder, images, "--out", out_file, "--quiet")
    assert code == 0, err
    tensors, metadata = read_safetensors(out_file)
    assert set(tensors) == {"embeddings"}  # no features without --features, no labels without classes
    assert tensors["embeddings"].shape == (3, 129)  # 64 euclidean + 65 lorentz coordinates
    assert json.loads(metadata["file_names"]) == names
    assert json.loads(metadata["class_names"]) == []


def test_extract_saved_folder_matches_python_api(capsys, tmp_path, saved_model, class_folder):
    model, folder = saved_model
    out_file = tmp_path / "cli.safetensors"
    code, _, err = run_cli(capsys, "extract", folder, class_folder, "--out", out_file, "--features", "--quiet",
                           "--batch-size", "3")
    assert code == 0, err
    tensors, metadata = read_safetensors(out_file)
    assert metadata["model"] == "tiny-hybrid"
    loaded = hybridzoo.load(folder)
    expected = hybridzoo.extract(loaded, class_folder, batch_size=3, return_features=True, progress=False)
    for key in ("embeddings", "features", "labels"):
        torch.testing.assert_close(tensors[key], expected[key], rtol=1e-5, atol=1e-5)
    # The pretrained weights were loaded: the original in-memory model gives the same points ...
    original = hybridzoo.extract(model, class_folder, batch_size=3, progress=False)
    torch.testing.assert_close(tensors["embeddings"], original["embeddings"], rtol=1e-5, atol=1e-5)
    # ... and random weights (--no-pretrained on the same folder) do not.
    random_file = tmp_path / "random.safetensors"
    code, _, err = run_cli(capsys, "extract", folder, class_folder, "--out", random_file, "--no-pretrained",
                           "--quiet")
    assert code == 0, err
    random_embeddings = read_safetensors(random_file)[0]["embeddings"]
    assert random_embeddings.shape == tensors["embeddings"].shape
    assert not torch.allclose(random_embeddings, tensors["embeddings"], atol=1e-3)


def test_extract_bf16(capsys, tmp_path, saved_model, class_folder):
    _, folder = saved_model
    ref_file, bf16_file = tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors"
    assert run_cli(capsys, "extract", folder, class_folder, "--out", ref_file, "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "extract", folder, class_folder, "--out", bf16_file, "--quiet", "--amp", "bf16")
    assert code == 0, err
    ref, low = read_safetensors(ref_file)[0]["embeddings"], read_safetensors(bf16_file)[0]["embeddings"]
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.05)


def test_extract_bad_image(capsys, tmp_path, class_folder):
    bad = class_folder / "b_class" / "x.png"
    bad.write_bytes(os.urandom(256))
    out_file = tmp_path / "never.safetensors"
    code, out, err = run_cli(capsys, "extract", ZOO_MODEL, class_folder, "--out", out_file, "--no-pretrained",
                             "--quiet")
    assert code == 2
    assert err.startswith("hybridzoo extract: error:")
    assert str(bad) in err and "cannot read image file" in err
    assert "Traceback" not in err
    assert not out_file.exists() and os.listdir(tmp_path) == ["images"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_extract_missing_or_empty_folder(capsys, tmp_path, make):
    images = tmp_path / "images"
    if make == "empty":
        images.mkdir()
    code, _, err = run_cli(capsys, "extract", ZOO_MODEL, images, "--out", tmp_path / "f.safetensors",
                           "--no-pretrained", "--quiet")
    assert code == 2
    assert str(images) in err
    assert not (tmp_path / "f.safetensors").exists()


# --------------------------------------------------------------------------- the installed console script


def _console_script() -> str:
    candidate = Path(sys.executable).parent / ("hybridzoo.exe" if os.name == "nt" else "hybridzoo")
    found = str(candidate) if candidate.is_file() else shutil.which("hybridzoo")
    if not found:
        pytest.skip("the hybridzoo console script is not installed (pip install -e .)")
    return found


def test_console_script_extract_and_errors(tmp_path, saved_model, class_folder):
    """One run of the real entry point: exit status, stdout and the written file (extract), then a failing run."""
    model, folder = saved_model
    script = _console_script()
    out_file = tmp_path / "f.safetensors"
    bad = class_folder / "a_class" / "broken.jpg"
    proc = subprocess.run([script, "extract", str(folder), str(class_folder), "--out", str(out_file), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out_file}")
    tensors, _ = read_safetensors(out_file)
    expected = hybridzoo.extract(model, class_folder, progress=False)
    torch.testing.assert_close(tensors["embeddings"], expected["embeddings"], rtol=1e-5, atol=1e-5)
    assert tensors["labels"].tolist() == [0, 0, 1, 1, 1]
    # `python -m hybridzoo.cli` gives the same exit status as main() for errors.
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = subprocess.run([sys.executable, "-m", "hybridzoo.cli", "extract", str(folder), str(class_folder),
                           "--out", str(tmp_path / "g.safetensors"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr

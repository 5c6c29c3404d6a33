"""Hub round trips with the real huggingface_hub client against the local Hub server (tests/hub_server.py)."""
import os
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download

import hybridzoo
from hybridzoo import hub as hz_hub

pytestmark = pytest.mark.usefixtures("isolated_hf")
REPO = "user/tiny-lorentz"


@pytest.fixture
def model(tiny_model_factory):
    return tiny_model_factory("lorentz").eval()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_push_then_load_by_branch_and_commit(model, hub, cache, tiny_model_factory):
    first = model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy")
    loaded = hybridzoo.load(f"hf-hub:{REPO}", cache_dir=cache, endpoint=hub.endpoint)
    assert_same_weights(model, loaded)
    assert loaded.config["head"] == model.config["head"]

    other = tiny_model_factory("lorentz").eval()
    second = other.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy", results={"knn_top1": 0.5})
    assert first.oid != second.oid
    assert_same_weights(other, hybridzoo.load(f"hf-hub:{REPO}@main", cache_dir=cache, endpoint=hub.endpoint))
    assert_same_weights(model, hybridzoo.load(f"hf-hub:{REPO}@{first.oid}", cache_dir=cache, endpoint=hub.endpoint))
    # the card on the Hub parses with huggingface_hub's own model-card parser and carries the new results
    readme = hf_hub_download(REPO, "README.md", cache_dir=cache, endpoint=hub.endpoint)
    card = ModelCard(open(readme).read())
    assert card.data.library_name == "hybridzoo" and card.data.pipeline_tag == "image-feature-extraction"
    assert "| knn_top1 | 0.5000 |" in card.text


def test_push_to_a_branch(model, hub, cache):
    model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy", revision="experiment")
    files = HfApi(endpoint=hub.endpoint).list_repo_files(REPO, revision="experiment")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert "model.safetensors" not in HfApi(endpoint=hub.endpoint).list_repo_files(REPO)
    assert_same_weights(model, hybridzoo.load(f"hf-hub:{REPO}@experiment", cache_dir=cache, endpoint=hub.endpoint))


def test_environment_then_offline_from_cache(model, hub, cache, tmp_path):
    """HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE as in the rest of the HF ecosystem (read at import: subprocess)."""
    model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy")
    images = torch.randn(2, 3, 32, 32)
    safetensors.torch.save_file({"images": images, "expected": model(images).detach()}, tmp_path / "io.safetensors")
    script = textwrap.dedent(f"""
        import safetensors.torch, torch, hybridzoo
        io = safetensors.torch.load_file({str(tmp_path / "io.safetensors")!r})
        model = hybridzoo.load("hf-hub:{REPO}").eval()
        assert torch.equal(model(io["images"]), io["expected"])
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1")
    online = subprocess.run([sys.executable, "-c", script], env={**env, "HF_ENDPOINT": hub.endpoint},
                            capture_output=True, text=True, timeout=120)
    assert online.returncode == 0 and "ok" in online.stdout, online.stderr
    hub.stop()
    offline = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"},
                             capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0 and "ok" in offline.stdout, offline.stderr


def test_offline_with_empty_cache_is_a_clear_error(hub, cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="pretrained=False"):
        hybridzoo.load(f"hf-hub:{REPO}", cache_dir=cache, endpoint=hub.endpoint)


def test_pickle_only_repo_is_refused_and_never_downloaded(model, hub, cache, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token="dummy")
    api.create_repo(REPO)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    api.upload_folder(repo_id=REPO, folder_path=folder)
    with pytest.raises(hybridzoo.UnsafeWeightsError, match="pytorch_model.bin"):
        hybridzoo.load(f"hf-hub:{REPO}", cache_dir=cache, endpoint=hub.endpoint)
    assert not [path for method, path in hub.requests if method == "GET" and path.endswith(".bin")]


def test_missing_repo_and_revision(hub, cache, model):
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="does not exist"):
        hybridzoo.load("hf-hub:user/nothing-here", cache_dir=cache, endpoint=hub.endpoint)
    model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy")
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="no revision"):
        hybridzoo.load(f"hf-hub:{REPO}@no-such-branch", cache_dir=cache, endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="hf-hub:org/repo"):
        hybridzoo.load("hf-hub:not-a-repo-id", cache_dir=cache, endpoint=hub.endpoint)


def test_pretrained_false_fetches_only_the_config(model, hub, cache):
    model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy")
    hub.requests.clear()
    fresh = hybridzoo.load(f"hf-hub:{REPO}", pretrained=False, cache_dir=cache, endpoint=hub.endpoint)
    assert fresh.config["head"] == model.config["head"]
    assert not [path for _, path in hub.requests if path.endswith("model.safetensors")]


def test_zoo_entry_with_published_weights(model, hub, cache):
    commit = model.push_to_hub(REPO, endpoint=hub.endpoint, token="dummy")
    path = hz_hub.download_from_hub(REPO, commit.oid, cache_dir=cache, endpoint=hub.endpoint)
    sha256 = hz_hub.sha256_file(path / "model.safetensors")
    entry = {**model.config, "name": "test-published-lorentz",
             "weights": {"hub_repo": REPO, "revision": commit.oid, "sha256": sha256}}
    hybridzoo.register_model(entry, overwrite=True)
    loaded = hybridzoo.load("test-published-lorentz", cache_dir=cache, endpoint=hub.endpoint)
    assert_same_weights(model, loaded)
    assert loaded.name == "test-published-lorentz"

    entry["name"], entry["weights"] = "test-tampered-lorentz", {**entry["weights"], "sha256": "f" * 64}
    hybridzoo.register_model(entry, overwrite=True)
    with pytest.raises(hybridzoo.ChecksumMismatchError, match="sha256"):
        hybridzoo.load("test-tampered-lorentz", cache_dir=cache, endpoint=hub.endpoint)

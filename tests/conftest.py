"""Test-wide setup. The Hugging Face environment is fixed here, before anything imports huggingface_hub (timm
does at import), because huggingface_hub reads it once at import time: no test may touch ~/.cache or the
internet."""
import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="hybridzoo-tests-hf-")
for _var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
    os.environ.pop(_var, None)
os.environ.update({
    "HF_HOME": _HF_HOME,
    # Nothing listens on port 9 (discard): a test that forgets to pass its local server's endpoint fails fast
    # instead of reaching the real Hub.
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_ETAG_TIMEOUT": "2",
    "HF_HUB_DOWNLOAD_TIMEOUT": "5",
})

import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants  # noqa: E402

import hybridzoo  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_factory():
    """Build small, fast models: a resnet10t backbone at 32 px with any head preset."""

    def make(head: str = "lorentz", **kwargs) -> hybridzoo.HybridModel:
        return hybridzoo.create_model("resnet10t", head=head, preprocessing={"input_size": (3, 32, 32)},
                                      hidden_dim=64, **kwargs)

    return make


@pytest.fixture
def isolated_hf(monkeypatch, tmp_path):
    """Keep huggingface_hub away from the internet and from ~/.cache; fail the test if it tried to leave."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # else: GET huggingface.co/api/agent-harnesses
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # hf_xet writes its logs there

    blocked: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def local_only_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            blocked.append(host)
            raise OSError(f"Network access disabled in tests (host: {host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only_getaddrinfo)
    yield
    assert blocked == [], f"huggingface_hub tried to reach non-local hosts: {blocked}"


@pytest.fixture
def hub(tmp_path):
    """A Hub-protocol server on 127.0.0.1 (tests/hub_server.py), stopped after the test."""
    with HubServer(tmp_path / "hub") as server:
        yield server

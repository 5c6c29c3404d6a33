"""Tests of the local Hub server (tests/hub_server.py) with the real huggingface_hub client.

No hybridzoo import here: these tests only check that the server speaks the Hub protocol
well enough for huggingface_hub (2.4.0) to upload, download and work offline from cache.

Isolation: huggingface_hub reads its environment variables at import time, so the
`isolated_hf` fixture patches the few `huggingface_hub.constants` that matter at call time
(telemetry, offline mode, xet), points HF_HOME (read by hf_xet's Rust code when a
XetSession is created) to a temporary folder, and blocks DNS lookups of anything but
localhost, failing the test if the client tried to reach e.g. huggingface.co.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from huggingface_hub.utils.sha import git_hash

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated_hf")

REPO = "user/tiny-model"
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token="dummy")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def model_folder(tmp_path):
    """A folder with ~2 MB of random 'weights' and a small JSON config."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(2 * 1024 * 1024))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    return folder


def download(hub: HubServer, cache_dir: Path, filename: str, revision: str | None = None, repo_id: str = REPO) -> bytes:
    """hf_hub_download against the local server, returning the file content."""
    path = hf_hub_download(repo_id, filename, revision=revision, endpoint=hub.endpoint, cache_dir=cache_dir)
    return Path(path).read_bytes()


# --------------------------------------------------------------------------- tests


def test_create_repo(api, hub):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409

    # A new repo has an initial commit on "main", like on the Hub.
    info = api.model_info(REPO)
    assert SHA_RE.match(info.sha) and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert api.repo_exists(REPO) and not api.repo_exists("user/missing")

    # Private repos need a token.
    api.create_repo("user/secret", private=True)
    assert api.model_info("user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info("user/secret")


def test_upload_folder_and_download_by_branch_and_sha(api, hub, model_folder, cache_dir):
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=model_folder, commit_message="add model")
    assert SHA_RE.match(commit.oid)

    weights = (model_folder / "model.safetensors").read_bytes()
    for revision in (None, "main", commit.oid):
        assert download(hub, cache_dir, "model.safetensors", revision) == weights
        assert json.loads(download(hub, cache_dir, "config.json", revision)) == {"hidden_size": 8}

    info = api.model_info(REPO)
    assert info.sha == commit.oid
    assert {s.rfilename: s.size for s in info.siblings} == {
        ".gitattributes": info.siblings[0].size,
        "config.json": (model_folder / "config.json").stat().st_size,
        "model.safetensors": len(weights),
    }
    assert api.list_repo_files(REPO) == [".gitattributes", "config.json", "model.safetensors"]

    # HEAD metadata: ETag is the git blob id, X-Repo-Commit the resolved commit.
    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub.endpoint)
    metadata = get_hf_file_metadata(url, token="dummy")
    assert (metadata.etag, metadata.commit_hash, metadata.size) == (git_hash(weights), commit.oid, len(weights))
    assert metadata.xet_file_data is None

    # Uploads went inline in the commit: no LFS, no Xet.
    paths = [path for _, path in hub.requests]
    assert f"/api/models/{REPO}/preupload/main" in paths and f"/api/models/{REPO}/commit/main" in paths
    assert not [p for p in paths if "lfs" in p or "xet" in p]
    assert all(method in ("GET", "HEAD", "POST") for method, _ in hub.requests)


def test_second_commit_keeps_old_revision_downloadable(api, hub, model_folder, cache_dir):
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=model_folder)
    old_weights = (model_folder / "model.safetensors").read_bytes()
    new_weights = random.Random(1).randbytes(1024 * 1024)
    second = api.upload_file(path_or_fileobj=new_weights, path_in_repo="model.safetensors", repo_id=REPO)
    assert second.oid != first.oid

    assert download(hub, cache_dir, "model.safetensors") == new_weights
    assert download(hub, cache_dir, "model.safetensors", second.oid) == new_weights
    assert download(hub, cache_dir, "model.safetensors", first.oid) == old_weights
    assert download(hub, cache_dir, "model.safetensors", first.oid[:7]) == old_weights  # short sha

    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits[:2]] == [second.oid, first.oid] and len(commits) == 3
    refs = api.list_repo_refs(REPO)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second.oid)]

    # Re-uploading identical content is detected as a no-op by the client (preupload returns oids).
    unchanged = api.upload_file(path_or_fileobj=new_weights, path_in_repo="model.safetensors", repo_id=REPO)
    assert unchanged.oid == second.oid


def test_branches_tags_and_create_commit(api, hub, model_folder, cache_dir):
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=model_folder)
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="feature/x", revision=first.oid)
    api.create_tag(REPO, tag="v1.0", revision=first.oid)

    dev_commit = api.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("extra/notes.txt", b"hello"),
            CommitOperationDelete("config.json"),
        ],
        commit_message="dev changes",
        revision="dev",
    )
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": first.oid,
        "dev": dev_commit.oid,
        "feature/x": first.oid,
    }
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", first.oid)]

    assert download(hub, cache_dir, "extra/notes.txt", "dev") == b"hello"
    with pytest.raises(EntryNotFoundError):
        download(hub, cache_dir, "config.json", "dev")
    assert download(hub, cache_dir, "config.json", "main") == (model_folder / "config.json").read_bytes()
    assert download(hub, cache_dir, "config.json", "feature/x") == (model_folder / "config.json").read_bytes()
    assert download(hub, cache_dir, "config.json", "v1.0") == (model_folder / "config.json").read_bytes()

    snapshot = Path(snapshot_download(REPO, revision="dev", endpoint=hub.endpoint, cache_dir=cache_dir))
    assert snapshot.name == dev_commit.oid
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == [
        ".gitattributes",
        "extra/notes.txt",
        "model.safetensors",
    ]
    assert api.list_repo_files(REPO, revision="dev") == [".gitattributes", "extra/notes.txt", "model.safetensors"]

    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="no-such-branch")


def test_pull_requests(api, hub, model_folder, cache_dir):
    api.create_repo(REPO)
    base = api.upload_folder(repo_id=REPO, folder_path=model_folder)

    # upload_folder(create_pr=True): create_pull_request, then commits pushed to refs/pr/1.
    (model_folder / "config.json").write_text('{"hidden_size": 16}')
    via_folder = api.upload_folder(repo_id=REPO, folder_path=model_folder, create_pr=True)
    assert via_folder.pr_num == 1 and via_folder.pr_revision == "refs/pr/1"
    # create_commit(create_pr=True): a single commit with ?create_pr=1.
    via_commit = api.create_commit(
        REPO, operations=[CommitOperationAdd("pr.txt", b"pr")], commit_message="pr", create_pr=True
    )
    assert via_commit.pr_num == 2

    assert api.model_info(REPO).sha == base.oid  # main untouched
    assert json.loads(download(hub, cache_dir, "config.json", "refs/pr/1")) == {"hidden_size": 16}
    assert download(hub, cache_dir, "pr.txt", "refs/pr/2") == b"pr"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [
        ("refs/pr/1", via_folder.oid),
        ("refs/pr/2", via_commit.oid),
    ]


def test_errors_map_to_client_exceptions(api, hub, model_folder, cache_dir):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=model_folder)

    with pytest.raises(RemoteEntryNotFoundError):  # subclass of EntryNotFoundError in 2.x
        download(hub, cache_dir, "missing.bin")
    with pytest.raises(RepositoryNotFoundError):
        download(hub, cache_dir, "config.json", repo_id="user/missing")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/missing")
    with pytest.raises(RevisionNotFoundError):
        download(hub, cache_dir, "config.json", "no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", endpoint=hub.endpoint, cache_dir=cache_dir)


def test_range_requests(api, hub):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=REPO)
    url = hf_hub_url(REPO, "digits.txt", endpoint=hub.endpoint)
    response = get_session().get(url, headers={"Range": "bytes=2-5"})
    assert response.status_code == 206 and response.content == b"2345"
    assert response.headers["Content-Range"] == "bytes 2-5/10"
    assert get_session().get(url, headers={"Range": "bytes=-3"}).content == b"789"


def test_upload_without_hf_xet_and_readme_validation(api, hub, model_folder, cache_dir, monkeypatch):
    """With Xet disabled, upload_folder takes the plain create_commit path; README.md hits validate-yaml."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=model_folder)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# Tiny", path_in_repo="README.md", repo_id=REPO)
    assert ("POST", "/api/validate-yaml") in hub.requests
    assert download(hub, cache_dir, "model.safetensors", commit.oid) == (
        model_folder / "model.safetensors"
    ).read_bytes()


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, commit, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    assert constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE must be read at import"

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    for revision in (None, "main", commit):
        for filename, sha256 in expected.items():
            assert digest(hf_hub_download(repo_id, filename, revision=revision)) == sha256, (filename, revision)
        folder = Path(snapshot_download(repo_id, revision=revision))
        assert folder.name == commit
        assert {f: digest(folder / f) for f in expected} == expected

    try:
        hf_hub_download(repo_id, "not-cached.bin")
    except LocalEntryNotFoundError:
        pass
    else:
        raise AssertionError("expected LocalEntryNotFoundError")
    print("OFFLINE-OK")
    """
)


def test_offline_from_cache_after_server_stopped(api, hub, model_folder, cache_dir, tmp_path):
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=model_folder)
    snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)  # fills blobs, refs/main and trees/
    endpoint = hub.endpoint
    hub.stop()

    expected = {
        name: hashlib.sha256((model_folder / name).read_bytes()).hexdigest()
        for name in ("config.json", "model.safetensors")
    }
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_")) and key != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(cache_dir),
        HF_HOME=str(tmp_path / "offline_hf_home"),
        HF_ENDPOINT=endpoint,  # the stopped server: must not be contacted anyway
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, REPO, commit.oid, json.dumps(expected)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OFFLINE-OK" in result.stdout

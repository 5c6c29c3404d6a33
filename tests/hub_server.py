"""A small, self-contained Hugging Face Hub protocol server for tests.

The server speaks just enough of the Hub HTTP protocol for the real ``huggingface_hub``
client (written against 2.4.0) to create repos, commit files, create branches/tags and
download files or whole snapshots, without any network access:

* ``POST /api/repos/create``, ``DELETE /api/repos/delete``
* ``GET  /api/{type}s/{repo_id}[/revision/{rev}]``          (model_info / repo_info)
* ``GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]``       (list_repo_tree / list_repo_files)
* ``POST /api/{type}s/{repo_id}/paths-info/{rev}``          (get_paths_info)
* ``GET  /api/{type}s/{repo_id}/refs``                      (list_repo_refs)
* ``GET  /api/{type}s/{repo_id}/commits/{rev}``             (list_repo_commits)
* ``POST /api/{type}s/{repo_id}/preupload/{rev}``           (upload mode negotiation)
* ``POST /api/{type}s/{repo_id}/commit/{rev}``              (create_commit, ndjson payload)
* ``POST|DELETE /api/{type}s/{repo_id}/branch/{branch}``    (create_branch / delete_branch)
* ``POST|DELETE /api/{type}s/{repo_id}/tag/{rev_or_tag}``   (create_tag / delete_tag)
* ``POST /api/{type}s/{repo_id}/discussions``, ``GET .../discussions/{num}``
                                                            (create_pull_request / create_discussion)
* ``POST /api/validate-yaml``, ``GET /api/whoami-v2``
* ``HEAD|GET [/{type}s]/{repo_id}/resolve/{rev}/{path}``    (hf_hub_download, with Range support)

Upload protocol: the ``preupload`` endpoint answers ``"uploadMode": "regular"`` for every
file, so the client sends all file contents base64-encoded inline in the commit payload.
It never asks for Git LFS or Xet, and the server never sends the ``X-Xet-Hash`` header,
so downloads always go through plain HTTP ``GET /resolve``.

Storage lives under the ``root`` directory given to :class:`HubServer`::

    root/<type>s/<namespace>--<name>/repo.json      refs, commits and trees (JSON)
    root/<type>s/<namespace>--<name>/objects/<oid>  file contents, by git blob sha1

Like on the Hub, a new repo gets an "initial commit" on ``main`` holding a ``.gitattributes``
file, and ``create_repo("name")`` without a namespace lands in ``HubServer.username`` ("user").

Pull requests: ``create_pr=True`` works both ways the client does it (``?create_pr=1`` on the
commit endpoint, or ``create_pull_request`` then commits to ``refs/pr/<num>``); PR heads are
downloadable with ``revision="refs/pr/<num>"``. PRs cannot be merged.

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) so the client raises its typed exceptions. Any bearer token is
accepted; private repos and all write endpoints require *some* token (like the Hub,
which answers 401 otherwise).

Only the standard library is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import re
import socket
import threading
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# URL segment ("models") -> repo type ("model"), for /api/{type}s/... routes.
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
# Optional URL prefix of non-model repos in /resolve/ URLs (models have no prefix).
RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
# Words that can follow a repo id in /api/{type}s/{repo_id}/<action>/... routes.
API_ACTIONS = {
    "revision", "tree", "refs", "preupload", "commit", "paths-info", "commits", "branch", "tag", "discussions"
}

DEFAULT_BRANCH = "main"
PR_REF_RE = re.compile(r"^refs/pr/(\d+)$")
SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")

# Content of the `.gitattributes` file of the initial commit, as on the real Hub.
INITIAL_GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


# --------------------------------------------------------------------------- helpers


class HubError(Exception):
    """An HTTP error answered to the client, with optional Hub error code header."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def repo_not_found(repo_id: str, status: int = 404) -> HubError:
    return HubError(status, f"Repository not found: {repo_id}", code="RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, commit: str | None = None) -> HubError:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers=headers)


def git_blob_oid(data: bytes) -> str:
    """Git object id of a blob (the same value as `huggingface_hub.utils.sha.git_hash`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now_iso() -> str:
    """Current UTC time in the Hub's format, e.g. '2024-05-01T12:00:00.123Z'."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parent_dirs(path: str) -> list[str]:
    """All parent folders of a repo path: 'a/b/c.txt' -> ['a', 'a/b']."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def validate_repo_path(path: str) -> str:
    """Normalise a file path coming from a commit payload; reject escapes and empties."""
    path = path.strip("/")
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in commit: {path!r}")
    return path


def atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write a file atomically (write to a temporary sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- storage


class RepoStore:
    """On-disk storage of repos: one JSON document per repo plus content-addressed blobs.

    A repo document looks like::

        {"id": "user/name", "type": "model", "private": false, "createdAt": "...",
         "branches": {"main": "<sha>"}, "tags": {},
         "pulls": {"1": {"title": "...", "base": "main", "head": "<sha>", ...}},
         "commits": {"<sha>": {"parents": [...], "title": "...", "message": "...",
                                "date": "...", "tree": {"path": ["<blob oid>", size]}}}}

    Callers must hold :attr:`lock` around any read-modify-write sequence.
    """

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.lock = threading.RLock()

    # -- locations

    def repo_dir(self, repo_type: str, repo_id: str) -> pathlib.Path:
        return self.root / f"{repo_type}s" / repo_id.replace("/", "--")

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "repo.json").is_file()

    # -- repo documents

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise repo_not_found(repo_id)
        repo = json.loads(path.read_text())
        repo.setdefault("pulls", {})
        return repo

    def save(self, repo: dict) -> None:
        path = self.repo_dir(repo["type"], repo["id"]) / "repo.json"
        atomic_write(path, json.dumps(repo, indent=1).encode())

    def create(self, repo_type: str, repo_id: str, private: bool) -> dict:
        """Create a repo with an initial commit holding `.gitattributes` (like the Hub)."""
        repo_dir = self.repo_dir(repo_type, repo_id)
        (repo_dir / "objects").mkdir(parents=True, exist_ok=True)
        repo = {
            "id": repo_id,
            "type": repo_type,
            "private": private,
            "createdAt": now_iso(),
            "branches": {},
            "tags": {},
            "pulls": {},
            "commits": {},
        }
        oid = self.put_blob(repo, INITIAL_GITATTRIBUTES)
        tree = {".gitattributes": [oid, len(INITIAL_GITATTRIBUTES)]}
        repo["branches"][DEFAULT_BRANCH] = self.add_commit(repo, None, tree, "initial commit", "")
        self.save(repo)
        return repo

    def delete(self, repo_type: str, repo_id: str) -> None:
        repo_dir = self.repo_dir(repo_type, repo_id)
        if not (repo_dir / "repo.json").is_file():
            raise repo_not_found(repo_id)
        # Renaming first makes the deletion atomic for concurrent readers.
        trash = repo_dir.with_name(f".deleted-{uuid.uuid4().hex}")
        os.replace(repo_dir, trash)
        for path in sorted(trash.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        trash.rmdir()

    # -- blobs and commits

    def put_blob(self, repo: dict, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.repo_dir(repo["type"], repo["id"]) / "objects" / oid
        if not path.exists():
            atomic_write(path, data)
        return oid

    def read_blob(self, repo: dict, oid: str) -> bytes:
        return (self.repo_dir(repo["type"], repo["id"]) / "objects" / oid).read_bytes()

    @staticmethod
    def add_commit(repo: dict, parent: str | None, tree: dict, title: str, message: str) -> str:
        """Record a new commit in the repo document and return its 40-hex sha."""
        commit = {
            "parents": [parent] if parent else [],
            "title": title,
            "message": message,
            "date": now_iso(),
            "tree": tree,
        }
        # Random salt: two identical commits made at the same millisecond still differ.
        salt = uuid.uuid4().hex
        sha = hashlib.sha1(json.dumps([commit, salt], sort_keys=True).encode()).hexdigest()
        repo["commits"][sha] = commit
        return sha

    @staticmethod
    def resolve(repo: dict, revision: str) -> str:
        """Revision (branch, tag, 'refs/pr/<num>', full or short commit sha) -> commit sha."""
        pr_match = PR_REF_RE.match(revision)
        if pr_match and (repo["pulls"].get(pr_match.group(1)) or {}).get("head"):
            return repo["pulls"][pr_match.group(1)]["head"]
        revision = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["tags"]:
            return repo["tags"][revision]
        if SHORT_SHA_RE.match(revision):
            matches = [sha for sha in repo["commits"] if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise revision_not_found(revision)


# --------------------------------------------------------------------------- responses


class Response:
    """A fully-buffered HTTP response."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict | None = None) -> "Response":
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


def tree_entries(tree: dict, prefix: str, recursive: bool) -> list[dict]:
    """Tree listing entries (files and folders) under `prefix`, as the /tree API returns them."""
    dirs: set[str] = set()
    for path in tree:
        dirs.update(parent_dirs(path))
    if prefix and prefix not in dirs:
        raise entry_not_found(prefix)

    def wanted(path: str) -> bool:
        if prefix and not path.startswith(prefix + "/"):
            return False
        relative = path[len(prefix) + 1 :] if prefix else path
        return recursive or "/" not in relative

    entries = [folder_entry(tree, d) for d in sorted(dirs) if wanted(d)]
    entries += [file_entry(tree, p) for p in sorted(tree) if wanted(p)]
    return entries


def file_entry(tree: dict, path: str) -> dict:
    oid, size = tree[path]
    return {"type": "file", "oid": oid, "size": size, "path": path}


def folder_entry(tree: dict, path: str) -> dict:
    # Not a real git tree id, but stable and content-dependent, which is all clients need.
    content = sorted((p, oid) for p, (oid, _) in tree.items() if p.startswith(path + "/"))
    oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def parse_range(header: str, size: int) -> tuple[int, int]:
    """Parse a single-range 'bytes=a-b' / 'bytes=a-' / 'bytes=-n' header into (start, end incl.)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.groups() == ("", ""):
        raise HubError(416, f"Unsupported range: {header}", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


# --------------------------------------------------------------------------- request handling


class _Handler(BaseHTTPRequestHandler):
    """Routes each HTTP request to a method of the owning :class:`HubServer`."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client pools connections
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True
    server: "_HTTPServer"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default per-request logging to stderr."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked transfer encoding)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # skip trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        hub._log_request(method, url.path)
        try:
            body = self._read_body()
            response = hub._handle(method, url.path, parse_qs(url.query), dict(self.headers.items()), body)
        except HubError as error:
            response = Response.json({"error": error.message}, status=error.status, headers=error.headers)
            if error.code:
                response.headers["X-Error-Code"] = error.code
            response.headers["X-Error-Message"] = error.message
        except Exception as error:  # a server bug: report it loudly to the client and on stderr
            traceback.print_exc()
            response = Response.json({"error": f"Internal test server error: {error!r}"}, status=500)
        self._send(method, response)

    def _send(self, method: str, response: Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections so `stop()` can close them."""

    daemon_threads = True
    hub: "HubServer"

    def __init__(self, address: tuple[str, int], hub: "HubServer"):
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Shut down the sockets of idle keep-alive connections, so their threads exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- the server


class HubServer:
    """A local Hugging Face Hub server, listening on 127.0.0.1 on a free port.

    Usage::

        with HubServer(tmp_path / "hub") as hub:
            api = HfApi(endpoint=hub.endpoint, token="dummy")
            api.create_repo("user/model")
            ...
        # or: hub = HubServer(root).start(); ...; hub.stop()

    Attributes:
        requests: ``(method, path)`` of every request received, in order. ``path`` is the raw
            (still percent-encoded) URL path, without the query string.
    """

    #: Namespace used by `create_repo` when the repo id has none, and returned by whoami.
    username = "user"

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = RepoStore(self.root)
        self.requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "HubServer":
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("HubServer already started")
        self._httpd = _HTTPServer(("127.0.0.1", 0), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections (idempotent)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL of the server, e.g. 'http://127.0.0.1:54321' (to use as HF endpoint)."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _log_request(self, method: str, path: str) -> None:
        with self._requests_lock:
            self.requests.append((method, path))

    # -- routing

    def _handle(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> Response:
        """Route one request; raises HubError for error answers."""
        segments = path.strip("/").split("/")
        authenticated = any(k.lower() == "authorization" and v.strip() for k, v in headers.items())
        with self.store.lock:
            if segments[0] == "api":
                return self._handle_api(method, segments[1:], query, headers, body, authenticated)
            return self._handle_resolve(method, segments, headers, authenticated)

    def _handle_api(
        self, method: str, segs: list[str], query: dict, headers: dict, body: bytes, authenticated: bool
    ) -> Response:
        route = (method, "/".join(segs[:2]))
        if route == ("POST", "repos/create"):
            return self._create_repo(json.loads(body or b"{}"), authenticated)
        if route == ("DELETE", "repos/delete"):
            return self._delete_repo(json.loads(body or b"{}"), authenticated)
        if route == ("POST", "validate-yaml"):
            return Response.json({"errors": [], "warnings": []})
        if route == ("GET", "whoami-v2"):
            return self._whoami(authenticated)
        if segs and segs[0] in API_REPO_TYPES:
            repo_type = API_REPO_TYPES[segs[0]]
            repo_id, tail = self._split_repo_id(repo_type, segs[1:])
            return self._handle_repo_api(method, repo_type, repo_id, tail, query, body, authenticated)
        raise HubError(404, f"Unknown API route: {method} /api/{'/'.join(segs)}")

    def _split_repo_id(self, repo_type: str, segs: list[str]) -> tuple[str, list[str]]:
        """Split '<ns>/<name>/<action>/...' (or legacy '<name>/<action>/...') into (repo_id, tail)."""
        segs = [unquote(s) for s in segs[:2]] + segs[2:]
        if not segs or not segs[0]:
            raise HubError(404, "Missing repo id")
        two = "/".join(segs[:2])
        if len(segs) >= 2 and (self.store.exists(repo_type, two) or segs[1] not in API_ACTIONS):
            return two, segs[2:]
        return segs[0], segs[1:]

    def _handle_repo_api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        tail: list[str],
        query: dict,
        body: bytes,
        authenticated: bool,
    ) -> Response:
        action = tail[0] if tail else ""
        arg = unquote("/".join(tail[1:]))  # revision / branch / tag (may contain '/')
        is_write = method in ("POST", "PUT", "DELETE") and action != "paths-info"
        repo = self._load_repo(repo_type, repo_id, authenticated, write=is_write)

        if method == "GET" and action in ("", "revision"):
            return self._repo_info(repo, arg or DEFAULT_BRANCH)
        if method == "GET" and action == "tree" and len(tail) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._tree(repo, unquote(tail[1]), unquote("/".join(tail[2:])).strip("/"), recursive)
        if method == "POST" and action == "paths-info":
            return self._paths_info(repo, arg, parse_qs(body.decode()))
        if method == "GET" and action == "refs":
            return self._refs(repo)
        if method == "GET" and action == "commits":
            return self._commits(repo, arg or DEFAULT_BRANCH)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, arg, json.loads(body or b"{}"))
        if method == "POST" and action == "commit":
            create_pr = query.get("create_pr", ["0"])[0].lower() not in ("0", "false", "")
            return self._commit(repo, arg, body, create_pr)
        if action == "discussions" and method == "POST" and len(tail) == 1:
            return self._create_discussion(repo, json.loads(body or b"{}"))
        if action == "discussions" and method == "GET" and len(tail) == 2:
            return self._discussion_details(repo, tail[1])
        if action == "branch" and method in ("POST", "DELETE"):
            if method == "POST":
                return self._create_branch(repo, arg, json.loads(body or b"{}"))
            return self._delete_branch(repo, arg)
        if action == "tag" and method in ("POST", "DELETE"):
            if method == "POST":
                return self._create_tag(repo, arg, json.loads(body or b"{}"))
            return self._delete_tag(repo, arg)
        raise HubError(404, f"Unknown repo API route: {method} {action}")

    def _load_repo(self, repo_type: str, repo_id: str, authenticated: bool, write: bool = False) -> dict:
        """Load a repo; unauthenticated clients get 401 on writes and on private repos."""
        if not self.store.exists(repo_type, repo_id):
            raise repo_not_found(repo_id, status=404 if authenticated else 401)
        repo = self.store.load(repo_type, repo_id)
        if not authenticated and (write or repo["private"]):
            raise repo_not_found(repo_id, status=401)
        return repo

    # -- repo management

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"

    def _create_repo(self, payload: dict, authenticated: bool) -> Response:
        if not authenticated:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_type = payload.get("type") or "model"
        name = payload.get("name") or ""
        namespace = payload.get("organization") or self.username
        if not re.fullmatch(r"[\w.\-]+", name) or "--" in name or not re.fullmatch(r"[\w.\-]+", namespace):
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if self.store.exists(repo_type, repo_id):
            return Response.json({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.store.create(repo_type, repo_id, private=private)
        return Response.json({"url": url, "name": repo_id, "id": uuid.uuid4().hex})

    def _delete_repo(self, payload: dict, authenticated: bool) -> Response:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.username
        repo_id = f"{namespace}/{payload.get('name')}"
        self._load_repo(repo_type, repo_id, authenticated, write=True)
        self.store.delete(repo_type, repo_id)
        return Response.json({})

    def _whoami(self, authenticated: bool) -> Response:
        if not authenticated:
            raise HubError(401, "Invalid credentials in Authorization header")
        return Response.json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.username,
                "fullname": "Test User",
                "email": None,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    # -- read endpoints

    def _repo_info(self, repo: dict, revision: str) -> Response:
        sha = self.store.resolve(repo, revision)
        commit = repo["commits"][sha]
        tree = commit["tree"]
        namespace = repo["id"].split("/")[0] if "/" in repo["id"] else None
        return Response.json(
            {
                "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
                "id": repo["id"],
                "modelId": repo["id"],
                "author": namespace,
                "sha": sha,
                "lastModified": commit["date"],
                "createdAt": repo["createdAt"],
                "private": repo["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": p, "size": tree[p][1], "blobId": tree[p][0]} for p in sorted(tree)],
                "spaces": [],
                "usedStorage": sum(size for _, size in tree.values()),
            }
        )

    def _tree(self, repo: dict, revision: str, path: str, recursive: bool) -> Response:
        sha = self.store.resolve(repo, revision)
        return Response.json(tree_entries(repo["commits"][sha]["tree"], path, recursive))

    def _paths_info(self, repo: dict, revision: str, form: dict) -> Response:
        tree = repo["commits"][self.store.resolve(repo, revision)]["tree"]
        dirs = {d for p in tree for d in parent_dirs(p)}
        entries = []
        for path in (p.strip("/") for p in form.get("paths", [])):
            if path in tree:
                entries.append(file_entry(tree, path))
            elif path in dirs:
                entries.append(folder_entry(tree, path))
        return Response.json(entries)

    def _refs(self, repo: dict) -> Response:
        def refs(kind: str, names: dict) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in sorted(names.items())]

        return Response.json(
            {
                "branches": refs("heads", repo["branches"]),
                "tags": refs("tags", repo["tags"]),
                "converts": [],
                "pullRequests": [
                    {"name": f"refs/pr/{num}", "ref": f"refs/pr/{num}", "targetCommit": pr["head"]}
                    for num, pr in sorted(repo["pulls"].items(), key=lambda item: int(item[0]))
                    if pr["head"]
                ],
            }
        )

    def _commits(self, repo: dict, revision: str) -> Response:
        """Commit history (first-parent), newest first."""
        history, sha = [], self.store.resolve(repo, revision)
        while sha:
            commit = repo["commits"][sha]
            history.append(
                {
                    "id": sha,
                    "title": commit["title"],
                    "message": commit["message"],
                    "authors": [{"user": self.username}],
                    "date": commit["date"],
                }
            )
            sha = commit["parents"][0] if commit["parents"] else None
        return Response.json(history)

    def _handle_resolve(self, method: str, segs: list[str], headers: dict, authenticated: bool) -> Response:
        """HEAD/GET [/{type}s]/{repo_id}/resolve/{revision}/{path}."""
        repo_type = "model"
        if segs[0] in RESOLVE_PREFIXES:
            repo_type, segs = RESOLVE_PREFIXES[segs[0]], segs[1:]
        if method not in ("GET", "HEAD") or "resolve" not in segs[1:3] or len(segs) < 4:
            raise HubError(404, f"Not found: {'/'.join(segs)}")
        index = segs.index("resolve", 1)
        repo_id = unquote("/".join(segs[:index]))
        revision = unquote(segs[index + 1])
        filename = unquote("/".join(segs[index + 2 :]))

        repo = self._load_repo(repo_type, repo_id, authenticated)
        sha = self.store.resolve(repo, revision)
        tree = repo["commits"][sha]["tree"]
        if filename not in tree:
            raise entry_not_found(filename, commit=sha)
        oid, size = tree[filename]
        data = self.store.read_blob(repo, oid)

        response_headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{oid}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename.split('/')[-1])}",
        }
        range_header = next((v for k, v in headers.items() if k.lower() == "range"), None)
        if range_header and method == "GET":
            start, end = parse_range(range_header, size)
            response_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Response(206, data[start : end + 1], response_headers)
        return Response(200, data, response_headers)

    # -- write endpoints

    def _branch_head(self, repo: dict, ref: str) -> str:
        """Head commit of a branch or open PR ref; commits/uploads must target one of those."""
        pr_match = PR_REF_RE.match(ref)
        if pr_match and (repo["pulls"].get(pr_match.group(1)) or {}).get("head"):
            return repo["pulls"][pr_match.group(1)]["head"]
        if ref not in repo["branches"]:
            raise revision_not_found(ref)
        return repo["branches"][ref]

    def _set_head(self, repo: dict, ref: str, sha: str) -> None:
        pr_match = PR_REF_RE.match(ref)
        if pr_match:
            repo["pulls"][pr_match.group(1)]["head"] = sha
        else:
            repo["branches"][ref] = sha

    def _preupload(self, repo: dict, revision: str, payload: dict) -> Response:
        """Tell the client to send every file inline ("regular"), never via LFS/Xet."""
        head = self._branch_head(repo, revision)
        tree = repo["commits"][head]["tree"]
        files = []
        for item in payload.get("files", []):
            path = item["path"]
            existing = tree.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": existing[0] if existing else None,  # lets the client skip unchanged files
                }
            )
        return Response.json({"files": files, "commitOid": head})

    def _commit(self, repo: dict, ref: str, body: bytes, create_pr: bool = False) -> Response:
        """Apply an ndjson commit payload (header, file, deletedFile, deletedFolder) to a branch or PR.

        With `create_pr`, a pull request is opened against branch `ref` and the commit goes to it.
        """
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item.get("value", {}) for item in items if item.get("key") == "header"), {})
        head = self._branch_head(repo, ref)
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.startswith(parent_commit):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")

        tree = dict(repo["commits"][head]["tree"])
        for item in items:
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                continue
            elif key == "file":
                self._apply_file(repo, tree, value)
            elif key == "deletedFile":
                path = validate_repo_path(value["path"])
                if path not in tree:
                    raise entry_not_found(path, commit=head)
                del tree[path]
            elif key == "deletedFolder":
                prefix = validate_repo_path(value["path"]) + "/"
                tree = {p: v for p, v in tree.items() if not p.startswith(prefix)}
            elif key == "lfsFile":
                raise HubError(400, "LFS files are not supported by the test Hub server (use regular uploads)")
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")

        pr_url = None
        if create_pr:
            if ref not in repo["branches"]:
                raise revision_not_found(ref)
            num = self._open_pull_request(repo, header.get("summary", ""), header.get("description", ""), ref)
            ref, pr_url = f"refs/pr/{num}", self._discussion_url(repo, num)
        sha = self.store.add_commit(repo, head, tree, header.get("summary", ""), header.get("description", ""))
        self._set_head(repo, ref, sha)
        self.store.save(repo)
        return Response.json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self._repo_url(repo['type'], repo['id'])}/commit/{sha}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            }
        )

    def _apply_file(self, repo: dict, tree: dict, value: dict) -> None:
        """Store an inline file of a commit payload and add it to `tree`."""
        path = validate_repo_path(value["path"])
        content = value.get("content", "")
        if value.get("encoding", "base64") == "base64":
            data = base64.b64decode(content)
        else:
            data = content.encode()
        tree[path] = [self.store.put_blob(repo, data), len(data)]

    def _create_branch(self, repo: dict, branch: str, payload: dict) -> Response:
        if not branch or ".." in branch or branch.startswith("/") or branch.endswith("/"):
            raise HubError(400, f"Invalid branch name: {branch!r}")
        if branch in repo["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        starting_point = payload.get("startingPoint") or DEFAULT_BRANCH
        repo["branches"][branch] = self.store.resolve(repo, starting_point)
        self.store.save(repo)
        return Response.json({})

    def _delete_branch(self, repo: dict, branch: str) -> Response:
        if branch == DEFAULT_BRANCH:
            raise HubError(403, "Cannot delete the default branch")
        if branch not in repo["branches"]:
            raise revision_not_found(branch)
        del repo["branches"][branch]
        self.store.save(repo)
        return Response.json({})

    def _create_tag(self, repo: dict, revision: str, payload: dict) -> Response:
        tag = payload.get("tag") or ""
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo["tags"]:
            raise HubError(409, f"Tag already exists: {tag}")
        repo["tags"][tag] = self.store.resolve(repo, revision or DEFAULT_BRANCH)
        self.store.save(repo)
        return Response.json({})

    def _delete_tag(self, repo: dict, tag: str) -> Response:
        if tag not in repo["tags"]:
            raise revision_not_found(tag)
        del repo["tags"][tag]
        self.store.save(repo)
        return Response.json({})

    # -- pull requests and discussions

    def _discussion_url(self, repo: dict, num: str) -> str:
        return f"{self._repo_url(repo['type'], repo['id'])}/discussions/{num}"

    def _open_pull_request(self, repo: dict, title: str, description: str, base: str | None) -> str:
        """Record a discussion (a pull request if `base` is a branch) and return its number."""
        num = str(len(repo["pulls"]) + 1)
        repo["pulls"][num] = {
            "title": title,
            "description": description,
            "createdAt": now_iso(),
            "status": "open",
            "base": base,
            "head": repo["branches"][base] if base else None,  # a PR starts at its base branch head
        }
        return num

    def _create_discussion(self, repo: dict, payload: dict) -> Response:
        base = DEFAULT_BRANCH if payload.get("pullRequest") else None
        num = self._open_pull_request(repo, payload.get("title", ""), payload.get("description", ""), base)
        self.store.save(repo)
        return Response.json({"num": int(num), "url": self._discussion_url(repo, num)})

    def _discussion_details(self, repo: dict, num: str) -> Response:
        pull = repo["pulls"].get(num)
        if pull is None:
            raise HubError(404, f"Discussion not found: {num}")
        return Response.json(
            {
                "num": int(num),
                "title": pull["title"],
                "status": pull["status"],
                "createdAt": pull["createdAt"],
                "author": {"name": self.username},
                "repo": {"name": repo["id"], "type": repo["type"]},
                "isPullRequest": pull["base"] is not None,
                "events": [],
                "changes": {"base": f"refs/heads/{pull['base']}"} if pull["base"] else {},
                "filesWithConflicts": [],
                "diff": "",
            }
        )

"""A tiny local stand-in for the Hugging Face Hub's file endpoint, for tests.

It answers ``HEAD``/``GET`` on ``/{repo_id}/resolve/{revision}/{filename}``
(and ``/datasets/...``, ``/spaces/...``) with the headers the real
``huggingface_hub.hf_hub_download`` needs: ``ETag``, ``X-Repo-Commit``,
``Content-Length`` and, on GET, ``Range`` support for resumed downloads.
It also answers the two API calls ``snapshot_download`` makes first
(``/api/{models,datasets}/{repo}/revision/{rev}`` and ``.../tree/{rev}``).
Errors carry the hub's ``X-Error-Code`` so the client raises the same
exceptions it would against huggingface.co.

Usage (see the ``hub_server`` fixture in ``tests/conftest.py``)::

    revision = hub_server.add("acme/derain-x", "x.safetensors", data)
    hf_hub_download("acme/derain-x", "x.safetensors", revision=revision,
                    endpoint=hub_server.endpoint, cache_dir=tmp_path)
    hub_server.add("acme/rain", "test/001.png", png, repo_type="dataset")
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_PREFIXES = {"datasets": "dataset", "spaces": "space"}
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<what>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?$"
)


@dataclass
class _Repo:
    #: commit id -> {filename: bytes}
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: branch or tag name -> commit id
    refs: dict[str, str] = field(default_factory=dict)


class HubServer:
    """Serve in-memory repos over HTTP on 127.0.0.1 (random port) from a daemon thread."""

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.Lock()
        #: ``(method, path)`` of every request received, for assertions.
        self.requests: list[tuple[str, str]] = []
        handler = type("_Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- content ----------------------------------------------------------------
    def add(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        *,
        repo_type: str = "model",
        revision: str | None = None,
        branch: str = "main",
    ) -> str:
        """Commit one file; see :meth:`commit`. Returns the 40-hex commit id."""
        return self.commit(repo_id, {filename: data}, repo_type=repo_type, revision=revision, branch=branch)

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        revision: str | None = None,
        branch: str = "main",
    ) -> str:
        """Make a commit holding ``branch``'s files plus ``files``, and move ``branch`` to it.

        ``revision`` fixes the commit id (adding to it if it exists); by default
        a random one is made. Returns the 40-hex commit id.
        """
        revision = revision or secrets.token_hex(20)
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            if revision not in repo.commits:
                parent = repo.refs.get(branch)
                repo.commits[revision] = dict(repo.commits[parent]) if parent else {}
            repo.commits[revision].update({k: bytes(v) for k, v in files.items()})
            if branch:
                repo.refs[branch] = revision
        return revision

    def _lookup(self, repo_type: str, repo_id: str, rev: str, filename: str):
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return "RepoNotFound", None, None
            commit = repo.refs.get(rev, rev)
            files = repo.commits.get(commit)
            if files is None:
                return "RevisionNotFound", None, None
            if filename is None:
                return None, commit, dict(files)
            if filename not in files:
                return "EntryNotFound", commit, None
            return None, commit, files[filename]

    # -- lifecycle --------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; later requests fail to connect."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    # One request per connection: no keep-alive threads outlive the server.
    protocol_version = "HTTP/1.0"
    timeout = 10  # seconds a silent client may hold a handler thread

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, payload, commit: str, *, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _api(self, m: re.Match, query: str, *, body: bool) -> None:
        repo_type = m["type"][:-1]
        repo_id = unquote(m["repo"])
        code, commit, files = self._lookup(repo_type, repo_id, unquote(m["rev"]), None)
        if code is not None:
            self._error(404, code, commit)
            return
        if m["what"] == "revision":
            siblings = [{"rfilename": name} for name in sorted(files)]
            self._json({"id": repo_id, "sha": commit, "siblings": siblings, "private": False}, commit, body=body)
            return
        prefix = unquote((m["sub"] or "/")[1:]).strip("/")
        prefix = prefix + "/" if prefix else ""
        recursive = "recursive=true" in query.lower() or "recursive=1" in query
        entries: dict[str, dict] = {}
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # the folders on the way down
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
            if recursive or len(rest) == 1:
                data = files[name]
                oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git blob id
                entries[name] = {"type": "file", "path": name, "size": len(data), "oid": oid}
        self._json(list(entries.values()), commit, body=body)

    def _serve(self, *, body: bool) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        self.hub.requests.append((self.command, path))
        api = _API.match(path)
        if api:
            self._api(api, parts.query, body=body)
            return
        m = _RESOLVE.match(path)
        if not m:
            self._error(404, "RepoNotFound")
            return
        repo_type = _PREFIXES.get(m.group(1) or "", "model")
        code, commit, data = self._lookup(repo_type, unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]))
        if code is not None:
            self._error(404, code, commit)
            return
        start = 0
        status = 200
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if body and rng and int(rng.group(1)) < len(data):
            start, status = int(rng.group(1)), 206
        self.send_response(status)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:])

    def _lookup(self, *args):
        return self.hub._lookup(*args)

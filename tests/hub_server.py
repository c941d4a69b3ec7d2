"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that `huggingface_hub` and `datasets` use.

Tests push and pull real repositories through the real client libraries against this server on 127.0.0.1, so the
Hub code paths of structured_hf run without any network. It speaks (as of huggingface_hub 2.4 / datasets 5.2):

- ``GET  /api/whoami-v2``                                     who the bearer token belongs to
- ``POST /api/repos/create``                                  models and datasets (409 if it exists)
- ``POST /api/validate-yaml``                                 README.md metadata check before a commit
- ``GET  /api/{models,datasets}/{repo}[/revision/{rev}]``     repo info (``sha``, ``siblings``)
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            tree listing (``recursive``), used by snapshot_download
                                                              and HfFileSystem (datasets' glob of data files)
- ``POST /api/{type}s/{repo}/paths-info/{rev}``               per-path info, used by HfFileSystem
- ``POST /api/{type}s/{repo}/preupload/{rev}``                regular vs LFS upload mode, remote oid
- ``POST /{datasets/}{repo}.git/info/lfs/objects/batch``      LFS batch API, ``basic`` transfer with verify
- ``PUT  /_lfs/upload/{sha256}``, ``POST /_lfs/verify``       the upload and verify actions it hands out
- ``POST /api/{type}s/{repo}/commit/{rev}``                   ndjson commit (file, lfsFile, deletedFile/Folder;
                                                              ``parentCommit`` checked: 412 on a stale parent)
- ``HEAD/GET /{datasets/}{repo}/resolve/{rev}/{path}``        downloads: ``ETag``, ``X-Repo-Commit``,
                                                              ``Content-Length``, ``Range``; LFS files answer with
                                                              a 302 to a "CDN" URL on another origin
                                                              (``localhost`` instead of ``127.0.0.1``) carrying
                                                              ``X-Linked-Etag``/``X-Linked-Size``, exactly like
                                                              the real Hub, so the client's "do not send the token
                                                              to the CDN" logic runs too.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so that the client
raises its usual exception types. Any request the server does not know is answered 404 and recorded in
:attr:`LocalHub.unhandled`, so a test can see when a new client version starts using another endpoint.

Xet storage is not spoken: clients must run with ``HF_HUB_DISABLE_XET=1`` (the ``local_hub`` fixture patches it).
Storage is in memory; every commit is a full snapshot of the repo's files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

logger = logging.getLogger(__name__)

# Files stored through LFS on the Hub by default (its .gitattributes), plus anything binary or >= 10 MB.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
    ".msgpack",
    ".model",
    ".npy",
    ".npz",
    ".parquet",
    ".arrow",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".zip",
    ".gz",
    ".tar",
    ".pkl",
    ".pickle",
)
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
_REPO_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid`` and ``ETag``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        """Blob id in git: of the content, or of the LFS pointer for LFS files (as on the Hub)."""
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.content)) if self.lfs else self.content)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    authenticated: bool  # whether an Authorization header came with it (its value is never recorded)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class LocalHub:
    """An in-memory Hub on ``http://127.0.0.1:<port>``; use as a context manager or call start()/stop().

    Any bearer token that starts with ``hf_`` is valid and belongs to ``username``. Tokens that arrive are compared,
    never stored, logged or echoed; :attr:`tokens_seen` only counts how many requests carried ``expected_token``.
    """

    def __init__(
        self, username: str = "tester", host: str = "127.0.0.1", port: int = 0, expected_token: str | None = None
    ):
        self.username = username
        self.expected_token = expected_token
        self.token = expected_token  # what tests push with
        self.tokens_seen = 0
        self.blocked: list[str] = []  # refusals of the network guard (see network_guard), filled by the fixture
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[RequestRecord] = []
        self.unhandled: list[str] = []
        self.cdn_requests_with_auth: list[str] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        """Same server, other origin: plays the role of the Hub's CDN for LFS downloads."""
        return f"http://localhost:{self.port}"

    def start(self) -> "LocalHub":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- inspection helpers for tests ---------------------------------------------------------------------------
    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        repo = self._repo(repo_type, repo_id)
        return {p: f.content for p, f in self._commit(repo, revision).files.items()}

    def is_lfs(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bool:
        repo = self._repo(repo_type, repo_id)
        return self._commit(repo, revision).files[path].lfs

    # -- state --------------------------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        commit = repo.commits.get(oid)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, StoredFile], title: str) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps([parent, sorted((p, f.git_oid) for p, f in files.items()), title, self._counter]).encode()
        ).hexdigest()
        commit = Commit(oid=digest, parent=parent, files=files, title=title, date=_now())
        repo.commits[digest] = commit
        return commit

    def _check_token(self, authorization: str | None, required: bool) -> str | None:
        if not authorization:
            if required:
                raise HubError(401, "Invalid credentials in Authorization header")
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith("hf_"):
            raise HubError(401, "Invalid credentials in Authorization header")
        if self.expected_token is not None and token == self.expected_token:
            self.tokens_seen += 1
        return self.username

    def _readable(self, repo: Repo, user: str | None) -> None:
        if repo.private and user is None:
            # The Hub hides private repos from anonymous users behind a 401 RepoNotFound.
            raise HubError(401, "Repository not found", "RepoNotFound")

    def _writable(self, repo: Repo, user: str | None) -> None:
        if user is None or repo.repo_id.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")

    # -- API ----------------------------------------------------------------------------------------------------
    def whoami(self, user: str) -> dict[str, Any]:
        return {
            "type": "user",
            "id": "0" * 24,
            "name": user,
            "fullname": user.title(),
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        }

    def create_repo(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"repo type {repo_type!r} is not supported by the local hub")
        namespace = body.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create repos in {namespace}")
        name = body.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, "You already created this repo")
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created=_now())
            files = {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}
            initial = self._new_commit(repo, None, files, "initial commit")
            repo.branches["main"] = initial.oid
            self.repos[(repo_type, repo_id)] = repo
        return {"url": f"{self.url}/{_REPO_PREFIX[repo_type]}{repo_id}", "name": repo_id, "id": "0" * 24}

    def repo_info(self, repo: Repo, revision: str) -> dict[str, Any]:
        commit = self._commit(repo, revision)
        info: dict[str, Any] = {
            "_id": "0" * 24,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created,
            "lastModified": commit.date,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        readme = commit.files.get("README.md")
        if readme is not None:
            info["cardData"] = _front_matter(readme.content.decode("utf-8", "replace")) or {}
        return info

    def _entry(self, path: str, f: StoredFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": len(f.content), "path": path}
        if f.lfs:
            entry["lfs"] = {
                "oid": f.sha256,
                "size": len(f.content),
                "pointerSize": len(lfs_pointer(f.sha256, len(f.content))),
            }
        return entry

    def _folder_entry(self, path: str, commit: Commit) -> dict[str, Any]:
        inside = sorted((p, f.git_oid) for p, f in commit.files.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(), "path": path}

    def tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        commit = self._commit(repo, revision)
        prefix = f"{path}/" if path else ""
        if path and path in commit.files:
            raise HubError(400, f"{path} is a file, not a directory")
        if path and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        files, folders = [], set()
        for p, f in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                files.append(self._entry(p, f))
        return [self._folder_entry(d, commit) for d in sorted(folders)] + files

    def paths_info(self, repo: Repo, revision: str, paths: list[str]) -> list[dict[str, Any]]:
        commit = self._commit(repo, revision)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry(path, commit.files[path]))
            elif path == "" or any(p.startswith(path + "/") for p in commit.files):
                out.append(self._folder_entry(path, commit))
        return out

    def preupload(self, repo: Repo, revision: str, body: dict[str, Any]) -> dict[str, Any]:
        commit = self._commit(repo, revision)
        files = []
        for item in body.get("files", []):
            path, size, sample = item["path"], int(item["size"]), base64.b64decode(item.get("sample", ""))
            lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD or b"\0" in sample
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": commit.oid}

    def lfs_batch(self, repo: Repo, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported")
        if "basic" not in body.get("transfers", ["basic"]):
            raise HubError(400, "only the basic transfer is supported")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/upload/{oid}", "header": {}, "expires_in": 3600},
                    "verify": {"href": f"{self.url}/_lfs/verify", "header": {}, "expires_in": 3600},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_put(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"content does not match its oid {oid}")
        with self._lock:
            self.lfs_objects[oid] = data

    def lfs_verify(self, body: dict[str, Any]) -> None:
        data = self.lfs_objects.get(body.get("oid", ""))
        if data is None or len(data) != body.get("size"):
            raise HubError(404, f"object {body.get('oid')} was not uploaded")

    def commit(self, repo: Repo, revision: str, ndjson: bytes, user: str | None) -> dict[str, Any]:
        self._writable(repo, user)
        lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(412, f"parent commit {parent} is not the head of {revision} ({head})")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"unsupported encoding {value.get('encoding')}")
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = StoredFile(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            commit = self._new_commit(repo, head, files, header.get("summary", ""))
            repo.branches[revision] = commit.oid
        return {
            "success": True,
            "commitOid": commit.oid,
            "pullRequestUrl": None,
            "hookOutput": "",
            "commitUrl": f"{self.url}/{_REPO_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}",
        }


def _front_matter(text: str) -> dict[str, Any] | None:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("metadata must be a YAML mapping")
    return data


_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
_API_BARE_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)$")
_RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/(datasets/|spaces/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$")


def _make_handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every response has a Content-Length

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib signature)
            # Request lines only: never headers, so a token cannot reach the logs from here.
            logger.debug("local hub: " + format, *args)

        # -- plumbing -----------------------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            hub.requests.append(RequestRecord(self.command, self.path, status, "Authorization" in self.headers))

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), headers)

        def _user(self, required: bool = False) -> str | None:
            return hub._check_token(self.headers.get("Authorization"), required)

        def _dispatch(self) -> None:
            body = self._body() if self.command in ("POST", "PUT") else b""
            try:
                self._route(body)
            except HubError as e:
                headers = dict(e.headers)
                if e.code:
                    headers["X-Error-Code"] = e.code
                headers["X-Error-Message"] = e.message
                self._json(e.status, {"error": e.message}, headers)
            except Exception as e:  # a bug in the stand-in: make it loud in the client's error
                logger.exception("local hub failed on %s %s", self.command, self.path)
                self._json(500, {"error": f"local hub: {type(e).__name__}: {e}"})

        do_GET = do_HEAD = do_POST = do_PUT = _dispatch

        # -- routes -------------------------------------------------------------------------------------------
        def _route(self, body: bytes) -> None:
            split = urlsplit(self.path)
            path, query = split.path, parse_qs(split.query)
            host = (self.headers.get("Host") or "").split(":")[0]
            if path.startswith("/_cdn/"):
                return self._cdn(path[len("/_cdn/") :])
            if host != "127.0.0.1":
                raise HubError(404, f"host {host!r} only serves the CDN")
            m = self.command
            if m == "GET" and path == "/api/whoami-v2":
                return self._json(200, hub.whoami(self._user(required=True)))
            if m == "POST" and path == "/api/repos/create":
                return self._json(200, hub.create_repo(self._user(required=True), json.loads(body)))
            if m == "POST" and path == "/api/validate-yaml":
                self._user()
                try:
                    _front_matter(json.loads(body).get("content", ""))
                except (yaml.YAMLError, ValueError) as e:
                    return self._json(400, {"errors": [{"message": str(e)}], "warnings": []})
                return self._json(200, {"errors": [], "warnings": []})
            if m == "PUT" and path.startswith("/_lfs/upload/"):
                hub.lfs_put(path.rsplit("/", 1)[-1], body)
                return self._send(200)
            if m == "POST" and path == "/_lfs/verify":
                self._user(required=True)
                hub.lfs_verify(json.loads(body))
                return self._json(200, {})
            if (match := _LFS_BATCH.match(path)) and m == "POST":
                user = self._user(required=True)
                repo = hub._repo(_type_of(match.group(1)), f"{match.group(2)}/{match.group(3)}")
                hub._writable(repo, user)
                return self._send(
                    200,
                    json.dumps(hub.lfs_batch(repo, json.loads(body))).encode(),
                    content_type="application/vnd.git-lfs+json",
                )
            if match := _API_REPO.match(path):
                return self._api_repo(match, query, body)
            if _API_BARE_REPO.match(path):  # "name" without a namespace: only legacy repos, none here
                raise HubError(404, f"Repository {path.rsplit('/', 1)[-1]} not found", "RepoNotFound")
            if (match := _RESOLVE.match(path)) and m in ("GET", "HEAD"):
                return self._resolve(match)
            hub.unhandled.append(f"{m} {path}")
            logger.warning("local hub: no route for %s %s", m, path)
            raise HubError(404, f"the local hub does not implement {m} {path}")

        def _api_repo(self, match: re.Match, query: dict[str, list[str]], body: bytes) -> None:
            repo_type = match.group(1)[:-1]
            repo_id = f"{match.group(2)}/{match.group(3)}"
            rest = (match.group(4) or "").split("/")
            user = self._user()
            repo = hub._repo(repo_type, repo_id)
            hub._readable(repo, user)
            action, revision = rest[0], unquote(rest[1]) if len(rest) > 1 else "main"
            m = self.command
            if m == "GET" and action in ("", "revision"):
                return self._json(200, hub.repo_info(repo, revision))
            if m == "GET" and action == "tree":
                sub = unquote("/".join(rest[2:])).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._json(200, hub.tree(repo, revision, sub, recursive))
            if m == "POST" and action == "paths-info":
                form = parse_qs(body.decode())
                return self._json(200, hub.paths_info(repo, revision, form.get("paths", [])))
            if m == "POST" and action == "preupload":
                hub._writable(repo, user)
                if query.get("create_pr"):
                    raise HubError(400, "pull requests are not supported by the local hub")
                return self._json(200, hub.preupload(repo, revision, json.loads(body)))
            if m == "POST" and action == "commit":
                if query.get("create_pr"):
                    raise HubError(400, "pull requests are not supported by the local hub")
                return self._json(200, hub.commit(repo, revision, body, user))
            hub.unhandled.append(f"{m} {self.path}")
            logger.warning("local hub: no route for %s %s", m, self.path)
            raise HubError(404, f"the local hub does not implement {m} {self.path}")

        def _resolve(self, match: re.Match) -> None:
            repo_type = _type_of(match.group(1))
            repo = hub._repo(repo_type, f"{match.group(2)}/{match.group(3)}")
            hub._readable(repo, self._user())
            commit = hub._commit(repo, unquote(match.group(4)))
            filename = unquote(match.group(5))
            stored = commit.files.get(filename)
            if stored is None:
                raise HubError(
                    404, f"{filename} does not exist on this revision", "EntryNotFound", {"X-Repo-Commit": commit.oid}
                )
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Accept-Ranges": "bytes"}
            if stored.lfs:
                # As on the Hub: LFS content lives on a CDN; the redirect itself carries the file's metadata.
                headers.update(
                    {
                        "Location": f"{hub.cdn_url}/_cdn/{stored.sha256}",
                        "ETag": f'"{stored.git_oid}"',
                        "X-Linked-Etag": f'"{stored.sha256}"',
                        "X-Linked-Size": str(len(stored.content)),
                    }
                )
                return self._send(302, b"", headers, content_type="text/plain")
            self._content(stored.content, headers)

        def _cdn(self, oid: str) -> None:
            if "Authorization" in self.headers:
                hub.cdn_requests_with_auth.append(oid)
            data = hub.lfs_objects.get(oid.split("?")[0])
            if data is None:
                raise HubError(404, "no such object")
            self._content(data, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

        def _content(self, data: bytes, headers: dict[str, str]) -> None:
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if m is None:
                    raise HubError(416, f"unsupported range {rng}")
                start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
                end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data) and len(data) > 0:
                    raise HubError(416, f"range {rng} outside of {len(data)} bytes")
                chunk = data[start : end + 1]
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
                return self._send(206, chunk, headers, content_type="application/octet-stream", length=len(chunk))
            self._send(200, data, headers, content_type="application/octet-stream", length=len(data))

    return Handler


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def network_guard(record: list[str]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Replacements for ``socket.getaddrinfo`` and ``socket.socket.connect`` that refuse anything but loopback.

    Each refusal raises ``OSError`` (what a client sees when the network is down) and is appended to ``record``, so a
    test can fail on it even when a library swallows the error. Install them with ``monkeypatch.setattr`` (the
    ``local_hub`` fixture) or with :func:`install_network_guard` in a subprocess.
    """
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            record.append(f"getaddrinfo({host!r})")
            raise OSError(f"test network guard: lookup of {host!r} refused (only loopback is allowed)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            record.append(f"connect({address!r})")
            raise OSError(f"test network guard: connection to {address!r} refused (only loopback is allowed)")
        return real_connect(sock, address)

    return getaddrinfo, connect


def install_network_guard() -> list[str]:
    """Guard this whole process (for subprocesses started by tests); returns the list refusals are recorded in."""
    record: list[str] = []
    socket.getaddrinfo, socket.socket.connect = network_guard(record)
    return record


def _type_of(prefix: str | None) -> str:
    return {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")


if __name__ == "__main__":  # manual use: python tests/hub_server.py, then HF_ENDPOINT=http://127.0.0.1:PORT
    logging.basicConfig(level=logging.DEBUG)
    with LocalHub() as hub:
        print(f"local hub on {hub.url} (Ctrl-C to stop)")  # noqa: T201  (a script, not the library)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

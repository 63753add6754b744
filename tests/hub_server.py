"""A small in-memory Hugging Face Hub for tests: enough of the HTTP API for huggingface_hub's client.

Serves, on 127.0.0.1 only, model repos held in memory:

- ``POST /api/repos/create``                       create_repo (409 when it exists, as the Hub does)
- ``POST /api/validate-yaml``                      README.md metadata check done by create_commit
- ``POST /api/models/{repo}/preupload/{rev}``      upload modes: *.safetensors / *.bin go through LFS
- ``POST /{repo}.git/info/lfs/objects/batch``      LFS batch API, "basic" transfer
- ``PUT  /lfs-objects/{oid}``                      the LFS upload itself (sha256 checked)
- ``POST /api/models/{repo}/commit/{rev}``         ndjson commit: regular (base64) and LFS files, deletions
- ``GET  /api/models/{repo}[/revision/{rev}]``     model_info / repo_info with siblings
- ``GET  /api/models/{repo}/tree/{rev}[/path]``    list_repo_tree
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``         downloads, with ETag, X-Repo-Commit, Content-Length

Bounded: request bodies above ``max_body`` bytes are refused, and only the ``main`` revision exists
(or the current commit sha). Use as a context manager::

    with HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.content).hexdigest() if self.lfs else git_blob_sha1(self.content)


@dataclass
class Repo:
    repo_id: str
    files: dict[str, StoredFile] = field(default_factory=dict)
    sha: str = "0" * 40
    commits: int = 0

    def commit(self, message: str) -> str:
        digest = hashlib.sha1()
        digest.update(f"{self.sha}{message}{self.commits}".encode())
        for path in sorted(self.files):
            digest.update(path.encode() + self.files[path].etag.encode())
        self.sha = digest.hexdigest()
        self.commits += 1
        return self.sha


class HubServer:
    """An in-memory Hub on ``http://127.0.0.1:<port>``; ``requests`` lists (method, path) seen."""

    def __init__(self, max_body: int = 256 * 1024 * 1024):
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.max_body = max_body
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    # --- plumbing ------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # silence the default stderr log
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server_hub.max_body:
            raise ValueError(f"body of {length} bytes is over the {self.server_hub.max_body} limit")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > self.server_hub.max_body:
                    raise ValueError("chunked body over the limit")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = self.server_hub
        with hub.lock:
            hub.requests.append((method, path))
        try:
            for pattern, verb, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and verb == method:
                    return handler(self, **match.groupdict())
            self._error(404, None, f"no route for {method} {path}", head=method == "HEAD")
        except ValueError as err:
            self._error(400, None, str(err))

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # --- helpers -------------------------------------------------------------------------------------------
    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
        return repo

    def _revision_ok(self, repo: Repo, revision: str, head: bool = False) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Revision {revision} not found", head=head)
        return False

    # --- API -----------------------------------------------------------------------------------------------
    def create_repo(self):
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, None, "this test hub only serves model repos")
        name, org = payload["name"], payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        hub = self.server_hub
        url = {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id}
        with hub.lock:
            if repo_id in hub.repos:
                return self._json(409, {**url, "error": "You already created this model repo"})
            hub.repos[repo_id] = Repo(repo_id)
            hub.repos[repo_id].commit("initial commit")
        self._json(200, url)

    def validate_yaml(self):
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, repo_id: str, revision: str):
        payload = json.loads(self._body())
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        files = []
        for item in payload["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES)
            existing = repo.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.etag if existing else None})
        self._json(200, {"files": files})

    def lfs_batch(self, repo_id: str):
        payload = json.loads(self._body())
        if self._repo(repo_id) is None:
            return
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.server_hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.server_hub.url}/lfs-objects/{item['oid']}"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, oid: str):
        content = self._body()
        if hashlib.sha256(content).hexdigest() != oid:
            return self._error(400, None, f"content does not hash to {oid}")
        with self.server_hub.lock:
            self.server_hub.lfs_objects[oid] = content
        self._send(200)

    def commit(self, repo_id: str, revision: str):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        hub = self.server_hub
        summary = "commit"
        with hub.lock:
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value.get("summary", summary)
                elif key == "file":
                    repo.files[value["path"]] = StoredFile(base64.b64decode(value["content"]),
                                                           lfs=value["path"].endswith(LFS_SUFFIXES))
                elif key == "lfsFile":
                    content = hub.lfs_objects.get(value["oid"])
                    if content is None:
                        return self._error(422, None, f"LFS object {value['oid']} was never uploaded")
                    repo.files[value["path"]] = StoredFile(content, lfs=True)
                elif key == "deletedFile":
                    repo.files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in repo.files if p.startswith(prefix)]:
                        del repo.files[path]
                else:
                    return self._error(400, None, f"unknown commit operation {key!r}")
            sha = repo.commit(summary)
        self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None})

    def model_info(self, repo_id: str, revision: str = "main"):
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        siblings = [{"rfilename": path, "size": len(f.content)} for path, f in sorted(repo.files.items())]
        self._json(200, {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                         "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                         "siblings": siblings, "lastModified": "2026-01-01T00:00:00.000Z",
                         "createdAt": "2026-01-01T00:00:00.000Z"})

    def tree(self, repo_id: str, revision: str, path: str | None = None):
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        path = (path or "").strip("/")
        prefix = path + "/" if path else ""
        entries, folders = [], set()
        for name, stored in sorted(repo.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest:
                folders.add(prefix + rest.split("/", 1)[0])
                continue
            entry = {"type": "file", "path": name, "size": len(stored.content), "oid": git_blob_sha1(stored.content)}
            if stored.lfs:
                entry["lfs"] = {"oid": stored.etag, "size": len(stored.content), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        self._json(200, entries)

    def resolve(self, repo_id: str, revision: str, path: str):
        head = self.command == "HEAD"
        repo = self._repo(repo_id, head=head)
        if repo is None or not self._revision_ok(repo, revision, head=head):
            return
        stored = repo.files.get(path)
        if stored is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", head=head)
        etag = f'"{stored.etag}"'
        headers = {"ETag": etag, "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(stored.content))})
        self._send(200, stored.content, headers, content_type="application/octet-stream", head=head)


_REPO = r"(?P<repo_id>[\w.\-]+(?:/[\w.\-]+)?)"
ROUTES = [
    (r"/api/repos/create", "POST", _Handler.create_repo),
    (r"/api/validate-yaml", "POST", _Handler.validate_yaml),
    (rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", "POST", _Handler.preupload),
    (rf"/{_REPO}\.git/info/lfs/objects/batch", "POST", _Handler.lfs_batch),
    (r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "PUT", _Handler.lfs_upload),
    (rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", "POST", _Handler.commit),
    (rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", "GET", _Handler.tree),
    (rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", "GET", _Handler.model_info),
    (rf"/api/models/{_REPO}", "GET", _Handler.model_info),
    (rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "GET", _Handler.resolve),
    (rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "HEAD", _Handler.resolve),
]

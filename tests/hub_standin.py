"""A local stand-in for the Hugging Face Hub, for tests without network.

It serves one dataset repo at one commit through the endpoints huggingface_hub 2.4.0 calls for
``HfApi.dataset_info`` (``GET /api/datasets/{repo}/revision/{rev}``), ``HfApi.list_repo_tree``
(``GET /api/datasets/{repo}/tree/{rev}``, paginated with a ``Link: <...>; rel="next"`` header like
the hub) and ``hf_hub_download`` (``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}``, with the
``X-Repo-Commit``/``ETag`` headers it requires). It never sends ``X-Xet-*`` headers or ``xetHash``
entries, so huggingface_hub takes its plain HTTP download path. ``*.jsonl`` files are listed as LFS
files (sha256), others as files stored in git (blob sha1). With a ``token`` every request must carry
``Authorization: Bearer <token>`` (a gated repo). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    def __init__(self, repo: str, files: dict[str, bytes], *, commit: str = "c0ffee" * 6 + "beef",
                 token: str | None = None, page_size: int = 3):
        self.repo, self.files, self.commit, self.token, self.page_size = repo, dict(files), commit, token, page_size
        self.corrupt: set[str] = set()  # paths served with other bytes than listed
        self.requests: list[tuple[str, str]] = []  # (method, path incl. query)
        self.auth_headers: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, method: str = "GET") -> list[str]:
        """Repo paths fetched through ``resolve`` with ``method``."""
        prefix = f"/datasets/{self.repo}/resolve/{self.commit}/"
        return [unquote(p[len(prefix):]) for m, p in self.requests if m == method and p.startswith(prefix)]

    def tree(self) -> list[dict]:
        entries, folders = [], set()
        for path, data in sorted(self.files.items()):
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if path.endswith(".jsonl"):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                entry["oid"] = git_blob_sha1(pointer.encode())
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders]
        return sorted(entries, key=lambda e: e["path"])

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, headers: dict | None = None):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _route(self, head: bool):
                hub.requests.append((self.command, self.path))
                if self.path.startswith("/api/agent-harnesses"):  # huggingface_hub's agent registry: none here
                    return self._send(404, b"{}", {}, head)
                auth = self.headers.get("Authorization")
                hub.auth_headers.append(auth)
                if hub.token is not None and auth != f"Bearer {hub.token}":
                    return self._send(401, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, head)
                url = urlsplit(self.path)
                path = unquote(url.path)
                api = f"/api/datasets/{hub.repo}/"
                revs = ("main", hub.commit)
                if path.startswith(api + "revision/"):
                    if path[len(api + "revision/"):] not in revs:
                        return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
                    return self._json({"id": hub.repo, "sha": hub.commit, "private": False})
                if path.startswith(api + "tree/"):
                    if path[len(api + "tree/"):] not in revs:
                        return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
                    entries = hub.tree()
                    start = int(parse_qs(url.query).get("cursor", ["0"])[0])
                    page = entries[start:start + hub.page_size]
                    headers = {}
                    if start + hub.page_size < len(entries):
                        nxt = f"{hub.url}{url.path}?recursive=true&expand=false&cursor={start + hub.page_size}"
                        headers["Link"] = f'<{nxt}>; rel="next"'
                    return self._json(page, headers)
                resolve = f"/datasets/{hub.repo}/resolve/"
                if path.startswith(resolve):
                    rev, _, file = path[len(resolve):].partition("/")
                    if rev not in revs:
                        return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
                    if file not in hub.files:
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit},
                                          head)
                    data = hub.files[file]
                    etag = hashlib.sha256(data).hexdigest() if file.endswith(".jsonl") else git_blob_sha1(data)
                    if file in hub.corrupt:
                        data = data[::-1]
                    return self._send(200, data, {"X-Repo-Commit": hub.commit, "ETag": f'"{etag}"',
                                                  "Content-Type": "application/octet-stream"}, head)
                return self._send(404, b"{}", {}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        return Handler

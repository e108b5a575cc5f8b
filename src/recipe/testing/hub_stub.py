"""A small stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1, for push tests.

It speaks the routes ``huggingface_hub`` uses to create a dataset repo and commit regular
(non-LFS) files: ``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/datasets/{repo}/preupload/{rev}``
(every file is answered ``regular``, so its bytes come inline) and
``POST /api/datasets/{repo}/commit/{rev}`` (NDJSON, base64 content). It keeps each repo's
files and the Authorization headers it saw. Point ``HF_ENDPOINT`` at :attr:`HubStub.url`.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"


class HubStub:
    """Run with ``with HubStub() as hub:``; ``hub.files[repo_id][path]`` holds the committed bytes."""

    def __init__(self, fail_commits: int | None = None) -> None:
        """``fail_commits``: the HTTP status every commit gets instead of success (None: commits work)."""
        self.files: dict[str, dict[str, bytes]] = {}
        self.created: list[dict] = []
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        self.fail_commits = fail_commits
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                stub.paths.append(f"GET {self.path}")
                self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                stub.paths.append(f"POST {self.path}")
                stub.auth.append(self.headers.get("Authorization"))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    body = json.loads(raw or b"{}")
                    stub.created.append(body)
                    repo = f"{body.get('organization') or 'user'}/{body['name']}" if "/" not in body["name"] \
                        else body["name"]
                    stub.files.setdefault(repo, {})
                    return self._reply(200, {"url": f"http://{HOST}:{stub.port}/datasets/{repo}"})
                if parts[:2] == ["api", "validate-yaml"]:  # the card's metadata, checked before a commit
                    return self._reply(200, {"errors": [], "warnings": []})
                if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "preupload":
                    body = json.loads(raw or b"{}")
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in body.get("files", [])]})
                if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "commit":
                    if stub.fail_commits:
                        return self._reply(stub.fail_commits, {"error": "commit failed (injected)"})
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            stub.files.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    return self._reply(200, {"success": True, "commitOid": "0" * 40,
                                             "commitUrl": f"http://{HOST}:{stub.port}/datasets/{repo}/commit/0"})
                return self._reply(404, {"error": f"no route {self.path}"})

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "HubStub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A loopback stand-in for the Hugging Face Hub's file endpoint and for a plain mirror.

``HEAD/GET /{repo_id}/resolve/{revision}/{filename}`` answers with what huggingface_hub
requires (``X-Repo-Commit``, ``ETag``, ``Content-Length``); ``GET /mirror/{filename}`` is a
plain static file. Tests put files in ``server.files`` and read ``server.requests``.

Any other request (the Hub's API: ``POST /api/repos/create``, ...) is answered from
``server.api``, keyed by its path: a body, sent with status 200, or ``NEVER`` for a server
that takes the request and never answers (until the server stops). Unlisted paths get 404.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from typing import Optional

NEVER = None  # server.api's value for a path the server never answers
# How long a NEVER request is held at most: a client without a timeout fails, never hangs.
_HOLD_S = 60
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")


class FakeHub:
    def __init__(self):
        self.files: dict[tuple[str, str, str], bytes] = {}  # (repo_id, revision, filename)
        self.mirror: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.api: dict[str, Optional[bytes]] = {}
        self._stopping = threading.Event()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def do_POST(self):
                hub.requests.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                if path in hub.api and hub.api[path] is NEVER:
                    hub._stopping.wait(_HOLD_S)
                    self.close_connection = True
                    return
                data = hub.api.get(path)
                self.send_response(404 if data is None else 200)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def _answer(self, body: bool):
                hub.requests.append((self.command, self.path))
                data, commit = hub._lookup(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                if commit is not None:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _lookup(self, path: str):
        path = path.split("?", 1)[0]
        if path.startswith("/mirror/"):
            return self.mirror.get(path[len("/mirror/"):]), None
        m = _RESOLVE.match(path)
        if not m:
            return None, None
        key = (m["repo"], m["revision"], m["filename"])
        return self.files.get(key), m["revision"]

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # lets NEVER requests go
        self.server.shutdown()
        self.server.server_close()

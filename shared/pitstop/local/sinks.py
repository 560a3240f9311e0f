"""A stand-in for Slack, Google Chat and any webhook receiver: an HTTP server on 127.0.0.1 that keeps every POST.

It answers 200 with `{"ok": true, "ts": …}` (what Slack's incoming webhooks and `chat.postMessage` return), so
pitstop's real clients (slack-sdk, httpx) talk to it unchanged. It can be told to fail: a path containing
`/fail` answers 500 always, `?fail=N` answers 500 to the first N requests of that path and query (per
event, when the request names one in `X-Pitstop-Event-Id`). Each request
is also appended to `notifications.jsonl` in the state directory, for `pitstop dev` users to read.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Received:
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]  # names lowercased
    body: bytes
    status: int  # what the sink answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Sinks:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.received: list[Received] = []
        self._counts: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._journal = state_dir / "notifications.jsonl" if state_dir else None
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Sinks:
        sinks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = sinks._record(self.path, dict(self.headers), body)
                reply = json.dumps({"ok": status == 200, "ts": f"{time.time():.6f}", "channel": "C0PITSTOP"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="sinks", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, raw_path: str, headers: dict[str, str], body: bytes) -> int:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            key = (raw_path, headers.get("X-Pitstop-Event-Id") or headers.get("x-pitstop-event-id"))
            seen = self._counts[key] = self._counts.get(key, 0) + 1
            failing = "/fail" in parts.path or seen <= int(query.get("fail", "0") or 0)
            status = 500 if failing else 200
            self.received.append(Received(parts.path, query, {k.lower(): v for k, v in headers.items()}, body, status))
            if self._journal is not None:
                with self._journal.open("a") as f:
                    f.write(json.dumps({"path": parts.path, "status": status, "at": time.time(),
                                        "body": body.decode(errors="replace")}) + "\n")
        return status

    def at(self, path: str) -> list[Received]:
        """What arrived at `path` (without the query), oldest first."""
        with self._lock:
            return [r for r in self.received if r.path == path]


def start_sinks(state_dir: Path | None = None) -> Sinks:
    return Sinks(state_dir).start()

"""The local Cloud Run front end: an HTTP reverse proxy that splits traffic.

Each service gets its own port (its URL) where every request goes to a revision
picked at random by the current percentages; each tag gets its own port routed
only to the tagged revision. A service's routing table is an immutable `Routes`
value replaced by one assignment, so a traffic change never leaves a request
half-routed: in-flight requests finish where they started (the old revision
keeps running) and new ones see the new table.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pitstop.core.requestlogs import Request
from pitstop.local.requestlog import RequestLog, Served

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT_S = 300.0  # Cloud Run's default request timeout
MAX_IDLE_PER_BACKEND = 32
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length",
    )
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class Backend:
    revision: str  # short revision name, e.g. "web-00002-abc"
    port: int


@dataclass(frozen=True)
class Routes:
    """One service's routing table; replaced whole, never changed in place."""

    split: tuple[tuple[Backend, int], ...] = ()  # (backend, percent) with percent > 0
    tags: dict[str, Backend] = field(default_factory=dict)

    def pick(self, tag: str | None) -> Backend | None:
        if tag is not None:
            return self.tags.get(tag)
        if not self.split:
            return None
        backends = [backend for backend, _ in self.split]
        weights = [percent for _, percent in self.split]
        return random.choices(backends, weights=weights)[0]


class Router:
    def __init__(self, request_log: RequestLog, host: str = "127.0.0.1") -> None:
        self.request_log = request_log
        self.host = host
        self._routes: dict[str, Routes] = {}  # full service name -> table
        self._listeners: dict[tuple[str, str | None], _Listener] = {}  # (service, tag) -> listener
        self._lock = threading.Lock()  # guards listener creation, not routing
        self.upstream = _UpstreamPool(host)
        self.log_export: Any = None  # local/logexport.LogExport once the stack has the Pub/Sub emulator

    def add_service(self, service_name: str) -> str:
        """Open the service's URL (no traffic yet) and return it."""
        self._routes.setdefault(service_name, Routes())
        return self._listener(service_name, None).url

    def set_routes(self, service_name: str, split: list[tuple[Backend, int]], tags: dict[str, Backend]) -> dict[str, str]:
        """Swap in a new table; returns each tag's URL."""
        urls = {tag: self._listener(service_name, tag).url for tag in tags}
        self._routes[service_name] = Routes(
            split=tuple((b, p) for b, p in split if p > 0), tags=dict(tags)
        )
        log.info(
            "traffic routed",
            extra={
                "service": service_name,
                "split": {b.revision: p for b, p in split if p > 0},
                "tags": {t: b.revision for t, b in tags.items()},
            },
        )
        return urls

    def routes(self, service_name: str) -> Routes:
        return self._routes.get(service_name, Routes())

    def remove_service(self, service_name: str) -> None:
        self._routes.pop(service_name, None)
        with self._lock:
            keys = [key for key in self._listeners if key[0] == service_name]
            listeners = [self._listeners.pop(key) for key in keys]
        _close_all(listeners)

    def stop(self) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        _close_all(listeners)
        self.upstream.close_all()

    def record(self, service_name: str, revision: str, status: int, latency_ms: float) -> None:
        _, project, _, location, _, service = service_name.split("/")
        at = time.time()
        self.request_log.add(
            Served(
                at=at, project=project, location=location, service=service,
                revision=revision, status=status, latency_ms=latency_ms,
            )
        )
        if self.log_export is not None:  # Cloud Run's request log entry, through the sink's filter (non-blocking)
            self.log_export.offer(Request(
                insert_id=f"{uuid.uuid4().hex[:20]}", at=datetime.fromtimestamp(at, timezone.utc), project=project,
                location=location, service=service, revision=revision, status=status, latency_ms=latency_ms))

    def _listener(self, service_name: str, tag: str | None) -> _Listener:
        with self._lock:
            listener = self._listeners.get((service_name, tag))
            if listener is None:
                listener = _Listener(self, service_name, tag)
                self._listeners[(service_name, tag)] = listener
            return listener


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, router: Router, service_name: str, tag: str | None) -> None:
        super().__init__((router.host, 0), _ProxyHandler)
        self.router = router
        self.service_name = service_name
        self.tag = tag
        self.url = f"http://{router.host}:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name=f"router {self.url}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _ack_promptly(conn: http.client.HTTPConnection) -> None:
    """Don't delay our ACKs while the revision answers.

    An app that writes headers and body separately without TCP_NODELAY (plain
    http.server does) holds the body until its headers are ACKed; a delayed
    ACK on a kept-alive connection then adds ~40 ms to every request, which
    would show up as latency the app doesn't have. Linux only.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _close_all(listeners: list[_Listener]) -> None:
    # Each shutdown waits out a serve_forever poll interval; do them side by side.
    with ThreadPoolExecutor(max(1, len(listeners))) as pool:
        list(pool.map(_Listener.close, listeners))


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    reason: str | None = None


def _plain(status: int, message: str) -> _Reply:
    return _Reply(status, (message + "\n").encode(), [("Content-Type", "text/plain; charset=utf-8")])


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with clients
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Listener

    def _proxy(self) -> None:
        started = time.monotonic()
        router = self.server.router
        backend = router.routes(self.server.service_name).pick(self.server.tag)
        if backend is None:
            what = f"tag '{self.server.tag}'" if self.server.tag else "service"
            self._send(_plain(503, f"No ready revision serves this {what}."))
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            reply = _plain(411, "Chunked request bodies are not supported by the local router.")
            self.close_connection = True  # the unread body would be taken for the next request
        else:
            reply = self._forward(backend, self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        # Logged before answering, so whoever has the answer finds it in the log;
        # what is left to do is a write into the socket buffer.
        router.record(self.server.service_name, backend.revision, reply.status, (time.monotonic() - started) * 1000)
        self._send(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy

    def _forward(self, backend: Backend, body: bytes) -> _Reply:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = self.client_address[0]
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        pool = self.server.router.upstream
        conn, reused = pool.get(backend.port)
        while True:
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                _ack_promptly(conn)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and not isinstance(e, TimeoutError) and self.command in IDEMPOTENT:
                    # The revision had closed this pooled keep-alive connection: retry once, fresh
                    # (only where sending twice is harmless, as HTTP clients do).
                    conn, reused = pool.fresh(backend.port), False
                    continue
                if isinstance(e, ConnectionRefusedError):
                    return _plain(503, f"Revision '{backend.revision}' is not reachable: {e}.")
                return _plain(502, f"Revision '{backend.revision}' failed to answer: {e!r}.")
        if response.will_close:
            conn.close()
        else:
            pool.put(backend.port, conn)
        headers_out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        if self.command == "HEAD":
            headers_out.append(("Content-Length", response.getheader("Content-Length", "0")))
        return _Reply(response.status, data, headers_out, response.reason)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response_only(reply.status, reply.reason)
            for name, value in reply.headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left

    def log_message(self, format: str, *args: object) -> None:
        pass  # every request is in the RequestLog; access logs would drown the JSON log


class _UpstreamPool:
    """Idle keep-alive connections to revision processes, shared by all handler threads."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._idle: dict[int, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def get(self, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused (a reused one may have been closed by the peer)."""
        with self._lock:
            idle = self._idle.get(port)
            if idle:
                return idle.pop(), True
        return self.fresh(port), False

    def fresh(self, port: int) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, port, timeout=UPSTREAM_TIMEOUT_S)

    def put(self, port: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(port, [])
            if len(idle) < MAX_IDLE_PER_BACKEND:
                idle.append(conn)
                return
        conn.close()

    def close_all(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

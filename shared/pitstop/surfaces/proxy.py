"""`pitstop dashboard`: the dashboard on http://127.0.0.1:PORT/dashboard/, as the person at this machine.

A browser cannot add an ID token to the pages it opens, and on GCP the `api` function sits behind Cloud
Run's IAM check. So, like `gcloud run services proxy`, a small local server forwards each request to the
API function (PITSTOP_API) with the person's tokens added exactly as the CLI sends them
(`Caller.headers`). It serves only /dashboard and /api/v1, only on a loopback address, and refuses what
a page of another site could make a browser send to it:

- a Host other than its own (DNS rebinding: evil.example resolving to 127.0.0.1),
- a request that changes something (not GET or HEAD) unless it is JSON from its own origin: a cross-site
  form can send neither `Content-Type: application/json` nor our Origin, and a cross-site fetch that
  tries is stopped by the browser's preflight, which this server never approves.

Not part of the functions' bundle (it uses httpx, a CLI dependency).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

DEFAULT_PORT = 8765
FORWARDED = ("/dashboard", "/api/v1/")
MAX_BODY = 1024 * 1024  # bytes; the API's own limit is half of it
TOKEN_MARGIN_S = 300  # a token is minted again this long before it expires
# Hop-by-hop headers (RFC 9110 §7.6.1), and what the proxy itself sets or must not pass on.
NOT_FORWARDED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length", "authorization", "x-pitstop-token",
                 "cookie", "accept-encoding"}
NOT_RETURNED = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade",
                "set-cookie"}


class ProxyRefused(ValueError):
    """The proxy was asked to listen where others could reach it."""


def start_proxy(api_url: str, port: int = 0, host: str = "127.0.0.1",
                headers: Callable[[], dict[str, str]] | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Serve the dashboard of `api_url` on host:port (0: any free port) in a background thread; returns the
    server (`shutdown()` stops it) and the dashboard's URL. `headers`: the person's auth headers (default:
    the CLI's caller, from the environment)."""
    if not _loopback(host):
        raise ProxyRefused(f"the dashboard proxy adds your ID token to every request, so it listens only on this "
                           f"machine (127.0.0.1, ::1 or localhost), not on {host}; nothing was started")
    if headers is None:
        headers = _caller_headers(api_url)
    handler = type("Handler", (_Forward,), {"api": api_url.rstrip("/"), "auth": _TokenCache(headers)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    handler.origins = {f"{name}:{bound}" for name in (shown, "127.0.0.1", "localhost", "[::1]")}
    threading.Thread(target=server.serve_forever, name="dashboard-proxy", daemon=True).start()
    return server, f"http://{shown}:{bound}/dashboard/"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _caller_headers(api_url: str) -> Callable[[], dict[str, str]]:
    from pitstop.config import Config
    from pitstop.surfaces.client import Caller

    caller = Caller.from_env(Config.from_env().project)
    return Caller(caller.audience, api_url).headers


class _TokenCache:
    """The person's headers, minted again only when a token nears its expiry (gcloud takes a second or two)."""

    def __init__(self, mint: Callable[[], dict[str, str]]) -> None:
        self.mint, self.lock = mint, threading.Lock()
        self.headers: dict[str, str] = {}
        self.until = 0.0

    def __call__(self) -> dict[str, str]:
        with self.lock:
            if time.time() >= self.until:
                self.headers = self.mint()
                self.until = _expiry(self.headers.get("X-Pitstop-Token", "")) - TOKEN_MARGIN_S
            return self.headers


def _expiry(token: str) -> float:
    """The `exp` claim of a JWT, read without verifying it (the API verifies); now if unreadable."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time()


class _Forward(BaseHTTPRequestHandler):
    api: str
    auth: _TokenCache
    origins: set[str]
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._forward()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _forward(self) -> None:
        import httpx

        from pitstop.surfaces.credentials import NoCredentials

        refusal = self._refusal()
        if refusal:
            return self._answer(*refusal)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._answer(413, f"the request body is larger than {MAX_BODY} bytes; nothing was sent")
        body = self.rfile.read(length) if length else b""
        try:
            auth = self.auth()
        except NoCredentials as err:
            return self._answer(401, f"no ID token to open the dashboard with: {err}")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
        try:
            response = httpx.request(self.command, self.api + self.path, content=body, headers={**headers, **auth},
                                     timeout=60)
        except httpx.HTTPError as err:
            return self._answer(502, f"could not reach the pitstop API at {self.api} ({err}); nothing was sent. "
                                     f"Is it running (locally: `pitstop dev up`)?")
        self.send_response(response.status_code)
        for name, value in response.headers.multi_items():
            if name.lower() not in NOT_RETURNED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.content)

    def _refusal(self) -> tuple[int, str] | None:
        path = self.path.split("?", 1)[0]
        if self.headers.get("Host") not in self.origins:
            return 403, "this proxy answers only requests addressed to it on 127.0.0.1; nothing was sent"
        if not (path == FORWARDED[0] or path.startswith(FORWARDED[0] + "/") or path.startswith(FORWARDED[1])):
            return 404, f"this proxy serves only /dashboard/ and /api/v1/, not {path}; nothing was sent"
        if self.command not in ("GET", "HEAD"):
            origin = self.headers.get("Origin")
            if origin is not None and origin.split("://", 1)[-1] not in self.origins:
                return 403, f"a page of {origin} may not send commands through this proxy; nothing was sent"
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                return 415, "commands through this proxy must be JSON (Content-Type: application/json); nothing was sent"
        return None

    def _answer(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # a refused request's body may be left unread
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: the terminal shows the URL
        pass

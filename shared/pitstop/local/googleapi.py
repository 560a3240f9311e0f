"""What the local stand-ins for Google's HTTP endpoints share.

- `LocalServer`: an HTTP server on host:port (0 = any free port) answering from
  a daemon thread, with `url`, `stop()` and use as a context manager (the
  local Cloud Build, Cloud Run and ID-token issuer).
- `ApiError` and `GoogleApiHandler`: a REST API the way Google's client
  libraries expect it, JSON in and out and errors as Google's JSON error body
  `{"error": {"code", "message", "status"}}` (the local Cloud Build and Cloud
  Run Admin APIs).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LocalServer:
    """Serves `handler` on host:port from a daemon thread once `_serve()` is called.

    The handler reaches this object as `self.server.owner`.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str, port: int, thread_name: str) -> None:
        self.host = host
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        self._thread.start()

    def _close(self) -> None:
        """Stop answering and free the port (also when never started)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def stop(self) -> None:
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ApiError(Exception):
    """A refusal, answered as Google's JSON error: HTTP status, status name (google.rpc.Code), message."""

    def __init__(self, http_status: int, status: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.http_status, "message": self.message, "status": self.status}}


def invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


class GoogleApiHandler(BaseHTTPRequestHandler):
    """JSON requests and answers; a subclass routes them through `_answer`.

    Subclasses set `log` (their module's logger, which logs the requests) and
    `api_name` (as in "Internal error in the local Cloud Build: ...").
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    log: logging.Logger = logging.getLogger(__name__)
    api_name = "the local API"

    def _answer(self, path: str, route: Callable[[], dict[str, Any]]) -> None:
        """Answer 200 with what `route` returns; its ApiError as Google's error, anything else as a 500."""
        try:
            self._send(200, route())
        except ApiError as e:
            self.log.warning("API request refused", extra={"method": self.command, "path": path, "error": e.message})
            self._send(e.http_status, e.body())
        except Exception as e:  # a bug here must still answer, as GCP's 500 would
            self.log.exception("API request failed", extra={"method": self.command, "path": path})
            error = ApiError(500, "INTERNAL", f"Internal error in {self.api_name}: {type(e).__name__}: {e}")
            self._send(500, error.body())

    def _json_body(self) -> dict[str, Any]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise invalid(f"Request body is not JSON: {e}") from e
        if not isinstance(body, dict):
            raise invalid("Request body must be a JSON object.")
        return body

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        self.log.debug("api request", extra={"request": format % args})

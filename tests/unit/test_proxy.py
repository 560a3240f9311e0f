"""`pitstop dashboard`'s proxy: it forwards /dashboard and /api/v1 with the person's tokens, and refuses what a
page of another site could make a browser send it. The API behind it is a stand-in that echoes what it got
(the real one is driven through the proxy by tests/e2e/test_dashboard.py)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import httpx
import pytest

from pitstop.surfaces.proxy import ProxyRefused, start_proxy


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers),
                           "body": self.rfile.read(length).decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def proxy():
    api = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    minted = []

    def headers() -> dict[str, str]:
        minted.append(1)
        return {"X-Pitstop-Token": "a.eyJleHAiOiA0MTAyNDQ0ODAwfQ.c", "Authorization": "Bearer iam"}  # exp: 2100

    server, url = start_proxy(f"http://127.0.0.1:{api.server_address[1]}", headers=headers)
    yield url.removesuffix("/dashboard/"), minted
    server.shutdown()
    api.shutdown()


def test_it_forwards_the_dashboard_and_the_api_with_the_persons_tokens_minted_once(proxy):
    base, minted = proxy
    page = httpx.get(f"{base}/dashboard/rollouts/x?action=pause", headers={"Authorization": "Bearer forged"}).json()
    assert page["path"] == "/dashboard/rollouts/x?action=pause"
    assert page["headers"]["X-Pitstop-Token"].startswith("a.") and page["headers"]["Authorization"] == "Bearer iam"
    sent = httpx.post(f"{base}/api/v1/rollouts/x:pause", json={"reason": "look"},
                      headers={"Origin": base}).json()
    assert (sent["method"], json.loads(sent["body"])) == ("POST", {"reason": "look"})
    assert len(minted) == 1  # the token is good for hours: not minted again per request


@pytest.mark.parametrize("method, path, headers, status", [
    ("GET", "/", {}, 404),  # only /dashboard and /api/v1
    ("GET", "/metadata/token", {}, 404),
    ("GET", "/dashboard/", {"Host": "evil.example:80"}, 403),  # DNS rebinding
    ("POST", "/api/v1/rollouts/x:promote", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("POST", "/api/v1/rollouts/x:promote", {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/v1/rollouts/x:promote", {"Content-Type": "application/json", "Origin": "https://evil.example"},
     403),
])
def test_it_refuses_what_another_site_could_send(proxy, method, path, headers, status):
    base, _ = proxy
    response = httpx.request(method, base + path, headers=headers, content=b'{"reason": "x"}'
                             if method == "POST" else None)
    assert response.status_code == status
    assert "nothing was sent" in response.text


def test_it_listens_only_on_this_machine():
    with pytest.raises(ProxyRefused, match="only on this machine"):
        start_proxy("http://127.0.0.1:1", host="0.0.0.0", headers=dict)

"""The Cloud Run adapter over the wire: the real run_v2 REST client against an
HTTP endpoint that records every request and answers like the Admin API v2."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pitstop.gcp.cloudrun import CloudRun, CloudRunError
from pitstop.core.models import Target

NAME = "projects/p/locations/us-central1/services/web"
REV = 2  # TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = 1


class FakeAdminApi(BaseHTTPRequestHandler):
    """Records requests; the service lives in `server.service` as Admin API JSON."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        if self.path.startswith(f"/v2/{NAME}?") or self.path == f"/v2/{NAME}":
            if self.server.service is None:
                return self._send(404, {"error": {"code": 404, "message": "Service not found", "status": "NOT_FOUND"}})
            return self._send(200, self.server.service)
        self._send(404, {"error": {"code": 404, "message": "no", "status": "NOT_FOUND"}})

    def _read(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")

    def do_PATCH(self) -> None:
        body = self._read()
        self.server.requests.append(("PATCH", self.path, body))
        if self.server.fail_with:
            code, status = self.server.fail_with
            return self._send(code, {"error": {"code": code, "message": "boom", "status": status}})
        self._accept(body)

    def do_POST(self) -> None:
        body = self._read()
        self.server.requests.append(("POST", self.path, body))
        body["name"] = NAME
        self._accept(body)

    def _accept(self, body: dict) -> None:
        svc = {**body, "name": NAME}  # the REST client moves `name` from the body into the URL
        template_rev = svc.get("template", {}).get("revision")
        traffic = svc.get("traffic") or [{"type": LATEST, "percent": 100}]
        svc["trafficStatuses"] = [{**t, "revision": t.get("revision") or template_rev} for t in traffic]
        svc["latestReadyRevision"] = f"{NAME}/revisions/{template_rev}"
        self.server.service = svc
        self._send(200, {"name": "projects/p/locations/us-central1/operations/op1", "done": True,
                         "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **svc}})


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAdminApi)
    server.requests, server.fail_with = [], None
    server.service = {
        "name": NAME, "uri": "https://web-abc-uc.a.run.app",
        "template": {"revision": "web-v1-aaaa", "containers": [{"image": "r/web@sha256:1111", "env": [
            {"name": "MODE", "value": "prod"}]}]},
        "traffic": [{"type": LATEST, "percent": 100}],
        "trafficStatuses": [{"type": LATEST, "percent": 100}],
        "latestReadyRevision": f"{NAME}/revisions/web-v1-aaaa",
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def adapter(server) -> CloudRun:
    return CloudRun.from_endpoint(f"http://127.0.0.1:{server.server_address[1]}")


def test_serving_reads_the_latest_ready_revision(api):
    assert adapter(api).serving("p", "us-central1", "web") == "web-v1-aaaa"
    assert api.requests[0][1].startswith(f"/v2/{NAME}")


def test_deploy_pins_traffic_then_adds_tagged_canary_at_zero(api):
    split = [Target(revision="web-v1-aaaa", percent=100, tag="stable"),
             Target(revision="web-v2-bbbb", percent=0, tag="canary")]
    observed = adapter(api).apply("p", "us-central1", "web", split, revision="web-v2-bbbb",
                                  image="r/web@sha256:2222")
    patches = [body for method, _, body in api.requests if method == "PATCH"]
    assert len(patches) == 2
    deploy, traffic = patches
    assert deploy["template"]["revision"] == "web-v2-bbbb"
    assert deploy["template"]["containers"][0]["image"] == "r/web@sha256:2222"
    assert deploy["template"]["containers"][0]["env"] == [{"name": "MODE", "value": "prod"}], "template kept"
    assert deploy["traffic"] == [{"type": REV, "revision": "web-v1-aaaa", "percent": 100}], \
        "LATEST pinned by name so the new revision takes no traffic"
    assert traffic["traffic"] == [{"type": REV, "revision": "web-v1-aaaa", "percent": 100, "tag": "stable"},
                                  {"type": REV, "revision": "web-v2-bbbb", "tag": "canary"}]  # zero omitted
    assert observed == split


def test_reapplying_a_split_is_idempotent_and_skips_the_deploy(api):
    split = [Target(revision="web-v1-aaaa", percent=90, tag="stable"),
             Target(revision="web-v2-bbbb", percent=10, tag="canary")]
    cr = adapter(api)
    cr.apply("p", "us-central1", "web", split, revision="web-v2-bbbb", image="r/web@sha256:2222")
    before = len(api.requests)
    assert cr.apply("p", "us-central1", "web", split, revision="web-v2-bbbb", image="r/web@sha256:2222") == split
    patches = [b for m, _, b in api.requests[before:] if m == "PATCH"]
    assert len(patches) == 1 and patches[0]["traffic"][1]["percent"] == 10


def test_missing_service_is_created_for_a_first_version(api):
    api.service = None
    split = [Target(revision="web-v1-aaaa", percent=100, tag="stable")]
    assert adapter(api).apply("p", "us-central1", "web", split, revision="web-v1-aaaa",
                              image="r/web@sha256:1111") == split
    method, path, body = api.requests[-1]
    assert method == "POST" and "serviceId=web" in path
    assert body["template"]["revision"] == "web-v1-aaaa"


@pytest.mark.parametrize("code, status, permanent", [(400, "INVALID_ARGUMENT", True), (403, "PERMISSION_DENIED", True),
                                                     (503, "UNAVAILABLE", False), (500, "INTERNAL", False)])
def test_errors_are_classified(api, code, status, permanent):
    api.fail_with = (code, status)
    with pytest.raises(CloudRunError) as err:
        adapter(api).apply("p", "us-central1", "web", [Target(revision="web-v1-aaaa", percent=100)])
    assert err.value.permanent is permanent and "boom" in str(err.value)

"""The Cloud Run adapter against the local Cloud Run, through the real run_v2 REST client.

No mocks: revisions are real processes, faults and slow operations are the
stand-in's own (`fault_rate`, `slow_operations`), as GCP would produce them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from google.cloud import run_v2

from pitstop.core.models import Target
from pitstop.gcp.cloudrun import CloudRun, CloudRunError, Traffic, service_path
from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.images import register_image

P, R = "demo", "local"  # project, region

APP = '''
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"revision": os.environ["K_REVISION"], "greeting": os.environ.get("GREETING", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    script = tmp_path_factory.mktemp("adapter-app") / "app.py"
    script.write_text(APP)
    return [sys.executable, str(script)]


@pytest.fixture(scope="module")
def image(app: list[str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test app's image reference, pinned by digest (the same in every cloud below)."""
    return "local/app@" + register_image(tmp_path_factory.mktemp("adapter-digest"), "local/app:v1", app)


def _cloud(tmp_path_factory: pytest.TempPathFactory, app: list[str], **options: float) -> Iterator[LocalCloudRun]:
    state = tmp_path_factory.mktemp("adapter-cloud")  # one each: revision logs are per service name
    register_image(state, "local/app:v1", app)
    cloud = LocalCloudRun(state, startup_timeout_s=30, **options)
    cloud.start()
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory, app: list[str]) -> Iterator[LocalCloudRun]:
    yield from _cloud(tmp_path_factory, app)


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, app: list[str]) -> Iterator[LocalCloudRun]:
    yield from _cloud(tmp_path_factory, app, slow_operations=2.0)  # every update takes 2 s, like a slow start


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, app: list[str]) -> Iterator[LocalCloudRun]:
    # Half the calls answer 503; operations take a moment so polls happen (and fail) too.
    yield from _cloud(tmp_path_factory, app, fault_rate=0.5, fault_seed=7, slow_operations=0.8)


@pytest.fixture(scope="module")
def run(fast: LocalCloudRun) -> CloudRun:
    return CloudRun.from_endpoint(fast.url)


def split(v1: int, v2: int | None = None, service: str = "web") -> list[Target]:
    """`v1` % to <service>-v1 (stable), the rest to <service>-v2 (canary) if given."""
    targets = [Target(revision=f"{service}-v1", percent=v1, tag="stable")]
    if v2 is not None:
        targets.append(Target(revision=f"{service}-v2", percent=v2, tag="canary"))
    return targets


def generation(run: CloudRun, service: str) -> int:
    return run.client.get_service(name=service_path(P, R, service)).generation


def settle(run: CloudRun, service: str, timeout: float = 20) -> Traffic:
    deadline = time.monotonic() + timeout
    while True:
        now = run.traffic(P, R, service)
        if now is not None and now.settled or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


# --- the fast case: what the engine relies on today --------------------------------------


def test_first_version_creates_the_service_and_returns_the_observed_split(run: CloudRun, image: str) -> None:
    assert run.traffic(P, R, "first") is None and run.serving(P, R, "first") is None

    assert run.apply(P, R, "first", split(100, service="first"), revision="first-v1", image=image) == \
        split(100, service="first")

    assert run.traffic(P, R, "first") == Traffic(split=split(100, service="first"), settled=True,
                                                 latest_ready="first-v1", revisions=frozenset({"first-v1"}))
    assert run.serving(P, R, "first") == "first-v1"


def test_deploy_is_one_update_that_names_the_new_revision_at_zero(
    run: CloudRun, image: str,
) -> None:
    container = run_v2.Container(image=image, env=[run_v2.EnvVar(name="GREETING", value="kept")])
    run.client.create_service(parent=f"projects/{P}/locations/{R}", service_id="web", service=run_v2.Service(
        template=run_v2.RevisionTemplate(revision="web-v1", containers=[container]))).result(timeout=60)
    before = generation(run, "web")

    observed = run.apply(P, R, "web", split(100, 0), revision="web-v2", image=image)

    assert observed == split(100, 0)
    assert generation(run, "web") == before + 1, "template and traffic in one update"
    svc = run.client.get_service(name=service_path(P, R, "web"))
    assert svc.template.revision == "web-v2" and svc.template.containers[0].env[0].value == "kept"
    urls = {t.tag: t.uri for t in svc.traffic_statuses}
    assert httpx.get(urls["canary"]).json() == {"revision": "web-v2", "greeting": "kept"}
    assert httpx.get(svc.uri).json()["revision"] == "web-v1", "the new revision takes no traffic"
    assert run.serving(P, R, "web") == "web-v1"


def test_reapplying_a_split_sends_no_update(run: CloudRun, image: str) -> None:
    run.apply(P, R, "again", split(100, service="again"), revision="again-v1", image=image)
    canary = split(100, 0, service="again")
    assert run.apply(P, R, "again", canary, revision="again-v2", image=image) == canary
    before = generation(run, "again")

    for _ in range(2):  # as after a crash between the call and recording its outcome
        assert run.apply(P, R, "again", canary, revision="again-v2", image=image) == canary

    assert generation(run, "again") == before


# --- slow operations: start, answer None, observe later --------------------------------


def test_slow_operation_answers_none_and_traffic_later_shows_it_settled(slow: LocalCloudRun, image: str) -> None:
    run = CloudRun.from_endpoint(slow.url)
    assert run.apply(P, R, "web", split(100), revision="web-v1", image=image) == split(100)  # 2 s < APPLY_WAIT
    errors: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, errors.append
    try:
        started = time.monotonic()
        assert run.apply(P, R, "web", split(100, 0), revision="web-v2", image=image, wait=0.5) is None
        assert time.monotonic() - started < 1.5, "never waits past its budget"

        pending = run.traffic(P, R, "web")
        assert (pending.split, pending.settled, pending.error) == (split(100), False, None)
        assert "web-v2" in pending.revisions, "the update made the revision"
        before = generation(run, "web")
        assert run.apply(P, R, "web", split(100, 0), revision="web-v2", image=image, wait=0) is None
        assert generation(run, "web") == before, "asking again while Cloud Run works sends nothing"

        done = settle(run, "web")
        assert (done.split, done.settled, done.latest_ready) == (split(100, 0), True, "web-v2")
        assert run.apply(P, R, "web", split(100, 0), revision="web-v2", image=image, wait=0) == split(100, 0)
        time.sleep(0.5)
    finally:
        threading.excepthook = hook
    assert errors == [], "nothing left running raised later"
    assert not [t.name for t in threading.enumerate() if "_blocking_poll" in t.name], "no polling thread left"


def test_reapplying_within_the_budget_waits_for_the_work_in_flight(slow: LocalCloudRun, image: str) -> None:
    run = CloudRun.from_endpoint(slow.url)
    run.apply(P, R, "inflight", split(100, service="inflight"), revision="inflight-v1", image=image)
    target = split(100, 0, service="inflight")
    assert run.apply(P, R, "inflight", target, revision="inflight-v2", image=image, wait=0) is None
    before = generation(run, "inflight")

    assert run.apply(P, R, "inflight", target, revision="inflight-v2", image=image) == target
    assert generation(run, "inflight") == before, "watched, not sent again"


# --- drift: traffic() reads what Cloud Run serves, whoever changed it ----------------------


def test_traffic_reads_drift_and_apply_repairs_it(run: CloudRun, image: str) -> None:
    run.apply(P, R, "drift", split(100, service="drift"), revision="drift-v1", image=image)
    run.apply(P, R, "drift", split(100, 0, service="drift"), revision="drift-v2", image=image)
    desired = split(90, 10, service="drift")
    assert run.apply(P, R, "drift", desired) == desired

    # Someone changes traffic behind pitstop's back (console, gcloud).
    svc = run.client.get_service(name=service_path(P, R, "drift"))
    revision_type = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    svc.traffic = [run_v2.TrafficTarget(type_=revision_type, revision="drift-v2", percent=100)]
    run.client.update_service(service=svc).result(timeout=60)

    drifted = run.traffic(P, R, "drift")
    assert (drifted.split, drifted.settled) == ([Target(revision="drift-v2", percent=100)], True)
    assert run.serving(P, R, "drift") == "drift-v2"
    assert run.apply(P, R, "drift", desired) == desired
    assert run.traffic(P, R, "drift").split == desired


def test_latest_entries_are_resolved_to_the_revision_name(run: CloudRun, image: str) -> None:
    run.client.create_service(parent=f"projects/{P}/locations/{R}", service_id="latest", service=run_v2.Service(
        template=run_v2.RevisionTemplate(revision="latest-v1", containers=[run_v2.Container(image=image)]))
    ).result(timeout=60)  # no traffic given: 100 % to LATEST

    assert run.traffic(P, R, "latest").split == [Target(revision="latest-v1", percent=100)]
    assert run.traffic(P, R, "latest").settled


# --- faults ------------------------------------------------------------------------------


def test_transient_faults_are_retryable_and_applies_succeed_on_retry(faulty: LocalCloudRun, image: str) -> None:
    run = CloudRun.from_endpoint(faulty.url)
    steps = [(split(100), "web-v1"), (split(100, 0), "web-v2"), (split(90, 10), None), (split(50, 50), None),
             (split(0, 100), None), (split(100, 0), None)]
    errors: list[CloudRunError] = []
    for target, revision in steps:
        for _ in range(40):
            try:
                if run.apply(P, R, "web", target, revision=revision, image=image) == target:
                    break
            except CloudRunError as err:
                errors.append(err)
        else:
            pytest.fail(f"{target} never applied; errors: {[str(e) for e in errors[-5:]]}")

    assert len(errors) >= 5
    assert all(not e.permanent and "503 UNAVAILABLE" in str(e) for e in errors), [str(e) for e in errors]
    assert any(str(e).startswith("reading service web") for e in errors)
    assert any(str(e).startswith(("updating service web", "creating service web")) for e in errors)
    faulty.fault_rate = 0.0
    final = run.traffic(P, R, "web")
    assert (final.split, final.settled) == (split(100, 0), True)


def test_polling_failure_is_transient_and_says_the_update_may_complete(slow: LocalCloudRun, image: str) -> None:
    run = CloudRun.from_endpoint(slow.url)
    run.apply(P, R, "polled", split(100, service="polled"), revision="polled-v1", image=image)
    target = split(50, 50, service="polled")
    # Every poll fails from the first one on: the update itself was accepted.
    breaker = threading.Timer(0.3, lambda: setattr(slow, "fault_rate", 1.0))
    breaker.start()
    try:
        with pytest.raises(CloudRunError) as err:
            run.apply(P, R, "polled", target, revision="polled-v2", image=image)
    finally:
        breaker.cancel()
        slow.fault_rate = 0.0
    assert not err.value.permanent
    assert "polling its operation" in str(err.value) and "503 UNAVAILABLE" in str(err.value)
    assert "may still complete" in str(err.value)
    assert settle(run, "polled").split == target, "the accepted update completed anyway"


def test_bad_request_is_permanent_and_changes_nothing(run: CloudRun, image: str) -> None:
    run.apply(P, R, "bad", split(100, service="bad"), revision="bad-v1", image=image)
    before = run.traffic(P, R, "bad")

    with pytest.raises(CloudRunError) as err:
        run.apply(P, R, "bad", [Target(revision="bad-v1", percent=90)])

    assert err.value.permanent
    assert "HTTP 400 INVALID_ARGUMENT" in str(err.value) and "must add up to 100" in str(err.value)
    assert "nothing changed" in str(err.value)
    assert run.traffic(P, R, "bad") == before


def test_revision_that_cannot_start_is_permanent_and_old_traffic_stays(run: CloudRun, image: str) -> None:
    run.apply(P, R, "broken", split(100, service="broken"), revision="broken-v1", image=image)
    target = split(100, 0, service="broken")

    with pytest.raises(CloudRunError) as err:
        run.apply(P, R, "broken", target, revision="broken-v2", image="nowhere/app:v9")

    assert err.value.permanent and "FAILED_PRECONDITION" in str(err.value)
    assert "Image 'nowhere/app:v9' not found" in str(err.value) and "keeps serving" in str(err.value)
    now = run.traffic(P, R, "broken")
    assert (now.split, now.settled, now.latest_ready) == (split(100, service="broken"), False, "broken-v1")
    assert "nowhere/app:v9" in now.error
    with pytest.raises(CloudRunError) as again:  # applying again retries it, and fails the same way
        run.apply(P, R, "broken", target, revision="broken-v2", image="nowhere/app:v9")
    assert again.value.permanent and "broken-v2" in str(again.value)


def test_missing_service_without_an_image_is_permanent(run: CloudRun) -> None:
    with pytest.raises(CloudRunError) as err:
        run.apply(P, R, "nobody", [Target(revision="nobody-v1", percent=100)])
    assert err.value.permanent and "does not exist" in str(err.value)


def test_unreachable_endpoint_is_transient() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    run = CloudRun.from_endpoint(f"http://127.0.0.1:{port}")
    with pytest.raises(CloudRunError) as err:
        run.apply(P, R, "web", split(100))
    assert not err.value.permanent and "ConnectionError" in str(err.value)
    with pytest.raises(CloudRunError):
        run.traffic(P, R, "web")

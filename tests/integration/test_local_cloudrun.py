"""The local Cloud Run, driven through the real google-cloud-run REST client.

Revisions are real processes (a tiny HTTP server that answers with its
K_REVISION and pid), traffic goes through the real router.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.images import ImageNotFound, register_image, resolve_image

PARENT = "projects/demo/locations/local"
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION

APP = '''
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps({"revision": os.environ["K_REVISION"], "service": os.environ["K_SERVICE"],
                           "configuration": os.environ["K_CONFIGURATION"], "pid": os.getpid(),
                           "greeting": os.environ.get("GREETING", "")}).encode()
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def cloudrun_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cloudrun-state")


@pytest.fixture(scope="module")
def cloudrun_image(cloudrun_state: Path) -> str:
    """An image whose entrypoint runs the test app; returned pinned by digest."""
    script = cloudrun_state / "app.py"
    script.write_text(APP)
    digest = register_image(cloudrun_state, "local/app:v1", [sys.executable, str(script)])
    return f"local/app@{digest}"


@pytest.fixture(scope="module")
def cloudrun_local(cloudrun_state: Path) -> Iterator[LocalCloudRun]:
    cloud_run = LocalCloudRun(cloudrun_state, startup_timeout_s=30)
    cloud_run.start()
    yield cloud_run
    cloud_run.stop()


@pytest.fixture(scope="module")
def cloudrun_services(cloudrun_local: LocalCloudRun) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=cloudrun_local.url),
    )


@pytest.fixture(scope="module")
def cloudrun_revisions(cloudrun_local: LocalCloudRun) -> run_v2.RevisionsClient:
    return run_v2.RevisionsClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=cloudrun_local.url),
    )


@pytest.fixture(scope="module")
def cloudrun_http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def template(revision: str, image: str, greeting: str = "", command: list[str] | None = None) -> run_v2.RevisionTemplate:
    env = [run_v2.EnvVar(name="GREETING", value=greeting)] if greeting else []
    container = run_v2.Container(image=image, env=env, command=command or [])
    return run_v2.RevisionTemplate(revision=revision, containers=[container])


def target(revision: str, percent: int, tag: str = "") -> run_v2.TrafficTarget:
    return run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=percent, tag=tag)


def create(services: run_v2.ServicesClient, service_id: str, image: str) -> run_v2.Service:
    service = run_v2.Service(template=template(f"{service_id}-v1", image))
    return services.create_service(parent=PARENT, service=service, service_id=service_id).result(timeout=60)


def set_traffic(services: run_v2.ServicesClient, name: str, *targets: run_v2.TrafficTarget) -> run_v2.Service:
    service = services.get_service(name=name)
    service.traffic = list(targets)
    return services.update_service(service=service).result(timeout=60)


def deploy_canary(services: run_v2.ServicesClient, service_id: str, image: str) -> run_v2.Service:
    """v1 (stable, 100 %) plus v2 (canary, 0 %), the canary pattern pitstop uses."""
    service = create(services, service_id, image)
    service.template = template(f"{service_id}-v2", image, greeting="hello from v2")
    service.traffic = [target(f"{service_id}-v1", 100, "stable"), target(f"{service_id}-v2", 0, "canary")]
    return services.update_service(service=service).result(timeout=60)


def served(http: httpx.Client, url: str, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        response = http.get(url)
        assert response.status_code == 200, response.text
        counts[response.json()["revision"]] += 1
    return counts


def traffic_of(service: run_v2.Service) -> list[tuple[int, str, int, str]]:
    return [(int(t.type_), t.revision, t.percent, t.tag) for t in service.traffic]


def statuses_of(service: run_v2.Service) -> list[tuple[int, str, int, str]]:
    return [(int(t.type_), t.revision, t.percent, t.tag) for t in service.traffic_statuses]


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a dead child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- images ------------------------------------------------------------------


def test_images_resolve_by_name_tag_and_digest(tmp_path: Path) -> None:
    digest = register_image(tmp_path, "registry.local:5000/team/web:v1", ["web"], ["--port=$PORT"], {"A": "1"})

    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    for ref in ("registry.local:5000/team/web:v1", f"registry.local:5000/team/web@{digest}",
                f"registry.local:5000/team/web:v1@{digest}"):
        manifest = resolve_image(tmp_path, ref)
        assert (manifest.digest, manifest.command, manifest.args, manifest.env) == (digest, ["web"], ["--port=$PORT"], {"A": "1"})
    assert register_image(tmp_path, "other/web", ["web"], ["--port=$PORT"], {"A": "1"}) == digest  # same content
    assert resolve_image(tmp_path, "other/web:latest").digest == digest
    with pytest.raises(ImageNotFound, match="Image 'registry.local:5000/team/web:v2' not found"):
        resolve_image(tmp_path, "registry.local:5000/team/web:v2")
    with pytest.raises(ImageNotFound):
        resolve_image(tmp_path, f"unrelated/repo@{digest}")


# --- services and traffic ----------------------------------------------------


def test_canary_tag_url_serves_only_the_new_revision(
    cloudrun_services: run_v2.ServicesClient, cloudrun_revisions: run_v2.RevisionsClient,
    cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = deploy_canary(cloudrun_services, "shop", cloudrun_image)

    uris = {t.tag: t.uri for t in service.traffic_statuses}
    assert served(cloudrun_http, uris["canary"], 20) == {"shop-v2": 20}
    assert served(cloudrun_http, uris["stable"], 5) == {"shop-v1": 5}
    assert served(cloudrun_http, service.uri, 20) == {"shop-v1": 20}
    body = cloudrun_http.get(uris["canary"]).json()
    assert (body["service"], body["configuration"], body["greeting"]) == ("shop", "shop", "hello from v2")
    assert service.template.containers[0].image == cloudrun_image  # reported as given
    assert service.latest_ready_revision == f"{PARENT}/services/shop/revisions/shop-v2"
    assert service.latest_created_revision == service.latest_ready_revision
    revisions = cloudrun_revisions.list_revisions(parent=f"{PARENT}/services/shop")
    assert [r.name.rsplit("/", 1)[1] for r in revisions] == ["shop-v2", "shop-v1"]
    v2 = cloudrun_revisions.get_revision(name=f"{PARENT}/services/shop/revisions/shop-v2")
    assert v2.conditions[0].state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert v2.containers[0].env[0].value == "hello from v2"


def test_valid_updates_advance_generation_and_apply_traffic(
    cloudrun_services: run_v2.ServicesClient, cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = create(cloudrun_services, "ledger", cloudrun_image)
    assert (service.generation, service.observed_generation) == (1, 1)
    assert service.traffic_statuses[0].percent == 100  # empty traffic: all to the latest ready
    assert served(cloudrun_http, service.uri, 3) == {"ledger-v1": 3}

    # A new template without traffic: LATEST follows the new revision.
    service.template = template("", cloudrun_image, greeting="auto-named")
    service = cloudrun_services.update_service(service=service).result(timeout=60)
    latest = service.latest_ready_revision.rsplit("/", 1)[1]
    assert latest.startswith("ledger-00002-") and latest != "ledger-v1"
    assert served(cloudrun_http, service.uri, 3) == {latest: 3}

    service = set_traffic(cloudrun_services, service.name, target("ledger-v1", 40, "old"), target(latest, 60, "new"))
    assert (service.generation, service.observed_generation) == (3, 3)
    assert traffic_of(service) == statuses_of(service) == [
        (int(REVISION), "ledger-v1", 40, "old"), (int(REVISION), latest, 60, "new")
    ]
    assert not service.reconciling
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert service.latest_created_revision.endswith(latest)  # traffic-only: no new revision

    fetched = cloudrun_services.get_service(name=service.name)
    assert fetched == service
    assert [s.name for s in cloudrun_services.list_services(parent=PARENT)].count(service.name) == 1


INVALID_UPDATES: list[tuple[str, Callable[[run_v2.Service], None], str]] = [
    ("sum", lambda s: setattr(s, "traffic", [target("guarded-v1", 60), target("guarded-v2", 30)]),
     "must add up to 100, got 90"),
    ("unknown revision", lambda s: setattr(s, "traffic", [target("guarded-v9", 100)]),
     "'guarded-v9', which does not exist"),
    ("duplicate tag", lambda s: setattr(s, "traffic", [target("guarded-v1", 100, "x"), target("guarded-v2", 0, "x")]),
     "Tag 'x' is used by more than one traffic target"),
    ("invalid tag", lambda s: setattr(s, "traffic", [target("guarded-v1", 100, "Canary!")]),
     "tag 'Canary!' is invalid"),
    ("revision without prefix", lambda s: setattr(s.template, "revision", "other-v3"),
     "must start with the service name"),
    ("revision upper case", lambda s: setattr(s.template, "revision", "guarded-V3"),
     "'guarded-V3' is invalid"),
    ("revision too long", lambda s: setattr(s.template, "revision", "guarded-" + "a" * 56),
     "at most 63 characters"),
]


@pytest.fixture(scope="module")
def cloudrun_guarded(cloudrun_services: run_v2.ServicesClient, cloudrun_image: str) -> run_v2.Service:
    return deploy_canary(cloudrun_services, "guarded", cloudrun_image)


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in INVALID_UPDATES], ids=[c[0] for c in INVALID_UPDATES])
def test_invalid_update_is_refused_and_changes_nothing(
    cloudrun_services: run_v2.ServicesClient, cloudrun_guarded: run_v2.Service,
    change: Callable[[run_v2.Service], None], expected: str,
) -> None:
    before = cloudrun_services.get_service(name=cloudrun_guarded.name)
    update = run_v2.Service(before)
    change(update)

    with pytest.raises(exceptions.BadRequest, match=expected):
        cloudrun_services.update_service(service=update)

    assert cloudrun_services.get_service(name=cloudrun_guarded.name) == before


def test_revision_name_reused_with_another_template_conflicts(
    cloudrun_services: run_v2.ServicesClient, cloudrun_guarded: run_v2.Service, cloudrun_image: str,
) -> None:
    before = cloudrun_services.get_service(name=cloudrun_guarded.name)
    update = run_v2.Service(before)
    update.template = template("guarded-v1", cloudrun_image, greeting="not what v1 was")

    with pytest.raises(exceptions.Conflict, match="'guarded-v1' with different configuration already exists"):
        cloudrun_services.update_service(service=update)
    assert cloudrun_services.get_service(name=cloudrun_guarded.name) == before


def test_missing_resources_are_not_found(
    cloudrun_services: run_v2.ServicesClient, cloudrun_revisions: run_v2.RevisionsClient,
    cloudrun_guarded: run_v2.Service, cloudrun_image: str,
) -> None:
    with pytest.raises(exceptions.NotFound, match="services/nobody"):
        cloudrun_services.get_service(name=f"{PARENT}/services/nobody")
    with pytest.raises(exceptions.NotFound, match="guarded-v7"):
        cloudrun_revisions.get_revision(name=f"{cloudrun_guarded.name}/revisions/guarded-v7")
    missing = run_v2.Service(name=f"{PARENT}/services/nobody", template=template("nobody-v1", cloudrun_image))
    with pytest.raises(exceptions.NotFound):
        cloudrun_services.update_service(service=missing)

    created = cloudrun_services.update_service(
        request=run_v2.UpdateServiceRequest(service=missing, allow_missing=True)
    ).result(timeout=60)
    assert created.latest_ready_revision.endswith("/revisions/nobody-v1")


def test_router_split_matches_percentages(
    cloudrun_services: run_v2.ServicesClient, cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = deploy_canary(cloudrun_services, "split", cloudrun_image)
    service = set_traffic(cloudrun_services, service.name, target("split-v1", 70), target("split-v2", 30))
    n, p = 2000, 0.30

    counts = served(cloudrun_http, service.uri, n)

    assert set(counts) == {"split-v1", "split-v2"}
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(counts["split-v2"] - n * p) <= 5 * sigma, counts


def test_no_request_fails_while_traffic_flips(
    cloudrun_services: run_v2.ServicesClient, cloudrun_image: str,
) -> None:
    service = deploy_canary(cloudrun_services, "flip", cloudrun_image)
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.get(service.uri)
                    outcome = response.json()["revision"] if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError) as e:
                    outcome, response = None, e
                with lock:
                    if outcome is None:
                        failures.append(repr(response))
                    else:
                        seen[outcome] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for canary in (50, 100, 0, 100, 50, 0, 100):
            updated = set_traffic(cloudrun_services, service.name, target("flip-v1", 100 - canary), target("flip-v2", canary))
            assert statuses_of(updated) == traffic_of(updated)
            with lock:
                served_before = sum(seen.values())
            while not failures and all(t.is_alive() for t in threads):
                with lock:
                    if sum(seen.values()) >= served_before + 20:
                        break  # some requests went through on this split
                stop.wait(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    assert seen["flip-v1"] > 0 and seen["flip-v2"] > 0


def test_request_log_records_revision_status_and_latency(
    cloudrun_local: LocalCloudRun, cloudrun_services: run_v2.ServicesClient,
    cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = create(cloudrun_services, "logged", cloudrun_image)
    for _ in range(5):
        cloudrun_http.get(service.uri)
    for _ in range(3):
        cloudrun_http.get(service.uri + "/fail")
    pid = cloudrun_http.get(service.uri).json()["pid"]
    os.kill(pid, signal.SIGKILL)  # the revision dies: the router must answer and say so
    while is_running(pid):
        threading.Event().wait(0.01)
    unreachable = cloudrun_http.get(service.uri)

    assert unreachable.status_code in (502, 503) and "logged-v1" in unreachable.text
    entries = [e for e in cloudrun_local.request_log.between(0, float("inf")) if e.service == "logged"]
    assert Counter(e.status for e in entries) == {200: 6, 500: 3, unreachable.status_code: 1}
    assert {(e.project, e.location, e.revision) for e in entries} == {("demo", "local", "logged-v1")}
    assert all(e.latency_ms > 0 for e in entries)


def test_revision_that_exits_at_start_fails_and_old_revision_keeps_serving(
    cloudrun_services: run_v2.ServicesClient, cloudrun_revisions: run_v2.RevisionsClient,
    cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = create(cloudrun_services, "crashy", cloudrun_image)
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('boom: DATABASE_URL is not set'); sys.exit(3)"]
    service.template = template("crashy-v2", cloudrun_image, command=crash)
    service.traffic = [target("crashy-v2", 100)]

    with pytest.raises(exceptions.GoogleAPICallError, match=r"(?s)crashy-v2.*exited with code 3.*DATABASE_URL is not set"):
        cloudrun_services.update_service(service=service).result(timeout=60)

    after = cloudrun_services.get_service(name=service.name)
    assert after.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert "DATABASE_URL is not set" in after.terminal_condition.message
    assert after.observed_generation == after.generation == 2
    assert after.latest_ready_revision.endswith("/crashy-v1")
    assert after.latest_created_revision.endswith("/crashy-v2")
    assert statuses_of(after)[0][1:3] == ("", 100)  # still the old LATEST route to v1
    assert served(cloudrun_http, after.uri, 5) == {"crashy-v1": 5}
    v2 = cloudrun_revisions.get_revision(name=f"{service.name}/revisions/crashy-v2")
    assert v2.conditions[0].state == run_v2.Condition.State.CONDITION_FAILED

    after.template = template("crashy-v3", "nowhere/app:v9")
    after.traffic = []
    with pytest.raises(exceptions.GoogleAPICallError, match="Image 'nowhere/app:v9' not found"):
        cloudrun_services.update_service(service=after).result(timeout=60)
    assert served(cloudrun_http, after.uri, 5) == {"crashy-v1": 5}


def test_delete_service_stops_its_revisions(
    cloudrun_services: run_v2.ServicesClient, cloudrun_http: httpx.Client, cloudrun_image: str,
) -> None:
    service = deploy_canary(cloudrun_services, "gone", cloudrun_image)
    pids = [cloudrun_http.get(t.uri).json()["pid"] for t in service.traffic_statuses]

    deleted = cloudrun_services.delete_service(name=service.name).result(timeout=60)

    assert deleted.name == service.name
    assert not any(is_running(pid) for pid in pids)
    with pytest.raises(exceptions.NotFound):
        cloudrun_services.get_service(name=service.name)


# --- lifecycle -----------------------------------------------------------------


def test_stop_leaves_no_revision_running(tmp_path: Path, cloudrun_image: str, cloudrun_state: Path) -> None:
    register_image(tmp_path, "local/app:v1", [sys.executable, str(cloudrun_state / "app.py")])
    cloud_run = LocalCloudRun(tmp_path)
    cloud_run.start()
    try:
        services = run_v2.ServicesClient(
            credentials=AnonymousCredentials(), transport="rest",
            client_options=ClientOptions(api_endpoint=cloud_run.url),
        )
        deploy_canary(services, "brief", "local/app:v1")
        pids = cloud_run.revision_pids()
        assert len(pids) == 2 and all(is_running(pid) for pid in pids)
    finally:
        cloud_run.stop()
    assert not any(is_running(pid) for pid in pids)


def local_cloud_process(*args: str) -> subprocess.Popen:
    """`python -m pitstop.local.cloud ARGS` in its own session (so a failed test can kill all it started)."""
    return subprocess.Popen([sys.executable, "-m", "pitstop.local.cloud", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_local_cloud_process_stops_every_revision_on_sigterm(tmp_path: Path, cloudrun_state: Path) -> None:
    register_image(tmp_path, "local/app:v1", [sys.executable, str(cloudrun_state / "app.py")])
    api_port = free_port()
    process = local_cloud_process("--state-dir", str(tmp_path), "--api-port", str(api_port),
                                  "--monitoring-port", str(free_port()), "--project", "demo")
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready" and ready["cloud_run_api"] == f"http://127.0.0.1:{api_port}"
        services = run_v2.ServicesClient(
            credentials=AnonymousCredentials(), transport="rest",
            client_options=ClientOptions(api_endpoint=ready["cloud_run_api"]),
        )
        service = deploy_canary(services, "web", "local/app:v1")
        pids = [httpx.get(t.uri).json()["pid"] for t in service.traffic_statuses]
        assert all(is_running(pid) for pid in pids)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        kill_if_running(process)
    stderr = process.stderr.read()
    assert not any(is_running(pid) for pid in pids), stderr
    assert all(json.loads(line)["severity"] for line in stderr.splitlines()), stderr


# --- GCP's faults and timing, on request ------------------------------------------------


def _started(state: Path, **options: float) -> LocalCloudRun:
    cloud_run = LocalCloudRun(state, startup_timeout_s=30, **options)
    cloud_run.start()
    return cloud_run


def _services(cloud_run: LocalCloudRun) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                 client_options=ClientOptions(api_endpoint=cloud_run.url))


def test_faults_answer_503_with_googles_error_body(tmp_path: Path) -> None:
    cloud_run = _started(tmp_path, fault_rate=1.0)
    try:
        response = httpx.get(f"{cloud_run.url}/v2/{PARENT}/services/any")
        assert response.status_code == 503
        error = response.json()["error"]
        assert (error["code"], error["status"]) == (503, "UNAVAILABLE")
        assert "currently unavailable" in error["message"]
        with pytest.raises(exceptions.ServiceUnavailable):
            _services(cloud_run).get_service(name=f"{PARENT}/services/any", retry=None)
    finally:
        cloud_run.stop()


def test_faults_replay_with_the_same_seed(tmp_path: Path) -> None:
    def statuses(seed: int) -> list[int]:
        cloud_run = _started(tmp_path, fault_rate=0.5, fault_seed=seed)
        try:
            with httpx.Client() as http:
                return [http.get(f"{cloud_run.url}/v2/{PARENT}/services/missing").status_code for _ in range(40)]
        finally:
            cloud_run.stop()

    first = statuses(11)
    assert set(first) == {404, 503} and 10 < first.count(503) < 30
    assert statuses(11) == first
    assert statuses(12) != first


def test_a_faulted_update_may_have_been_applied(tmp_path: Path, cloudrun_image: str, cloudrun_state: Path) -> None:
    register_image(tmp_path, "local/app:v1", [sys.executable, str(cloudrun_state / "app.py")])
    cloud_run = _started(tmp_path, fault_seed=5)
    services = _services(cloud_run)
    try:
        service = create(services, "lossy", "local/app:v1")
        cloud_run.fault_rate = 1.0  # every answer is lost from here on
        for _ in range(12):
            with pytest.raises(exceptions.ServiceUnavailable):
                services.update_service(service=service, retry=None)
        cloud_run.fault_rate = 0.0
        after = services.get_service(name=service.name)
    finally:
        cloud_run.stop()
    applied = after.generation - service.generation
    assert 0 < applied < 12, "some updates were applied before their 503, as on GCP; some never were"


def test_slow_operations_stay_running_with_traffic_as_before(tmp_path: Path, cloudrun_state: Path) -> None:
    register_image(tmp_path, "local/app:v1", [sys.executable, str(cloudrun_state / "app.py")])
    cloud_run = _started(tmp_path, slow_operations=1.0)
    services = _services(cloud_run)
    try:
        service = deploy_canary(services, "sluggish", "local/app:v1")
        service.traffic = [target("sluggish-v1", 50), target("sluggish-v2", 50)]
        started = time.monotonic()

        operation = services.update_service(service=service)

        assert not operation.operation.done
        during = services.get_service(name=service.name)
        assert during.reconciling and during.observed_generation == during.generation - 1
        assert statuses_of(during) == statuses_of(service), "traffic stays as it was until the work is done"
        done = operation.result(timeout=30)
        assert time.monotonic() - started >= 1.0
        assert statuses_of(done) == traffic_of(done) and not done.reconciling
    finally:
        cloud_run.stop()


def test_local_cloud_process_takes_fault_options(tmp_path: Path) -> None:
    from pitstop.local import cloud

    with pytest.raises(SystemExit):
        cloud.main(["--state-dir", str(tmp_path), "--api-port", "0", "--monitoring-port", "0", "--fault-rate", "2"])
    process = local_cloud_process("--state-dir", str(tmp_path), "--api-port", "0", "--monitoring-port", "0",
                                  "--fault-rate", "1", "--fault-seed", "3", "--slow-operations", "0.5")
    try:
        ready = json.loads(process.stdout.readline())
        response = httpx.get(f"{ready['cloud_run_api']}/v2/{PARENT}/services/web")
        assert response.status_code == 503 and response.json()["error"]["status"] == "UNAVAILABLE"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        kill_if_running(process)

"""The engine under production's faults, in-process, on the real Firestore emulator and the local Cloud Run
(real revision processes, the real google-cloud-run client): a crash between commit and effect, a superseded
rollout's late Cloud Run result, traffic changed behind pitstop's back, an older build finishing last, and
commands that name more than one rollout."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pitstop.config import Config
from pitstop.core.messages import parse_build
from pitstop.core.models import ApplyTraffic, Command, HealthSample, Target, Tick
from pitstop.core.spec import load_spec
from pitstop.engine import Engine
from pitstop.gcp.cloudrun import CloudRun, service_path
from pitstop.gcp.store import Store
from pitstop.gcp.cloudbuild import CloudBuild
from pitstop.gcp.identity import Verifier
from pitstop.local.build import build_image
from pitstop.local.cloudbuild import record_build, start_cloudbuild
from pitstop.local.issuer import start_issuer
from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.payloads import cloud_build

pytestmark = pytest.mark.emulators
REGION = "us-central1"
SAMPLER = "pitstop-on-tick@pitstop-test.iam.gserviceaccount.com"


class Crash(BaseException):
    """The function's process dies: nothing after this point runs (BaseException: no handler catches it)."""


class Events:
    """The Pub/Sub adapter's stand-in for the events topic: what was announced, in order."""

    def __init__(self) -> None:
        self.published: list[dict] = []

    def publish(self, topic: str, payload: dict, **attributes: str) -> str:
        self.published.append(payload)
        return str(len(self.published))


class Harness:
    def __init__(self, project: str, state: Path, cloud: LocalCloudRun, issuer, cloudbuild) -> None:
        self.project, self.state = project, state
        self.store = Store.from_env(project)
        self.run = CloudRun.from_endpoint(cloud.url)
        self.crash_next_apply = False
        self.events = Events()
        self.now = datetime.now(timezone.utc)
        real_apply = self.run.apply

        def apply(*args, **kwargs):
            if self.crash_next_apply:
                self.crash_next_apply = False
                raise Crash()
            return real_apply(*args, **kwargs)

        self.run.apply = apply  # type: ignore[method-assign]
        config = Config(project=project, health_lag=0, admins=("user:alice@example.com",), sampler_identity=SAMPLER)
        self.issuer, self.audience = issuer, config.audiences[0]
        verifier = Verifier([self.audience], issuers=[issuer.url], certs_url=issuer.certs_url)
        builds = CloudBuild.from_endpoint(cloudbuild.url)
        self.engine = Engine(config, self.store, lambda: self.run, self.events, clock=lambda: self.now,
                             verifier=lambda: verifier, cloudbuild=lambda: builds)

    def health(self, sample: HealthSample) -> None:
        """A sample signed by pitstop's own sampler: its token is bound to the sample (audience AUD#digest)."""
        bound = sample.id
        self.engine.on_health(sample, self.issuer.mint(SAMPLER, f"{self.audience}#{bound}"), bound)

    def command(self, **fields) -> object:
        """A command signed by alice, an admin (time-independent: tokens follow the real clock)."""
        return self.engine.on_command(Command(**fields), self.issuer.mint("alice@example.com", self.audience))

    def spec(self, service: str, environment: str = "production", project: str | None = None) -> None:
        text = (f"service: {service}\nregions: [{REGION}]\nenvironment: {environment}\n"
                f"match: {{repo: {service}}}\nhealth: {{min_requests: 10, interval: 1s}}\n"
                f"image: '*-docker.pkg.dev/*/apps/{service}'\n"
                "strategy: {canary: {steps: [{weight: 10, pause: 1h}]}}\n")
        if project:
            text += f"project: {project}\n"
        self.store.put_spec(load_spec(text), "test", self.now)

    def build(self, service: str, version: str, created: datetime | None = None):
        name, digest = build_image(self.state, self.project, service, version)
        payload = cloud_build("SUCCESS", build_id=str(uuid.uuid4()), project=self.project, repo=service,
                              image=name, digest=digest, substitutions={"_VERSION": version},
                              now=created or self.now)
        record_build(self.state, payload)  # Cloud Build knows it: the engine confirms every build with its API
        build = parse_build(payload, {})
        self.engine.on_build(build)
        return build

    def rollout(self, service: str, environment: str = "production"):
        return self.store.active_rollout(service, REGION, environment)

    def served(self, service: str) -> dict[str, int]:
        svc = self.run.client.get_service(name=service_path(self.project, REGION, service))
        return {t.revision: t.percent for t in svc.traffic_statuses}

    def failing_sample(self, r) -> HealthSample:
        return HealthSample(id=f"h-{uuid.uuid4().hex[:8]}", service=r.service, region=REGION, revision=r.revision,
                            window_start=self.now - timedelta(seconds=30), window_end=self.now, request_count=100,
                            error_count=40, latency_p99_ms=100, source="probe", rollout_id=r.id)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> LocalCloudRun:
    state = tmp_path_factory.mktemp("faults-cloud")
    running = LocalCloudRun(state, startup_timeout_s=30)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    with start_issuer(tmp_path_factory.mktemp("issuer")) as running:
        yield running


@pytest.fixture(scope="module")
def cloudbuild(cloud, emulators):
    running = start_cloudbuild(cloud.state_dir, emulators.project)
    yield running
    running.stop()


@pytest.fixture
def h(firestore_clean, cloud, issuer, cloudbuild) -> Harness:
    return Harness(firestore_clean.project, cloud.state_dir, cloud, issuer, cloudbuild)



def canary(h: Harness, service: str) -> tuple[str, object]:
    """v1 stable, then v2 as a canary at 10 %; returns (v1 revision, v2 rollout)."""
    h.spec(service)
    h.build(service, "v1")
    v1 = h.store.service(service, REGION)["stable_revision"]
    h.now += timedelta(seconds=5)
    h.build(service, "v2")
    r = h.rollout(service)
    assert r.state == "progressing" and r.new_percent == 10 and h.served(service)[r.revision] == 10
    return v1, r


def test_a_crash_between_commit_and_effect_is_repaired_by_the_redelivery(h):
    v1, r = canary(h, "crash")
    sample = h.failing_sample(r)
    h.crash_next_apply = True
    with pytest.raises(Crash):  # the rollback is stored, then the process dies before Cloud Run is told
        h.health(sample)
    stored = h.store.rollout(r.id)
    assert stored.state == "rolling_back" and not stored.applied
    assert h.served("crash")[r.revision] == 10, "the crash left the bad canary serving"
    h.health(sample)  # Pub/Sub redelivers the same message: a duplicate, whose effect is re-applied
    assert h.served("crash") == {v1: 100, r.revision: 0}
    assert h.store.rollout(r.id).state == "rolled_back"


def test_a_superseded_rollouts_late_apply_never_leaves_its_traffic_in_place(h):
    v1, r2 = canary(h, "late")
    h.now += timedelta(seconds=5)
    h.build("late", "v3")
    r3 = h.rollout("late")
    assert h.store.rollout(r2.id).state == "superseded" and r3.state == "progressing"
    want = h.served("late")
    assert want[r3.revision] == 10 and want.get(r2.revision, 0) == 0
    # v2's applier was slow: its 10 % split lands now, after v3 took over (and reports back).
    h.engine._apply(h.store.rollout(r2.id), ApplyTraffic(generation=r2.desired_generation, split=r2.desired))
    assert h.served("late") == want, "the successor's split is asserted again"
    assert h.store.rollout(r2.id).state == "superseded", "the late result changed nothing"


def test_drift_is_read_back_and_repaired_with_an_audit_line(h):
    v1, r = canary(h, "drift")
    # Someone moves traffic in the console.
    h.run.apply(h.project, REGION, "drift", [Target(revision=v1, percent=50, tag="stable"),
                                              Target(revision=r.revision, percent=50, tag="canary")])
    assert h.served("drift")[r.revision] == 50
    h.now += timedelta(seconds=61)
    h.engine.on_tick(Tick(id=f"tick-{uuid.uuid4().hex[:6]}"))
    assert h.served("drift").get(r.revision) == 10, (h.served("drift"), [(e.decision, e.actor, e.traffic_after) for e in h.store.events(r.id)])
    repaired = [e for e in h.store.events(r.id) if e.decision == "drift_repaired"]
    assert repaired and "not the decided" in repaired[0].reasons[-1] and repaired[0].actor == "reconciler"


def test_an_older_build_finishing_last_never_replaces_newer_stable_code(h):
    h.spec("order")
    t0 = h.now
    h.build("order", "v2", created=t0)  # the newer commit's build finished first and became stable
    stable = h.store.service("order", REGION)
    assert stable["stable_version"] == "v2"
    older = h.build("order", "v1", created=t0 - timedelta(minutes=10))
    assert h.rollout("order") is None and h.store.service("order", REGION)["stable_version"] == "v2"
    record = h.store.db.collection("builds").document(older.build_id).get().to_dict()
    assert record["outcome"] == "refused" and "older than the stable version v2" in record["message"]
    assert any(e.get("outcome") == "refused" for e in h.events.published), "people are told"


def test_a_command_by_service_name_that_names_two_rollouts_is_refused_with_the_candidates(h):
    for env, project in (("staging", "acme-staging"), ("production", None)):
        h.spec("twin", environment=env, project=project)
    h.build("twin", "v1")
    h.now += timedelta(seconds=5)
    h.build("twin", "v2")  # one build, two environments (two projects): two canaries of the same service name
    live = [h.rollout("twin", "staging"), h.rollout("twin", "production")]
    assert all(x is not None and x.state == "progressing" for x in live)
    h.command(id="cmd-ambiguous", action="promote", service="twin", full=True)
    refusal = h.store.command("cmd-ambiguous")
    assert refusal["outcome"] == "refused" and len(refusal["candidates"]) == 2
    assert "--environment" in refusal["reason"]
    assert all(h.store.rollout(x.id).state == "progressing" for x in live), "nothing changed"
    h.command(id="cmd-narrow", action="promote", service="twin", environment="production", full=True)
    assert h.store.rollout(live[1].id).state in ("switching", "baking", "succeeded")
    assert h.store.rollout(live[0].id).state == "progressing", "staging untouched"

"""The engine end to end on the real emulators: functions under functions-framework
behind Pub/Sub push subscriptions, the local Cloud Run with real revision
processes, the real Google clients. Health samples are published by the test,
as an external probe would."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from pitstop.local.build import build_image, ship
from pitstop.local.cloudbuild import record_build
from pitstop.local.payloads import cloud_build, health_sample, incident
from pitstop.local.emulators import wipe_firestore
from pitstop.local.stack import Stack, wait_for
from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store

pytestmark = pytest.mark.emulators
REGION = "us-central1"
PROBE = "serviceAccount:probe@pitstop-test.iam.gserviceaccount.com"  # an external health source the specs list


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    # A new local Cloud Run is a new world: what another module left in Firestore names revisions it never had.
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("stack"), emulators=emulators, tick_interval=0.5,
               identity="alice@example.com") as running:
        yield running
    for process in running.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-3000:]}")


@pytest.fixture
def store(stack) -> Store:
    return Store.from_env(stack.project)


def apply(store: Store, service: str, steps: str = "[{weight: 10, pause: 1s}, {weight: 50, pause: 1s}]") -> None:
    spec = load_spec(f"service: {service}\nregions: [{REGION}]\nmatch: {{repo: {service}, branch: main}}\n"
                     f"strategy: {{canary: {{steps: {steps}}}}}\n"
                     f"health: {{min_requests: 20, interval: 1s, sources: ['{PROBE}']}}\n")
    store.put_spec(spec, "test", datetime.now(timezone.utc))


def active(store: Store, service: str):
    return store.active_rollout(service, REGION)


def first_version(stack: Stack, store: Store, service: str) -> str:
    ship(stack.state_dir, stack.project, service, "v1")
    record = wait_for(f"{service} v1 stable", lambda: (store.service(service, REGION) or {}).get("stable_revision"))
    return record


def step_started(store: Store, service: str):
    return wait_for(f"{service} canary step applied",
                    lambda: (r := active(store, service)) and r.step_started_at and r)


def probe(stack: Stack, r, revision: str, requests: int, errors: int, p99: float, source: str = "probe") -> dict:
    now = datetime.now(timezone.utc)
    start = r.judged_until or r.step_started_at  # a probe covers from where the judged time ends
    sample = health_sample(r.service, revision, start, max(now, start + timedelta(milliseconds=10)), requests,
                           errors, p99, source=source)
    signed(stack, "pitstop-health", sample)
    return sample


def signed(stack: Stack, topic: str, payload: dict) -> None:
    """Published with the external probe's ID token, as a listed health source sends it."""
    stack.publish(topic, {**payload, "id_token": stack.token(PROBE.split(":", 1)[1])})


def cloud_run_split(stack: Stack, service: str) -> dict[str, int]:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    client = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                   client_options=ClientOptions(api_endpoint=stack.run_endpoint))
    svc = client.get_service(name=f"projects/{stack.project}/locations/{REGION}/services/{service}")
    return {t.revision: t.percent for t in svc.traffic_statuses}


def test_build_drives_canary_to_100_then_bad_version_rolls_back(stack, store):
    apply(store, "web")
    v1 = first_version(stack, store, "web")
    assert cloud_run_split(stack, "web") == {v1: 100}

    ship(stack.state_dir, stack.project, "web", "v2")
    r = step_started(store, "web")
    assert (r.version, r.stable_revision, r.new_percent) == ("v2", v1, 10)
    assert r.image.endswith(r.artifact.digest) and "@sha256:" in r.image, "deployed by digest"
    while (r := store.rollout(r.id)).state != "succeeded":
        assert r.state in ("progressing", "switching", "baking"), r.message
        if r.step_started_at:
            probe(stack, r, r.revision, 200, 1, 120)
        time.sleep(0.5)
    assert cloud_run_split(stack, "web")[r.revision] == 100
    decisions = [e.decision for e in store.events(r.id)]
    assert decisions[0] == "started" and "succeeded" in decisions
    assert decisions.count("advanced") == 2, decisions
    v2 = r.revision

    ship(stack.state_dir, stack.project, "web", "v3")
    r3 = step_started(store, "web")
    assert r3.stable_revision == v2
    probe(stack, r3, r3.revision, 300, 90, 140)
    r3 = wait_for("v3 rolled back", lambda: (x := store.rollout(r3.id)).state == "rolled_back" and x)
    split = cloud_run_split(stack, "web")
    assert split[v2] == 100 and split[r3.revision] == 0
    verdict = next(e for e in store.events(r3.id) if e.verdict and e.verdict.outcome == "fail").verdict
    rate = next(c for c in verdict.checks if c.name == "error_rate")
    assert (rate.measured, rate.threshold) == (0.3, 0.05)
    assert "Automatically rolled back web to version v2" in r3.message
    assert store.service("web", REGION)["stable_version"] == "v2"


def test_duplicated_and_shuffled_delivery_ends_in_the_same_state_and_trail(stack, store):
    results = {}
    for service, doubled in (("once", False), ("twice", True)):
        apply(store, service, steps="[{weight: 20, pause: 1h}]")
        first_version(stack, store, service)
        name, digest = build_image(stack.state_dir, stack.project, service, "v2")
        build_id = f"{service}-0000-4000-8000-000000000002"
        builds = [cloud_build(s, build_id=build_id, project=stack.project, repo=service, image=name, digest=digest,
                              substitutions={"_VERSION": "v2"}) for s in ("QUEUED", "WORKING", "SUCCESS")]
        rng = random.Random(7)
        if doubled:
            builds = builds * 2
            rng.shuffle(builds)
        for body in builds:
            record_build(stack.state_dir, body)  # Cloud Build's API knows the build it announces
            stack.publish("cloud-builds", body, buildId=build_id, status=body["status"])
        r = step_started(store, service)
        probe(stack, r, r.stable_revision, 500, 0, 100, source="stable-probe")
        wait_for("the baseline", lambda: store.rollout(r.id).baseline)  # so both runs judge against it
        samples = [health_sample(service, r.revision, r.step_started_at, r.step_started_at + timedelta(seconds=30),
                                 n, 0, 110, source="probe") for n in (5, 100)]
        alert = incident(service, r.revision, state="closed", project=stack.project)
        inputs = [("pitstop-health", s) for s in samples] + [("pitstop-alerts", alert)]
        if doubled:
            inputs = inputs * 2
            rng.shuffle(inputs)
        for topic, body in inputs:
            signed(stack, topic, body) if topic == "pitstop-health" else stack.publish(topic, body)
        expected_events = 6  # started, applied g1, step applied g2, baseline, 2 samples ... + alert closed
        wait_for(f"{service} inputs recorded",
                 lambda: len(store.events(r.id)) >= expected_events + 1, timeout=90)
        time.sleep(2)  # let any duplicate land, if one were to be recorded
        final = store.rollout(r.id)
        results[service] = (final, store.events(r.id), len(store.recent(service)))
    (once, once_trail, once_count), (twice, twice_trail, twice_count) = results["once"], results["twice"]
    assert once_count == twice_count == 2, "one rollout per build, however often it is delivered"
    fields = ("state", "step", "desired_generation", "observed_generation")
    assert [getattr(twice, f) for f in fields] == [getattr(once, f) for f in fields]
    assert twice.new_percent == once.new_percent == 20
    assert twice.verdict.outcome == once.verdict.outcome == "pass"

    def trail(events):
        return sorted((e.input, e.decision) for e in events)
    assert trail(twice_trail) == trail(once_trail)
    assert len({e.id for e in twice_trail}) == len(twice_trail)


def _log_lines(stack: Stack, target: str) -> list[dict]:
    lines = []
    for line in Path(stack.functions[target].log_path).read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return lines


def _snapshot(store: Store) -> dict:
    out = {}
    for name in ("rollouts", "services", "specs"):
        for snap in store.db.collection(name).stream():
            out[f"{name}/{snap.id}"] = snap.to_dict()
            if name == "rollouts":
                out[f"{name}/{snap.id}/events"] = sorted(s.id for s in snap.reference.collection("events").stream())
    return out


def test_malformed_messages_are_logged_acknowledged_and_change_nothing(stack, store):
    apply(store, "shop", steps="[{weight: 10, pause: 1h}]")  # nothing moves by the clock
    first_version(stack, store, "shop")
    ship(stack.state_dir, stack.project, "shop", "v2")
    r = step_started(store, "shop")
    time.sleep(1)
    before = _snapshot(store)

    no_digest = cloud_build("SUCCESS", project=stack.project, repo="shop", with_images=False)
    record_build(stack.state_dir, no_digest)  # a real build that pushed its image inside a step
    bad = [
        ("cloud-builds", b"{not json", "on_build", "data is not JSON"),
        ("cloud-builds", json.dumps({"id": "b-1", "status": "EXPLODED"}).encode(), "on_build", "status"),
        ("cloud-builds", json.dumps(no_digest).encode(), "on_build", "carries no image digest"),
        ("pitstop-health", json.dumps({"service": "shop", "revision": r.revision}).encode(), "on_health",
         "request_count: Field required"),
        ("pitstop-health", json.dumps(health_sample("nosuch", "nosuch-1", r.step_started_at, r.step_started_at
                                                    + timedelta(seconds=5), 100, 50, 10)).encode(), "on_health",
         "no ID token"),
        ("pitstop-commands", json.dumps({"action": "launch", "service": "shop"}).encode(), "on_command", "action"),
        ("pitstop-alerts", json.dumps({"version": "1.2"}).encode(), "on_alert", "without an 'incident'"),
    ]
    for topic, data, _, _ in bad:
        stack.publish(topic, data)
    # What a push with broken base64 looks like; the emulator never makes one, a broken proxy could.
    push = {"message": {"data": "@@not-base64@@", "messageId": "bad-b64-1", "attributes": {}},
            "subscription": "projects/x/subscriptions/y"}
    answer = httpx.post(stack.functions["on_build"].url, json=push,
                        headers={"ce-id": "bad-b64-1", "ce-specversion": "1.0", "ce-source": "test",
                                 "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"})
    assert answer.status_code < 300, "acknowledged, so Pub/Sub does not redeliver it forever"

    for _, _, target, reason in bad + [(None, None, "on_build", "not valid base64")]:
        wait_for(f"{target} to log {reason!r}",
                 lambda: any(reason in line.get("message", "") for line in _log_lines(stack, target)), timeout=30)
    time.sleep(3)  # a message answered non-2xx would be redelivered within a second or two
    for _, _, target, reason in bad:
        hits = [line for line in _log_lines(stack, target) if reason in line.get("message", "")]
        assert len(hits) == 1, f"{reason!r} logged {len(hits)} times: the message was redelivered"
        assert hits[0]["severity"] in ("ERROR", "WARNING")
    failed_build = ship(stack.state_dir, stack.project, "shop", "v3", fail=True)
    record = wait_for("the failed build recorded", lambda: (
        snap := store.db.collection("builds").document(failed_build).get()).exists and snap.to_dict())
    assert record["outcome"] == "failed" and "ended FAILURE" in record["message"]
    assert "Nothing deployed; the current versions keep serving." in record["message"]
    assert _snapshot(store) == before
    assert store.db.collection("builds").document(no_digest["id"]).get().to_dict()["outcome"] == "rejected"


def _cli(stack: Stack, *args: str):
    from typer.testing import CliRunner

    from pitstop.surfaces.cli import _config, app

    _config.cache_clear()
    result = CliRunner().invoke(app, list(args), env={**stack.env, "GOOGLE_CLOUD_PROJECT": stack.project,
                                                      "PITSTOP_IDENTITY": "alice@example.com"})
    return result


def test_operator_cli_alert_and_rollback_to_an_earlier_version(stack, store, tmp_path):
    spec = tmp_path / "api.yaml"
    spec.write_text(f"service: api\nregions: [{REGION}]\nmatch: {{repo: api, branch: main}}\n"
                    "strategy: {canary: {steps: [{weight: 10, pause: 1h}, {weight: 40, pause: 1h}]}}\n")
    result = _cli(stack, "apply", str(spec))
    assert result.exit_code == 0 and "applied spec api--production" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: api\nregions: [r]\nmatch: {repo: api}\nstrategy: {canary: {steps: [{weight: 0}]}}\n")
    result = _cli(stack, "apply", str(bad))
    assert result.exit_code == 1 and "strategy.canary.steps.0.weight" in result.output

    v1 = first_version(stack, store, "api")
    ship(stack.state_dir, stack.project, "api", "v2")
    r = step_started(store, "api")
    result = _cli(stack, "promote", "api", "-m", "dashboards look fine")
    assert result.exit_code == 0, result.output
    assert "advanced" in result.output and "promoted by alice" in result.output
    wait_for("40 % applied", lambda: (x := store.rollout(r.id)).applied and x.new_percent == 40)
    result = _cli(stack, "promote", r.id, "--full")
    assert result.exit_code == 0 and "switching" in result.output, result.output
    wait_for("v2 succeeded", lambda: store.rollout(r.id).state == "succeeded")

    ship(stack.state_dir, stack.project, "api", "v3")
    r3 = step_started(store, "api")
    stack.publish("pitstop-alerts", incident("api", r3.revision, project=stack.project, incident_id="0.abc"))
    r3 = wait_for("alert rollback", lambda: (x := store.rollout(r3.id)).state == "rolled_back" and x)
    assert "A Cloud Monitoring alert fired for the new version" in r3.message

    result = _cli(stack, "rollback", "api", "--to", "v1", "-m", "v2 leaks memory")
    assert result.exit_code == 0, result.output
    assert "rollback_to" in result.output
    wait_for("v1 serving again", lambda: cloud_run_split(stack, "api").get(v1) == 100)
    assert store.service("api", REGION)["stable_version"] == "v1"

    result = _cli(stack, "status", "api", "--json")
    rows = json.loads(result.output[result.output.index("["):])
    assert [row["version"] for row in rows[:3]] == ["v1", "v3", "v2"]
    assert rows[0]["state"] == "succeeded" and rows[1]["state"] == "rolled_back"
    result = _cli(stack, "history", "api", "--rollout", r3.id)
    assert result.exit_code == 0 and "rolling_back" in result.output and "alert" in result.output


def test_a_newer_build_supersedes_the_canary_and_takes_its_traffic_back(stack, store):
    apply(store, "cart", steps="[{weight: 30, pause: 1h}]")
    v1 = first_version(stack, store, "cart")
    ship(stack.state_dir, stack.project, "cart", "v2")
    r2 = step_started(store, "cart")
    assert cloud_run_split(stack, "cart") == {v1: 70, r2.revision: 30}
    ship(stack.state_dir, stack.project, "cart", "v3")
    r3 = wait_for("v3 canary step applied", lambda: (x := active(store, "cart")) and x.version == "v3"
                  and x.step_started_at and x)
    assert r3.stable_revision == v1, "the superseded canary never becomes anyone's stable"
    split = cloud_run_split(stack, "cart")
    assert split == {v1: 70, r3.revision: 30}, "v2's share went back; only stable and the new canary serve"
    old = store.rollout(r2.id)
    assert (old.state, old.superseded_by) == ("superseded", r3.id)
    assert [e.decision for e in store.events(r2.id)][-1] == "superseded"
    notes = [line.get("message", "") for line in _log_lines(stack, "on_build")]
    assert any("Version v2 superseded by v3" in n for n in notes), "the superseded rollout's notice is sent"


def test_blue_green_verifies_on_the_tag_waits_for_approval_switches_and_bakes(stack, store, tmp_path):
    spec = load_spec(f"service: shelf\nregions: [{REGION}]\nmatch: {{repo: shelf, branch: main}}\n"
                     "strategy: {blue_green: {verify: 1s, bake: 2s, approve: true}}\n"
                     f"health: {{min_requests: 20, interval: 1s, sources: ['{PROBE}']}}\n")
    store.put_spec(spec, "test", datetime.now(timezone.utc))
    blue = first_version(stack, store, "shelf")
    ship(stack.state_dir, stack.project, "shelf", "v2")
    r = wait_for("green verifying", lambda: (x := active(store, "shelf")) and x.state == "verifying"
                 and x.step_started_at and x)
    assert cloud_run_split(stack, "shelf") == {blue: 100, r.revision: 0}, "green gets no traffic while verified"
    time.sleep(1.1)
    probe(stack, r, r.revision, 40, 0, 90, source="smoke-tests")  # a smoke suite on the green tag URL
    wait_for("the approval gate", lambda: store.rollout(r.id).state == "awaiting_approval")
    result = _cli(stack, "approve", "shelf", "-m", "smoke tests green")
    assert result.exit_code == 0 and "switching" in result.output, result.output
    r = wait_for("baking at 100 %", lambda: (x := store.rollout(r.id)).state == "baking" and x)
    assert cloud_run_split(stack, "shelf") == {r.revision: 100, blue: 0}, "blue kept at 0 % for instant rollback"
    # A probe keeps reporting; the rollout succeeds once its windows reach the end of the bake.
    wait_for("green succeeded after the bake", lambda: probe(stack, store.rollout(r.id), r.revision, 200, 0, 95)
             and store.rollout(r.id).state == "succeeded", timeout=30)
    assert store.service("shelf", REGION)["stable_revision"] == r.revision

"""Releases end to end on the local stack: the real emulators, functions behind Pub/Sub push, the local Cloud Run
with one service per project and region, builds confirmed with the local Cloud Build API, signed commands and
health samples. One pipeline: staging (one region) and production (three regions in two waves), a hotfix path."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pitstop.core.pipeline import load_pipeline
from pitstop.core.release import release_id
from pitstop.gcp.store import Store
from pitstop.local.build import ship
from pitstop.local.emulators import wipe_firestore
from pitstop.local.payloads import health_sample
from pitstop.local.stack import Stack, wait_for

pytestmark = pytest.mark.emulators
SERVICE = "shop"
PROBE = "probe@pitstop-test.iam.gserviceaccount.com"
APPROVER = "ada@example.com"
PROD = ["us-central1", "europe-west1", "asia-northeast1"]
PIPELINE = f"""
service: {SERVICE}
environments:
  staging:
    project: pitstop-staging
    regions: [us-central1]
    on: {{branch: main}}
    strategy: {{canary: {{steps: [{{weight: 50, pause: 1s}}]}}}}
    health: {{min_requests: 20, interval: 1s, sources: ['serviceAccount:{PROBE}']}}
  production:
    project: pitstop-prod
    regions: {PROD}
    waves: [[us-central1], [europe-west1, asia-northeast1]]
    on: {{tag: "v*"}}
    promote_from: staging
    approve: true
    strategy: {{canary: {{steps: [{{weight: 10, pause: 1s}}, {{weight: 50, pause: 1s}}]}}}}
    health: {{min_requests: 20, interval: 1s, sources: ['serviceAccount:{PROBE}']}}
    access: {{approver: [{APPROVER}]}}
paths:
  hotfix: {{on: {{branch: "hotfix/*"}}, to: production, approve: false,
           strategy: {{canary: {{steps: [{{weight: 25, pause: 1s}}]}}}}}}
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("stack"), emulators=emulators, tick_interval=0.5,
               identity="alice@example.com") as running:
        Store.from_env(running.project).put_pipeline(load_pipeline(PIPELINE), "test", datetime.now(timezone.utc))
        yield running
    for process in running.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-3000:]}")


@pytest.fixture(scope="module")
def store(stack) -> Store:
    return Store.from_env(stack.project)


def build(stack: Stack, version: str, **ref: str) -> str:
    return ship(stack.state_dir, stack.project, SERVICE, version, **ref)


def release_of(stack: Stack, store: Store, version: str) -> str:
    from pitstop.local.build import build_image

    _, digest = build_image(stack.state_dir, stack.project, SERVICE, version)
    return release_id(SERVICE, digest)


def probe_until(stack: Stack, store: Store, rid: str, done, failing: set[str] = frozenset(), timeout: float = 90):
    """Send every live region of the release healthy (or, in `failing` regions, failing) samples until `done`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rel = store.release(rid)
        if rel is not None and done(rel):
            return rel
        stage = rel.stage if rel else None
        for region, g in (stage.regions.items() if stage else []):
            r = store.rollout(g.rollout_id) if g.rollout_id else None
            if r is None or r.state not in ("progressing", "baking", "verifying") or not r.step_started_at:
                continue
            now = datetime.now(timezone.utc)
            start = r.judged_until or r.step_started_at
            bad = region in failing
            sample = health_sample(SERVICE, r.revision, start, max(now, start + timedelta(milliseconds=10)), 100,
                                   60 if bad else 0, 80.0, source="probe", region=region)
            sample["rollout_id"] = r.id
            stack.publish("pitstop-health", {**sample, "id_token": stack.token(PROBE)})
        time.sleep(0.4)
    rel = store.release(rid)
    raise AssertionError(f"release {rid} did not get there: {rel.state if rel else None}: "
                         f"{rel.message if rel else ''} {rel.stage.waiting_for if rel and rel.stage else ''}")


def split(stack: Stack, project: str, region: str) -> dict[str, int]:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    client = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                   client_options=ClientOptions(api_endpoint=stack.run_endpoint))
    svc = client.get_service(name=f"projects/{project}/locations/{region}/services/{SERVICE}")
    return {t.revision: t.percent for t in svc.traffic_statuses if t.percent}


def approve(stack: Stack, store: Store, rid: str, email: str = APPROVER) -> None:
    stack.command({"action": "approve", "release_id": rid, "environment": "production"}, email=email)


def test_feature_branch_builds_start_nothing_and_say_so(stack, store):
    build_id = build(stack, "feat1", branch="feature/search")
    record = wait_for("the build's record", lambda: (store.db.collection("builds").document(build_id).get()
                                                     .to_dict() or {}).get("outcome") and
                      store.db.collection("builds").document(build_id).get().to_dict())
    assert record["outcome"] == "ignored"
    assert "Branch feature/search of shop matches no rule" in record["message"]
    assert store.releases(SERVICE) == []


def test_main_to_staging_tag_to_production_in_waves_then_a_failure_in_wave_two_rolls_back_all(stack, store):
    # v1: first versions everywhere (no stable revision yet: each region takes it at once)
    build(stack, "v1", branch="main")
    r1 = release_of(stack, store, "v1")
    wait_for("v1 in staging", lambda: (x := store.release(r1)) and x.state == "succeeded" and x)
    build(stack, "v1", tag="v1")
    wait_for("v1 waits for an approver", lambda: store.release(r1).stages.get("production") and
             store.release(r1).stages["production"].state == "awaiting_approval")
    assert not any(split_or_none(stack, "pitstop-prod", region) for region in PROD)  # nothing before approval
    approve(stack, store, r1)
    wait_for("v1 in production", lambda: store.release(r1).state == "succeeded", timeout=90)
    assert all(next(iter(split(stack, "pitstop-prod", region))).startswith("shop-v1") for region in PROD)

    # v2: main → staging (a canary, judged); its tag → production, approved, in two waves
    build(stack, "v2", branch="main")
    r2 = release_of(stack, store, "v2")
    probe_until(stack, store, r2, lambda x: x.state == "succeeded")
    build(stack, "v2", tag="v2")
    wait_for("v2 waits for an approver", lambda: waits(store, r2))
    approve(stack, store, r2, email="alice@example.com")  # an admin may approve too
    rel = probe_until(stack, store, r2, lambda x: x.state == "succeeded", timeout=120)
    prod = rel.stages["production"]
    assert prod.approved_by == "alice@example.com"
    assert all(next(iter(split(stack, "pitstop-prod", region))).startswith("shop-v2") for region in PROD)
    wave2 = [s for s in prod.spreads if s.wave == 1]
    assert {s.step for s in wave2} >= {0, 1}, prod.spreads  # both canary steps of wave 2 measured
    decisions = [e.decision for e in store.release_events(r2)]
    assert decisions[0] == "started" and "extended" in decisions and "wave_started" in decisions
    v2 = {region: next(iter(split(stack, "pitstop-prod", region))) for region in PROD}

    # v3 fails in asia-northeast1, in the second wave: every production region goes back to v2
    build(stack, "v3", branch="main")
    r3 = release_of(stack, store, "v3")
    probe_until(stack, store, r3, lambda x: x.state == "succeeded")
    build(stack, "v3", tag="v3")
    wait_for("v3 waits", lambda: waits(store, r3))
    approve(stack, store, r3)
    probe_until(stack, store, r3, lambda x: x.stages["production"].wave == 1 and x.state == "running"
                and x.stages["production"].step >= 0, timeout=120)
    rel = probe_until(stack, store, r3, lambda x: x.state == "rolled_back", failing={"asia-northeast1"})
    assert "asia-northeast1" in rel.stages["production"].reason
    for region in PROD:
        wait_for(f"{region} back on v2", lambda: split(stack, "pitstop-prod", region) == {v2[region]: 100})
    assert next(iter(split(stack, "pitstop-staging", "us-central1"))).startswith("shop-v3")  # staging keeps v3
    us = store.rollout(rel.stages["production"].regions["us-central1"].rollout_id)
    assert us.state == "succeeded"  # wave 1 had finished; a revert rollout took it back


def waits(store: Store, rid: str) -> bool:
    stage = store.release(rid).stages.get("production")
    return stage is not None and stage.state == "awaiting_approval"


def split_or_none(stack: Stack, project: str, region: str) -> dict[str, int] | None:
    try:
        return split(stack, project, region)
    except Exception:  # NotFound: never deployed there
        return None


def test_hotfix_path_goes_straight_to_production_with_its_own_steps(stack, store):
    build(stack, "v4fix", branch="hotfix/cart")
    rid = release_of(stack, store, "v4fix")
    rel = probe_until(stack, store, rid, lambda x: x.state == "succeeded", timeout=120)
    assert rel.hotfix and rel.path == "hotfix" and rel.route == ["production"]
    us = store.rollout(rel.stages["production"].regions["us-central1"].rollout_id)
    assert [s.weight for s in us.strategy.canary.steps] == [25]


def test_someone_without_the_approver_role_cannot_start_production(stack, store):
    # The refusal is recorded with the missing permission (four eyes itself: tests/unit/test_access.py).
    rid = release_of(stack, store, "v3")
    command_id = stack.command({"action": "approve", "release_id": rid, "environment": "production"},
                               email="mallory@example.com")
    refused = wait_for("refusal", lambda: store.command(f"command-{command_id}"))
    assert refused["outcome"] == "refused" and refused["code"] == "insufficient_permissions"
    assert "rollout:approve" in refused["reason"]


def test_a_freeze_holds_a_release_until_an_admin_lifts_it(stack, store):
    frozen = ("service: cart\nenvironments:\n  staging:\n    project: pitstop-staging\n    regions: [us-central1]\n"
              "    on: {branch: main}\n    strategy: {canary: {steps: [{weight: 50, pause: 1s}]}}\n"
              "freeze: [{cron: '* * * * *', duration: 1h, tz: Europe/Berlin}]\n")  # always inside a window
    store.put_pipeline(load_pipeline(frozen), "test", datetime.now(timezone.utc))
    ship(stack.state_dir, stack.project, "cart", "v1", branch="main")
    from pitstop.local.build import build_image

    rid = release_id("cart", build_image(stack.state_dir, stack.project, "cart", "v1")[1])
    rel = wait_for("the release waits", lambda: (x := store.release(rid)) and x.stage.waiting_for and x)
    assert rel.state == "waiting" and "freeze window" in rel.stage.waiting_for
    assert rel.stage.regions == {} and rel.due_at is not None  # nothing deployed; a tick looks again
    time.sleep(1.5)  # ticks come and go: still frozen
    assert store.release(rid).stage.state == "planned"
    refused = stack.command({"action": "unfreeze", "release_id": rid, "environment": "staging",
                             "reason": "hotfix for the outage"}, email=APPROVER)  # not an admin
    assert wait_for("refusal", lambda: store.command(f"command-{refused}"))["code"] == "insufficient_permissions"
    stack.command({"action": "unfreeze", "release_id": rid, "environment": "staging",
                   "reason": "payment outage, approved by the CTO"})  # alice, the stack's admin
    rel = wait_for("released after the override", lambda: (x := store.release(rid)).state == "succeeded" and x)
    assert rel.stages["staging"].unfrozen_by == "alice@example.com"
    reasons = [line for e in store.release_events(rid) for line in e.reasons]
    assert any("lifted the freeze" in line and "payment outage" in line for line in reasons), reasons

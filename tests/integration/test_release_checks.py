"""Checks of a release end to end on the local stack: Cloud Run jobs as real processes of the image (the migration,
E2E), the local Artifact Analysis, smoke probes of the new revision's tag URL, through the functions and the real
Google clients. Each test ships its own service so that the releases do not meet."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pitstop.core.pipeline import load_pipeline
from pitstop.core.release import release_id
from pitstop.gcp.store import Store
from pitstop.local.build import build_image, ship
from pitstop.local.emulators import wipe_firestore
from pitstop.local.stack import Stack, wait_for

pytestmark = pytest.mark.emulators


def pipeline(service: str, staging_checks: str, production_checks: str = "") -> str:
    return f"""
service: {service}
environments:
  staging:
    project: checks-staging
    regions: [us-central1]
    on: {{branch: main}}
    strategy: {{canary: {{steps: [{{weight: 50, pause: 1s}}]}}}}
    health: {{min_requests: 1, interval: 1s}}
    checks: {staging_checks or '{}'}
  production:
    project: checks-prod
    regions: [us-central1, europe-west1]
    on: {{tag: "v*"}}
    promote_from: staging
    strategy: {{canary: {{steps: [{{weight: 50, pause: 1s}}]}}}}
    health: {{min_requests: 1, interval: 1s}}
    checks: {production_checks or '{}'}
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("stack"), emulators=emulators, tick_interval=0.5, health_lag=0.5,
               identity="alice@example.com") as running:
        yield running
    for process in running.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-4000:]}")


@pytest.fixture(scope="module")
def store(stack) -> Store:
    return Store.from_env(stack.project)


def apply(store: Store, service: str, staging: str, production: str = "") -> None:
    store.put_pipeline(load_pipeline(pipeline(service, staging, production)), "test", datetime.now(timezone.utc))


def release(stack: Stack, store: Store, service: str, version: str, env: dict | None = None, **ref) -> str:
    ship(stack.state_dir, stack.project, service, version, env=env, **{k: v for k, v in ref.items() if k != "vulns"},
         vulns=ref.get("vulns", ()))
    _, digest = build_image(stack.state_dir, stack.project, service, version, env=env, vulns=ref.get("vulns", ()))
    return release_id(service, digest)


def ended(store: Store, rid: str, timeout: float = 60):
    return wait_for(f"release {rid} to end", lambda: (x := store.release(rid)) and x.state in (
        "succeeded", "failed", "rolled_back", "cancelled") and x, timeout=timeout)


def executions(stack: Stack, project: str, job_prefix: str) -> list[str]:
    from pitstop.gcp.jobs import Jobs

    jobs = Jobs.from_endpoint(stack.run_endpoint)
    found = []
    for job in jobs.jobs.list_jobs(parent=f"projects/{project}/locations/us-central1"):
        if job.name.rsplit("/", 1)[-1].startswith(job_prefix):
            found += [e.name for e in jobs.executions.list_executions(parent=job.name)]
    return found


def test_a_migration_runs_once_before_traffic_even_when_redelivered(stack, store):
    apply(store, "mig", "{migrate: {args: [python, migrate.py], timeout: 1m}}")
    rid = release(stack, store, "mig", "v1", env={"DB_PATH": str(stack.state_dir / "mig.db")})
    rel = ended(store, rid)
    assert rel.state == "succeeded", rel.message
    run = rel.stages["staging"].checks["migrate"]
    assert run.state == "passed" and run.execution and "succeeded" in run.reason
    # The build message again (Pub/Sub redelivers): the release exists, its migration is not run again.
    release(stack, store, "mig", "v1", env={"DB_PATH": str(stack.state_dir / "mig.db")})
    time.sleep(2)
    assert len(executions(stack, "checks-staging", "mig-migrate")) == 1
    # The migration ran before the new revision served anything: its job finished before the first split.
    events = store.release_events(rid)
    passed_at = next(e.at for e in events if any("migrate passed" in line for line in e.reasons))
    started_at = next(e.at for e in events if e.decision == "stage_entered")
    assert passed_at <= started_at


def test_a_failed_migration_leaves_traffic_untouched_and_stops_the_release(stack, store):
    apply(store, "migbad", "{migrate: {args: [python, migrate.py], timeout: 1m}}")
    rid = release(stack, store, "migbad", "v1", env={"MIGRATE_FAIL": "1", "DB_PATH": str(stack.state_dir / "b.db")})
    rel = ended(store, rid)
    assert rel.state == "failed" and rel.stages["staging"].state == "failed"
    assert "migrate: job execution" in rel.stages["staging"].reason and "failed" in rel.stages["staging"].reason
    assert rel.stages["staging"].regions == {}  # nothing was deployed
    assert "Traffic is untouched" in rel.message or "stopped before staging" in rel.message


def test_smoke_at_zero_percent_rolls_back_before_any_user_traffic(stack, store):
    apply(store, "smk", "{smoke: {path: /healthz, interval: 1s, success_threshold: 2, failure_threshold: 2, "
                        "deadline: 20s}}")
    rid = release(stack, store, "smk", "v1")
    assert ended(store, rid).state == "succeeded"  # a first version: nothing to compare, 100 % at once
    rid = release(stack, store, "smk", "v2", env={"SMOKE_FAIL": "1"})
    rel = ended(store, rid)
    assert rel.state == "rolled_back"
    # The probes' health sample may roll the region back (the judge) before the check's own result lands.
    # (the revert stops the check; the probes it was running are still recorded when they end)
    run = wait_for("the smoke check's result", lambda: (x := store.release(rid).stages["staging"].checks[
        "smoke-w0-s-1"]).state not in ("running", "cancelled") and x)
    assert run.state == "failed" and "answered 503, expected 200" in run.reason
    assert run.detail["us-central1"]["failed"] >= 2
    region = rel.stages["staging"].regions["us-central1"]
    r = store.rollout(region.rollout_id)
    assert r.observed and all(t.percent == 0 for t in r.observed if t.revision == r.revision)
    splits = [e.traffic_after for e in store.events(r.id) if e.traffic_after]
    assert all(f"{r.revision} 0%" in s or r.revision not in s for s in splits), splits  # never served users
    smoke_samples = [e for e in store.events(r.id) if e.verdict and e.verdict.source == "smoke"]
    assert smoke_samples  # the probes went through the judge and its audit too


def test_staging_e2e_informs_there_and_blocks_production(stack, store):
    apply(store, "ete", "{e2e: {args: [python, e2e.py], timeout: 1m}}")
    rid = release(stack, store, "ete", "v1", env={"E2E_FAIL": "1"})
    e2e = wait_for("staging e2e result", lambda: (x := store.release(rid)) and (run := x.stages["staging"].checks
                                                                                 .get("e2e")) and run.done and run,
                   timeout=90)
    rel = store.release(rid)
    assert rel.stages["staging"].state == "succeeded" and e2e.state == "failed" and e2e.on_fail == "inform"
    assert e2e.detail.get("summary", {}).get("failed", 0) >= 1, e2e.detail  # what the test job printed
    release(stack, store, "ete", "v1", env={"E2E_FAIL": "1"}, tag="v1")
    prod = wait_for("production refused", lambda: (s := store.release(rid).stages.get("production"))
                    and s.state == "failed" and s)
    assert "E2E in staging did not pass" in prod.reason and prod.regions == {}


def test_the_scan_refuses_a_critical_vulnerability_unless_allowlisted_and_not_expired(stack, store):
    checks = ("{scan: {severity: CRITICAL, wait: 30s, allow: [{cve: CVE-2099-0777, until: 2099-01-01}, "
              "{cve: CVE-2099-0666, until: 2020-01-01}]}}")
    apply(store, "scn", checks)
    bad = release(stack, store, "scn", "v1", vulns=["CRITICAL:CVE-2099-0001"])
    rel = ended(store, bad)
    assert rel.state == "failed" and "CVE-2099-0001 (CRITICAL" in rel.stages["staging"].reason
    assert rel.stages["staging"].regions == {}
    allowed = release(stack, store, "scn", "v2", vulns=["CRITICAL:CVE-2099-0777"])
    assert ended(store, allowed).state == "succeeded"
    expired = release(stack, store, "scn", "v3", vulns=["CRITICAL:CVE-2099-0666"])
    rel = ended(store, expired)
    assert rel.state == "failed" and "expired" in rel.stages["staging"].reason


def test_a_job_past_its_timeout_fails_its_gate(stack, store):
    # A migration that sleeps longer than its timeout: Cloud Run stops it there (the check's own deadline, the
    # timeout plus time to set up and start, is the backstop: tests/unit/test_release.py), nothing is deployed.
    apply(store, "slow", "{migrate: {command: [sleep], args: ['30'], timeout: 3s}}")
    rid = release(stack, store, "slow", "v1")
    rel = ended(store, rid, timeout=40)
    run = rel.stages["staging"].checks["migrate"]
    assert rel.state == "failed" and run.state in ("failed", "timed_out")
    assert "timeout was reached (3s)" in run.reason or "did not finish within its 13s deadline" in run.reason
    assert rel.stages["staging"].regions == {}


def test_a_crash_between_the_jobs_start_and_its_result_loses_nothing(stack, store):
    """The function that started the migration dies before recording it: the next poll (a tick) carries the check
    on, finds the execution already started (jobs are named per release and check) and records its result."""
    from pitstop.core.checks import job_name
    from pitstop.gcp.jobs import Jobs

    apply(store, "crash", "{migrate: {args: [python, migrate.py], timeout: 1m}}")
    digest = build_image(stack.state_dir, stack.project, "crash", "v1")[1]
    rid = release_id("crash", digest)
    # Start the job as the crashed function did, before the release exists to record it.
    jobs = Jobs.from_endpoint(stack.run_endpoint)
    name = job_name("crash", rid, "staging", "migrate", 1)
    image = f"us-central1-docker.pkg.dev/{stack.project}/apps/crash@{digest}"
    assert jobs.ensure("checks-staging", "us-central1", name, image, None, ["python", "migrate.py"],
                       {"PITSTOP_RELEASE": rid, "PITSTOP_ENVIRONMENT": "staging", "PITSTOP_VERSION": "v1"}, 60, 0)
    first = jobs.run_once("checks-staging", "us-central1", name)
    ship(stack.state_dir, stack.project, "crash", "v1")
    rel = ended(store, rid)
    assert rel.state == "succeeded"
    assert rel.stages["staging"].checks["migrate"].execution == first  # the one started before, not a second
    assert executions(stack, "checks-staging", "crash-migrate") == [first]

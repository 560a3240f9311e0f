"""The demo's scenario end to end, under real load on the whole local stack.

v1 deployed; v2 promoted through every canary step on verdicts computed from
what the router served (local Cloud Monitoring, the production path, lagging
as on GCP, scaled: 1.5 s for 0.5 s ticks); v3 (30 % errors) rolled
back. Then the test reads Cloud Run through the Admin API client and the audit
trail from Firestore, as an auditor would.
"""

from __future__ import annotations

import io
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from rich.console import Console

from pitstop.local.demo import REGION, SERVICE, View, run_scenario, service_uri
from pitstop.local.load import APP_5XX, OK
from pitstop.local.stack import Stack
from pitstop.gcp.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.emulators]

# Decisions that follow the sampler's rhythm rather than the rollout's course.
SAMPLE_DECISIONS = {"judged", "baseline", "ignored", "held"}


@pytest.fixture(scope="module")
def demo(emulators, tmp_path_factory):
    """Run the scenario once on a fresh Firestore; keep the stack up while the tests read it."""
    from pitstop.local.emulators import wipe_firestore

    wipe_firestore(emulators.firestore.host, emulators.project)  # other tests' rollouts of "web"
    out = io.StringIO()
    # GCP's timing scaled to a 0.5 s tick (lag 1.5 s, the same ratio as the demo's 1 s tick and 3 s lag): half the time
    with Stack(tmp_path_factory.mktemp("demo"), emulators=emulators, tick_interval=0.5, health_lag=1.5) as stack:
        report = run_scenario(stack, rps=50, view=View(Console(file=out, width=200), rps=50))
        yield stack, report
        print(out.getvalue())  # pytest shows it when a test fails
    wipe_firestore(emulators.firestore.host, emulators.project)  # leave no "web" behind for later tests


def lifecycle(events) -> list[str]:
    return [e.decision for e in events if e.decision not in SAMPLE_DECISIONS]


def test_the_scenario_reports_no_problem(demo):
    _, report = demo
    assert report.problems == []


def test_v2_was_promoted_through_every_step_to_100_percent(demo):
    stack, report = demo
    store = Store.from_env(stack.project)
    v2 = store.rollout(report.v2.id)
    assert (v2.version, v2.state, v2.stable_revision) == ("v2", "succeeded", report.v1_revision)
    assert report.split_after_v2 == {v2.revision: 100, report.v1_revision: 0}, "Cloud Run at the time v2 succeeded"
    events = store.events(v2.id)
    assert lifecycle(events) == ["started", "advanced", "step_started", "advanced", "step_started", "advanced",
                                 "step_started", "switching", "baking", "succeeded"], "100 % is watched before done"
    passes = [e.verdict for e in events if e.verdict and e.verdict.outcome == "pass"]
    assert passes and all(v.source == "cloud-monitoring" and v.revision == v2.revision for v in passes)
    assert not any(e.verdict and e.verdict.outcome == "fail" for e in events)
    assert all(e.reasons and e.actor for e in events), "every decision says who and why"


def test_v3_was_rolled_back_on_its_error_rate_with_a_readable_trail(demo):
    stack, report = demo
    store = Store.from_env(stack.project)
    v2, v3 = report.v2, store.rollout(report.v3.id)
    assert (v3.version, v3.state, v3.stable_revision) == ("v3", "rolled_back", v2.revision)
    events = store.events(v3.id)
    assert lifecycle(events) == ["started", "advanced", "step_started", "rolling_back", "rolled_back"]
    decision = next(e for e in events if e.decision == "rolling_back")
    assert decision.actor == "health-judge" and decision.state_after == "rolling_back"
    assert decision.verdict.outcome == "fail" and decision.verdict.source == "cloud-monitoring"
    rate = next(c for c in decision.verdict.checks if c.name == "error_rate")
    assert rate.threshold == 0.05 and rate.measured > 0.05 and rate.passed is False
    assert "error" in decision.verdict.rule
    done = events[-1]
    assert done.decision == "rolled_back" and f"{v2.revision} 100%" in done.traffic_after
    assert "Automatically rolled back web to version v2" in v3.message
    record = store.service(SERVICE, REGION)
    assert (record["stable_version"], record["stable_revision"], record["active_rollout"]) == ("v2", v2.revision,
                                                                                               None)


def test_cloud_run_serves_v2_alone_after_the_rollback(demo):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    stack, report = demo
    client = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                   client_options=ClientOptions(api_endpoint=stack.run_endpoint))
    svc = client.get_service(name=f"projects/{stack.project}/locations/{REGION}/services/{SERVICE}")
    assert {t.revision: t.percent for t in svc.traffic_statuses} == {report.v2.revision: 100,
                                                                     report.v3.revision: 0}
    assert {b.revision: p for b, p in stack.cloud_run.router.routes(svc.name).split} == {report.v2.revision: 100}


def test_no_request_failed_except_v3s_own_500s(demo):
    stack, report = demo
    v3 = report.v3.revision
    by = {(r.revision, r.kind) for r in report.results}
    assert {kind for _, kind in by} <= {OK, APP_5XX}, "no connection error, timeout or router 5xx"
    assert {rev for rev, kind in by if kind == APP_5XX} == {v3}, "only v3 failed, and it did"
    served = {(s.revision, s.status >= 500) for s in stack.request_log.between(0, float("inf"))}
    assert {rev for rev, failed in served if failed} == {v3}, "the router saw the same"
    answered = {rev for rev, _ in by}
    assert {report.v1_revision, report.v2.revision, v3} <= answered, "the load reached every version"


def test_the_router_stopped_sending_to_v3_once_it_switched_back(demo):
    _, report = demo
    assert report.stable_routed_at is not None
    assert report.v3_routed_at is not None and report.v3_routed_at < report.stable_routed_at
    late = [r for r in report.results if r.revision == report.v3.revision and r.sent > report.stable_routed_at]
    assert late == []


def test_the_stack_runs_with_monitorings_lag_scaled_like_its_ticks(demo):
    stack, report = demo
    assert stack.health_lag >= 3 * stack.tick_interval > 0, "GCP: up to 180 s of lag for a tick a minute"
    assert report.health_lag == stack.health_lag


def test_every_monitoring_verdict_judged_only_data_older_than_the_lag(demo):
    stack, report = demo
    store = Store.from_env(stack.project)
    lag = timedelta(seconds=stack.health_lag)
    judged = [(e.at, e.verdict) for r in (report.v2, report.v3) for e in store.events(r.id)
              if e.verdict and e.verdict.source == "cloud-monitoring"]
    assert any(v.outcome == "pass" for _, v in judged) and any(v.outcome == "fail" for _, v in judged)
    too_new = [(at, v.window_end) for at, v in judged if v.window_end > at - lag]
    assert too_new == [], "the sampler's windows end the lag before the tick that judged them"


def test_the_stacks_monitoring_shows_a_request_only_once_the_lag_has_passed(demo):
    from pitstop.gcp.metrics import Metrics

    stack, _ = demo
    lag = stack.health_lag
    metrics = Metrics(stack.monitoring_endpoint)
    try:
        since = datetime.now(timezone.utc)
        sent = time.time()
        answer = httpx.get(service_uri(stack), timeout=10)
        answered = time.time()
        revision = answer.json()["revision"]
        polls = []  # (query sent, query answered, the revision's requests since `since`)
        deadline = time.monotonic() + 30
        while not (polls and polls[-1][2]) and time.monotonic() < deadline:
            asked = time.time()
            health = metrics.revision_health(stack.project, REGION, SERVICE, [revision], since,
                                             datetime.now(timezone.utc))
            polls.append((asked, time.time(), health[revision].request_count))
            time.sleep(0.1)
    finally:
        metrics.close()
    assert polls[0][2] == 0 and polls[-1][2] == 1, polls
    assert all(n == 0 for _, done, n in polls if done < sent + lag), polls
    assert all(n == 1 for asked, _, n in polls if asked >= answered + lag), polls

"""`pitstop demo`'s release scenario end to end, under load on the whole local stack (the same function the
CLI runs): v2 through staging and three production regions in two waves, v3 failing in wave 2 only and every
production region back on v2. The figures it reports are what bench/regions.py aggregates."""

from __future__ import annotations

import pytest

from pitstop.gcp.store import Store
from pitstop.local.release_demo import run_release_scenario, summary_lines
from pitstop.local.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.emulators]


@pytest.fixture(scope="module")
def demo(emulators, tmp_path_factory):
    from pitstop.local.emulators import wipe_firestore

    wipe_firestore(emulators.firestore.host, emulators.project)
    lines: list[str] = []
    with Stack(tmp_path_factory.mktemp("release-demo"), emulators=emulators, tick_interval=0.5,
               health_lag=1.5) as stack:
        report = run_release_scenario(stack, rps=80, say=lines.append)
        yield stack, report
        print("\n".join(lines + summary_lines(report)))
    wipe_firestore(emulators.firestore.host, emulators.project)


def test_the_release_scenario_reports_no_problem(demo):
    _, report = demo
    assert report.problems == []
    assert report.v2.state == "succeeded" and report.v3.state == "rolled_back"


def test_v3_failed_in_wave_two_and_wave_one_went_back_too(demo):
    stack, report = demo
    store = Store.from_env(stack.project)
    v3 = store.release(report.v3.id)
    prod = v3.stages["production"]
    assert prod.state == "rolled_back" and prod.wave == 1
    assert any(x in prod.reason for x in ("europe-west1", "asia-northeast1")), prod.reason
    us = store.rollout(prod.regions["us-central1"].rollout_id)
    assert us.state == "succeeded"  # it had finished wave 1; a revert rollout took it back to v2
    assert prod.regions["us-central1"].state == "rolled_back"
    assert v3.stages["staging"].state == "succeeded"  # another environment: untouched
    assert report.revert_s is not None and report.revert_s > 0


def test_every_wave_two_step_was_measured_in_both_regions(demo):
    _, report = demo
    v2 = report.v2.stages["production"]
    assert {(s.wave, s.step) for s in v2.spreads} == {(1, 0), (1, 1)}  # 25 % and 100 %
    assert all(s.first != s.last for s in v2.spreads)
    assert len(report.spreads_routed_ms) >= 2


def test_the_checks_ran_where_they_belong_and_v4_was_refused_by_its_scan(demo):
    stack, report = demo
    store = Store.from_env(stack.project)
    v2 = store.release(report.v2.id)
    staging = v2.stages["staging"].checks
    assert {k: run.state for k, run in staging.items()} == {
        "scan": "passed", "migrate": "passed", "smoke-w0-s-1": "passed", "e2e": "passed"}
    assert staging["e2e"].detail["summary"].get("passed", 0) > 0  # what the E2E job printed
    prod = v2.stages["production"].checks
    assert {"migrate", "smoke-w0-s-1", "smoke-w1-s-1"} <= set(prod)
    # the migration finished before the environment's first region was deployed
    assert prod["migrate"].finished_at <= v2.stages["production"].entered_at
    v4 = store.release(report.v4.id)
    assert v4.state == "failed" and v4.stages["staging"].regions == {}
    assert "CVE-2099-0001 (CRITICAL" in v4.stages["staging"].checks["scan"].reason

"""The release machine (core/release.py) over region rollouts decided by the real `machine.decide`."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pitstop.core.models import Tick
from release_world import World

PROD = ["us-central1", "europe-west1", "asia-northeast1"]


def _through_staging(w: World) -> None:
    w.build("v2", branch="main")
    w.wait(200)
    assert w.release.stages["staging"].state == "succeeded", w.release.message


def test_feature_branch_starts_nothing_and_says_so():
    w = World()
    assert w.build("v2", branch="feature/login") == []
    assert w.release is None
    why = w.pipeline.why_nothing("feature/login", None)
    assert "branch feature/login of web matches no rule" in why and "staging: branch main" in why


def test_main_goes_to_staging_only_and_succeeds():
    w = World()
    w.build("v2", branch="main")
    assert w.release.route == ["staging"] and w.release.stages["staging"].state == "running"
    # deployed at 0 %, then (its wave has one region) cleared for the first step at once
    assert [m[3] for m in w.moves] == [0, 50]
    w.wait(200)
    assert w.release.state == "succeeded"
    assert w.serving("staging", "us-central1").startswith("web-v2")
    assert ("production", "us-central1") not in w.rollouts
    assert [e.decision for e in w.audit][:2] == ["started", "wave_step"]


def test_tag_waits_for_approval_then_rolls_out_wave_by_wave():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    prod = w.release.stages["production"]
    assert prod.state == "awaiting_approval" and w.release.state == "waiting"
    assert not any(k[0] == "production" for k in w.rollouts)  # nothing deployed before the approval
    w.command("approve", environment="production", actor="boss@example.com")
    assert w.release.stages["production"].state == "running"
    assert set(k[1] for k in w.rollouts if k[0] == "production") == {"us-central1"}  # wave 1 only
    w.wait(150)
    assert w.percent("production", "europe-west1") == 0  # wave 2 waits for wave 1 to finish
    w.wait(300)
    assert w.release.state == "succeeded", w.release.message
    assert all(w.serving("production", r).startswith("web-v2") for r in PROD)
    spreads = w.release.stages["production"].spreads
    assert {(s.wave, s.step) for s in spreads} >= {(1, 0), (1, 1)}  # wave 2's two regions, each step measured
    assert all(s.spread_ms == 0 for s in spreads)  # this world applies at once: the spread is what the shell adds


def test_a_tag_of_a_digest_staging_never_saw_goes_through_staging_first():
    w = World()
    w.build("v3", tag="v3.0.0", branch=None, digest="c")
    assert w.release.route == ["staging", "production"]
    assert w.release.stages["staging"].state == "running"
    assert w.release.stages["production"].state == "planned"
    assert not any(k[0] == "production" for k in w.rollouts)


def test_failure_in_wave_two_rolls_back_every_region_wave_one_included():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.command("approve", environment="production", actor="boss@example.com")
    w.wait(250)
    stage = w.release.stages["production"]
    assert stage.wave == 1 and w.rollouts[("production", "us-central1")].state == "succeeded"
    while w.percent("production", "asia-northeast1") == 0:  # wave 2 at its first step
        w.wait(10)
    w.now += timedelta(seconds=5)
    w.health("production", "asia-northeast1", errors=60, requests=100)  # the canary fails here
    assert w.release.state == "rolled_back" and w.release.stages["production"].state == "rolled_back"
    assert all(w.serving("production", r) == "web-v1-prod" for r in PROD), w.traffic
    assert w.serving("staging", "us-central1").startswith("web-v2")  # another environment: untouched
    revert = [e for e in w.audit if e.decision == "rolled_back"]
    assert len(revert) == 1 and "asia-northeast1" in revert[0].reasons[-1]


def test_regions_of_a_wave_move_together():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.command("approve", environment="production", actor="boss@example.com")
    while w.percent("production", "asia-northeast1") == 0:  # wave 2 at its first step
        w.wait(10)
    # europe-west1 passes alone (50 requests, 2 errors: 4 %); asia-northeast1 has too little traffic to judge
    # (10 requests, 2 errors) and pooled the wave is at 6.7 %, above the 5 % limit: europe holds, asia waits
    for _ in range(12):
        w.now += timedelta(seconds=10)
        w.health("production", "europe-west1", requests=50, errors=2)
        w.health("production", "asia-northeast1", requests=10, errors=2)
        for key in [("production", "europe-west1"), ("production", "asia-northeast1")]:
            w._rollout(key, Tick(id=w._id("t")))
    europe, asia = w.rollouts[("production", "europe-west1")], w.rollouts[("production", "asia-northeast1")]
    assert europe.wave_hold and w.percent("production", "europe-west1") == 5  # done, but asia is not there
    assert asia.step_due and not asia.wave_hold and w.percent("production", "asia-northeast1") == 5


def test_pooled_rule_lets_a_quiet_region_follow_its_wave():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.command("approve", environment="production", actor="boss@example.com")
    while w.percent("production", "asia-northeast1") == 0:
        w.wait(10)
    # asia gets 10 requests a window (too few alone: min 50), europe 100: pooled, the wave moves on together
    for _ in range(12):
        w.now += timedelta(seconds=10)
        w.health("production", "europe-west1", requests=100)
        w.health("production", "asia-northeast1", requests=10)
        for key in [("production", "europe-west1"), ("production", "asia-northeast1")]:
            w._rollout(key, Tick(id=w._id("t")))
        if w.percent("production", "asia-northeast1") > 5:
            break
    assert w.percent("production", "asia-northeast1") == 25 and w.percent("production", "europe-west1") == 25
    pooled = [line for e in w.audit for line in e.reasons if "pooled" in line]
    assert pooled and "1 region(s) had too little traffic" in pooled[0] and "at least 50 requests" in pooled[0]


def test_freeze_holds_a_release_at_its_step_and_it_resumes_after():
    friday = datetime(2026, 11, 27, 14, 59, 30, tzinfo=timezone.utc)  # 15:59:30 in Berlin, freeze from 16:00
    w = World(now=friday)
    w.build("v2", branch="main")
    w.wait(400)
    stage = w.release.stages["staging"]
    assert stage.state == "running" and stage.waiting_for and "freeze" in stage.waiting_for
    held = w.percent("staging", "us-central1")
    w.wait(3600)
    assert w.percent("staging", "us-central1") == held  # never half-moved, never advanced
    assert w.release.due_at is not None and w.release.due_at <= stage.frozen_until
    w.now = stage.frozen_until
    w.wait(300)
    assert w.release.state == "succeeded"


def test_admin_lifts_a_freeze_with_a_reason():
    friday = datetime(2026, 11, 27, 15, 30, tzinfo=timezone.utc)
    w = World(now=friday)
    w.build("v2", branch="main")
    assert w.release.stages["staging"].waiting_for.startswith("freeze")
    assert not w.rollouts
    w.command("unfreeze", environment="staging", actor="admin@example.com", reason="payment outage fix")
    assert w.release.stages["staging"].unfrozen_by == "admin@example.com"
    w.wait(300)
    assert w.release.state == "succeeded"
    assert any("payment outage fix" in line for e in w.audit for line in e.reasons)


def test_hotfix_skips_staging_and_the_freeze_but_not_approval_or_health():
    friday = datetime(2026, 11, 27, 15, 30, tzinfo=timezone.utc)
    w = World(now=friday)
    w.build("v2.0.1", branch="hotfix/payments", digest="d")
    assert w.release.hotfix and w.release.path == "hotfix" and w.release.route == ["production"]
    assert w.release.stages["production"].state == "awaiting_approval"
    w.command("approve", environment="production", actor="boss@example.com")
    assert w.release.stages["production"].state == "running"  # the freeze excepts hotfix
    w.wait(400)
    assert w.release.state == "succeeded"
    # its own strategy: one step at 25 %
    assert sorted({m[3] for m in w.moves if m[1] == "production"}) == [0, 25, 100]


def test_approval_expires_and_nothing_is_deployed():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.now += timedelta(days=2)
    w.wait(10)
    assert w.release.state == "cancelled" and not any(k[0] == "production" for k in w.rollouts)


def test_abort_of_a_release_rolls_back_its_environment():
    w = World()
    w.build("v2", branch="main")
    w.wait(20)
    w.command("abort", environment="staging", region="us-central1")
    assert w.release.state == "rolled_back"
    assert w.serving("staging", "us-central1") == "web-v1-stag"


def test_effects_lost_after_the_release_write_are_resent_by_a_tick():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.lossy = True
    w.command("approve", environment="production", actor="boss@example.com")  # decided; StartRegions lost
    w.lossy = False
    assert w.release.stages["production"].state == "running" and not any(k[0] == "production" for k in w.rollouts)
    resent = w.resend_owed()
    assert [e.kind for e in resent] == ["start_regions"] and ("production", "us-central1") in w.rollouts
    assert w.resend_owed() == []  # nothing owed any more
    w.wait(40)
    w.lossy = True  # a wave step decided, its Proceed lost: the region sits at its step
    w.wait(40)
    w.lossy = False
    stage = w.release.stages["production"]
    assert any(e.kind == "proceed_wave" for e in w.lost)
    assert stage.regions["us-central1"].cleared < stage.step  # the region never heard of it
    assert [e.kind for e in w.resend_owed()] == ["proceed_wave"]
    assert w.rollouts[("production", "us-central1")].cleared_step == stage.step
    w.wait(400)
    assert w.release.state == "succeeded", w.release.message


def test_a_region_taken_over_by_a_newer_release_stops_this_one():
    w = World()
    w.build("v2", branch="main")
    w.wait(20)
    first = w.release
    key = ("staging", "us-central1")
    from pitstop.core.models import Superseded
    w._rollout(key, Superseded(id="sup", by_rollout="web-staging-us-central1-v3", by_version="v3"))
    assert w.release.id == first.id and w.release.state == "superseded"
    assert w.release.stages["staging"].state == "superseded" and "superseded" in w.release.stages["staging"].reason


def test_a_cancelled_environment_opens_again_on_a_new_tag():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    w.now += timedelta(days=2)
    w.wait(10)
    assert w.release.state == "cancelled"
    w.build("v2", tag="v2.0.1", branch=None)  # the same digest tagged again
    assert w.release.stages["production"].state == "awaiting_approval" and w.release.state == "waiting"


def test_an_operator_cannot_hurry_a_wave_into_a_freeze():
    friday = datetime(2026, 11, 27, 14, 59, 30, tzinfo=timezone.utc)
    w = World(now=friday)
    w.build("v2", branch="main")
    w.now = datetime(2026, 11, 27, 15, 0, 5, tzinfo=timezone.utc)  # inside the window now
    w.command("promote", environment="staging")
    assert w.percent("staging", "us-central1") == 50  # held at its step
    assert w.release.stages["staging"].waiting_for.startswith("freeze")


# ---------------------------------------------------------------- properties

ACTIONS = st.lists(st.tuples(st.sampled_from(["wait", "fail", "quiet", "approve", "pause", "resume", "promote",
                                              "abort", "tag", "lose"]),
                             st.sampled_from(PROD + ["us-central1"]), st.integers(10, 120)),
                   min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS, st.booleans())
def test_release_invariants_under_any_inputs(actions, friday):
    start = datetime(2026, 11, 27, 14, 50, tzinfo=timezone.utc) if friday else datetime(2026, 11, 23, 9, 0,
                                                                                        tzinfo=timezone.utc)
    w = World(now=start)
    w.build("v2", branch="main")
    for action, region, seconds in actions:
        if action == "wait":
            w.wait(seconds)
        elif action == "quiet":
            w.wait(seconds, healthy=False)
        elif action == "lose":  # effects lost after the release's writes, then a tick resends what is owed
            w.lossy = True
            w.wait(seconds)
            w.lossy = False
            w.resend_owed()
        elif action == "fail":
            live = [k for k, r in w.rollouts.items() if r.state in ("progressing", "baking") and k[1] == region]
            for key in live:
                w.health(*key, errors=90)
        elif action == "tag":
            w.build("v2", tag="v2.0.0", branch=None)
        elif action in ("approve", "pause", "resume", "promote", "abort"):
            w.command(action, actor="boss@example.com")
        _check(w)


def _check(w: World) -> None:
    r = w.release
    for name, stage in r.stages.items():
        # no environment starts before its promote_from succeeded in this release
        if stage.promote_from and any(k[0] == name for k in w.rollouts):
            assert r.stages[stage.promote_from].state == "succeeded"
        # regions of a wave are never more than one step apart
        positions = [w.rollouts[(name, x)].position for x in stage.wave_regions() if (name, x) in w.rollouts
                     and w.rollouts[(name, x)].state not in ("rolling_back", "rolled_back", "succeeded")]
        if positions:
            assert max(positions) - min(positions) <= 1, (name, positions)
        # a rolled back stage leaves no region on the new revision
        if stage.state == "rolled_back":
            for region in (x for wave in stage.waves for x in wave):
                if (name, region) in w.rollouts:
                    assert w.percent(name, region) == 0 or not w.serving(name, region).startswith("web-v2"), region
    # nothing starts or advances inside a freeze: no such decision is taken there (a decision taken before the
    # window whose effect was lost is completed by the resend, so that a wave is never left half-moved)
    for event in w.audit:
        if event.decision in ("wave_step", "stage_entered", "wave_started") and w.pipeline.frozen(event.at):
            raise AssertionError(f"{event.decision} at {event.at} inside a freeze: {event.reasons}")
    for when, env, region, percent in w.moves:
        if w.pipeline.frozen(when) and percent > 0 and not w.lost_resent:
            earlier = [m[3] for m in w.moves if m[1:3] == (env, region) and m[0] < when]
            assert earlier and percent <= max(earlier), (when, env, region, percent)


# ---------------------------------------------------------------- checks (issue #10)


def _checked(staging_checks: str, production_checks: str = "") -> World:
    from release_world import PIPELINE

    text = PIPELINE.replace("    on: {branch: main}\n", "    on: {branch: main}\n" + staging_checks, 1)
    text = text.replace("    approve: true\n", "    approve: true\n" + production_checks, 1)
    return World(text)


def test_a_failing_scan_refuses_the_release_before_anything_is_deployed():
    w = _checked("    checks: {scan: {severity: HIGH}}\n")
    w.check_results["scan"] = ["failed"]
    w.build("v2", branch="main")
    assert w.release.state == "failed" and w.release.stages["staging"].state == "failed"
    assert "scan failed" in w.release.stages["staging"].reason and not w.rollouts


def test_an_informing_scan_records_and_goes_on():
    w = _checked("    checks: {scan: {on_fail: inform}}\n")
    w.check_results["scan"] = ["failed"]
    w.build("v2", branch="main")
    w.wait(200)
    assert w.release.state == "succeeded" and w.release.stages["staging"].checks["scan"].state == "failed"


def test_a_migration_runs_once_before_any_traffic_and_a_failed_one_leaves_traffic_untouched():
    w = _checked("    checks: {migrate: {args: [python, migrate.py], timeout: 5m}}\n")
    w.check_results["migrate"] = ["running", "running", "passed"]
    w.build("v2", branch="main")
    assert w.release.stages["staging"].state == "checking" and not w.rollouts  # nothing deployed while it runs
    w.wait(30)
    assert w.check_calls.count("migrate") >= 3 and w.release.stages["staging"].checks["migrate"].state == "passed"
    assert w.rollouts  # deployed once the migration passed
    w2 = _checked("    checks: {migrate: {args: [python, migrate.py]}}\n")
    w2.check_results["migrate"] = ["failed"]
    w2.build("v2", branch="main")
    assert w2.release.state == "failed" and not w2.rollouts
    assert "Traffic is untouched" in w2.release.message or "stopped before staging" in w2.release.message


def test_a_job_that_never_finishes_times_out_at_its_deadline():
    w = _checked("    checks: {migrate: {args: [python, migrate.py], timeout: 1m}}\n")
    w.check_results["migrate"] = ["running"]
    w.build("v2", branch="main")
    w.wait(110)  # the job's timeout, plus a minute for the job's setup and start
    assert w.release.state == "running"
    w.wait(20)
    run = w.release.stages["staging"].checks["migrate"]
    assert run.state == "timed_out" and "did not finish within its 120s deadline" in run.reason
    assert w.check_calls[-1] == "migrate" and len(w.cancelled) == 1  # and its execution is asked to stop
    assert w.release.state == "failed" and not w.rollouts


def test_a_failed_check_is_retried_with_backoff():
    w = _checked("    checks: {migrate: {args: [python, migrate.py], retries: 2, backoff: 10s}}\n")
    w.check_results["migrate"] = ["failed", "failed", "passed"]
    w.build("v2", branch="main")
    run = w.release.stages["staging"].checks["migrate"]
    assert run.attempt == 2 and run.state == "running" and run.next_at == w.now + timedelta(seconds=10)
    w.wait(60)
    assert w.release.stages["staging"].checks["migrate"].attempt == 3
    assert w.release.stages["staging"].checks["migrate"].state == "passed" and w.rollouts


def test_a_failing_smoke_check_at_zero_percent_rolls_back_before_any_user_traffic():
    w = _checked("    checks: {smoke: {path: /healthz, failure_threshold: 2}}\n")
    w.check_results["smoke"] = ["failed"]
    w.build("v2", branch="main")
    assert w.release.state == "rolled_back"
    assert [m[3] for m in w.moves if m[1] == "staging"] == [0, 0]  # deployed at 0 %, back: never served users


def test_staging_e2e_informs_there_and_blocks_production():
    w = _checked("    checks: {e2e: {args: [python, e2e.py]}}\n")
    w.check_results["e2e"] = ["running", "failed"]
    w.build("v2", branch="main")
    w.wait(200)
    assert w.release.state == "succeeded"  # staging is not blocked by its E2E
    assert w.release.stages["staging"].checks["e2e"].state == "failed"
    w.build("v2", tag="v2.0.0", branch=None)
    prod = w.release.stages["production"]
    assert prod.state == "failed" and "E2E in staging did not pass" in prod.reason
    assert not any(k[0] == "production" for k in w.rollouts)


def test_production_waits_for_the_staging_e2e_to_pass():
    w = _checked("    checks: {e2e: {args: [python, e2e.py]}}\n")
    w.check_results["e2e"] = ["running"]
    w.build("v2", branch="main")
    w.wait(200)
    w.build("v2", tag="v2.0.0", branch=None)
    assert w.release.stages["production"].waiting_for == "E2E in staging to pass"
    w.check_results["e2e"] = ["passed"]
    w.wait(20)
    assert w.release.stages["production"].state == "awaiting_approval"


@pytest.mark.parametrize("check, config, after, deadline", [
    ("scan", "{scan: {wait: 30s}}", "stage", 30),
    ("migrate", "{migrate: {args: [x], timeout: 30s}}", "stage", 60),  # jobs: + time to set up and start
    ("smoke", "{smoke: {deadline: 30s}}", "wave", 30),
    ("verify", "{verify: {args: [x], timeout: 30s}}", "wave", 60),
])
def test_every_check_gate_has_a_deadline_that_fires(check, config, after, deadline):
    w = _checked(f"    checks: {config}\n")
    w.check_results[check] = ["running"]  # it never finishes
    w.build("v2", branch="main")
    w.wait(deadline - 10)
    assert w.release.state == "running"
    w.wait(30)
    key = check if after == "stage" else f"{check}-w0-s-1"
    run = w.release.stages["staging"].checks[key]
    assert run.state == "timed_out" and f"did not finish within its {deadline}s deadline" in run.reason
    # before deploying: the release stops with traffic untouched; at 0 %: the environment rolls back
    assert w.release.state == ("failed" if after == "stage" else "rolled_back")
    assert all(m[3] == 0 for m in w.moves if m[1] == "staging")


def test_an_approval_gate_has_a_deadline_too():
    w = World()
    _through_staging(w)
    w.build("v2", tag="v2.0.0", branch=None)
    hold = w.release.stages["production"].hold_until
    assert hold == w.now + timedelta(days=1)  # max_hold
    w.now = hold
    w.wait(10)
    assert w.release.stages["production"].state == "cancelled"
    assert "nobody approved" in w.release.stages["production"].reason


def test_aborting_a_release_during_its_migration_stops_the_job():
    w = _checked("    checks: {migrate: {args: [python, migrate.py], timeout: 5m}}\n")
    w.check_results["migrate"] = ["running"]
    w.build("v2", branch="main")
    assert w.release.stages["staging"].state == "checking"
    w.command("abort", environment="staging")
    assert w.release.state == "cancelled" and w.release.stages["staging"].checks["migrate"].state == "cancelled"
    assert w.cancelled == ["migrate"] and not w.rollouts


def test_a_lost_revert_after_a_blocking_e2e_is_resent():
    w = _checked("    checks: {e2e: {args: [python, e2e.py], on_fail: block}}\n")
    w.check_results["e2e"] = ["running"]
    w.build("v2", branch="main")
    w.wait(200)
    assert w.release.stages["staging"].state == "succeeded" and w.serving("staging", "us-central1").startswith("web-v2")
    w.check_results["e2e"] = ["failed"]
    w.lose = {"revert_regions"}  # the E2E fails at its next poll; the revert of the finished region is lost
    w.wait(20)
    w.lose = set()
    assert w.release.state == "rolled_back" and w.serving("staging", "us-central1").startswith("web-v2")
    assert w.release.due_at is not None  # a tick comes back for it
    assert [e.kind for e in w.resend_owed()] == ["revert_regions"]
    assert w.serving("staging", "us-central1") == "web-v1-stag"

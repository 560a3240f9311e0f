"""The rollout state machine, scenario by scenario."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pitstop.core import machine
from pitstop.core.models import Alert, Superseded

from sim import Sim, spec

NEW = "web-v2-b2000000"


def test_canary_walks_every_step_to_100_on_healthy_samples():
    s = Sim(spec())
    assert s.rollout.revision == NEW
    assert (s.rollout.state, s.split) == ("progressing", {"web-v1-aaaa": 95, NEW: 5})
    for weight in (10, 25):
        s.advance(60)
        s.sample()
        assert s.split[NEW] != weight, "a healthy sample alone must not skip the pause"
        s.advance(240)
        assert s.tick().audit is None and s.split[NEW] != weight, \
            "the deadline passed, but the minutes since the last window are not judged yet"
        s.sample()  # a window that reaches the deadline (it arrives late on GCP: Monitoring lags)
        assert s.split[NEW] == weight
        assert s.rollout.judged_until == s.now
    s.advance(300)
    s.sample()
    assert s.rollout.state == "baking", "100 % is watched for at least one window before success"
    assert s.split == {NEW: 100, "web-v1-aaaa": 0}
    assert [t.tag for t in s.rollout.desired] == ["stable", "previous"]
    s.advance(30)
    s.sample()
    assert s.rollout.state == "baking"
    s.advance(30)
    s.sample()
    assert s.rollout.state == "succeeded"
    assert "judged healthy through its final watch" in s.notes[-1]


def test_healthy_sample_after_deadline_promotes_at_once():
    s = Sim(spec())
    s.advance(301)
    s.sample()
    assert s.split[NEW] == 10
    assert [a.decision for a in s.audit[-2:]] == ["advanced", "step_started"]


def test_unhealthy_sample_rolls_back_in_one_event_with_values_and_thresholds():
    s = Sim(spec(), auto_apply=False)
    s.apply_pending()  # deploy at 0 %
    s.apply_pending()  # 5 %
    s.advance(60)
    d = s.sample(requests=400, errors=120, p99=150)
    assert s.rollout.state == "rolling_back"
    assert s.split == {"web-v1-aaaa": 100, NEW: 0}
    assert d.audit.verdict.outcome == "fail" and s.rollout.verdict == d.audit.verdict
    rate = next(c for c in d.audit.verdict.checks if c.name == "error_rate")
    assert (rate.measured, rate.threshold, rate.passed) == (0.3, 0.05, False)
    assert "error rate 30.0% is above the 5.0% limit" in d.audit.reasons[-1]
    assert s.notes[-1] == ("New version failed health checks after deployment. Automatically rolled back web "
                           "to version v1. It was serving 5 % of requests.")
    s.apply_pending()
    assert s.rollout.state == "rolled_back"
    assert s.rollout.finished_at == s.now


@pytest.mark.parametrize("p99, baseline, outcome", [(1500, None, "fail"), (300, 200, "fail"), (230, 200, "pass")])
def test_latency_absolute_and_relative_to_stable(p99, baseline, outcome):
    s = Sim(spec())
    s.advance(60)
    if baseline:
        s.sample(revision="web-v1-aaaa", p99=baseline, requests=1000)
        assert s.rollout.baseline.latency_p99_ms == baseline
    d = s.sample(p99=p99)
    assert d.audit.verdict.outcome == outcome
    if baseline and outcome == "fail":
        assert "above the stable revision's 200 ms" in d.audit.verdict.rule


def test_no_data_holds_then_pauses_for_a_person_never_promotes():
    s = Sim(spec())
    s.advance(300)
    assert s.tick().audit is None and s.split[NEW] == 5, "waiting for a window that reaches the deadline"
    s.advance(100)
    s.sample(requests=10)  # too few: inconclusive
    assert s.rollout.verdict.outcome == "inconclusive" and s.split[NEW] == 5
    s.advance(500)
    d = s.tick()
    assert s.rollout.state == "paused" and s.split[NEW] == 5
    assert "not judged healthy up to the step's deadline" in d.audit.reasons[-1]
    assert "pitstop promote" in s.notes[-1]
    s.advance(86400)
    s.tick()
    assert s.rollout.state == "rolled_back"


def test_few_requests_with_many_errors_already_fail():
    s = Sim(spec())
    s.advance(30)
    d = s.sample(requests=10, errors=8)
    assert d.audit.verdict.outcome == "fail" and s.rollout.state == "rolled_back"


def test_stale_passes_and_foreign_samples_are_ignored_but_stale_failures_roll_back():
    s = Sim(spec())
    started = s.rollout.step_started_at
    s.advance(120)
    s.sample()
    d = s.sample(start=started, end=started + timedelta(seconds=60))
    assert d.audit.decision == "ignored" and "already covered" in d.audit.reasons[-1]
    d = s.sample(errors=190, revision="web-other-1", start=started)
    assert d.audit.decision == "ignored" and "neither the new" in d.audit.reasons[0]
    assert s.rollout.state == "progressing"
    # A failure is never discarded, however old its window.
    d = s.sample(errors=190, start=started - timedelta(minutes=5), end=started)
    assert d.audit.decision == "rolling_back" and s.rollout.state == "rolled_back"


def test_alert_for_new_revision_rolls_back_and_test_alert_does_not():
    s = Sim(spec())
    d = s.send(Alert(id="a1", incident_id="i1", state="open", test=True, service="web", revision=NEW))
    assert d.audit.decision == "ignored" and s.rollout.state == "progressing"
    d = s.send(Alert(id="a2", incident_id="i2", state="open", service="web", revision="web-v1-aaaa"))
    assert d.audit.decision == "ignored"
    s.send(Alert(id="a3", incident_id="i3", state="open", service="web", revision=NEW, policy="web 5xx rate",
                 observed_value="0.31", threshold_value="0.05"))
    assert s.rollout.state == "rolled_back"
    assert "A Cloud Monitoring alert fired" in s.notes[-1]


def test_operator_commands():
    s = Sim(spec())
    s.command("promote")
    assert s.split[NEW] == 10
    s.command("pause")
    assert s.rollout.state == "paused"
    s.advance(400)
    s.sample()
    assert s.rollout.state == "paused" and s.split[NEW] == 10, "a paused rollout holds even when healthy"
    s.command("resume")
    assert s.rollout.state == "progressing"
    s.command("promote", full=True)
    assert s.rollout.state == "succeeded" and s.split[NEW] == 100


def test_abort_rolls_back_and_rolled_back_revision_never_gets_traffic_again():
    s = Sim(spec())
    s.command("abort", reason="bad migration")
    assert s.rollout.state == "rolled_back"
    assert "Rolled back by alice" in s.notes[-1]
    for action in ("promote", "resume", "approve"):
        d = s.command(action)
        assert d.audit.decision == "ignored"
    s.advance(1000)
    s.sample()
    assert s.split[NEW] == 0


def test_approval_gate():
    text = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {canary: {steps: [{weight: 20, pause: 1m, approve: true}]}}
"""
    s = Sim(spec(text))
    s.advance(61)
    s.sample()
    assert s.rollout.state == "awaiting_approval" and s.split[NEW] == 20
    d = s.command("promote")
    assert d.audit.decision == "ignored" and "only `pitstop approve`" in d.audit.reasons[-1]
    s.command("approve")
    assert s.rollout.state == "baking" and s.split[NEW] == 100
    s.advance(60)
    s.sample()
    assert s.rollout.state == "succeeded"


def test_plain_promote_stops_at_an_approval_gate():
    text = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {canary: {steps: [{weight: 20, pause: 1m, approve: true}, {weight: 50, pause: 1m}]}}
"""
    s = Sim(spec(text))
    s.command("promote")
    assert s.rollout.state == "awaiting_approval" and s.split[NEW] == 20


def test_promote_full_never_skips_an_approval_gate():
    """An operator may hurry a rollout, not take an approver's decision (four eyes included)."""
    gated = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {canary: {steps: [{weight: 10, pause: 1m}, {weight: 20, pause: 1m, approve: true}, {weight: 50}]}}
"""
    s = Sim(spec(gated))
    refused = s.command("promote", full=True)
    assert s.rollout.state == "progressing" and s.split[NEW] == 10, "refused: a gate lies ahead"
    assert "would skip the approval gate after step 2 (20 %)" in refused.audit.reasons[0]
    s.command("pause")
    s.command("promote", full=True)
    assert s.rollout.state == "paused", "nor from a pause"
    s.command("resume")
    s.command("promote")
    s.command("promote")
    assert s.rollout.state == "awaiting_approval" and s.split[NEW] == 20
    s.command("approve")
    s.command("promote", full=True)  # past the last gate, --full is the operator's to use
    assert s.rollout.state in ("switching", "baking", "succeeded") and s.split[NEW] == 100
    blue_green = Sim(spec("""
service: web
regions: [us-central1]
match: {repo: web}
strategy: {blue_green: {verify: 1m, bake: 10m, approve: true}}
"""))
    refused = blue_green.command("promote", full=True)
    assert blue_green.split[NEW] == 0 and "before the switch" in refused.audit.reasons[0]


def test_promote_full_from_a_paused_bake_succeeds():
    s = Sim(spec())
    s.command("promote", full=False)
    s.command("promote", full=False)
    s.command("promote", full=False)
    assert s.rollout.state == "baking"
    s.command("pause")
    assert s.rollout.state == "paused"
    s.command("promote", full=True)
    assert s.rollout.state == "succeeded" and s.split[NEW] == 100


def test_blue_green_verifies_at_zero_switches_and_bakes():
    text = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {blue_green: {verify: 1m, bake: 10m}}
health: {min_requests: 20}
"""
    s = Sim(spec(text))
    assert s.rollout.state == "verifying" and s.split[NEW] == 0
    assert {t.tag for t in s.rollout.desired} == {"stable", "green"}
    s.advance(61)
    s.sample(requests=30)
    assert s.rollout.state == "baking" and s.split == {NEW: 100, "web-v1-aaaa": 0}
    s.advance(60)
    s.sample(requests=500, errors=100)
    assert s.rollout.state == "rolled_back" and s.split == {"web-v1-aaaa": 100, NEW: 0}


def test_first_version_goes_straight_to_100():
    s = Sim(spec(), stable=None)
    assert s.rollout.kind == "initial" and s.rollout.state == "succeeded"
    assert s.split == {NEW: 100}


def test_cloud_run_errors_retry_within_a_budget_then_roll_back_as_infrastructure_then_fail():
    s = Sim(spec(), auto_apply=False)
    s.apply_pending()
    s.apply_pending()
    s.advance(301)
    s.sample()
    assert s.split[NEW] == 10
    delays = []
    while True:
        s.fail_pending()
        if s.rollout.state != "progressing":
            break
        assert "never counts as the new version failing" in s.audit[-1].reasons[-1]
        delays.append((s.rollout.retry_at - s.now).total_seconds())
        s.advance(delays[-1])
        d = s.tick()
        if s.rollout.state == "rolling_back":  # the budget ran out while waiting for the retry
            break
        assert d.audit.decision == "reconcile"
    assert s.rollout.state == "rolling_back"
    assert sum(delays) >= s.rollout.apply_budget - 60, "the budget is time, not a handful of attempts"
    assert max(delays) <= machine.BACKOFF_CAP and len(set(delays)) > 3, "capped, jittered backoff"
    assert "infrastructure failure, not a health verdict" in s.notes[-1]
    while s.rollout.state == "rolling_back":
        s.fail_pending()
        if s.rollout.state == "failed":
            break
        s.advance((s.rollout.retry_at - s.now).total_seconds())
        s.tick()
    assert s.rollout.state == "failed"
    assert "FAILED and needs a person" in s.notes[-1] and "web-v1-aaaa 95%" in s.notes[-1]


def test_a_transient_error_then_success_keeps_the_rollout_going():
    s = Sim(spec(), auto_apply=False)
    s.fail_pending()
    assert s.rollout.state == "deploying" and s.rollout.apply_attempts == 1
    s.advance((s.rollout.retry_at - s.now).total_seconds())
    s.tick()
    s.apply_pending()
    assert s.rollout.state == "progressing" and s.rollout.apply_attempts == 0


def test_revision_that_cannot_start_sends_all_traffic_to_stable_without_naming_it():
    s = Sim(spec(), auto_apply=False)
    s.fail_pending(error="Cloud Run operation failed: container exited", permanent=True)
    assert s.rollout.state == "rolling_back"
    assert s.split == {"web-v1-aaaa": 100}, "the new revision may not exist: it is not named"
    assert "served no requests" in s.notes[-1]
    s.apply_pending()
    assert s.rollout.state == "rolled_back"


def test_resume_after_the_deadline_judges_the_pause_too():
    s = Sim(spec())
    s.advance(300 + 600)
    s.tick()
    assert s.rollout.state == "paused"
    s.advance(600)
    s.command("resume")
    assert s.rollout.state == "progressing" and s.rollout.next_step_at == s.now
    assert s.tick().audit is None, "a fresh wait for health data, not an immediate pause"
    s.sample()
    assert s.split[NEW] == 10


def test_revision_names_keep_the_build_suffix():
    name = machine.revision_name("a" * 49, "release-2026.11.22-hotfix", "0d97c63e-a349")
    assert len(name) <= 63 and name.endswith("-0d97c63e")


def test_unobserved_split_is_read_back_and_applied_again():
    from pitstop.core.models import Observed, Target
    s = Sim(spec(), auto_apply=False)
    s.pending.clear()  # the process died before applying the split
    s.advance(machine.RECONCILE_AFTER)
    assert s.tick().audit is None, "a tick alone does not apply blindly: the reconciler reads Cloud Run first"
    d = s.send(Observed(id="o1", split=[Target(revision="web-v1-aaaa", percent=100, tag="stable")]))
    assert d.audit.decision == "reconcile" and s.pending[0].create_revision
    s.apply_pending()
    assert s.rollout.state == "progressing"


def test_drift_is_repaired_and_audited():
    from pitstop.core.models import Observed, Target
    s = Sim(spec())
    want = dict(s.split)
    d = s.send(Observed(id="o1", split=[Target(revision="web-v1-aaaa", percent=50),
                                        Target(revision=NEW, percent=50)]))
    assert d.audit.decision == "drift_repaired" and "not the decided" in d.audit.reasons[-1]
    assert s.split == want and s.rollout.applied and s.rollout.state == "progressing"
    assert s.send(Observed(id="o2", split=s.rollout.desired)).audit is None


def test_late_effects_of_a_finished_rollout_change_nothing():
    from pitstop.core.models import Applied, Target
    s = Sim(spec())
    s.send(Superseded(id="sup", by_rollout="web-r2", by_version="v3"))
    d = s.send(Applied(id="late", generation=s.rollout.desired_generation + 1,
                       observed=[Target(revision=NEW, percent=100)]))
    assert d.audit.decision == "ignored" and "late Cloud Run result" in d.audit.reasons[-1]
    assert s.rollout.state == "superseded"


def test_transition_table_is_enforced():
    s = Sim(spec())
    with pytest.raises(machine.IllegalTransition):
        bad = dict(machine.TRANSITIONS)
        try:
            machine.TRANSITIONS["progressing"] = {**bad["progressing"], "command": {"progressing"}}
            s.command("abort")
        finally:
            machine.TRANSITIONS.clear()
            machine.TRANSITIONS.update(bad)


def test_superseded():
    s = Sim(spec())
    s.send(Superseded(id="sup", by_rollout="web-r2", by_version="v3"))
    assert s.rollout.state == "superseded" and s.rollout.due_at is None


def test_due_at_follows_deadlines():
    s = Sim(spec())
    assert s.rollout.due_at <= s.now, "a watched rollout is screened every tick"
    s.command("abort")
    assert s.rollout.due_at is None


def test_a_late_inconclusive_sample_of_an_earlier_window_does_not_replace_the_verdict():
    s = Sim(spec())
    start = s.rollout.step_started_at
    s.advance(120)
    s.sample(requests=300, start=start, end=start + timedelta(seconds=100))
    s.sample(requests=5, start=start, end=start + timedelta(seconds=50))
    assert s.rollout.verdict.outcome == "pass" and s.audit[-1].decision == "judged"
    s.sample(requests=5, start=start + timedelta(seconds=100), end=start + timedelta(seconds=110))
    assert s.rollout.verdict.outcome == "inconclusive", "a later window does replace it"
    assert s.rollout.judged_until == start + timedelta(seconds=100), "only healthy windows extend coverage"
"""The judge's two readings (threshold, statistical), resource limits, dry runs, pauses, the request-log
source and the measurement history, through `judge` and `decide`."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from pitstop.core import machine
from pitstop.core.judge import judge
from pitstop.core.models import MAX_MEASUREMENTS, Baseline, Health, HealthSample
from pitstop.core.stats import buckets_of

from sim import SPEC_YAML, Sim, spec

T = datetime(2026, 1, 1, tzinfo=timezone.utc)
STATISTICAL = Health(judge="statistical")


def latencies(n: int, median: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * rng.lognormvariate(0, 0.5) for _ in range(n)]


def sample(requests=2000, errors=0, p99=200.0, buckets=None, stable=None, source="cloud-monitoring",
           **kw) -> HealthSample:
    return HealthSample(service="web", region="r", revision="web-v2", window_start=T,
                        window_end=T + timedelta(minutes=5), request_count=requests, error_count=errors,
                        latency_p99_ms=p99, latency_buckets=buckets, stable=stable, source=source, **kw)


def stable(requests=20000, errors=20, p99=200.0, buckets=None) -> Baseline:
    return Baseline(revision="web-v1", request_count=requests, error_count=errors, latency_p99_ms=p99,
                    latency_buckets=buckets)


# ---------------------------------------------------------------- statistical

def test_statistical_fails_a_rise_from_0_1_to_3_percent_that_the_threshold_passes():
    canary, base = sample(errors=60), stable()  # 3 % against stable's 0.1 %
    assert judge(canary, Health(), base).outcome == "pass"  # under the 5 % limit: the threshold judge misses it
    v = judge(canary, STATISTICAL, base)
    assert v.outcome == "fail" and "beta-binomial" in v.rule and "error rate 3 % vs stable 0.1 % (×30)" in v.rule
    test = next(t for t in v.tests if t.test == "beta-binomial")
    assert test.decision == "fail" and test.p >= 0.99 and test.confidence == 0.99 and test.effect == 30
    rate = next(c for c in v.checks if c.name == "error_rate")
    assert (rate.measured, rate.stable, rate.passed) == (0.03, 0.001, False)


def test_statistical_passes_a_healthy_canary_and_says_why():
    lat = buckets_of(latencies(10000, 80, seed=1))
    v = judge(sample(requests=10000, errors=8, buckets=list(lat)), STATISTICAL,
              stable(buckets=list(buckets_of(latencies(20000, 80, seed=2)))))
    assert v.outcome == "pass", v.rule
    assert "beta-binomial" in v.rule and "Mann–Whitney" in v.rule
    assert {t.test for t in v.tests} == {"max_error_rate", "max_p99_ms", "beta-binomial", "mann-whitney"}


def test_statistical_fails_a_slower_distribution_by_mann_whitney():
    v = judge(sample(buckets=list(buckets_of(latencies(2000, 160, seed=3)))), STATISTICAL,
              stable(buckets=list(buckets_of(latencies(20000, 80, seed=4)))))
    assert v.outcome == "fail" and "Mann–Whitney" in v.rule
    mw = next(t for t in v.tests if t.test == "mann-whitney")
    assert mw.effect > 0.6 and mw.p < 0.01


def test_statistical_never_passes_without_data():
    for canary in (sample(requests=0, p99=None, buckets=[]), sample(requests=30, buckets=[0, 0, 30])):
        v = judge(canary, STATISTICAL, stable(buckets=[0, 0, 1000]))
        assert v.outcome == "inconclusive", v.rule
    assert judge(sample(buckets=[0] * 10 + [2000]), STATISTICAL, None).outcome == "inconclusive"  # no stable


def test_statistical_on_a_source_without_buckets_judges_its_p99_against_the_limit():
    probe = sample(requests=2000, errors=1, p99=1500.0, buckets=None, source="smoke")
    v = judge(probe, STATISTICAL, stable())
    assert v.outcome == "fail" and "1500 ms is above the 1000 ms limit" in v.rule


# ---------------------------------------------------------------- threshold: the p99 of a few requests

def test_the_p99_of_a_few_requests_is_not_compared_with_stable():
    # The CI failure of 2026-11-23: a 10 % step's 20 requests, one delayed by a busy machine: p99 522 ms.
    few = sample(requests=20, p99=522.0, source="t")
    health = Health(min_requests=20, max_latency_increase=0.5, min_latency_increase_ms=200)
    v = judge(few, health, stable(requests=400, p99=108.0))
    assert v.outcome == "pass" and "not compared with stable: 20 requests, 100 needed" in v.rule
    assert next(c for c in v.checks if c.name == "latency_p99_vs_stable_ms").passed is None
    many = sample(requests=200, p99=522.0, source="t")
    assert judge(many, health, stable(requests=400, p99=108.0)).outcome == "fail"


# ---------------------------------------------------------------- resources, dry runs, pauses

def test_cpu_and_memory_above_their_limits_fail_with_the_values():
    v = judge(sample(cpu_utilization=0.97, memory_utilization=0.5), Health())
    assert v.outcome == "fail" and v.rule == "CPU utilization 97% (p95) is above the 80% limit"
    cpu = next(c for c in v.checks if c.name == "cpu_utilization")
    assert (cpu.measured, cpu.threshold, cpu.passed) == (0.97, 0.8, False)
    assert judge(sample(memory_utilization=0.9), Health()).rule.startswith("memory utilization 90%")
    assert judge(sample(cpu_utilization=0.79, memory_utilization=0.84), Health()).outcome == "pass"


def test_a_dry_run_limit_is_recorded_and_never_acts():
    health = Health(cpu={"max": 0.8, "dry_run": True})
    v = judge(sample(cpu_utilization=0.97), health)
    assert v.outcome == "pass"
    assert v.dry_run == ["[dry run] CPU utilization 97% (p95) is above the 80% limit"]
    assert next(c for c in v.checks if c.name == "cpu_utilization").dry_run


def test_on_fail_pause_pauses_for_a_person_and_a_rollback_rule_wins_over_it():
    health = Health(memory={"max": 0.85, "on_fail": "pause"})
    v = judge(sample(memory_utilization=0.95), health)
    assert v.outcome == "fail" and v.on_fail == "pause" and v.rule.endswith("paused for a person (on_fail: pause)")
    both = judge(sample(errors=400, memory_utilization=0.95), health)
    assert both.on_fail == "rollback" and "error rate" in both.rule

    s = Sim(spec(SPEC_YAML.replace("0.20}", "0.20, memory: {max: 0.85, on_fail: pause}}")))
    s.advance(60)
    d = s.sample_with(memory_utilization=0.95)
    assert s.rollout.state == "paused" and s.rollout.hold_until == s.now + timedelta(seconds=s.rollout.max_hold)
    assert "memory utilization 95%" in s.notes[-1] and "pitstop resume" in s.notes[-1]
    assert s.split[s.rollout.revision] > 0, "a pause keeps the split as it is"
    assert d.audit.decision == "paused"


# ---------------------------------------------------------------- custom metrics (CEL)

CHECKOUTS = {"name": "checkouts", "query": {"filter": 'metric.type = "custom.googleapis.com/checkouts"'},
             "condition": "canary.checkouts >= 0.9 * stable.checkouts"}


def test_a_custom_metric_fails_a_canary_with_its_values_and_condition():
    health = Health(metrics=[CHECKOUTS])
    base = stable().model_copy(update={"metrics": {"checkouts": 20.0}})
    v = judge(sample(metrics={"checkouts": 12.0}), health, base)
    assert v.outcome == "fail"
    assert v.rule.startswith("checkouts 12 vs stable 20: `canary.checkouts >= 0.9 * stable.checkouts` does not hold")
    check = next(c for c in v.checks if c.name == "checkouts")
    assert (check.measured, check.stable, check.passed) == (12.0, 20.0, False)
    assert judge(sample(metrics={"checkouts": 19.0}), health, base).outcome == "pass"


def test_a_custom_metric_without_data_is_never_a_pass_and_other_sources_are_not_judged_on_it():
    health = Health(metrics=[CHECKOUTS])
    v = judge(sample(), health, stable().model_copy(update={"metrics": {"checkouts": 20.0}}))
    assert v.outcome == "inconclusive" and "cannot be judged" in v.rule and "canary.checkouts" in v.rule
    assert judge(sample(source="smoke"), health, stable()).outcome == "pass"  # a probe measures no checkouts


def test_a_dry_run_custom_metric_is_recorded_and_does_not_act():
    health = Health(metrics=[{**CHECKOUTS, "dry_run": True}, {"name": "errors_vs_stable", "query": {
        "filter": 'metric.type = "run.googleapis.com/request_count"'},
        "condition": "canary.error_rate <= stable.error_rate + 0.01"}])
    base = stable().model_copy(update={"metrics": {"checkouts": 20.0, "errors_vs_stable": 1.0}})
    v = judge(sample(metrics={"checkouts": 1.0, "errors_vs_stable": 1.0}), health, base)
    assert v.outcome == "pass" and v.dry_run[0].startswith("[dry run] checkouts 1 vs stable 20")
    bad = judge(sample(errors=60, metrics={"checkouts": 1.0, "errors_vs_stable": 1.0}), health, base)
    assert bad.outcome == "fail" and "canary.error_rate <= stable.error_rate + 0.01" in bad.rule


# ---------------------------------------------------------------- the request logs: failures only

def test_request_log_samples_roll_back_but_never_cover_a_step():
    s = Sim(spec())
    s.advance(60)
    until = s.rollout.judged_until
    d = s.sample_with(source="request-logs", requests=500, errors=0)
    assert d.audit.decision == "ignored" and s.rollout.judged_until == until
    assert "they report failures only" in d.audit.reasons[-1]
    s.sample_with(source="request-logs", requests=40, errors=12)
    assert s.rollout.state in ("rolling_back", "rolled_back") and s.split[s.rollout.revision] == 0
    assert s.rollout.verdict.source == "request-logs"


# ---------------------------------------------------------------- the measurement history

def test_every_judged_sample_adds_its_measurements_once_and_the_history_is_bounded():
    s = Sim(spec())
    s.advance(30)
    d = s.sample_with(requests=200, errors=2, cpu_utilization=0.3)
    history = s.rollout.measurements
    assert [m.metric for m in history] == ["error_rate", "latency_p99_ms", "cpu_utilization"]
    assert history[0].value == 0.01 and history[0].threshold == 0.05 and history[0].outcome == "pass"
    again = machine.decide(s.rollout, s.last_input, s.now)  # a redelivery decided again
    assert again.rollout.measurements == history
    assert d.audit is not None
    many = s.rollout.model_copy(update={"measurements": history * 100})
    after = machine.decide(many, HealthSample(**{**s.last_input.model_dump(), "id": "other",
                                                 "window_end": s.now + timedelta(seconds=1)}), s.now)
    assert len(after.rollout.measurements) == MAX_MEASUREMENTS


# ---------------------------------------------------------------- the wiring is what bench/judge.py measures

@given(st.integers(0, 3000), st.floats(0, 0.2), st.integers(0, 30000), st.floats(0, 0.05),
       st.floats(20, 400), st.floats(20, 400), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_the_statistical_verdict_is_core_stats_decision(n, rate, ns, stable_rate, median, stable_median, seed):
    from pitstop.core import stats
    rng = random.Random(seed)
    canary = stats.Traffic(n, round(n * rate), buckets_of(latencies(n, median, rng.random())))
    base = stats.Traffic(ns, round(ns * stable_rate), buckets_of(latencies(ns, stable_median, rng.random())))
    v = judge(sample(requests=n, errors=canary.errors, p99=None, buckets=list(canary.latency_buckets)), STATISTICAL,
              stable(requests=ns, errors=base.errors, buckets=list(base.latency_buckets)))
    assert v.outcome == stats.judge_statistically(canary, base if ns else None).decision

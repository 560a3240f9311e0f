"""The health judge: thresholds from the seeds, every value beside its threshold."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pitstop.core.judge import judge
from pitstop.core.models import Health, HealthSample

T = datetime(2026, 1, 1, tzinfo=timezone.utc)
H = Health()  # seeds: error rate > 5 %, p99 > 1000 ms, +20 % over stable


def sample(requests=200, errors=0, p99=200.0, revision="web-v2", start=T, minutes=5) -> HealthSample:
    return HealthSample(service="web", region="r", revision=revision, window_start=start,
                        window_end=start + timedelta(minutes=minutes), request_count=requests,
                        error_count=errors, latency_p99_ms=p99, source="t")


@pytest.mark.parametrize("kw, outcome, rule", [
    ({}, "pass", "within limits"),
    ({"errors": 10}, "pass", "within limits"),  # exactly 5 %
    ({"errors": 11}, "fail", "error rate 5.5% is above the 5.0% limit"),
    ({"p99": 1000.0}, "pass", "within limits"),
    ({"p99": 1001.0}, "fail", "p99 latency 1001 ms is above the 1000 ms limit"),
    ({"requests": 49}, "inconclusive", "only 49 requests, 50 needed"),
    ({"requests": 0, "p99": None}, "inconclusive", "only 0 requests"),
    ({"p99": None}, "inconclusive", "no latency measured"),
])
def test_absolute_thresholds(kw, outcome, rule):
    v = judge(sample(**kw), H)
    assert v.outcome == outcome and rule in v.rule
    by_name = {c.name: c for c in v.checks}
    assert by_name["error_rate"].threshold == 0.05 and by_name["latency_p99_ms"].threshold == 1000


def test_relative_to_stable_over_the_same_window():
    stable = sample(revision="web-v1", p99=300.0, requests=1000)
    assert judge(sample(p99=360.0), H, stable).outcome == "pass"
    v = judge(sample(p99=361.0), H, stable)
    assert v.outcome == "fail" and "20% above the stable revision's 300 ms (limit +20%, and more than 50 ms)" in v.rule
    check = next(c for c in v.checks if c.name == "latency_p99_vs_stable_ms")
    assert (check.measured, check.threshold, check.passed) == (361.0, 360.0, False)
    old = sample(revision="web-v1", p99=100.0, requests=1000, start=T - timedelta(hours=1))
    assert judge(sample(p99=361.0), H, old).outcome == "pass", "no overlap: no comparison"
    thin = sample(revision="web-v1", p99=100.0, requests=3)
    assert judge(sample(p99=361.0), H, thin).outcome == "pass", "too little stable traffic: no comparison"


def test_small_latency_increase_never_fails_relative_check():
    stable = sample(revision="web-v1", p99=5.0, requests=1000)
    v = judge(sample(p99=7.0), H, stable)  # +40 %, but 2 ms
    assert v.outcome == "pass", v.rule
    v = judge(sample(p99=56.0), H, stable)  # +51 ms and +1020 %
    assert v.outcome == "fail" and "more than 50 ms" in v.rule

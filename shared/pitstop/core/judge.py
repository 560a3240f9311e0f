"""The health judge: one sample of the new revision -> pass, fail or inconclusive.

Pure. Absolute thresholds first (error rate, p99), then the comparison with the
stable revision over an overlapping window. Too little traffic is never a pass.
"""

from __future__ import annotations

from pitstop.core.models import Baseline, Check, Health, HealthSample, Verdict


def judge(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None = None) -> Verdict:
    checks: list[Check] = []

    def verdict(outcome: str, rule: str) -> Verdict:
        return Verdict(
            outcome=outcome, rule=rule, checks=checks, revision=sample.revision,
            window_start=sample.window_start, window_end=sample.window_end,
            request_count=sample.request_count, source=sample.source,
        )

    enough = sample.request_count >= max(health.min_requests, 1)
    checks.append(Check(name="requests", measured=sample.request_count, threshold=health.min_requests, passed=enough))

    rate = sample.error_rate
    rate_ok = None if rate is None else rate <= health.max_error_rate
    checks.append(Check(name="error_rate", measured=_round(rate), threshold=health.max_error_rate, passed=rate_ok))

    p99 = sample.latency_p99_ms
    p99_ok = None if p99 is None else p99 <= health.max_p99_ms
    checks.append(Check(name="latency_p99_ms", measured=_round(p99), threshold=health.max_p99_ms, passed=p99_ok))

    limit = _relative_limit(sample, health, baseline)
    rel_ok = None if limit is None or p99 is None else p99 <= limit
    if limit is not None:
        checks.append(Check(name="latency_p99_vs_stable_ms", measured=_round(p99), threshold=_round(limit), passed=rel_ok))

    # Errors count even on little traffic: 10 failures out of 12 is already a verdict.
    if enough and rate_ok is False:
        return verdict("fail", f"error rate {rate:.1%} is above the {health.max_error_rate:.1%} limit")
    if not enough and rate is not None and sample.error_count > health.max_error_rate * max(health.min_requests, 1):
        return verdict("fail", f"{sample.error_count} errors in {sample.request_count} requests already exceed "
                               f"the {health.max_error_rate:.1%} limit of the minimum {health.min_requests} requests")
    if not enough:
        return verdict("inconclusive", f"only {sample.request_count} requests, {health.min_requests} needed for a verdict")
    if p99_ok is False:
        return verdict("fail", f"p99 latency {p99:.0f} ms is above the {health.max_p99_ms:.0f} ms limit")
    if rel_ok is False:
        assert baseline is not None and baseline.latency_p99_ms is not None
        increase = p99 / baseline.latency_p99_ms - 1 if baseline.latency_p99_ms else float("inf")
        return verdict("fail", f"p99 latency {p99:.0f} ms is {increase:.0%} above the stable revision's "
                               f"{baseline.latency_p99_ms:.0f} ms (limit +{health.max_latency_increase:.0%}, "
                               f"and more than {health.min_latency_increase_ms:.0f} ms)")
    if p99 is None:
        return verdict("inconclusive", "no latency measured")
    return verdict("pass", "error rate and latency within limits")


def _relative_limit(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None) -> float | None:
    """p99 the canary may reach, or None when the stable revision gives no fair comparison."""
    if baseline is None or baseline.latency_p99_ms is None:
        return None
    if baseline.request_count < max(health.min_requests, 1):
        return None
    if isinstance(baseline, HealthSample):  # a `Baseline` inside the sample is over the same window by definition
        overlaps = baseline.window_start < sample.window_end and sample.window_start < baseline.window_end
        if not overlaps:
            return None
    stable = baseline.latency_p99_ms
    # Relative and absolute at once: +20 % of 5 ms is noise, so small increases never fail.
    return max(stable * (1 + health.max_latency_increase), stable + health.min_latency_increase_ms)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)

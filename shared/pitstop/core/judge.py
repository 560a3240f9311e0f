"""The health judge: one sample of the new revision -> pass, fail or inconclusive. Pure.

Two readings of the window, chosen by the spec's `health.judge`:

- `threshold`: absolute limits first (error rate, p99), then the p99 against the stable revision over an
  overlapping window, on the window as it is;
- `statistical` (core/stats.py): the canary against stable with confidence (a beta-binomial test of the
  error rates, Mann–Whitney on Monitoring's latency buckets), today's limits as hard limits.

Then what both share: CPU and memory utilization against their limits, and the spec's custom metrics, each
a CEL condition (core/cel.py). Any of those may be `dry_run` (recorded, never acts) or `on_fail: pause`
(a person decides instead of the rollback). Too little traffic, or a value that is missing, is never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pitstop.core.models import Baseline, Check, Health, HealthSample, OnFail, TestResult, Verdict

# Only the tick's sampler reads the custom metrics (from Monitoring): a smoke probe, a test suite or the
# request logs measure other things, and their samples are not judged on what they cannot carry.
MONITORING = "cloud-monitoring"


@dataclass
class _Reading:
    """What one part of the judge concluded."""

    outcome: str  # pass, fail, inconclusive
    rule: str
    checks: list[Check] = field(default_factory=list)
    tests: list[TestResult] = field(default_factory=list)
    on_fail: OnFail = "rollback"
    dry_run: bool = False


def judge(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None = None) -> Verdict:
    baseline = _comparable(sample, baseline)
    core = _statistical(sample, health, baseline) if health.judge == "statistical" else \
        _thresholds(sample, health, baseline)
    others = [*_resources(sample, health, baseline), *_custom(sample, health, baseline)]
    acting = [r for r in (core, *others) if not r.dry_run]
    failed = sorted((r for r in acting if r.outcome == "fail"), key=lambda r: r.on_fail != "rollback")
    waiting = [r for r in acting if r.outcome == "inconclusive"]
    decided = failed[0] if failed else waiting[0] if waiting else core
    outcome = "fail" if failed else "inconclusive" if waiting else "pass"
    rule = decided.rule
    if decided.on_fail == "pause" and failed:
        rule += ": paused for a person (on_fail: pause)"
    return Verdict(
        outcome=outcome, rule=rule, checks=[c for r in (core, *others) for c in r.checks], tests=core.tests,
        on_fail=decided.on_fail if failed else "rollback",
        dry_run=[f"[dry run] {r.rule}" for r in others if r.dry_run and r.outcome == "fail"],
        revision=sample.revision, window_start=sample.window_start, window_end=sample.window_end,
        request_count=sample.request_count, source=sample.source,
    )


def _comparable(sample: HealthSample, baseline: HealthSample | Baseline | None) -> HealthSample | Baseline | None:
    """The stable revision when it is a fair comparison: measured over a window that overlaps the sample's."""
    if baseline is None or not baseline.request_count:
        return None
    if isinstance(baseline, HealthSample):  # a `Baseline` inside the sample is over the same window by definition
        overlaps = baseline.window_start < sample.window_end and sample.window_start < baseline.window_end
        if not overlaps:
            return None
    return baseline


# ---------------------------------------------------------------- threshold: the window as it is

def _thresholds(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None) -> _Reading:
    checks: list[Check] = []
    stable_rate = baseline.error_count / baseline.request_count if baseline else None
    stable_p99 = baseline.latency_p99_ms if baseline else None

    enough = sample.request_count >= max(health.min_requests, 1)
    checks.append(Check(name="requests", measured=sample.request_count, threshold=health.min_requests, passed=enough))

    rate = sample.error_rate
    rate_ok = None if rate is None else rate <= health.max_error_rate
    checks.append(Check(name="error_rate", measured=_round(rate), threshold=health.max_error_rate, passed=rate_ok,
                        stable=_round(stable_rate)))

    p99 = sample.latency_p99_ms
    p99_ok = None if p99 is None else p99 <= health.max_p99_ms
    checks.append(Check(name="latency_p99_ms", measured=_round(p99), threshold=health.max_p99_ms, passed=p99_ok))

    limit = _relative_limit(health, baseline)
    # The p99 of a few requests is their slowest one: one request delayed by a busy machine is not a slower revision.
    compared = limit is not None and p99 is not None and sample.request_count >= health.min_latency_requests
    rel_ok = p99 <= limit if compared else None
    if limit is not None:
        checks.append(Check(name="latency_p99_vs_stable_ms", measured=_round(p99), threshold=_round(limit),
                            passed=rel_ok, stable=_round(stable_p99)))

    def reading(outcome: str, rule: str) -> _Reading:
        return _Reading(outcome, rule, checks)

    # Errors count even on little traffic: 10 failures out of 12 is already a verdict.
    if enough and rate_ok is False:
        return reading("fail", f"error rate {rate:.1%} is above the {health.max_error_rate:.1%} limit")
    if not enough and rate is not None and sample.error_count > health.max_error_rate * max(health.min_requests, 1):
        return reading("fail", f"{sample.error_count} errors in {sample.request_count} requests already exceed "
                               f"the {health.max_error_rate:.1%} limit of the minimum {health.min_requests} requests")
    if not enough:
        return reading("inconclusive", f"only {sample.request_count} requests, {health.min_requests} needed for a "
                                       f"verdict")
    if p99_ok is False:
        return reading("fail", f"p99 latency {p99:.0f} ms is above the {health.max_p99_ms:.0f} ms limit")
    if rel_ok is False:
        assert stable_p99 is not None
        increase = p99 / stable_p99 - 1 if stable_p99 else float("inf")
        return reading("fail", f"p99 latency {p99:.0f} ms is {increase:.0%} above the stable revision's "
                               f"{stable_p99:.0f} ms (limit +{health.max_latency_increase:.0%}, "
                               f"and more than {health.min_latency_increase_ms:.0f} ms)")
    if p99 is None:
        return reading("inconclusive", "no latency measured")
    if limit is not None and not compared:
        return reading("pass", f"error rate and latency within limits (p99 not compared with stable: "
                               f"{sample.request_count} requests, {health.min_latency_requests} needed)")
    return reading("pass", "error rate and latency within limits")


def _relative_limit(health: Health, baseline: HealthSample | Baseline | None) -> float | None:
    """p99 the canary may reach, or None when the stable revision gives no fair comparison."""
    if baseline is None or baseline.latency_p99_ms is None:
        return None
    if baseline.request_count < max(health.min_requests, 1):
        return None
    stable = baseline.latency_p99_ms
    # Relative and absolute at once: +20 % of 5 ms is noise, so small increases never fail.
    return max(stable * (1 + health.max_latency_increase), stable + health.min_latency_increase_ms)


# ---------------------------------------------------------------- statistical: canary against stable

def _statistical(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None) -> _Reading:
    from pitstop.core import stats  # late: the sentence-building and scipy are for judging only

    settings = stats.Settings(confidence=health.confidence, min_requests=max(health.min_requests, 1),
                              min_latency_requests=health.min_latency_requests,
                              max_error_rate=health.max_error_rate, max_p99_ms=health.max_p99_ms)
    canary = stats.Traffic(sample.request_count, sample.error_count, tuple(sample.latency_buckets or ()))
    stable = stats.Traffic(baseline.request_count, baseline.error_count, tuple(baseline.latency_buckets or ())) \
        if baseline else None
    rate_limit, p99_limit = stats.hard_limits(canary, settings)
    errors = stats.error_rate_test(canary, stable, settings)
    if sample.latency_buckets is not None:
        latency = stats.latency_test(canary, stable, settings)
    else:  # this source measures no distribution (a probe, a test suite): its p99 against the limit, as today
        latency = _p99_against_limit(sample, settings)
        p99_limit = latency if latency.decision == "fail" else p99_limit
    results = (rate_limit, p99_limit, errors, latency)

    failed = [r for r in results if r.decision == "fail"]
    tests = (errors, latency)
    if failed:
        outcome, rule = "fail", failed[0].sentence
    elif all(r.decision == "pass" for r in tests):
        outcome, rule = "pass", "; ".join(r.sentence for r in tests)
    else:
        outcome, rule = "inconclusive", next(r.sentence for r in tests if r.decision == "inconclusive")

    def passed(test, limit) -> bool | None:  # a hard limit only ever fails; the test says whether it passed
        return False if "fail" in (test.decision, limit.decision) else True if test.decision == "pass" else None

    stable_rate = stable.error_rate if stable else None
    stable_p99 = baseline.latency_p99_ms if baseline else None
    checks = [
        Check(name="requests", measured=sample.request_count, threshold=health.min_requests,
              passed=sample.request_count >= max(health.min_requests, 1)),
        Check(name="error_rate", measured=_round(sample.error_rate), threshold=health.max_error_rate,
              passed=passed(errors, rate_limit), stable=_round(stable_rate)),
        Check(name="latency_p99_ms", measured=_round(sample.latency_p99_ms), threshold=health.max_p99_ms,
              passed=passed(latency, p99_limit), stable=_round(stable_p99)),
    ]
    return _Reading(outcome, rule, checks, [_test(r) for r in results])


def _p99_against_limit(sample: HealthSample, s) -> object:
    from pitstop.core import stats

    p99, enough = sample.latency_p99_ms, sample.request_count >= s.min_requests
    if p99 is None or not enough:
        decision, sentence = "inconclusive", ("no latency measured" if p99 is None else
                                              f"p99 latency: {sample.request_count} requests, {s.min_requests} "
                                              f"needed for a p99")
    elif p99 > s.max_p99_ms:
        decision, sentence = "fail", f"p99 latency {p99:.0f} ms is above the {s.max_p99_ms:.0f} ms limit"
    else:
        decision, sentence = "pass", f"p99 latency {p99:.0f} ms within the {s.max_p99_ms:.0f} ms limit"
    return stats.Result(test="max_p99_ms", statistic="p99 ms", value=p99, p=None, confidence=s.confidence,
                        effect=None, decision=decision, sentence=sentence)


def _test(r) -> TestResult:
    def finite(x):
        return None if x is None or x != x or x in (float("inf"), float("-inf")) else round(float(x), 6)

    return TestResult(test=r.test, statistic=r.statistic, value=finite(r.value), p=finite(r.p),
                      confidence=r.confidence, effect=finite(r.effect), decision=r.decision, sentence=r.sentence)


# ---------------------------------------------------------------- resources and custom metrics

def _resources(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None) -> list[_Reading]:
    readings = []
    for name, label, measured, limit in (
            ("cpu_utilization", "CPU", sample.cpu_utilization, health.cpu),
            ("memory_utilization", "memory", sample.memory_utilization, health.memory)):
        if measured is None:
            continue  # not measured by this source: nothing to say, and nothing withheld
        ok = measured <= limit.max
        check = Check(name=name, measured=_round(measured), threshold=limit.max, passed=ok, dry_run=limit.dry_run,
                      stable=_round(getattr(baseline, name, None)))
        rule = f"{label} utilization {measured:.0%} (p95) is {'within' if ok else 'above'} the {limit.max:.0%} limit"
        readings.append(_Reading("pass" if ok else "fail", rule, [check], on_fail=limit.on_fail,
                                 dry_run=limit.dry_run))
    return readings


def _custom(sample: HealthSample, health: Health, baseline: HealthSample | Baseline | None) -> list[_Reading]:
    if not health.metrics or sample.source != MONITORING:
        return []
    from pitstop.core import cel  # late: cel-python is loaded only for specs that declare metrics

    canary = _values(sample)
    stable = _values(baseline) if baseline else None
    thresholds = cel.thresholds_of(health)
    readings = []
    for metric in health.metrics:
        result = cel.evaluate(metric.condition, canary, stable, thresholds)
        outcome = {True: "pass", False: "fail", None: "inconclusive"}[result.passed]
        check = Check(name=metric.name, measured=_round(canary.get(metric.name)), threshold=None,
                      passed=result.passed, stable=_round(stable.get(metric.name)) if stable else None,
                      condition=metric.condition, dry_run=metric.dry_run)
        shown = f"{metric.name} {_number(canary.get(metric.name))}"
        if stable is not None and metric.name in stable:
            shown += f" vs stable {_number(stable.get(metric.name))}"
        verb = {"pass": "holds", "fail": "does not hold", "inconclusive": "cannot be judged"}[outcome]
        rule = f"{shown}: `{metric.condition}` {verb}" + (f" ({result.reason})" if result.reason else "")
        readings.append(_Reading(outcome, rule, [check], on_fail=metric.on_fail, dry_run=metric.dry_run))
    return readings


def _values(s: HealthSample | Baseline) -> dict[str, float | None]:
    """What a CEL condition reads as `canary.X` / `stable.X`."""
    rate = s.error_count / s.request_count if s.request_count else None
    return {"requests": float(s.request_count), "errors": float(s.error_count), "error_rate": rate,
            "p50_ms": getattr(s, "latency_p50_ms", None), "p95_ms": getattr(s, "latency_p95_ms", None),
            "p99_ms": s.latency_p99_ms, "cpu": s.cpu_utilization, "memory": s.memory_utilization, **s.metrics}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)

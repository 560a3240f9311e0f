"""What the tick's sampler reads from Cloud Monitoring, and which of it becomes a health sample. Pure.

Cloud Monitoring shows a minute only ~180 s later (`lag`), so the sampler reads up to `now - lag`.
Two windows per watched rollout and tick:

- the **whole** window, from `judged_until` (the end of what is already judged healthy) to
  `now - lag`: contiguous with what is judged, so a healthy verdict on it extends the coverage
  that steps advance on;
- the **recent** window, the last `interval` of it, so that a failure that starts late in a long
  window is not diluted by the healthy minutes before it.

Only what can change a decision is published (each published sample costs Firestore writes):
a window that is clearly failing at once (beyond a minute's noise: see `_clearly_failing`), and
the whole window once it reaches the step's deadline, where the judge reads it as it is. A healthy
minute in the middle of a step changes nothing and is not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pitstop.core.judge import judge
from pitstop.core.limits import MAX_WINDOW
from pitstop.core.models import Baseline, HealthSample, Rollout

# States whose new revision serves traffic and is judged (rolling back, the judge has nothing left to say).
SAMPLED = frozenset({"verifying", "progressing", "switching", "baking", "paused", "awaiting_approval"})


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def windows(r: Rollout, now: datetime, lag: float) -> tuple[Window, Window] | None:
    """(whole, recent) to read now, or None when nothing new is visible yet."""
    if r.state not in SAMPLED or r.judged_until is None:
        return None
    # Monitoring stores a point per whole minute (per `interval`): a window may only claim what such points
    # cover, so it ends on the last whole interval that the lag has made visible.
    end = _floor(now - timedelta(seconds=lag), r.health.interval)
    if end <= r.judged_until:
        return None
    recent_start = max(r.judged_until, end - timedelta(seconds=r.health.interval))
    start = max(r.judged_until, end - MAX_WINDOW)  # beyond it, a sample would be refused: the gap stays unjudged
    return Window(start, end), Window(recent_start, end)


def to_publish(r: Rollout, whole: HealthSample | None, recent: HealthSample | None) -> list[HealthSample]:
    """The samples worth a decision: a failure now, or the window that reaches the step's deadline."""
    baseline = r.baseline
    if recent is not None and _clearly_failing(recent, r, baseline):
        return [recent]
    if whole is None:
        return []
    deadline_reached = r.next_step_at is not None and whole.window_end >= r.next_step_at
    if _clearly_failing(whole, r, baseline) or (
            deadline_reached and judge(whole, r.health, whole.stable or baseline).outcome == "fail"):
        return [whole]
    if deadline_reached and r.state in ("verifying", "progressing", "baking"):
        # An inconclusive window (too little traffic) is not worth a write each tick: the window keeps
        # growing until it is conclusive, and the step pauses for a person at `no_data_timeout`.
        if judge(whole, r.health, whole.stable or baseline).outcome == "pass":
            return [whole]
    return []


def _floor(t: datetime, seconds: int) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    whole = (t - epoch) // timedelta(seconds=seconds)
    return epoch + whole * timedelta(seconds=seconds)


def sample_of(r: Rollout, window: Window, new, old) -> HealthSample | None:
    """The new revision's health over a window (`new`, `old`: what Monitoring measured for the new and the stable
    revision, gcp.metrics.RevisionHealth: counts, latency percentiles and buckets, utilizations, custom metric
    values), the stable one beside it; None without traffic."""
    if new is None or not new.request_count:  # no traffic is no data: nothing to judge
        return None
    # At 100 % the stable revision serves nothing now: its share of the window is older minutes, no fair baseline.
    comparable = r.stable_revision and r.new_percent < 100 and old is not None and old.request_count
    stable = Baseline(revision=r.stable_revision, request_count=old.request_count, error_count=old.error_count,
                      latency_p99_ms=old.latency_p99_ms, **_measured(old)) if comparable else None
    return HealthSample(
        service=r.service, region=r.region, revision=r.revision, rollout_id=r.id, window_start=window.start,
        window_end=window.end, request_count=new.request_count, error_count=new.error_count,
        latency_p50_ms=new.latency_p50_ms, latency_p95_ms=new.latency_p95_ms, latency_p99_ms=new.latency_p99_ms,
        source="cloud-monitoring", stable=stable, **_measured(new))


def _measured(health) -> dict:
    """What a sample and a baseline share beyond the counts: buckets, utilizations, custom metric values."""
    buckets = getattr(health, "latency_buckets", None)
    return {"latency_buckets": list(buckets) if buckets is not None else None,
            "cpu_utilization": getattr(health, "cpu_utilization", None),
            "memory_utilization": getattr(health, "memory_utilization", None),
            "metrics": dict(getattr(health, "metrics", None) or {})}


def _clearly_failing(sample: HealthSample, r: Rollout, baseline) -> bool:
    """A failing minute, beyond the noise of a minute's worth of requests.

    A minute of a 5 % step holds a hundred requests or so: a healthy canary at 2 % errors shows over 5 % in
    one minute in about one run in fifty. So the recent window fails early only when even the low end of its
    95 % confidence interval (Wilson) is over the limit; anything less waits for the whole window, whose
    many more requests the judge reads as they are."""
    verdict = judge(sample, r.health, sample.stable or baseline)
    if verdict.outcome != "fail":
        return False
    if r.health.judge == "statistical":
        return True  # its tests already demand `confidence` before they fail
    rate = next((c for c in verdict.checks if c.name == "error_rate"), None)
    if rate is None or rate.passed is not False:
        return True  # latency, or errors that exceed the minimum sample's whole budget
    return wilson_low(sample.error_count, sample.request_count) > r.health.max_error_rate


def wilson_low(errors: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 0.0
    p = errors / n
    centre = p + z * z / (2 * n)
    spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return (centre - spread) / (1 + z * z / n)

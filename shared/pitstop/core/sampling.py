"""What the tick's sampler reads from Cloud Monitoring, and which of it becomes a health sample. Pure.

Cloud Monitoring shows a minute only ~180 s later (`lag`), so the sampler reads up to `now - lag`.
Two windows per watched rollout and tick:

- the **whole** window, from `judged_until` (the end of what is already judged healthy) to
  `now - lag`: contiguous with what is judged, so a healthy verdict on it extends the coverage
  that steps advance on;
- the **recent** window, the last `interval` of it, so that a failure that starts late in a long
  window is not diluted by the healthy minutes before it.

Only what can change a decision is published (each published sample costs Firestore writes):
a failing recent or whole window at once, and the whole window once it reaches the step's
deadline. A healthy minute in the middle of a step changes nothing and is not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pitstop.core.judge import judge
from pitstop.core.limits import MAX_WINDOW
from pitstop.core.models import HealthSample, Rollout

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
    end = now - timedelta(seconds=lag)
    if end <= r.judged_until:
        return None
    recent_start = max(r.judged_until, end - timedelta(seconds=r.health.interval))
    start = max(r.judged_until, end - MAX_WINDOW)  # beyond it, a sample would be refused: the gap stays unjudged
    return Window(start, end), Window(recent_start, end)


def to_publish(r: Rollout, whole: HealthSample | None, recent: HealthSample | None) -> list[HealthSample]:
    """The samples worth a decision: a failure now, or the window that reaches the step's deadline."""
    baseline = r.baseline
    for sample in (recent, whole):
        if sample is not None and judge(sample, r.health, sample.stable or baseline).outcome == "fail":
            return [sample]
    if whole is None:
        return []
    deadline_reached = r.next_step_at is not None and whole.window_end >= r.next_step_at
    if deadline_reached and r.state in ("verifying", "progressing", "baking"):
        # An inconclusive window (too little traffic) is not worth a write each tick: the window keeps
        # growing until it is conclusive, and the step pauses for a person at `no_data_timeout`.
        if judge(whole, r.health, whole.stable or baseline).outcome == "pass":
            return [whole]
    return []

"""What the local router served, and what the revisions used: the raw material of the local Cloud Monitoring.

The router appends one `Served` per request it answers; the local Cloud Run's usage sampler
(revisions.UsageSampler) one `Usage` per revision process about every half second. The local Monitoring
answers ListTimeSeries from these. All live in the same process (the local cloud), so lock-protected lists
are enough.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass


RETENTION_S = 6 * 3600  # longer than any rollout window a local run queries
PRUNE_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Served:
    at: float  # epoch seconds when the response finished
    project: str
    location: str
    service: str
    revision: str
    status: int  # HTTP status sent to the client (502/503 if the revision failed)
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Usage:
    at: float  # epoch seconds when it was measured
    project: str
    location: str
    service: str
    revision: str
    cpu: float  # share of the revision's CPU limit used since the previous sample (0-1)
    memory: float  # resident memory as a share of its memory limit (0-1, more if it overshoots)


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._items: list[Served] = []
        self._usage_times: list[float] = []
        self._usage: list[Usage] = []

    def add(self, item: Served) -> None:
        with self._lock:
            # Responses finish almost in order; insort keeps queries correct anyway.
            i = bisect.bisect_right(self._times, item.at)
            self._times.insert(i, item.at)
            self._items.insert(i, item)
            if len(self._items) % PRUNE_EVERY == 0:  # a long `dev up` must not grow without bound
                keep = bisect.bisect_left(self._times, item.at - RETENTION_S)
                del self._times[:keep], self._items[:keep]

    def between(self, start: float, end: float) -> list[Served]:
        """Requests with start < at <= end (Monitoring's interval semantics)."""
        with self._lock:
            lo = bisect.bisect_right(self._times, start)
            hi = bisect.bisect_right(self._times, end)
            return self._items[lo:hi]

    def add_usage(self, item: Usage) -> None:
        with self._lock:
            i = bisect.bisect_right(self._usage_times, item.at)
            self._usage_times.insert(i, item.at)
            self._usage.insert(i, item)
            if len(self._usage) % PRUNE_EVERY == 0:
                keep = bisect.bisect_left(self._usage_times, item.at - RETENTION_S)
                del self._usage_times[:keep], self._usage[:keep]

    def usage_between(self, start: float, end: float) -> list[Usage]:
        """Usage samples with start < at <= end."""
        with self._lock:
            lo = bisect.bisect_right(self._usage_times, start)
            hi = bisect.bisect_right(self._usage_times, end)
            return self._usage[lo:hi]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

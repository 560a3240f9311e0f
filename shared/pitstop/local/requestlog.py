"""What the local router served: the raw material of the local Cloud Monitoring.

The router appends one `Served` per request it answers; the local Monitoring
answers ListTimeSeries from these. Both live in the same process (the local
cloud), so a lock-protected list is enough.
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


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._items: list[Served] = []

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

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

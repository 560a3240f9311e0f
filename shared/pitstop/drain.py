"""The drain: Cloud Run request logs, pulled from their subscription every few seconds, judged per watched
rollout; a clearly failing window is published as a health sample, signed like the tick's sampler's.

One loop of phases per invocation: pull what is waiting -> count it (core/requestlogs.py, pure) -> judge
each watched rollout of a service seen -> publish failures -> acknowledge. Acknowledged only after
publishing (at least once: a failing sample published twice is harmless, the rollout is rolling back).
The counts live in this instance's memory (`Tally`), which is why the drain pulls rather than being
pushed one entry at a time: a window needs the entries of many requests at once.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pitstop.core import requestlogs
from pitstop.log import log, rollout_fields

if TYPE_CHECKING:
    from pitstop.engine import Engine
    from pitstop.gcp.subscription import Subscription

SUBSCRIPTION = "pitstop-request-logs-drain"
BUDGET_S = 3.0  # pulling stops after this long, so a drain every 5 s never overlaps the next
QUIET = timedelta(seconds=15)  # after publishing a failure, the rollout's decision is awaited this long


def fraction_from_env() -> float:
    """The sink's sample(insertId, F): PITSTOP_LOG_FRACTION, as Terraform set the filter."""
    value = float(os.environ.get("PITSTOP_LOG_FRACTION", "0.1"))
    if not 0 < value <= 1:
        raise ValueError(f"PITSTOP_LOG_FRACTION must be in (0, 1], got {value}")
    return value


class Drain:
    def __init__(self, engine: Engine, subscription: Subscription, fraction: float,
                 tally: requestlogs.Tally | None = None) -> None:
        self.engine, self.subscription, self.fraction = engine, subscription, fraction
        self.tally = tally or requestlogs.Tally()
        self._published: dict[str, datetime] = {}  # rollout id -> when its failure was published

    def run(self, budget: float = BUDGET_S) -> dict[str, int]:
        counts = {"pulled": 0, "counted": 0, "duplicates": 0, "malformed": 0, "published": 0}
        acks: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < budget:
            batch = self.subscription.pull()
            if not batch:
                break
            counts["pulled"] += len(batch)
            for message in batch:
                acks.append(message.ack_id)
                outcome = self._count(message.message_id, message.data)
                counts[outcome] += 1
        now = self.engine.clock()
        self.tally.forget(now)
        if self.tally.services():
            counts["published"] = self._judge(now)
        if acks:
            self.subscription.ack(acks)
        return counts

    def _count(self, message_id: str, data: bytes) -> str:
        try:
            request = requestlogs.parse_entry(json.loads(data))
        except (ValueError, UnicodeDecodeError) as err:  # BadEntry is a ValueError, like a JSON error
            log("ERROR", f"request log message {message_id} is not a Cloud Run request log entry pitstop can "
                         f"count: {str(err)[:300]}. Acknowledged; nothing counted.", message_id=message_id)
            return "malformed"
        return "counted" if self.tally.add(request) else "duplicates"

    def _judge(self, now: datetime) -> int:
        """Each watched rollout of a service seen: publish its new revision's clearly failing window, if any."""
        seen = self.tally.services()
        published = 0
        self._published = {k: t for k, t in self._published.items() if now - t < QUIET}
        for r in self.engine.store.watched():
            if (r.project, r.region, r.service) not in seen or r.id in self._published:
                continue  # not seen, or its failure is on its way: one sample, not one per drain

            def counts(revision: str | None, start: datetime, end: datetime, r: Any = r) -> requestlogs.Count:
                return self.tally.count(r.project, r.region, r.service, revision, start, end)

            sample = requestlogs.failing_sample(r, counts, self.fraction, now)
            if sample is None:
                continue
            seconds = int((sample.window_end - sample.window_start).total_seconds())
            log("WARNING", f"request logs: {sample.error_count} errors in ~{sample.request_count} requests of "
                           f"{r.revision} over the last {seconds} s; publishing the failing sample",
                **rollout_fields(r))
            self.engine.publish_sample(sample)
            self._published[r.id] = now
            published += 1
        return published


def arm(due: list[Any], now: datetime) -> None:
    """From the tick: while a rollout is watched, arm the next minute of the drain chain (Cloud Tasks).
    Without a configured queue (the local stack drives its drain itself) this does nothing."""
    from pitstop.core.models import WATCHED

    if not any(r.state in WATCHED for r, _ in due):
        return
    from pitstop.gcp.tasks import DrainChain

    chain = DrainChain.from_env()
    if chain is None:
        return
    try:
        chain.arm(now)
    except Exception as err:  # the Monitoring sampler still watches; the next tick arms again
        log("ERROR", f"could not arm the request-log drain: {err!r}. Monitoring alone watches until the next tick.")

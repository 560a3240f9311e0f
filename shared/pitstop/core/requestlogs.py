"""Cloud Run request logs as evidence of failure, seconds after the requests. Pure.

A Log Router sink (terraform/requestlogs.tf) exports the managed services' request log entries to
Pub/Sub: **every** 5xx, and of the rest only those that `sample(insertId, F)` keeps. So per revision
and window, errors are counted exactly and requests are estimated: errors + (non-5xx seen) / F.

The export does not de-duplicate, so entries are remembered by insertId (a bounded memory per drain
instance; a duplicate that another instance saw is counted twice: the counts are estimates anyway).

Only failure is read from here. Cloud Monitoring stays the source of passes, latency percentiles and
the count of record; a window is published only when the judge fails it *and* the failure is clear
beyond the noise of sampled counts, so a healthy canary is not rolled back by a few unlucky seconds:
by the canary's own entries (`clearly_failing`), or, since a canary at 5 % has few of its own, by its
errors against the requests its share of the service's traffic brings (`clearly_failing_by_share`).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from pitstop.core.judge import judge
from pitstop.core.models import WATCHED, Baseline, HealthSample, Rollout

SOURCE = "request-logs"
LOG_NAME = "run.googleapis.com%2Frequests"  # the `logName` of Cloud Run request logs ends in this
# Windows a drain judges, shortest first, each ending now: a short one
# sees a failure that has just begun, undiluted; a longer one sees a slow failure with enough evidence.
WINDOWS = tuple(timedelta(seconds=s) for s in (5, 10, 15, 20, 30, 45, 60))
# A window fails clearly when so many errors would happen less than once in 1/ALPHA windows at the limit (an
# exact binomial tail: a normal approximation is far too kind to 3 errors in 6 requests). A drain judges each
# rollout every 5 s, several overlapping windows at a time; at 1e-4 none of the timing model's 300 healthy
# canaries (errors up to 2 %, limit 5 %) is rolled back with F = 0.1 or F = 1 (1e-3 rolled back 1 % with
# F = 1, a Wilson bound at z = 2.5 1 % with F = 0.1).
ALPHA = 1e-4
# The service's sampled non-5xx, at the high end of their Poisson interval (z), bound its requests.
TRAFFIC_Z = 2.0
KEEP = timedelta(minutes=5)  # counts older than this are forgotten (the longest window is 60 s)
REMEMBER_IDS = 200_000  # insertIds kept for de-duplication (~20 MB at most)


class BadEntry(ValueError):
    """A message that is not a Cloud Run request log entry pitstop can count: the reason says what is wrong."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request as its log entry tells it."""

    insert_id: str
    at: datetime
    project: str
    location: str
    service: str
    revision: str
    status: int
    latency_ms: float | None


def parse_entry(entry: Any) -> Request:
    """A LogEntry as a sink exports it (Cloud Logging's JSON); BadEntry says why it cannot be counted."""
    if not isinstance(entry, dict):
        raise BadEntry(f"expected a LogEntry object, got {type(entry).__name__}")
    log_name = entry.get("logName")
    if not isinstance(log_name, str) or not log_name.endswith("/logs/" + LOG_NAME):
        raise BadEntry(f"logName {str(log_name)[:200]!r} is not a Cloud Run request log")
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("type") != "cloud_run_revision":
        raise BadEntry("resource.type is not cloud_run_revision")
    labels = resource.get("labels")
    if not isinstance(labels, dict):
        raise BadEntry("resource.labels is missing")
    names = {}
    for key in ("project_id", "location", "service_name", "revision_name"):
        value = labels.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            raise BadEntry(f"resource.labels.{key} is missing or not a name")
        names[key] = value
    insert_id = entry.get("insertId")
    if not isinstance(insert_id, str) or not 0 < len(insert_id) <= 256:
        raise BadEntry("insertId is missing")
    http = entry.get("httpRequest")
    status = http.get("status") if isinstance(http, dict) else None
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise BadEntry(f"httpRequest.status {str(status)[:20]!r} is not an HTTP status")
    return Request(insert_id=insert_id, at=_timestamp(entry.get("timestamp")), project=names["project_id"],
                   location=names["location"], service=names["service_name"], revision=names["revision_name"],
                   status=status, latency_ms=_latency_ms(http.get("latency")))


def _timestamp(text: Any) -> datetime:
    if not isinstance(text, str):
        raise BadEntry("timestamp is missing")
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadEntry(f"timestamp {text[:40]!r} is not RFC 3339") from None
    if at.tzinfo is None:
        raise BadEntry(f"timestamp {text[:40]!r} has no time zone")
    return at


def _latency_ms(text: Any) -> float | None:
    """A Duration as JSON writes it ("0.012345s"); absent on requests that never reached the app."""
    if text is None:
        return None
    if not isinstance(text, str) or not text.endswith("s"):
        raise BadEntry(f"httpRequest.latency {str(text)[:40]!r} is not a duration like '0.012s'")
    try:
        seconds = float(text[:-1])
    except ValueError:
        raise BadEntry(f"httpRequest.latency {text[:40]!r} is not a duration like '0.012s'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise BadEntry(f"httpRequest.latency {text[:40]!r} is not a duration like '0.012s'")
    return seconds * 1000


def exported(insert_id: str, status: int, fraction: float) -> bool:
    """What the sink's filter lets through: every 5xx, and a share `fraction` of the rest, chosen by insertId
    (deterministic, like Cloud Logging's `sample(insertId, F)`; the local router applies this)."""
    if status >= 500:
        return True
    h = int.from_bytes(hashlib.sha256(insert_id.encode()).digest()[:8], "big") / 2 ** 64
    return h < fraction


@dataclass(frozen=True)
class Count:
    errors: int  # 5xx: all exported
    ok_seen: int  # non-5xx that the sample kept

    def requests(self, fraction: float) -> int:
        """Estimated requests: the errors, and the non-5xx seen scaled up by the sample's fraction."""
        return self.errors + round(self.ok_seen / fraction)


class Tally:
    """Per-revision counts by second, from the entries a drain instance has pulled; kept in memory."""

    def __init__(self, keep: timedelta = KEEP, remember: int = REMEMBER_IDS) -> None:
        self.keep, self.remember = keep, remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        # (project, location, service, revision) -> epoch second -> [errors, non-5xx seen]
        self._counts: dict[tuple[str, str, str, str], dict[int, list[int]]] = {}

    def add(self, request: Request) -> bool:
        """Count one request; False for an insertId already counted."""
        if request.insert_id in self._seen:
            return False
        self._seen[request.insert_id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        key = (request.project, request.location, request.service, request.revision)
        second = self._counts.setdefault(key, {}).setdefault(math.floor(request.at.timestamp()), [0, 0])
        second[0 if request.status >= 500 else 1] += 1
        return True

    def count(self, project: str, location: str, service: str, revision: str | None, start: datetime,
              end: datetime) -> Count:
        """Requests with start <= second < end, of one revision (None: of all the service's)."""
        lo, hi = math.floor(start.timestamp()), math.floor(end.timestamp())
        errors = ok = 0
        for key, seconds in self._counts.items():
            if key[:3] != (project, location, service) or revision not in (None, key[3]):
                continue
            for second, (e, o) in seconds.items():
                if lo <= second < hi:
                    errors, ok = errors + e, ok + o
        return Count(errors, ok)

    def services(self) -> set[tuple[str, str, str]]:
        """(project, location, service) of what is counted."""
        return {key[:3] for key in self._counts}

    def forget(self, now: datetime) -> None:
        """Drop counts older than `keep` (a drain's memory stays bounded)."""
        oldest = math.floor((now - self.keep).timestamp())
        for key in list(self._counts):
            seconds = self._counts[key]
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]
            if not seconds:
                del self._counts[key]


def clearly_failing(count: Count, fraction: float, limit: float, alpha: float | None = None) -> bool:
    """The error rate is over `limit` beyond the noise of the counts.

    Conditioned on the entries seen, each one is an error with probability q = p / (p + F (1 - p)) for a
    true error rate p, so the errors among the entries seen are binomial in q: the rate is clearly over
    the limit when that many errors are less likely than `alpha` at the limit's q."""
    q_limit = limit / (limit + fraction * (1 - limit))
    return _tail(count.errors, count.errors + count.ok_seen, q_limit) < (alpha or ALPHA)


def clearly_failing_by_share(errors: int, service: Count, share: float, fraction: float, limit: float,
                             alpha: float | None = None) -> bool:
    """The canary's errors are clearly too many for the requests its share of the service's traffic brings.

    A canary at 5 % has few entries of its own; the service's requests are estimated from twenty times more.
    With the service's sampled non-5xx at the high end of their interval, the canary has at most N requests
    (`share` of them); the rate is clearly over the limit when that many errors in N are less likely than
    `alpha` at the limit."""
    ok_high = service.ok_seen + TRAFFIC_Z * math.sqrt(service.ok_seen) + TRAFFIC_Z ** 2
    most = math.ceil(share * (service.errors + ok_high / fraction))
    return _tail(errors, max(most, errors), limit) < (alpha or ALPHA)


def _tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p); 1 at or below the mean, where no window is clearly failing."""
    if k <= n * p or p >= 1:
        return 1.0
    from scipy.special import bdtrc  # late, as in core/stats.py: the drain and the bench pay for scipy, not imports

    return float(bdtrc(k - 1, n, p))  # bdtrc(k - 1, ...) sums the terms k..n


# (revision, start, end) -> what was seen of it; revision None: of every revision of the service
Counts = Callable[[str | None, datetime, datetime], Count]


def served_share(r: Rollout) -> float | None:
    """The new revision's share of the service's traffic as Cloud Run serves it (None while a change is in flight,
    and at 0 or 100 %, where the service's traffic says nothing about the canary's)."""
    if not r.applied or not r.observed:
        return None
    share = sum(t.percent for t in r.observed if t.revision == r.revision) / 100
    return share if 0 < share < 1 else None


def failing_sample(r: Rollout, counts: Counts, fraction: float, now: datetime) -> HealthSample | None:
    """The first window (shortest first) in which the rollout's new revision clearly fails, as a sample to
    publish; None when none does (a pass is never claimed from logs). `counts` reads the rollout's service."""
    if r.state not in WATCHED:
        return None
    share, limit = served_share(r), r.health.max_error_rate
    for length in WINDOWS:
        # Not cut at the step's start: that is when pitstop learnt the split was real, often well after users
        # met it, and an error rate is one whatever the step. (A window reaching back into a smaller step, or
        # before the canary served, only makes the share's estimate of its requests larger: conservative.)
        start = now - length
        new = counts(r.revision, start, now)
        if not new.errors:
            continue
        estimate = new.requests(fraction)
        if not clearly_failing(new, fraction, limit):
            service = counts(None, start, now) if share else None
            if service is None or not clearly_failing_by_share(new.errors, service, share, fraction, limit):
                continue
            estimate = max(new.errors, round(share * service.requests(fraction)))
        stable = counts(r.stable_revision, start, now) if r.stable_revision else Count(0, 0)
        baseline = None
        if stable.errors + stable.ok_seen and r.stable_revision != r.revision:
            baseline = Baseline(revision=r.stable_revision, request_count=stable.requests(fraction),
                                error_count=stable.errors)
        sample = HealthSample(
            service=r.service, region=r.region, revision=r.revision, rollout_id=r.id, window_start=start,
            window_end=now, request_count=estimate, error_count=new.errors, source=SOURCE,
            stable=baseline)
        if judge(sample, r.health, sample.stable).outcome == "fail":
            return sample
    return None


def entry_json(request: Request) -> dict[str, Any]:
    """A request as Cloud Logging writes its request log entry (the fields pitstop reads, and the usual ones)."""
    at = request.at.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    http: dict[str, Any] = {"requestMethod": "GET", "status": request.status}
    if request.latency_ms is not None:
        http["latency"] = f"{request.latency_ms / 1000:.6f}s"
    return {
        "insertId": request.insert_id,
        "httpRequest": http,
        "resource": {"type": "cloud_run_revision", "labels": {
            "project_id": request.project, "location": request.location, "service_name": request.service,
            "revision_name": request.revision, "configuration_name": request.service}},
        "timestamp": at, "receiveTimestamp": at,
        "severity": "ERROR" if request.status >= 500 else "INFO",
        "logName": f"projects/{request.project}/logs/{LOG_NAME}",
    }

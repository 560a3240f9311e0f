"""DORA metrics as people see them: the report's JSON (API, dashboard, `pitstop metrics --json`) and its table.

The JSON, as `dora_report` returns it (and `GET /api/v1/metrics/dora`):

    {"now": ISO time, "hotfix_days": 7, "lead_time_from": "build created", "truncated": false,
     "bands": {metric: [[band, bound], ...]}, "definitions": {what: sentence},
     "services": [{"service": "web", "environment": "production",
                   "windows": {"7d" | "30d" | "90d": {
                       "days": 7, "start": ISO, "end": ISO,
                       "deployment_frequency": {"value": per day, "unit": "per day", "per_week", "band", "samples"},
                       "lead_time": {"value": p50 s, "unit": "seconds", "p50", "p90", "from", "band", "samples"},
                       "change_failure_rate": {"value": 0..1, "unit": "ratio", "failed", "rolled_back", "hotfixed",
                                               "reverted", "band", "samples" (attempted changes)},
                       "time_to_restore": {"value": p50 s, "unit": "seconds", "p50", "band", "samples"}}}}]}

A value is null and its band "n/a" when there is nothing to measure. core/dora.py says exactly what counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pitstop.core import dora

# Rollouts are read from this long before the longest window: one that started earlier may end inside it.
MARGIN_DAYS = 2
BAND_STYLE = {"elite": "bold green", "high": "green", "medium": "yellow", "low": "red", "n/a": "dim"}
METRICS = (("deployment_frequency", "deployment frequency"), ("lead_time", "lead time (p50 / p90)"),
           ("change_failure_rate", "change failure rate"), ("time_to_restore", "time to restore (p50)"))


def dora_report(store: Any, service: str | None = None, environment: str | None = None,
                now: datetime | None = None, hotfix_days: int = dora.HOTFIX_DAYS) -> dict[str, Any]:
    """The four keys per service and environment over 7, 30 and 90 days ending `now`, as JSON-ready data."""
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(days=max(dora.WINDOWS) + MARGIN_DAYS)
    rollouts, releases, truncated = store.history_since(since, service)
    changes, reverts = dora.history(rollouts, releases)
    if environment:
        changes = [c for c in changes if c.environment == environment]
        reverts = [r for r in reverts if r.environment == environment]
    return dora.report(changes, reverts, now, hotfix_days, truncated=truncated).to_json()


# ---------------------------------------------------------------- the CLI's table

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def figure(name: str, metric: dict[str, Any]) -> str:
    """One metric in words: its value and the samples it rests on."""
    if name == "deployment_frequency":
        if metric["value"] is None:
            return "no changes"
        return f"{metric['value']:.2f}/day ({metric['per_week']:.1f}/week; {metric['samples']} succeeded)"
    if name == "lead_time":
        if metric["value"] is None:
            return "no data"
        return f"{duration(metric['p50'])} / {duration(metric['p90'])} ({metric['samples']} changes)"
    if name == "change_failure_rate":
        if metric["value"] is None:
            return "no changes"
        return f"{metric['value'] * 100:.1f}% ({metric['failed']} of {metric['samples']})"
    return f"{duration(metric['value'])} ({metric['samples']} restored)" if metric["value"] is not None else "no failures"

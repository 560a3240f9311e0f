"""DORA metrics from pitstop's own history (the four keys, per service and environment). Pure.

What counts, exactly:

- A **change** is one version reaching one environment of a service: a release's stage (its regions count
  once), or the rollouts of a version outside releases (one per region, counted once). It is **attempted**
  once it deployed something and ended: succeeded, rolled back, or failed. Changes still in flight, changes a
  newer build superseded or a person cancelled, and stages a check stopped before they deployed anything are
  no attempts (no traffic moved). `rollback --to` rollouts are remedies, not changes.
- **Deployment frequency**: changes that succeeded in the window, per day (and per week).
- **Lead time for changes**: from the build's creation (Cloud Build's `createTime`, the first moment pitstop
  knows the commit; Cloud Build does not report the commit's own time) to the change succeeding in that
  environment. p50 (the band's measure, as DORA uses the median) and p90.
- **Change failure rate**: failed changes / attempted changes. A change failed when it was rolled back or
  failed (any region, or its stage), or when, after it succeeded, the environment got a hotfix release or
  a `rollback --to` within `hotfix_days` (the latest change that succeeded before it is the one it fixed).
- **Time to restore**: for a rolled-back change, from the rollback decision (the earliest region's decision
  or the release's) to every region serving the stable revision again (their rollouts finished); for a
  hotfixed change, from its success to the hotfix's success; for a `rollback --to`, from that command to its
  rollouts finishing. p50. A change whose rollback itself failed has no restore time yet.

Every change falls in a window by when it ended (succeeded, or its failure was decided): now - days < t <= now.
No data gives a null value and the band "n/a", never a flattering one; each metric says on how many samples
it rests.

Bands: the 2023 Accelerate State of DevOps report's clusters with the gaps between them closed (`BANDS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pitstop.core.models import Rollout
    from pitstop.core.release import Release

WINDOWS = (7, 30, 90)
WEEKS = 13  # the weekly series the dashboard charts: about the 90-day window
HOTFIX_DAYS = 7
LEAD_TIME_FROM = "build created"
DAY, WEEK, MONTH, HOUR = 86400.0, 7 * 86400.0, 30 * 86400.0, 3600.0

Band = Literal["elite", "high", "medium", "low", "n/a"]

# The band's threshold for each metric, best first: (band, bound). Frequency: at least `bound` per day; lead time
# and restore: under `bound` seconds; failure rate: at most `bound`. Anything else is "low".
BANDS: dict[str, tuple[tuple[str, float], ...]] = {
    "deployment_frequency": (("elite", 1.0), ("high", 1 / 7), ("medium", 1 / 30)),
    "lead_time": (("elite", DAY), ("high", WEEK), ("medium", MONTH)),
    "change_failure_rate": (("elite", 0.05), ("high", 0.10), ("medium", 0.15)),
    "time_to_restore": (("elite", HOUR), ("high", DAY), ("medium", WEEK)),
}

DEFINITIONS = {
    "change": "one version reaching one environment (a release's stage, or a version's rollouts outside "
              "releases; regions count once), attempted once it deployed something and ended: succeeded, rolled "
              "back or failed (in flight, superseded, cancelled, or stopped by a check before deploying: not "
              "counted)",
    "deployment_frequency": "changes that succeeded in the window, per day",
    "lead_time": "from the build's creation (Cloud Build createTime; Cloud Build does not report the commit's "
                 "time) to succeeding in the environment; p50 decides the band",
    "change_failure_rate": "failed changes / attempted changes; failed: rolled back or failed, or followed by "
                           "a hotfix release or a `rollback --to` in the environment within hotfix_days",
    "time_to_restore": "rollback decided -> every region back on the stable revision; hotfixed: its success -> "
                       "the hotfix's success; `rollback --to`: the command -> its rollouts done; p50",
    "window": "a change counts in a window by when it ended: now - days < ended <= now",
}


# ---------------------------------------------------------------- the history, as plain records

@dataclass(frozen=True)
class Change:
    """One version in one environment (see the module's definition)."""

    service: str
    environment: str
    version: str
    source: str  # the release and environment, or the rollout ids: where a person looks it up
    started_at: datetime  # when it entered the environment
    ended_at: datetime  # succeeded, or its failure decided
    succeeded: bool
    built_at: datetime | None = None  # the build's createTime
    detected_at: datetime | None = None  # failed: when the rollback was decided
    restored_at: datetime | None = None  # failed: when every region served the stable revision again
    hotfix: bool = False


@dataclass(frozen=True)
class Revert:
    """A person's `rollback --to` in one environment: it fixes the change before it."""

    service: str
    environment: str
    at: datetime
    restored_at: datetime | None


@dataclass
class Judged:
    change: Change
    failed_by: str | None = None  # "rolled back", "hotfix", "rollback --to"
    restore_s: float | None = None
    _marks: list[tuple[datetime, datetime | None]] = field(default_factory=list)  # (detected, restored)


# ---------------------------------------------------------------- the report

class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class Metric(_Out):
    value: float | None
    unit: str
    band: Band
    samples: int


class Frequency(Metric):
    unit: str = "per day"
    per_week: float | None


class LeadTime(Metric):
    unit: str = "seconds"
    p50: float | None
    p90: float | None
    from_: str = Field(LEAD_TIME_FROM, alias="from")


class FailureRate(Metric):
    unit: str = "ratio"
    failed: int
    rolled_back: int
    hotfixed: int
    reverted: int


class Restore(Metric):
    unit: str = "seconds"
    p50: float | None


class Window(_Out):
    days: int
    start: datetime
    end: datetime
    deployment_frequency: Frequency
    lead_time: LeadTime
    change_failure_rate: FailureRate
    time_to_restore: Restore


class Week(_Out):
    """One week of a group's changes, for the dashboard's chart: how many went out, how many of them failed."""

    start: datetime
    end: datetime
    succeeded: int  # changes that succeeded in the week (deployment frequency's count)
    failed: int  # changes that ended in the week and failed (rolled back, hotfixed or reverted later)


class Group(_Out):
    service: str
    environment: str
    windows: dict[str, Window]  # "7d", "30d", "90d"
    weeks: list[Week] = Field(default_factory=list)  # the last WEEKS weeks, oldest first


class Report(_Out):
    now: datetime
    hotfix_days: int
    lead_time_from: str = LEAD_TIME_FROM
    bands: dict[str, list[tuple[str, float]]] = Field(default_factory=lambda: {k: list(v) for k, v in BANDS.items()})
    definitions: dict[str, str] = Field(default_factory=lambda: dict(DEFINITIONS))
    truncated: bool = False  # the history read was capped: the oldest part of the 90 days is missing
    services: list[Group]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------- computing

def band(metric: str, value: float | None) -> Band:
    if value is None:
        return "n/a"
    for name, bound in BANDS[metric]:
        if (value >= bound if metric == "deployment_frequency" else
                value <= bound if metric == "change_failure_rate" else value < bound):
            return name  # type: ignore[return-value]
    return "low"


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def judge(changes: list[Change], reverts: list[Revert], hotfix_days: int = HOTFIX_DAYS) -> list[Judged]:
    """Each change with whether it failed (and how) and its restore time."""
    judged = [Judged(c) for c in sorted(changes, key=lambda c: (c.ended_at, c.source))]
    for j in judged:
        c = j.change
        if not c.succeeded:
            j.failed_by = "rolled back"
            if c.detected_at and c.restored_at:
                j.restore_s = (c.restored_at - c.detected_at).total_seconds()
    limit = timedelta(days=hotfix_days)

    def fixed(service: str, environment: str, at: datetime, but: Change | None = None) -> Judged | None:
        """The latest change that succeeded here before `at`, if within the limit."""
        before = [j for j in judged if j.change is not but and j.change.succeeded and j.change.service == service
                  and j.change.environment == environment and j.change.ended_at <= at]
        last = before[-1] if before else None
        return last if last and at - last.change.ended_at <= limit else None

    for j in [j for j in judged if j.change.hotfix]:
        bad = fixed(j.change.service, j.change.environment, j.change.started_at, but=j.change)
        if bad is not None:
            bad.failed_by = bad.failed_by or "hotfix"
            bad._marks.append((bad.change.ended_at, j.change.ended_at if j.change.succeeded else None))
    for r in reverts:
        bad = fixed(r.service, r.environment, r.at)
        if bad is not None:
            bad.failed_by = bad.failed_by or "rollback --to"
            bad._marks.append((r.at, r.restored_at))
    for j in judged:
        if j.failed_by in ("hotfix", "rollback --to") and j._marks:
            first = min(j._marks, key=lambda m: m[0])  # the first remedy restored it
            j.restore_s = (first[1] - first[0]).total_seconds() if first[1] else None
    return judged


def window(judged: list[Judged], days: int, now: datetime) -> Window:
    start = now - timedelta(days=days)
    inside = [j for j in judged if start < j.change.ended_at <= now]
    good = [j.change for j in inside if j.change.succeeded]
    per_day = len(good) / days if inside else None
    leads = [(c.ended_at - c.built_at).total_seconds() for c in good if c.built_at and c.built_at <= c.ended_at]
    failed = [j for j in inside if j.failed_by]
    rate = len(failed) / len(inside) if inside else None
    restores = [j.restore_s for j in failed if j.restore_s is not None]
    lead50, restore50 = _round(percentile(leads, 0.5)), _round(percentile(restores, 0.5))
    return Window(
        days=days, start=start, end=now,
        deployment_frequency=Frequency(value=_round(per_day), per_week=_round(per_day * 7 if per_day is not None
                                                                              else None),
                                       band=band("deployment_frequency", per_day), samples=len(good)),
        lead_time=LeadTime(value=lead50, p50=lead50, p90=_round(percentile(leads, 0.9)),
                           band=band("lead_time", lead50), samples=len(leads)),
        change_failure_rate=FailureRate(
            value=_round(rate), band=band("change_failure_rate", rate), samples=len(inside), failed=len(failed),
            rolled_back=sum(j.failed_by == "rolled back" for j in failed),
            hotfixed=sum(j.failed_by == "hotfix" for j in failed),
            reverted=sum(j.failed_by == "rollback --to" for j in failed)),
        time_to_restore=Restore(value=restore50, p50=restore50, band=band("time_to_restore", restore50),
                                samples=len(restores)),
    )


def weekly(judged: list[Judged], now: datetime, weeks: int = WEEKS) -> list[Week]:
    """Changes per week over the last `weeks` weeks ending `now`, by when they ended (as the windows count)."""
    out = []
    for n in range(weeks, 0, -1):
        end = now - timedelta(weeks=n - 1)
        inside = [j for j in judged if end - timedelta(weeks=1) < j.change.ended_at <= end]
        out.append(Week(start=end - timedelta(weeks=1), end=end, succeeded=sum(j.change.succeeded for j in inside),
                        failed=sum(bool(j.failed_by) for j in inside)))
    return out


def report(changes: list[Change], reverts: list[Revert], now: datetime, hotfix_days: int = HOTFIX_DAYS,
           windows: tuple[int, ...] = WINDOWS, truncated: bool = False) -> Report:
    """The four keys per service and environment (sorted), per window ending `now`."""
    judged = judge(changes, reverts, hotfix_days)
    keys = sorted({(c.service, c.environment) for c in changes})
    groups = []
    for service, environment in keys:
        mine = [j for j in judged if (j.change.service, j.change.environment) == (service, environment)]
        groups.append(Group(service=service, environment=environment,
                            windows={f"{days}d": window(mine, days, now) for days in windows},
                            weeks=weekly(mine, now)))
    return Report(now=now, hotfix_days=hotfix_days, truncated=truncated, services=groups)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ---------------------------------------------------------------- from the stored rollouts and releases

FAILING = ("rolling_back", "rolled_back", "failed")
ENDED_STAGE = ("succeeded", "rolled_back", "failed")


def history(rollouts: list[Rollout], releases: list[Release]) -> tuple[list[Change], list[Revert]]:
    """The changes and reverts the stored rollouts and releases record (the one adapter from the models)."""
    of_release: dict[tuple[str, str], list[Rollout]] = {}
    alone: dict[tuple[str, str, str], list[Rollout]] = {}
    reverts = []
    for r in rollouts:
        if r.release_id:
            of_release.setdefault((r.release_id, r.environment), []).append(r)
        elif r.kind == "direct":
            done = r.finished_at if r.state == "succeeded" else None
            reverts.append(Revert(r.service, r.environment, r.created_at, done))
        else:
            alone.setdefault((r.service, r.environment, r.version), []).append(r)
    changes = [c for rel in releases for env, stage in rel.stages.items()
               if (c := _stage_change(rel, env, stage, of_release.get((rel.id, env), [])))]
    changes += [c for group in alone.values() if (c := _rollouts_change(group))]
    return changes, reverts


def _stage_change(rel: Release, env: str, stage, regions: list[Rollout]) -> Change | None:
    deployed = any(g.rollout_id for g in stage.regions.values()) or regions
    if stage.state not in ENDED_STAGE or not deployed or stage.finished_at is None:
        return None
    built = [r.artifact.created_at for r in regions if r.artifact and r.artifact.created_at]
    common = dict(service=rel.service, environment=env, version=rel.version, source=f"{rel.id}/{env}",
                  started_at=stage.entered_at or rel.created_at, built_at=min(built) if built else None,
                  hotfix=rel.hotfix)
    if stage.state == "succeeded":
        return Change(**common, ended_at=stage.finished_at, succeeded=True)
    # Rolled back: the regions' own rollbacks and the release's reverts (direct rollouts) bring them back.
    decided = [r.desired_at for r in regions if r.kind != "direct" and r.state in FAILING] + [stage.finished_at]
    restoring = [r for r in regions if r.kind == "direct" or r.state in FAILING]
    return Change(**common, ended_at=stage.finished_at, succeeded=False, detected_at=min(decided),
                  restored_at=_all_back(restoring))


def _rollouts_change(group: list[Rollout]) -> Change | None:
    """A version's rollouts outside releases (one per region): one change once every region ended."""
    regions = [r for r in group if r.state != "superseded"]
    failing = [r for r in regions if r.state in FAILING]
    if not regions or not failing and any(r.state != "succeeded" for r in regions):
        return None  # superseded, or still in flight
    first = min(regions, key=lambda r: r.created_at)
    built = [r.artifact.created_at for r in regions if r.artifact and r.artifact.created_at]
    common = dict(service=first.service, environment=first.environment, version=first.version,
                  source=", ".join(sorted(r.id for r in regions)), started_at=first.created_at,
                  built_at=min(built) if built else None)
    if not failing:
        return Change(**common, ended_at=max(r.finished_at for r in regions), succeeded=True)
    detected = min(r.desired_at for r in failing)
    return Change(**common, ended_at=detected, succeeded=False, detected_at=detected,
                  restored_at=_all_back(failing))


def _all_back(rollouts: list[Rollout]) -> datetime | None:
    """When the last of these finished on the stable revision; None while one is still on its way or failed."""
    if not rollouts or any(r.state not in ("rolled_back", "succeeded") or r.finished_at is None for r in rollouts):
        return None
    return max(r.finished_at for r in rollouts)

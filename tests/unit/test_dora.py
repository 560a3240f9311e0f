"""DORA metrics on generated histories with known answers (core/dora.py, pure)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from pitstop.core import dora
from pitstop.core.dora import Change, Revert
from pitstop.core.models import Artifact, Health, Rollout, Strategy, Target
from pitstop.core.release import RegionProgress, Release, Stage

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=timezone.utc)
H, MIN = 3600.0, 60.0
ROLLED_BACK = {1: 10 * MIN, 10: 40 * MIN, 20: 90 * MIN}  # days ago -> restore time of that day's early change


def thirty_days() -> list[Change]:
    """web/production, 30 days, two changes a day: the early one (1 h from build to success) and the late one (3 h).
    Three early ones rolled back with known restore times; day 2's late one is a hotfix (of day 2's early one)."""
    changes = []
    for day in range(30):
        for slot, (hours_ago, lead) in enumerate(((8, 1 * H), (2, 3 * H))):
            ended = NOW - timedelta(days=day, hours=hours_ago)
            failed = slot == 0 and day in ROLLED_BACK
            detected = ended
            changes.append(Change(
                service="web", environment="production", version=f"v{day}-{slot}", source=f"r{day}-{slot}",
                started_at=ended - timedelta(minutes=30), ended_at=ended, succeeded=not failed,
                built_at=ended - timedelta(seconds=lead),
                detected_at=detected if failed else None,
                restored_at=detected + timedelta(seconds=ROLLED_BACK[day]) if failed else None,
                hotfix=(day, slot) == (2, 1)))
    return changes


def metrics(report: dora.Report, days: int, service: str = "web", environment: str = "production") -> dora.Window:
    group = next(g for g in report.services if (g.service, g.environment) == (service, environment))
    return group.windows[f"{days}d"]


def test_a_generated_month_gives_the_known_figures_and_bands() -> None:
    report = dora.report(thirty_days(), [], NOW)

    week = metrics(report, 7)  # days 0-6: 14 attempted; day 1's early one rolled back, day 2's early one hotfixed
    assert week.deployment_frequency.samples == 13
    assert week.deployment_frequency.value == round(13 / 7, 4) and week.deployment_frequency.band == "elite"
    assert week.deployment_frequency.per_week == 13.0
    assert week.change_failure_rate.model_dump() == {
        "value": round(2 / 14, 4), "unit": "ratio", "band": "medium", "samples": 14, "failed": 2, "rolled_back": 1,
        "hotfixed": 1, "reverted": 0}
    # 6 leads of 1 h (one early change failed) and 7 of 3 h: the median is the 7th, 3 h
    assert (week.lead_time.samples, week.lead_time.p50, week.lead_time.p90) == (13, 3 * H, 3 * H)
    assert week.lead_time.band == "elite"
    # rolled back: 10 min; hotfixed: from its success to the hotfix's, 6 h later
    assert (week.time_to_restore.samples, week.time_to_restore.p50) == (2, (10 * MIN + 6 * H) / 2)
    assert week.time_to_restore.band == "high"

    month = metrics(report, 30)  # all 60: 3 rolled back + 1 hotfixed
    assert (month.deployment_frequency.samples, month.deployment_frequency.value) == (57, 1.9)
    assert (month.change_failure_rate.failed, month.change_failure_rate.samples) == (4, 60)
    assert month.change_failure_rate.value == round(4 / 60, 4) and month.change_failure_rate.band == "high"
    assert month.lead_time.p50 == 3 * H  # 27 of 1 h, 30 of 3 h
    # 10 min, 40 min, 90 min rolled back; 6 h hotfixed
    assert month.time_to_restore.p50 == (40 * MIN + 90 * MIN) / 2 and month.time_to_restore.band == "high"

    quarter = metrics(report, 90)  # the same changes spread over 90 days: fewer per day
    assert quarter.deployment_frequency.value == round(57 / 90, 4) and quarter.deployment_frequency.band == "high"
    assert quarter.change_failure_rate.value == month.change_failure_rate.value

    body = report.to_json()
    json.dumps(body)  # plain JSON all the way down
    assert body["lead_time_from"] == "build created" and body["hotfix_days"] == 7
    assert body["services"][0]["windows"]["7d"]["lead_time"]["from"] == "build created"
    assert list(body["services"][0]["windows"]) == ["7d", "30d", "90d"]


def test_window_edges_are_open_at_the_start_and_closed_at_now() -> None:
    def at(when: datetime, version: str) -> Change:
        return Change("web", "production", version, version, when, when, True, built_at=when - timedelta(hours=1))

    report = dora.report([at(NOW - timedelta(days=7), "edge"), at(NOW, "now"), at(NOW + timedelta(seconds=1), "later"),
                          at(NOW - timedelta(days=7) + timedelta(seconds=1), "inside")], [], NOW)
    assert metrics(report, 7).deployment_frequency.samples == 2  # "inside" and "now"
    assert metrics(report, 30).deployment_frequency.samples == 3  # the edge too; never the future one


def test_no_data_is_null_and_na_never_a_band() -> None:
    old = NOW - timedelta(days=40)
    report = dora.report([Change("api", "staging", "v1", "x", old, old, True)], [], NOW)
    week = metrics(report, 7, "api", "staging")
    for metric in (week.deployment_frequency, week.lead_time, week.change_failure_rate, week.time_to_restore):
        assert (metric.value, metric.band, metric.samples) == (None, "n/a", 0)
    quarter = metrics(report, 90, "api", "staging")
    assert quarter.deployment_frequency.samples == 1 and quarter.deployment_frequency.band == "low"  # 1 in 90 days
    assert quarter.change_failure_rate.value == 0.0 and quarter.change_failure_rate.band == "elite"
    # no build time known, nothing failed: still no figure
    assert (quarter.lead_time.band, quarter.time_to_restore.band) == ("n/a", "n/a")
    assert dora.report([], [], NOW).services == []


def test_a_hotfix_marks_the_change_before_it_only_within_the_limit() -> None:
    def change(days_ago: float, version: str, hotfix: bool = False) -> Change:
        t = NOW - timedelta(days=days_ago)
        return Change("web", "production", version, version, t - timedelta(minutes=5), t, True, hotfix=hotfix)

    history = [change(20, "v1"), change(12, "v2"), change(4, "v2.1", hotfix=True),  # 8 days after v2
               change(3, "v3"), change(1, "v3.1", hotfix=True)]  # 2 days after v3
    seven = dora.report(history, [], NOW)
    assert metrics(seven, 30).change_failure_rate.hotfixed == 1
    assert metrics(seven, 30).time_to_restore.p50 == 2 * 86400
    ten = dora.report(history, [], NOW, hotfix_days=10)
    assert metrics(ten, 30).change_failure_rate.hotfixed == 2
    # another environment's hotfix fixes nothing here
    other = dora.report([change(3, "v3"), Change("web", "staging", "v3.1", "s", NOW, NOW, True, hotfix=True)], [], NOW)
    assert metrics(other, 7).change_failure_rate.failed == 0


def test_a_rollback_to_marks_the_latest_success_and_times_the_restore() -> None:
    t = NOW - timedelta(days=1)
    history = [Change("web", "production", "v2", "a", t - timedelta(hours=1), t, True)]
    revert = Revert("web", "production", t + timedelta(hours=2), t + timedelta(hours=2, minutes=3))
    window = metrics(dora.report(history, [revert], NOW), 7)
    assert (window.change_failure_rate.reverted, window.change_failure_rate.value) == (1, 1.0)
    assert window.time_to_restore.p50 == 180 and window.time_to_restore.band == "elite"


@pytest.mark.parametrize("metric, value, expected", [
    ("deployment_frequency", 1.0, "elite"), ("deployment_frequency", 0.99, "high"),
    ("deployment_frequency", 1 / 7, "high"), ("deployment_frequency", 1 / 30, "medium"),
    ("deployment_frequency", 0.03, "low"), ("deployment_frequency", 0.0, "low"),
    ("lead_time", 86399, "elite"), ("lead_time", 86400, "high"), ("lead_time", 30 * 86400, "low"),
    ("change_failure_rate", 0.05, "elite"), ("change_failure_rate", 0.1, "high"),
    ("change_failure_rate", 0.15, "medium"), ("change_failure_rate", 0.151, "low"),
    ("time_to_restore", 3599, "elite"), ("time_to_restore", 3600, "high"), ("time_to_restore", 7 * 86400, "low"),
    ("time_to_restore", None, "n/a"),
])
def test_bands_follow_the_2023_report_with_the_gaps_closed(metric: str, value: float, expected: str) -> None:
    assert dora.band(metric, value) == expected


def test_percentiles_interpolate_between_ranks() -> None:
    assert dora.percentile([4, 1, 3, 2], 0.5) == 2.5
    assert dora.percentile([5], 0.9) == 5
    assert dora.percentile(range(1, 11), 0.9) == pytest.approx(9.1)
    assert dora.percentile([], 0.5) is None


# ---------------------------------------------------------------- from stored rollouts and releases

T0 = NOW - timedelta(days=2)


def rollout(rid: str, state: str, region: str = "us-central1", environment: str = "production",
            version: str = "v2", kind: str = "canary", release_id: str | None = None, created: float = 0,
            decided: float = 10, finished: float | None = 20, built: float = -30) -> Rollout:
    """A stored rollout; times in minutes after T0."""
    m = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    artifact = Artifact(image="us-docker.pkg.dev/p/r/web:" + version, digest="sha256:" + "a" * 64,
                        build_id="b-" + version, version=version, created_at=m(built))
    return Rollout(id=rid, service="web", environment=environment, region=region, project="p", kind=kind,
                   version=version, revision="web-" + version, image="img", artifact=artifact,
                   strategy=Strategy.model_validate({"canary": {}}), health=Health(), max_hold=3600, state=state,
                   desired=[Target(revision="web-" + version, percent=100)], desired_at=m(decided),
                   created_at=m(created), updated_at=m(finished or decided), release_id=release_id,
                   finished_at=m(finished) if finished is not None else None)


def stage(env: str, state: str, regions: dict[str, str], finished: float | None) -> Stage:
    return Stage(environment=env, state=state, waves=[list(regions) or ["us-central1"]],
                 strategy=Strategy.model_validate({"canary": {}}), health=Health(),
                 regions={x: RegionProgress(rollout_id=rid) for x, rid in regions.items()},
                 entered_at=T0, finished_at=T0 + timedelta(minutes=finished) if finished is not None else None)


def test_history_counts_a_stage_once_and_times_its_rollback_from_its_rollouts() -> None:
    rel = Release(id="web-rel", service="web", digest="sha256:" + "a" * 64, image="img", version="v2",
                  build_id="b-v2", route=["staging", "production"], created_at=T0, updated_at=T0, hotfix=False,
                  stages={"staging": stage("staging", "succeeded", {"eu": "s1", "us": "s2"}, 15),
                          "production": stage("production", "rolled_back", {"eu": "p1", "us": "p2"}, 40)})
    rollouts = [
        rollout("s1", "succeeded", "eu", "staging", release_id="web-rel", finished=12),
        rollout("s2", "succeeded", "us", "staging", release_id="web-rel", finished=14, built=-50),
        rollout("p1", "rolled_back", "eu", release_id="web-rel", decided=35, finished=38),  # failed first
        rollout("p2", "succeeded", "us", release_id="web-rel", finished=30),
        rollout("p2-revert", "succeeded", "us", kind="direct", release_id="web-rel", created=40, decided=40,
                finished=44),
    ]
    changes, reverts = dora.history(rollouts, [rel])
    assert reverts == []
    by_env = {c.environment: c for c in changes}
    assert set(by_env) == {"staging", "production"}
    staging, production = by_env["staging"], by_env["production"]
    assert staging.succeeded and staging.ended_at == T0 + timedelta(minutes=15)  # the stage's end, regions once
    assert staging.built_at == T0 - timedelta(minutes=50)
    assert not production.succeeded and production.detected_at == T0 + timedelta(minutes=35)
    assert production.restored_at == T0 + timedelta(minutes=44)  # the revert of the region that had succeeded


def test_history_of_rollouts_outside_releases() -> None:
    rollouts = [
        rollout("a1", "succeeded", "eu", version="v1", finished=20), rollout("a2", "succeeded", "us", version="v1",
                                                                             finished=25),
        rollout("b1", "rolled_back", version="v2", decided=60, finished=61),
        rollout("c1", "superseded", version="v3"),  # replaced by v4: no attempt
        rollout("d1", "progressing", version="v4", finished=None),  # in flight
        rollout("e1", "rolling_back", version="v5", decided=90, finished=None),  # failed, not restored yet
        rollout("f1", "succeeded", version="v1", kind="direct", created=100, decided=100, finished=102),
    ]
    changes, reverts = dora.history(rollouts, [])
    by_version = {c.version: c for c in changes}
    assert set(by_version) == {"v1", "v2", "v5"}
    assert by_version["v1"].succeeded and by_version["v1"].ended_at == T0 + timedelta(minutes=25)
    assert by_version["v2"].restored_at - by_version["v2"].detected_at == timedelta(minutes=1)
    assert by_version["v5"].restored_at is None
    assert reverts == [Revert("web", "production", T0 + timedelta(minutes=100), T0 + timedelta(minutes=102))]


def test_a_stage_stopped_before_it_deployed_is_no_attempt() -> None:
    rel = Release(id="web-rel", service="web", digest="sha256:" + "a" * 64, image="img", version="v2",
                  build_id="b-v2", route=["production"], created_at=T0, updated_at=T0,
                  stages={"production": stage("production", "failed", {}, 5)})
    assert dora.history([], [rel]) == ([], [])


def test_the_weekly_series_counts_each_week_of_the_generated_month() -> None:
    group = dora.report(thirty_days(), [], NOW).services[0]
    assert len(group.weeks) == dora.WEEKS and group.weeks[-1].end == NOW
    assert [w.end - w.start for w in group.weeks] == [timedelta(weeks=1)] * dora.WEEKS
    # The latest week is the 7-day window: 13 succeeded, 2 failed (day 1 rolled back, day 2 hotfixed).
    assert (group.weeks[-1].succeeded, group.weeks[-1].failed) == (13, 2)
    # Oldest first: days 21-27 all good; days 14-20 with day 20's rollback; days 7-13 with day 10's.
    assert [(w.succeeded, w.failed) for w in group.weeks[-4:-1]] == [(14, 0), (13, 1), (13, 1)]
    assert sum(w.succeeded for w in group.weeks) == 57 and all(w.succeeded == w.failed == 0 for w in group.weeks[:8])  # days 28-29: 4

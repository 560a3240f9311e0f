"""The pipeline file (issue #9, first part): where a build goes, waves, paths, freeze windows. Pure."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pitstop.core.pipeline import Pipeline, load_pipeline
from pitstop.core.spec import SpecError

SEED = """
service: web
image: us-docker.pkg.dev/acme/apps/web
environments:
  staging:
    project: acme-staging
    regions: [us-central1]
    on: {branch: main}
    strategy: {canary: {steps: [{weight: 50, pause: 2m}]}}
  production:
    project: acme-prod
    regions: [us-central1, europe-west1, asia-northeast1]
    waves: [[us-central1], [europe-west1, asia-northeast1]]
    on: {tag: "v*"}
    promote_from: staging
    approve: true
    strategy: {canary: {steps: [{weight: 5, pause: 5m}, {weight: 25, pause: 5m}]}}
paths:
  hotfix: {on: {branch: "hotfix/*"}, to: production, strategy: {canary: {steps: [{weight: 25, pause: 2m}]}}, approve: true}
freeze: [{cron: "0 16 * * FRI", duration: 64h, tz: Europe/Berlin, except: [hotfix]}]
"""


def pipeline(text: str = SEED) -> Pipeline:
    return load_pipeline(text)


def test_the_seeds_branch_strategy():
    p = pipeline()
    assert p.destinations("main", None) == [("staging", None)]
    assert p.destinations(None, "v1.4.0") == [("production", None)]
    assert p.destinations("hotfix/login", None) == [("production", "hotfix")]
    assert p.destinations("feature/search", None) == []
    assert "branch feature/search of web matches no rule (staging: branch main; production: tag v*; path hotfix " \
           "→ production: branch hotfix/*): built, nothing deployed" == p.why_nothing("feature/search", None)
    assert p.environments["production"].wave_list == [["us-central1"], ["europe-west1", "asia-northeast1"]]
    assert p.environments["staging"].wave_list == [["us-central1"]], "default: one wave"
    assert p.image == ["us-docker.pkg.dev/acme/apps/web"]


def test_a_tag_build_is_never_taken_by_a_branch_rule():
    p = pipeline()
    assert p.destinations("main", "v2.0.0") == [("production", None)], "a tag build carries its branch too"


@pytest.mark.parametrize("change, message", [
    (("waves: [[us-central1], [europe-west1, asia-northeast1]]", "waves: [[us-central1], [europe-west1]]"),
     "waves must list each region exactly once"),
    (("promote_from: staging", "promote_from: qa"), "promote_from names 'qa', which is not an environment"),
    (("to: production", "to: prod"), "paths.hotfix.to names 'prod'"),
    (("except: [hotfix]", "except: [hotfixes]"), "freeze except names hotfixes"),
    (('cron: "0 16 * * FRI"', 'cron: "every friday"'), "is not a cron expression"),
    (("tz: Europe/Berlin", "tz: Mars/Olympus"), "is not an IANA time zone"),
    (("on: {branch: main}", "on: {branch: main, tag: v1}"), "give exactly one of branch or tag"),
])
def test_a_bad_pipeline_says_what_is_wrong(change, message):
    with pytest.raises(SpecError, match=message):
        pipeline(SEED.replace(*change))


def test_promote_from_may_not_loop():
    looped = SEED.replace("    on: {branch: main}\n", "    on: {branch: main}\n    promote_from: production\n")
    with pytest.raises(SpecError, match="loops"):
        pipeline(looped)


def test_freeze_windows_in_their_time_zone_with_exceptions():
    p = pipeline()
    berlin_friday_17 = datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc)  # 17:00 in Berlin (CET)
    freeze, start, end = p.frozen(berlin_friday_17)
    assert (start.hour, start.tzinfo.key, (end - start).total_seconds()) == (16, "Europe/Berlin", 64 * 3600)
    # Friday 16:00 + 64 h = Monday 08:00 in Berlin
    assert p.frozen(datetime(2026, 11, 30, 6, 59, tzinfo=timezone.utc)) is not None, "Monday 07:59 Berlin: frozen"
    assert p.frozen(datetime(2026, 11, 30, 7, 0, tzinfo=timezone.utc)) is None, "Monday 08:00 Berlin: open"
    assert p.frozen(datetime(2026, 11, 27, 14, 59, tzinfo=timezone.utc)) is None, "Friday 15:59 Berlin: open"
    assert p.frozen(berlin_friday_17, path="hotfix") is None, "the hotfix path is excepted"
    summer = datetime(2026, 7, 3, 14, 0, tzinfo=timezone.utc)  # 16:00 in Berlin (CEST)
    assert p.frozen(summer) is not None, "daylight saving time follows the zone"


def test_on_is_a_key_not_a_boolean_and_yes_is_not_true():
    """YAML 1.1 reads `on` as True; pitstop reads YAML 1.2 booleans, so the seed's `on:` is a key."""
    assert pipeline().environments["staging"].on.branch == "main"
    with pytest.raises(SpecError, match="approve"):
        pipeline(SEED.replace("approve: true\n    strategy", "approve: maybe\n    strategy"))

"""Routing policy (pure): which rollout a command concerns, which builds may start one, spec collisions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitstop.core import routing
from pitstop.core.messages import parse_build
from pitstop.core.models import Command
from pitstop.core.spec import load_spec
from pitstop.local.payloads import cloud_build

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
ENVS, REGIONS = ["staging", "production"], ["us-central1", "europe-west1"]

record = st.fixed_dictionaries({
    "service": st.sampled_from(["web", "api"]), "environment": st.sampled_from(ENVS),
    "region": st.sampled_from(REGIONS), "active_rollout": st.sampled_from([None, "r1", "r2", "r3", "r4"]),
})


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(record, max_size=8, unique_by=lambda r: (r["service"], r["environment"], r["region"])),
       st.sampled_from(["web", "api"]), st.one_of(st.none(), st.sampled_from(ENVS)),
       st.one_of(st.none(), st.sampled_from(REGIONS)))
def test_a_command_reaches_exactly_the_one_live_rollout_it_names_or_none(records, service, environment, region):
    command = Command(id="c", action="pause", service=service, environment=environment, region=region, actor="a")
    fits = [r for r in records if r["service"] == service and r["active_rollout"]
            and environment in (None, r["environment"]) and region in (None, r["region"])]
    got = routing.command_targets(command, records)
    if len(fits) == 1:
        assert got == [fits[0]["active_rollout"]]
    else:
        assert isinstance(got, routing.Refusal) and "nothing changed" in got.reason
        assert len(got.candidates) == (len(fits) if len(fits) > 1 else 0)


def test_promote_by_service_name_never_hits_staging_and_production_together():
    records = [{"service": "web", "environment": e, "region": "us-central1", "active_rollout": f"r-{e}"}
               for e in ENVS]
    got = routing.command_targets(Command(id="c", action="promote", service="web", full=True, actor="a"), records)
    assert isinstance(got, routing.Refusal)
    assert got.candidates == ("r-production (production, us-central1)", "r-staging (staging, us-central1)")
    narrowed = Command(id="c", action="promote", service="web", environment="staging", actor="a")
    assert routing.command_targets(narrowed, records) == ["r-staging"]


def artifact(created: datetime, version: str = "v1"):
    return parse_build(cloud_build("SUCCESS", substitutions={"_VERSION": version}, now=created), {}).artifact


@given(st.integers(-3600, 3600), st.integers(-3600, 3600))
def test_a_build_older_than_stable_code_never_starts_a_rollout(build_offset, stable_offset):
    built = artifact(T0 + timedelta(seconds=build_offset))
    stable_at = built.created_at - timedelta(seconds=build_offset) + timedelta(seconds=stable_offset)
    why = routing.older_build(built, {"stable_created_at": stable_at, "stable_version": "v9"}, None)
    if build_offset < stable_offset:
        assert why and "older than the stable version v9" in why
    else:
        assert why is None


def test_spec_collisions_name_the_clashing_environment():
    prod = load_spec("service: web\nregions: [us-central1]\nenvironment: production\nmatch: {repo: web}\n")
    staging = load_spec("service: web\nregions: [us-central1, europe-west1]\nenvironment: staging\n"
                        "match: {repo: web}\n")
    separate = load_spec("service: web\nregions: [us-central1]\nenvironment: staging\nproject: acme-staging\n"
                         "match: {repo: web}\n")
    clash = routing.spec_collisions(staging, [prod], "acme")
    assert clash == ["spec web--production (production) already rolls out web in acme/us-central1"]
    assert routing.spec_collisions(separate, [prod], "acme") == []
    assert routing.spec_collisions(prod, [prod], "acme") == [], "re-applying the same spec is no collision"


def test_a_build_finds_specs_by_repo_trigger_or_the_catch_all():
    by_repo = load_spec("service: web\nregions: [r]\nmatch: {repo: web}\n")
    by_branch = load_spec("service: web\nregions: [r]\nenvironment: qa\nmatch: {branch: 'release/*'}\n")
    keys = routing.build_keys("web", "build-web", "33f6")
    assert set(routing.match_keys(by_repo)) & set(keys) and set(routing.match_keys(by_branch)) & set(keys)
    assert not set(routing.match_keys(by_repo)) & set(routing.build_keys("api", None, None))

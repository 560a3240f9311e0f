"""The HTTP API for pipelines and releases, through the real `api` function on the real emulators, the local
Cloud Build and Cloud Run, with the fixtures of test_api.py: a pipeline applied, builds released through
`Engine.on_build`, and every release route read and steered as the people of test_api.py."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from pitstop.core.messages import parse_build
from pitstop.core.pipeline import load_pipeline
from pitstop.core.release import Release
from pitstop.local.build import ship
from pitstop.local.cloudbuild import read_build

from test_api import (  # noqa: F401 (fixtures)
    ADMIN, APPROVER, DEPLOYER, OPERATOR, SPEC, STRANGER, VIEWER, Api, api, app, cloud, cloudbuild, error, issuer,
    state,
)

pytestmark = pytest.mark.emulators

PIPELINE = """\
service: web
repo: web
triggers: [build-web]
environments:
  staging:
    regions: [europe-west1]
    on: {branch: main}
    health: {min_requests: 10, interval: 1s}
    strategy: {canary: {steps: [{weight: 10, pause: 1h}]}}
  production:
    regions: [us-central1, asia-northeast1]
    waves: [[us-central1], [asia-northeast1]]
    on: {tag: "v*"}
    promote_from: staging
    approve: true
    health: {min_requests: 10, interval: 1s}
    strategy: {canary: {steps: [{weight: 10, pause: 1h}]}}
"""


def released(api: Api, version: str, **ref: str) -> Release:
    """`version` of web built (a push to main unless a tag is given) and handed to the engine: its release."""
    build_id = ship(api.state, api.engine.config.project, "web", version, **ref)
    api.engine.on_build(parse_build(read_build(api.state, build_id), {}))
    return next(r for r in api.engine.store.releases("web", 10) if r.build_id == build_id)


@pytest.fixture
def pipeline(api: Api) -> None:
    api.engine.store.put_pipeline(load_pipeline(PIPELINE), "test", datetime.now(timezone.utc))


@pytest.fixture
def shipped(api: Api, pipeline: None) -> Release:
    """v1 released to staging (a first deploy: it succeeds at once)."""
    rel = released(api, "v1")
    assert (rel.state, rel.route, rel.stages["staging"].state) == ("succeeded", ["staging"], "succeeded"), rel
    return rel


# ---------------------------------------------------------------- the pipeline

def test_a_pipeline_needs_spec_write_on_every_environment(api: Api) -> None:
    refused = error(api.call("PUT", "/api/v1/pipelines/web", OPERATOR, data=PIPELINE,
                             content_type="application/yaml"), 403, "insufficient_permissions")
    assert refused["permission"] == "spec:write" and api.engine.store.pipeline("web") is None

    response = api.call("PUT", "/api/v1/pipelines/web", ADMIN, data=PIPELINE, content_type="application/yaml")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"service": "web", "environments": ["staging", "production"], "applied_by": ADMIN}
    assert api.engine.store.pipeline("web") == load_pipeline(PIPELINE)
    assert api.engine.store.spec("web", "production").pipeline
    # Applied again (its own specs are no collision), as JSON: waves as stored ({regions: [...]}) read back alike.
    as_json = load_pipeline(PIPELINE).model_dump(mode="json", exclude_none=True, by_alias=True)
    assert api.call("PUT", "/api/v1/pipelines/web", ADMIN, json=as_json).status_code == 200

    # An admin of staging alone may not change production: every environment's grants in force are asked.
    mine = PIPELINE.replace("    on: {branch: main}\n",
                            f"    on: {{branch: main}}\n    access: {{admin: [user:{OPERATOR}]}}\n")
    assert api.call("PUT", "/api/v1/pipelines/web", ADMIN, data=mine).status_code == 200
    refused = error(api.call("PUT", "/api/v1/pipelines/web", OPERATOR, data=mine), 403, "insufficient_permissions")
    assert "web (production)" in refused["message"]


def test_a_pipeline_is_validated(api: Api) -> None:
    def refused(body: str, status: int = 400, url: str = "/api/v1/pipelines/web") -> str:
        return error(api.call("PUT", url, ADMIN, data=body, content_type="application/yaml"), status,
                     "invalid_request")["message"]

    loop = refused(PIPELINE.replace("promote_from: staging", "promote_from: qa"))
    assert loop.startswith("pipeline web: invalid pipeline\n") and "promote_from names 'qa'" in loop
    assert "Nothing was applied" in loop
    waves = refused(PIPELINE.replace("[[us-central1], [asia-northeast1]]", "[[us-central1]]"))
    assert "waves must list each region exactly once" in waves
    unknown = refused(PIPELINE.replace("regions: [europe", "region: [europe"))
    assert "\n  environments.staging.region: unknown field" in unknown
    assert "not valid YAML" in refused("service: [web")
    assert "expected a mapping" in refused("- web\n")
    assert "URL names api" in refused(PIPELINE, url="/api/v1/pipelines/api")
    assert api.engine.store.pipeline("web") is None and api.engine.store.specs() == []


def test_a_pipeline_must_not_collide_with_another_spec(api: Api) -> None:
    api.spec(SPEC.replace("environment: production", "environment: qa").replace("[us-central1]", "[europe-west1]"))
    conflict = error(api.call("PUT", "/api/v1/pipelines/web", ADMIN, data=PIPELINE), 409, "conflict")
    assert "web--qa" in conflict["message"] and "europe-west1" in conflict["message"]
    assert api.engine.store.pipeline("web") is None and api.engine.store.spec("web", "staging") is None

    # Two environments of one pipeline on one Cloud Run service collide too.
    same = PIPELINE.replace("[europe-west1]", "[us-central1]")
    assert "web--production" in error(api.call("PUT", "/api/v1/pipelines/web", ADMIN, data=same), 409,
                                      "conflict")["message"]


# ---------------------------------------------------------------- reading releases

def test_releases_are_listed_and_read_by_those_who_may(api: Api, shipped: Release) -> None:
    rows = api.call("GET", "/api/v1/releases", VIEWER).get_json()["releases"]
    assert [(r["id"], r["version"], r["state"], r["current"]) for r in rows] == [
        (shipped.id, "v1", "succeeded", "staging")]
    assert rows[0]["route"] == [{"environment": "staging", "state": "succeeded"}]
    assert rows[0]["regions"]["europe-west1"]["state"] == "succeeded"
    assert rows[0]["regions"]["europe-west1"]["percent"] == 100
    assert api.call("GET", "/api/v1/releases?service=api", VIEWER).get_json()["releases"] == []
    assert len(api.call("GET", "/api/v1/releases?service=web&limit=1", VIEWER).get_json()["releases"]) == 1
    assert api.call("GET", "/api/v1/releases", STRANGER).get_json()["releases"] == []
    assert "limit" in error(api.call("GET", "/api/v1/releases?limit=0", VIEWER), 400, "invalid_request")["message"]

    detail = api.call("GET", f"/api/v1/releases/{shipped.id}", VIEWER).get_json()
    assert (detail["digest"], detail["build_id"], detail["branch"]) == (shipped.digest, shipped.build_id, "main")
    [stage] = detail["stages"]
    assert (stage["environment"], stage["state"], stage["waves"], stage["strategy"]) == (
        "staging", "succeeded", [["europe-west1"]], "canary 10% → 100%")
    assert stage["regions"]["europe-west1"]["rollout_id"] == shipped.stages["staging"].rollouts()["europe-west1"]
    assert error(api.call("GET", f"/api/v1/releases/{shipped.id}", STRANGER), 403,
                 "insufficient_permissions")["permission"] == "rollout:read"
    for path in ("/api/v1/releases/web-0000000000000000", "/api/v1/releases/web-0000000000000000/audit",
                 "/api/v1/releases/__nope__"):
        assert "no release" in error(api.call("GET", path, VIEWER), 404, "not_found")["message"]


# ---------------------------------------------------------------- steering releases

def test_a_release_is_promoted_approved_and_its_whole_story_told(api: Api, shipped: Release) -> None:
    url = f"/api/v1/releases/{shipped.id}"
    to_production = {"to_environment": "production", "reason": "staging looks fine"}
    refused = error(api.call("POST", f"{url}:promote", OPERATOR, json=to_production), 403, "insufficient_permissions")
    assert refused["permission"] == "deployment:create"
    response = api.call("POST", f"{url}:promote", DEPLOYER, json=to_production)
    assert response.status_code == 200, response.get_json()
    [result] = response.get_json()["results"]
    assert (result["release_id"], result["decision"], result["state"], result["environment"]) == (
        shipped.id, "extended", "waiting", "production")
    waiting = api.call("GET", url, VIEWER).get_json()
    assert waiting["waiting_for"] == "approval to start" and waiting["route"][1] == {
        "environment": "production", "state": "awaiting_approval"}

    refused = error(api.call("POST", f"{url}:approve", VIEWER), 403, "insufficient_permissions")
    assert refused["permission"] == "rollout:approve" and refused["message"].endswith("nothing changed")
    record = api.engine.store.command(refused["command_id"])
    assert (record["actor"], record["code"], record["outcome"]) == (VIEWER, "insufficient_permissions", "refused")
    response = api.call("POST", f"{url}:approve", APPROVER, json={"environment": "production"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["actor"] == APPROVER and response.get_json()["results"][0]["decision"] == "stage_entered"

    # First deploys succeed at once: both waves are through.
    done = api.call("GET", url, VIEWER).get_json()
    assert done["state"] == "succeeded" and [s["environment"] for s in done["stages"]] == ["staging", "production"]
    production = done["stages"][1]
    assert (production["approved_by"], production["waves"], production["wave"]) == (
        APPROVER, [["us-central1"], ["asia-northeast1"]], 2)
    assert {r: g["state"] for r, g in production["regions"].items()} == {"us-central1": "succeeded",
                                                                         "asia-northeast1": "succeeded"}

    audit = api.call("GET", f"{url}/audit", VIEWER).get_json()
    events = audit["events"]
    stamps = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in events]
    assert stamps == sorted(stamps)
    assert {e["where"] for e in events} == {"release", "staging/europe-west1", "production/us-central1",
                                            "production/asia-northeast1"}
    mine = [e for e in events if e["where"] == "release"]
    assert audit["chain"]["intact"] and audit["chain"]["checked"] == len(mine)
    assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1))
    assert any(e["actor"] == APPROVER and e["decision"] == "stage_entered" for e in mine)
    assert any(e["actor"] == DEPLOYER and "staging looks fine" in " ".join(e["reasons"]) for e in mine)
    region = next(e for e in events if e["where"] == "production/us-central1")
    assert region["rollout_id"] == done["stages"][1]["regions"]["us-central1"]["rollout_id"]
    assert region["environment"] == "production" and region["region"] == "us-central1"
    assert error(api.call("GET", f"{url}/audit", STRANGER), 403, "insufficient_permissions")


def test_each_release_action_reaches_the_engine(api: Api, shipped: Release) -> None:
    rel = released(api, "v2")  # a canary in staging: v1 stable
    url = f"/api/v1/releases/{rel.id}"
    rollout_id = api.engine.store.release(rel.id).stages["staging"].regions["europe-west1"].rollout_id
    assert api.engine.store.rollout(rollout_id).state == "progressing"
    [stage] = api.call("GET", url, VIEWER).get_json()["stages"]
    assert (stage["state"], stage["wave"], stage["step"], stage["step_label"]) == ("running", 1, 0, "step 1 (10%)")
    assert stage["regions"]["europe-west1"] == {"state": "progressing", "percent": 10, "position": 0,
                                                "rollout_id": rollout_id}

    for action, expected in (("pause", "paused"), ("resume", "progressing")):
        response = api.call("POST", f"{url}:{action}", OPERATOR, json={"reason": "lunch", "region": "europe-west1"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["results"][0]["decision"] == action
        assert api.engine.store.rollout(rollout_id).state == expected

    assert "no action 'explode'" in error(api.call("POST", f"{url}:explode", OPERATOR), 400,
                                          "invalid_request")["message"]
    assert "unknown field to_environment" in error(api.call("POST", f"{url}:pause", OPERATOR,
                                                            json={"to_environment": "production"}), 400,
                                                   "invalid_request")["message"]
    assert "needs a release_id and a reason" in error(api.call("POST", f"{url}:unfreeze", ADMIN), 400,
                                                      "invalid_request")["message"]
    assert error(api.call("POST", f"{url}:unfreeze", OPERATOR, json={"reason": "hotfix"}), 403,
                 "insufficient_permissions")["permission"] == "spec:write"
    assert "does not go to production" in error(api.call("POST", f"{url}:abort", OPERATOR,
                                                         json={"environment": "production"}), 404,
                                                "not_found")["message"]
    assert "no release" in error(api.call("POST", "/api/v1/releases/web-0000000000000000:abort", OPERATOR), 404,
                                 "not_found")["message"]

    response = api.call("POST", f"{url}:abort", OPERATOR, json={"reason": "v2 is slow"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["state"] == "rolled_back"
    assert api.engine.store.rollout(rollout_id).state in ("rolling_back", "rolled_back")
    conflict = error(api.call("POST", f"{url}:promote", OPERATOR), 409, "conflict")
    assert conflict["message"].startswith("promote changed nothing: ")
    assert conflict["results"][0]["release_id"] == rel.id

    response = api.call("POST", f"{url}:unfreeze", ADMIN, json={"reason": "incident 42"})
    assert response.status_code == 200, response.get_json()
    assert api.engine.store.release(rel.id).stages["staging"].unfrozen_by == ADMIN


# ---------------------------------------------------------------- the CLI on the same store and API

def test_the_cli_steers_and_tells_a_release(api: Api, shipped: Release, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pitstop promote-release`, `approve RELEASE --env`, `history RELEASE` and `status`: the CLI's own code,
    its API calls answered by the `api` function (as APPROVER, DEPLOYER), its reads from the emulator."""
    from typer.testing import CliRunner

    from pitstop.surfaces import cli
    from pitstop.surfaces.client import ApiError as ClientError, Caller

    as_whom = {"who": DEPLOYER}

    def call(method: str, path: str, body: Any = None, content: str | None = None,
             content_type: str | None = None) -> Any:
        response = api.call(method, path, as_whom["who"], json=body)
        if response.status_code >= 400:
            e = response.get_json()["error"]
            raise ClientError(e["code"], e["message"], response.status_code)
        return response.get_json()

    monkeypatch.setattr(cli, "_store", lambda: api.engine.store)
    monkeypatch.setattr(cli, "_caller", lambda: Caller(api.audience, "http://api.test"))
    monkeypatch.setattr(Caller, "call", lambda self, *args, **kwargs: call(*args, **kwargs))
    run = CliRunner()

    result = run.invoke(cli.app, ["promote-release", shipped.id, "--to", "production"])
    assert result.exit_code == 0 and f"{shipped.id}: extended" in result.output and DEPLOYER in result.output, \
        result.output
    result = run.invoke(cli.app, ["approve", shipped.id, "--env", "production"])  # a deployer is no approver
    assert result.exit_code == 3 and "rollout:approve" in result.output, result.output
    as_whom["who"] = APPROVER
    result = run.invoke(cli.app, ["approve", shipped.id, "--env", "production"])
    assert result.exit_code == 0 and "stage_entered" in result.output, result.output
    assert run.invoke(cli.app, ["rollback", shipped.id, "--to", "v0"]).exit_code == 1

    result = run.invoke(cli.app, ["history", shipped.id])
    assert result.exit_code == 0, result.output
    for fragment in ("production/us-central1", "staging/europe-west1", "stage_entered", APPROVER, "succeeded"):
        assert fragment in result.output, (fragment, result.output)
    story = json.loads(run.invoke(cli.app, ["history", shipped.id, "--json"]).output)
    assert story["release"]["state"] == "succeeded" and story["chain_intact"] and len(story["events"]) > 10

    result = run.invoke(cli.app, ["status"])
    assert result.exit_code == 0 and "Releases" in result.output and "Rollouts" in result.output, result.output
    assert "staging succeeded → production succeeded" in result.output
    assert "us-central1: succeeded 100%" in result.output

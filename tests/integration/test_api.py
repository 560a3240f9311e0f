"""The HTTP API, driven through the real `api` function in-process (functions-framework's Flask app and its
test client) on the real emulators, ID tokens really signed by the local issuer and really verified, the
local Cloud Build (deploys) and the local Cloud Run (the rollouts the commands steer)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from openapi_spec_validator import validate

from pitstop.core.messages import parse_build
from pitstop.core.models import Access, Rollout
from pitstop.core.spec import load_spec
from pitstop.engine import Engine
from pitstop.local.build import ship
from pitstop.local.cloudbuild import LocalCloudBuild, read_build, register_trigger, start_cloudbuild
from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.issuer import IssuerServer, start_issuer
from pitstop.local.wiring import create_topics
from pitstop.surfaces.api import MAX_BODY, OPENAPI, ROUTES

pytestmark = pytest.mark.emulators

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-central1"
ADMIN, VIEWER, OPERATOR, APPROVER, DEPLOYER, STRANGER = (
    "admin@example.com", "vera@example.com", "otto@example.com", "ana@example.com", "dan@example.com",
    "eve@example.com")
SPEC = f"""\
service: web
environment: production
regions: [{REGION}]
match: {{repo: web}}
triggers: [build-web]
health: {{min_requests: 10, interval: 1s}}
strategy: {{canary: {{steps: [{{weight: 10, pause: 1h}}, {{weight: 50, pause: 1h, approve: true}}]}}}}
access: {{four_eyes: true}}
"""


@dataclass
class Api:
    """The `api` function's test client, the engine it runs on, and a way to sign in as anyone."""

    client: Any
    engine: Engine
    issuer: IssuerServer
    state: Path
    audience: str
    main: Any  # functions/main.py

    def token(self, email: str, **kwargs: Any) -> str:
        return self.issuer.mint(email, self.audience, **kwargs)

    def call(self, method: str, path: str, who: str | None = None, *, token: str | None = None,
             headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        headers = dict(headers or {})
        if token or who:
            headers["X-Pitstop-Token"] = token or self.token(who)
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        assert response.mimetype == "application/json", response.data[:300]
        return response

    def grant(self, **roles: list[str]) -> None:
        self.engine.store.put_access(Access(**roles), "test", datetime.now(timezone.utc))

    def spec(self, text: str = SPEC) -> None:
        self.engine.store.put_spec(load_spec(text), "test", datetime.now(timezone.utc))

    def build(self, version: str) -> Rollout:
        """`version` of web built (as a push would) and handed to the engine, as on_build would be."""
        build_id = ship(self.state, self.engine.config.project, "web", version)
        return self.started(build_id)

    def started(self, build_id: str) -> Rollout:
        self.engine.on_build(parse_build(read_build(self.state, build_id), {}))
        return next(r for r in self.engine.store.recent("web", 10) if r.artifact.build_id == build_id)


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def issuer(state: Path) -> Iterator[IssuerServer]:
    with start_issuer(state) as server:
        yield server


@pytest.fixture(scope="module")
def cloudbuild(emulators, state: Path) -> Iterator[LocalCloudBuild]:
    create_topics(emulators.project)
    register_trigger(state, "build-web", "web")
    server = start_cloudbuild(state, emulators.project, step_s=0.05)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(emulators) -> tuple[Any, Any]:
    """functions-framework's app for `api`, and functions/main.py as it loaded it (the module holding `_engine`)."""
    flask_app = create_app(target="api", source=str(ROOT / "functions" / "main.py"), signature_type="http")
    return flask_app, sys.modules["main"]


@pytest.fixture
def cloud(state: Path) -> Iterator[LocalCloudRun]:
    running = LocalCloudRun(state, startup_timeout_s=30)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def api(firestore_clean, issuer: IssuerServer, cloudbuild: LocalCloudBuild, cloud: LocalCloudRun, app: tuple,
        state: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    project = firestore_clean.project
    audience = f"pitstop:{project}"
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": project, "PITSTOP_AUDIENCE": audience, "PITSTOP_ADMINS": f"user:{ADMIN}",
        "PITSTOP_TOKEN_CERTS": issuer.certs_url, "PITSTOP_TOKEN_ISSUERS": issuer.url,
        "PITSTOP_BUILD_ENDPOINT": cloudbuild.url, "PITSTOP_RUN_ENDPOINT": cloud.url,
    }.items():
        monkeypatch.setenv(name, value)
    flask_app, main = app
    monkeypatch.setattr(main, "_engine", None)  # built from this environment on the first request
    api = Api(flask_app.test_client(), main.engine(), issuer, state, audience, main)
    api.grant(viewer=[f"user:{VIEWER}"], operator=[f"user:{OPERATOR}"], approver=[f"user:{APPROVER}"],
              deployer=[f"user:{DEPLOYER}", f"user:{APPROVER}"])
    return api


@pytest.fixture
def canary(api: Api) -> Rollout:
    """web v1 stable, v2 a canary at 10 %."""
    api.spec()
    assert api.build("v1").state in ("deploying", "succeeded")
    r = api.engine.store.rollout(api.build("v2").id)
    assert r.state == "progressing" and r.new_percent == 10, r
    return r


# ---------------------------------------------------------------- the document

def test_the_openapi_document_is_valid_and_documents_exactly_the_routes(api: Api) -> None:
    document = json.loads(OPENAPI.read_text())
    validate(document)
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    routed = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method) for rule in ROUTES.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed

    response = api.call("GET", "/api/v1/openapi.json")  # no token needed
    assert response.status_code == 200 and response.get_json() == document


# ---------------------------------------------------------------- who is asking

def test_whoami_names_the_verified_email_and_its_roles(api: Api) -> None:
    api.spec()
    api.spec(SPEC.replace("environment: production", "environment: staging").replace(
        "access: {four_eyes: true}", f"access: {{admin: [user:{VIEWER}]}}").replace(f"[{REGION}]", "[europe-west1]"))

    me = api.call("GET", "/api/v1/whoami", VIEWER.upper()).get_json()
    assert me["email"] == VIEWER and me["audience"] == api.audience
    assert me["roles"] == {"project": ["viewer"], "specs": {
        "web--production": ["viewer"], "web--staging": ["viewer", "operator", "approver", "deployer", "admin"]}}

    admin = api.call("GET", "/api/v1/whoami", ADMIN).get_json()
    assert admin["roles"]["project"] == ["viewer", "operator", "approver", "deployer", "admin"]
    assert api.call("GET", "/api/v1/whoami", STRANGER).get_json()["roles"] == {"project": [], "specs": {}}


def test_no_expired_or_foreign_token_gets_a_401(api: Api) -> None:
    message = error(api.call("GET", "/api/v1/whoami"), 401, "unauthenticated")["message"]
    assert "no ID token" in message and "nothing was read or changed" in message
    expired = api.token(VIEWER, now=time.time() - 7200)
    assert "expired" in error(api.call("GET", "/api/v1/rollouts", token=expired), 401, "unauthenticated")["message"]
    foreign = api.issuer.mint(VIEWER, "pitstop:another-project")
    assert "audience" in error(api.call("GET", "/api/v1/specs", token=foreign), 401, "unauthenticated")["message"]


@pytest.mark.parametrize("token, claimed", [
    (None, "anonymous (unverified)"),
    ("expired", f"{OPERATOR} (unverified)"),
    ("foreign", f"{OPERATOR} (unverified)"),
])
def test_an_unverified_command_is_refused_and_recorded(api: Api, canary: Rollout, token: str | None,
                                                        claimed: str) -> None:
    tokens = {"expired": api.token(OPERATOR, now=time.time() - 7200),
              "foreign": api.issuer.mint(OPERATOR, "pitstop:another-project"), None: None}
    response = api.call("POST", f"/api/v1/rollouts/{canary.id}:promote", token=tokens[token], json={"full": True})
    refused = error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    record = api.engine.store.command(refused["command_id"])
    assert record["verified"] is False and record["actor"] == claimed and record["outcome"] == "refused"
    assert record["code"] == "unauthenticated" and record["rollout_id"] == canary.id
    assert api.engine.store.rollout(canary.id).state == "progressing"


def test_the_token_travels_in_x_pitstop_token_or_authorization(api: Api) -> None:
    bearer = {"Authorization": f"Bearer {api.token(VIEWER)}"}
    assert api.call("GET", "/api/v1/whoami", headers=bearer).get_json()["email"] == VIEWER
    # Behind Cloud Run's IAM check the Authorization token arrives without its signature: X-Pitstop-Token wins.
    stripped = {"Authorization": "Bearer " + api.token(ADMIN).rsplit(".", 1)[0] + "."}
    assert api.call("GET", "/api/v1/whoami", OPERATOR, headers=stripped).get_json()["email"] == OPERATOR


# ---------------------------------------------------------------- commands: one engine path

def test_a_viewer_may_not_promote(api: Api, canary: Rollout) -> None:
    refused = error(api.call("POST", f"/api/v1/rollouts/{canary.id}:promote", VIEWER), 403,
                    "insufficient_permissions")
    assert refused["permission"] == "rollout:operate" and "rollout:operate" in refused["message"]
    assert refused["message"].endswith("nothing changed")
    record = api.engine.store.command(refused["command_id"])
    assert (record["actor"], record["verified"], record["code"]) == (VIEWER, True, "insufficient_permissions")
    assert api.engine.store.rollout(canary.id).state == "progressing"


def test_an_operator_promotes_and_the_audit_names_them(api: Api, canary: Rollout) -> None:
    response = api.call("POST", f"/api/v1/rollouts/{canary.id}:promote", OPERATOR, json={"reason": "looks good"})
    assert response.status_code == 200, response.get_json()
    reply = response.get_json()
    assert reply["actor"] == OPERATOR and reply["command_id"].startswith("api-")
    [result] = reply["results"]
    after = api.engine.store.rollout(canary.id)
    assert result["rollout_id"] == canary.id and result["decision"] != "ignored"
    assert result["state"] == after.state and after.new_percent == 50 and result["reasons"]
    assert "50%" in result["traffic"]
    event = next(e for e in api.engine.store.events(canary.id) if e.id == reply["command_id"])
    assert event.actor == OPERATOR and event.decision == result["decision"]


def test_a_command_the_state_machine_ignores_is_a_conflict(api: Api, canary: Rollout) -> None:
    finished = next(r for r in api.engine.store.recent("web") if r.state == "succeeded")
    conflict = error(api.call("POST", f"/api/v1/rollouts/{finished.id}:promote", OPERATOR, json={"full": True}),
                     409, "conflict")
    assert conflict["message"].startswith("promote changed nothing: ")
    assert [r["decision"] for r in conflict["results"]] == ["ignored"]
    assert api.engine.store.rollout(finished.id).state == "succeeded"


def test_each_action_reaches_the_engine(api: Api, canary: Rollout) -> None:
    for action, state in (("pause", "paused"), ("resume", "progressing"), ("abort", "rolling_back")):
        response = api.call("POST", f"/api/v1/rollouts/{canary.id}:{action}", OPERATOR)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["results"][0]["state"] in (state, "rolled_back")


def test_a_command_body_is_checked(api: Api, canary: Rollout) -> None:
    url = f"/api/v1/rollouts/{canary.id}"
    assert "no action 'explode'" in error(api.call("POST", f"{url}:explode", OPERATOR), 400, "invalid_request")[
        "message"]
    assert "not valid JSON" in error(api.call("POST", f"{url}:pause", OPERATOR, data="{oops",
                                              content_type="application/json"), 400, "invalid_request")["message"]
    assert "unknown field full" in error(api.call("POST", f"{url}:pause", OPERATOR, json={"full": True}), 400,
                                         "invalid_request")["message"]
    assert "must be a JSON object" in error(api.call("POST", f"{url}:pause", OPERATOR, json=[1]), 400,
                                            "invalid_request")["message"]
    invalid = error(api.call("POST", f"{url}:promote", OPERATOR, json={"full": "yes"}), 400, "invalid_request")
    assert "\n  full: Input should be a valid boolean" in invalid["message"]
    too_big = error(api.call("POST", f"{url}:pause", OPERATOR, data=b"x" * (MAX_BODY + 1)), 413, "invalid_request")
    assert str(MAX_BODY) in too_big["message"]
    assert api.engine.store.rollout(canary.id).state == "progressing"


def test_an_unknown_rollout_is_a_404(api: Api) -> None:
    for method, path, named in (("GET", "/api/v1/rollouts/web-nope", "web-nope"),
                                ("GET", "/api/v1/rollouts/web-nope/audit", "web-nope"),
                                ("GET", "/api/v1/rollouts/__not.a.rollout__", "__not.a.rollout__"),
                                ("POST", "/api/v1/rollouts/web-nope:pause", "web-nope")):
        assert f"no rollout {named}" in error(api.call(method, path, ADMIN), 404, "not_found")["message"]


def test_rollback_to_an_earlier_version(api: Api, canary: Rollout) -> None:
    body = {"service": "web", "environment": "production", "to_version": "v1", "reason": "v2 is slow"}
    refused = error(api.call("POST", "/api/v1/rollback", VIEWER, json=body), 403, "insufficient_permissions")
    assert refused["permission"] == "rollout:operate"
    missing = error(api.call("POST", "/api/v1/rollback", OPERATOR, json={**body, "to_version": "v9"}), 404,
                    "not_found")
    assert "v9" in missing["message"]
    assert "to_version is required" in error(api.call("POST", "/api/v1/rollback", OPERATOR,
                                                      json={"service": "web"}), 400, "invalid_request")["message"]

    response = api.call("POST", "/api/v1/rollback", OPERATOR, json=body)
    assert response.status_code == 200, response.get_json()
    [result] = response.get_json()["results"]
    direct = api.engine.store.rollout(result["rollout_id"])
    assert direct.kind == "direct" and direct.version == "v1" and direct.started_by == OPERATOR
    assert api.engine.store.rollout(canary.id).state == "superseded"


# ---------------------------------------------------------------- deploy

def wait_for_build(state: Path, build_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while (build := read_build(state, build_id) or {}).get("status") != "SUCCESS":
        assert time.monotonic() < deadline, build
        time.sleep(0.05)
    return build


def test_a_deployer_deploys_a_ref(api: Api) -> None:
    api.spec()
    response = api.call("POST", "/api/v1/deploy", DEPLOYER, json={"service": "web", "environment": "production",
                                                                  "ref": "main"})
    assert response.status_code == 202, response.get_json()
    reply = response.get_json()
    assert reply["actor"] == DEPLOYER and (reply["service"], reply["environment"], reply["ref"]) == (
        "web", "production", "main")
    build = read_build(api.state, reply["build_id"])
    assert build is not None and build["substitutions"]["_SERVICE"] == "web"
    assert reply["log_url"] == build.get("logUrl")
    requested = api.engine.store.deploy_request(reply["build_id"])
    assert requested["actor"] == DEPLOYER and requested["command"] == reply["command_id"]


def test_deploy_needs_the_deployer_role_and_a_spec(api: Api) -> None:
    api.spec()
    body = {"service": "web", "environment": "production", "ref": "main"}
    refused = error(api.call("POST", "/api/v1/deploy", OPERATOR, json=body), 403, "insufficient_permissions")
    assert refused["permission"] == "deployment:create" and "nothing deployed" in refused["message"]
    error(api.call("POST", "/api/v1/deploy", DEPLOYER, json={**body, "environment": "qa"}), 404, "not_found")
    assert "ref missing" in error(api.call("POST", "/api/v1/deploy", DEPLOYER, json={"service": "web",
                                                                                     "environment": "qa"}),
                                  400, "invalid_request")["message"]


def test_four_eyes_an_approver_may_not_approve_what_they_deployed(api: Api) -> None:
    api.spec()
    reply = api.call("POST", "/api/v1/deploy", APPROVER, json={"service": "web", "environment": "production",
                                                               "ref": "main"}).get_json()
    wait_for_build(api.state, reply["build_id"])
    rollout = api.started(reply["build_id"])
    assert rollout.started_by == APPROVER

    refused = error(api.call("POST", f"/api/v1/rollouts/{rollout.id}:approve", APPROVER), 403,
                    "insufficient_permissions")
    assert "four eyes" in refused["message"] and refused["permission"] == "rollout:approve"
    not_approver = error(api.call("POST", f"/api/v1/rollouts/{rollout.id}:approve", OPERATOR), 403,
                         "insufficient_permissions")
    assert not_approver["permission"] == "rollout:approve"
    # Another approver passes both checks; the state machine then decides (there is no gate open yet).
    assert error(api.call("POST", f"/api/v1/rollouts/{rollout.id}:approve", ADMIN), 409, "conflict")


# ---------------------------------------------------------------- reads

def test_rollouts_are_listed_only_to_those_who_may_read_them(api: Api, canary: Rollout) -> None:
    rows = api.call("GET", "/api/v1/rollouts", VIEWER).get_json()["rollouts"]
    assert [r["version"] for r in rows] == ["v2", "v1"] and rows[0]["id"] == canary.id
    assert rows[0]["state"] == "progressing" and rows[0]["split"][canary.revision] == 10
    assert len(api.call("GET", "/api/v1/rollouts?limit=1&service=web", VIEWER).get_json()["rollouts"]) == 1
    assert api.call("GET", "/api/v1/rollouts?service=api", VIEWER).get_json()["rollouts"] == []
    assert api.call("GET", "/api/v1/rollouts", STRANGER).get_json()["rollouts"] == []
    for bad in ("0", "abc", "201", "-1"):
        assert "limit" in error(api.call("GET", f"/api/v1/rollouts?limit={bad}", VIEWER), 400,
                                "invalid_request")["message"]


def test_one_rollout_and_its_audit_trail(api: Api, canary: Rollout) -> None:
    detail = api.call("GET", f"/api/v1/rollouts/{canary.id}", VIEWER).get_json()
    assert (detail["id"], detail["state"], detail["step"], detail["version"]) == (canary.id, "progressing",
                                                                                  "1/2 (10%)", "v2")
    assert {t["revision"]: t["percent"] for t in detail["traffic"]["desired"]} == detail["split"]
    assert detail["traffic"]["observed"] == detail["traffic"]["desired"] and detail["split_applied"]
    assert detail["kind"] == "canary" and detail["verdict"] is None and detail["baseline"] is None
    assert detail["message"]
    refused = error(api.call("GET", f"/api/v1/rollouts/{canary.id}", STRANGER), 403, "insufficient_permissions")
    assert refused["permission"] == "rollout:read"

    api.call("POST", f"/api/v1/rollouts/{canary.id}:pause", OPERATOR, json={"reason": "lunch"})
    audit = api.call("GET", f"/api/v1/rollouts/{canary.id}/audit", VIEWER).get_json()
    events = audit["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and len(events) >= 3
    assert all(e["prev_hash"] == prev["hash"] for prev, e in zip(events, events[1:]))
    assert events[-1]["actor"] == OPERATOR and events[-1]["decision"] == "paused"
    assert audit["chain"] == {"intact": True, "checked": len(events), "head": events[-1]["hash"], "problems": []}
    error(api.call("GET", f"/api/v1/rollouts/{canary.id}/audit", STRANGER), 403, "insufficient_permissions")


# ---------------------------------------------------------------- specs and access

STAGING = SPEC.replace("environment: production", "environment: staging").replace(f"[{REGION}]", "[europe-west1]")


def test_only_an_admin_applies_a_spec(api: Api) -> None:
    refused = error(api.call("PUT", "/api/v1/specs/web--production", OPERATOR, data=SPEC,
                             content_type="application/yaml"), 403, "insufficient_permissions")
    assert refused["permission"] == "spec:write"
    assert api.engine.store.spec("web", "production") is None

    response = api.call("PUT", "/api/v1/specs/web--production", ADMIN, data=SPEC, content_type="application/yaml")
    assert response.status_code == 200 and response.get_json() == {"key": "web--production", "applied_by": ADMIN}
    stored = api.engine.store.db.collection("specs").document("web--production").get().to_dict()
    assert stored["applied_by"] == ADMIN and stored["triggers"] == ["build-web"]

    listed = api.call("GET", "/api/v1/specs", VIEWER).get_json()["specs"]
    assert [(s["key"], s["service"]) for s in listed] == [("web--production", "web")]
    assert api.call("GET", "/api/v1/specs", STRANGER).get_json()["specs"] == []


def test_nobody_grants_themselves_admin_by_writing_a_spec(api: Api) -> None:
    mine = STAGING.replace("access: {four_eyes: true}", f"access: {{admin: [user:{OPERATOR}]}}")
    error(api.call("PUT", "/api/v1/specs/web--staging", OPERATOR, data=mine), 403, "insufficient_permissions")
    api.spec(mine)  # once an admin has granted it, the spec's own admin may change it
    response = api.call("PUT", "/api/v1/specs/web--staging", OPERATOR, data=mine.replace("pause: 1h", "pause: 2h"))
    assert response.status_code == 200, response.get_json()


def test_a_spec_is_validated_and_must_not_collide(api: Api) -> None:
    invalid = error(api.call("PUT", "/api/v1/specs/web--production", ADMIN, data=SPEC.replace("regions:", "region:")),
                    400, "invalid_request")
    assert "\n  regions: required field is missing" in invalid["message"]
    assert "\n  region: unknown field" in invalid["message"] and "Nothing was applied" in invalid["message"]
    assert "not valid YAML" in error(api.call("PUT", "/api/v1/specs/web--production", ADMIN, data="a: [b"), 400,
                                     "invalid_request")["message"]
    mismatch = error(api.call("PUT", "/api/v1/specs/web--staging", ADMIN, data=SPEC), 400, "invalid_request")
    assert "URL names web--staging" in mismatch["message"]
    bomb = "a: &a [x, x]\nb: [*a, *a]\n"
    assert "aliases" in error(api.call("PUT", "/api/v1/specs/web--production", ADMIN, data=bomb), 400,
                              "invalid_request")["message"]
    assert "larger than" in error(api.call("PUT", "/api/v1/specs/web--production", ADMIN,
                                           data=SPEC + "#" * MAX_BODY), 413, "invalid_request")["message"]

    api.spec()
    clash = SPEC.replace("environment: production", "environment: staging")  # the same Cloud Run service
    conflict = error(api.call("PUT", "/api/v1/specs/web--staging", ADMIN, data=clash), 409, "conflict")
    assert "web--production" in conflict["message"] and api.engine.store.spec("web", "staging") is None

    as_json = load_spec(STAGING).model_dump(mode="json", exclude_none=True)
    response = api.call("PUT", "/api/v1/specs/web--staging", ADMIN, json=as_json)
    assert response.status_code == 200, response.get_json()
    assert api.engine.store.spec("web", "staging") == load_spec(STAGING)
    assert "not valid JSON" in error(api.call("PUT", "/api/v1/specs/web--staging", ADMIN, data="{",
                                              content_type="application/json"), 400, "invalid_request")["message"]


def test_only_a_project_admin_replaces_the_access_document(api: Api) -> None:
    doc = f"admin: [user:{OPERATOR}]\nviewer: [domain:example.com]\nfour_eyes: true\n"
    refused = error(api.call("PUT", "/api/v1/access", OPERATOR, data=doc), 403, "insufficient_permissions")
    assert refused["permission"] == "spec:write" and "access document is unchanged" in refused["message"]

    response = api.call("PUT", "/api/v1/access", ADMIN, data=doc, content_type="application/yaml")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["applied_by"] == ADMIN
    assert response.get_json()["access"]["admin"] == [f"user:{OPERATOR}"]
    assert api.engine.store.project_access().admin == [f"user:{OPERATOR}"]

    # Now a project admin through the document, not PITSTOP_ADMINS; JSON works as well as YAML.
    response = api.call("PUT", "/api/v1/access", OPERATOR, json={"admin": [f"user:{OPERATOR}"],
                                                                 "viewer": ["vera@example.com"]})
    assert response.status_code == 200 and response.get_json()["access"]["viewer"] == ["vera@example.com"]
    invalid = error(api.call("PUT", "/api/v1/access", OPERATOR, json={"viewer": ["group:team@example.com"],
                                                                      "owner": []}), 400, "invalid_request")
    assert "\n  viewer.0: group:team@example.com: pitstop cannot expand Google groups" in invalid["message"]
    assert "\n  owner: unknown field" in invalid["message"]
    assert api.engine.store.project_access().viewer == ["vera@example.com"]


# ---------------------------------------------------------------- whatever else goes wrong: JSON errors

def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    for path in ("/", "/api/v1/nope", "/api/v2/whoami", "/api//v1/whoami"):
        assert "/api/v1/openapi.json" in error(api.call("GET", path, VIEWER), 404, "not_found")["message"]
    response = api.call("DELETE", "/api/v1/whoami", VIEWER)
    assert "does not take DELETE" in error(response, 405, "method_not_allowed")["message"]
    assert response.headers["Allow"] == "GET"
    assert error(api.call("GET", "/api/v1/deploy", VIEWER), 405, "method_not_allowed")
    assert api.call("POST", "/api/v1/rollouts/x:pause").headers["Content-Type"] == "application/json"


def test_a_trigger_cloud_build_does_not_know_is_a_recorded_refusal(api: Api) -> None:
    """Retrying cannot help, so it is a refusal (the same on the Pub/Sub path, where it is not redelivered)."""
    api.spec(SPEC.replace("triggers: [build-web]", "triggers: [build-nope]"))
    failed = error(api.call("POST", "/api/v1/deploy", DEPLOYER, json={"service": "web", "environment": "production",
                                                                      "ref": "main"}), 400, "invalid_request")
    assert "build-nope" in failed["message"] and "nothing deployed" in failed["message"]
    recorded = api.engine.store.command(failed["command_id"])
    assert recorded["outcome"] == "refused" and recorded["actor"] == DEPLOYER


def test_certificates_out_of_reach_are_a_503_not_a_refusal(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITSTOP_TOKEN_CERTS", "http://127.0.0.1:9/certs")  # nothing listens there
    monkeypatch.setattr(api.main, "_engine", None)
    for method, path in (("GET", "/api/v1/whoami"), ("POST", "/api/v1/rollouts/web-nope:pause")):
        assert "Retry" in error(api.call(method, path, VIEWER), 503, "unavailable")["message"]


def test_an_unexpected_failure_is_a_500_with_a_sentence(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the secret database password is hunter2")

    monkeypatch.setattr(api.engine.store, "recent", broken)
    failed = error(api.call("GET", "/api/v1/rollouts", VIEWER), 500, "internal")
    assert "RuntimeError" in failed["message"] and "hunter2" not in failed["message"]
    incident = re.search(r"incident (\w+)", failed["message"]).group(1)
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if incident in line]
    assert logged and "hunter2" in logged[0]["message"] and "Traceback" in logged[0]["stack_trace"]


def test_only_a_project_admin_replaces_the_project_wide_sinks(api: Api) -> None:
    doc = "notify:\n  - {name: ops, type: webhook, secret: ops-hook, min_severity: WARNING}\n"
    refused = error(api.call("PUT", "/api/v1/notifications", OPERATOR, data=doc), 403, "insufficient_permissions")
    assert "project-wide notifications is unchanged" in refused["message"]
    stored = api.engine.store.db.collection("settings").document("notifications")
    assert not stored.get().exists

    response = api.call("PUT", "/api/v1/notifications", ADMIN, data=doc, content_type="application/yaml")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["notify"][0]["name"] == "ops"
    assert stored.get().to_dict()["applied_by"] == ADMIN

    invalid = error(api.call("PUT", "/api/v1/notifications", ADMIN, json={"notify": [{"name": "x", "type": "fax"}]}),
                    400, "invalid_request")
    assert "notify.0.type" in invalid["message"] and "unchanged" in invalid["message"]
    assert stored.get().to_dict()["notify"][0]["name"] == "ops"

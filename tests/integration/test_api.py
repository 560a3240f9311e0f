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
def app(emulators) -> Any:
    return create_app(target="api", source=str(ROOT / "functions" / "main.py"), signature_type="http")


@pytest.fixture
def cloud(state: Path) -> Iterator[LocalCloudRun]:
    running = LocalCloudRun(state, startup_timeout_s=30)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def api(firestore_clean, issuer: IssuerServer, cloudbuild: LocalCloudBuild, cloud: LocalCloudRun, app: Any,
        state: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    project = firestore_clean.project
    audience = f"pitstop:{project}"
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": project, "PITSTOP_AUDIENCE": audience, "PITSTOP_ADMINS": f"user:{ADMIN}",
        "PITSTOP_TOKEN_CERTS": issuer.certs_url, "PITSTOP_TOKEN_ISSUERS": issuer.url,
        "PITSTOP_BUILD_ENDPOINT": cloudbuild.url, "PITSTOP_RUN_ENDPOINT": cloud.url,
    }.items():
        monkeypatch.setenv(name, value)
    main = sys.modules["main"]  # functions/main.py, as functions-framework loaded it
    monkeypatch.setattr(main, "_engine", None)  # built from this environment on the first request
    api = Api(app.test_client(), main.engine(), issuer, state, audience)
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

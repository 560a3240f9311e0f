"""The HTTP API (the `api` function): what the CLI and other clients call, as a verified person.

    GET  /api/v1/openapi.json              this API, described (the one route that needs no token)
    GET  /api/v1/whoami                    the caller's verified email and roles
    GET  /api/v1/rollouts?service=&limit=  recent rollouts the caller may read
    GET  /api/v1/rollouts/{id}             one rollout: state, traffic, step, verdict, baseline
    GET  /api/v1/rollouts/{id}/audit       its audit trail, and whether the hash chain is intact
    POST /api/v1/rollouts/{id}:{action}    promote | pause | resume | abort | approve | rollback
    POST /api/v1/rollback                  straight to an earlier good version (`rollback --to`)
    POST /api/v1/deploy                    run the service's build trigger at a ref
    GET  /api/v1/specs                     the specs the caller may read
    PUT  /api/v1/specs/{key}               apply a spec (YAML or JSON); admin
    PUT  /api/v1/pipelines/{service}       apply a pipeline (YAML or JSON); admin of each environment
    GET  /api/v1/releases?service=&limit=  recent releases the caller may read
    GET  /api/v1/releases/{id}             one release: route, each stage, wave, step, regions
    GET  /api/v1/releases/{id}/audit       its whole story: its events and its region rollouts', by time
    POST /api/v1/releases/{id}:{action}    approve | abort | rollback | pause | resume | promote | unfreeze
    PUT  /api/v1/access                    replace the project access document; project admin
    PUT  /api/v1/notifications             replace the project-wide notification sinks; project admin
    GET  /api/v1/metrics/dora?service=&environment=&hotfix_days=   DORA metrics the caller may read

Every request carries the caller's Google-signed ID token; the actor of whatever it does is
the token's verified email. Commands take the road of a `pitstop-commands` message: their
body is parsed first, then `Engine.on_command` verifies the token, checks the permission,
decides and stores one audit event per rollout (or release), or records the refusal in commands/{id}
(unverified senders included, with the email they claimed). Every other route verifies the
token before it reads anything.

Errors are always `{"error": {"code", "message"}}`, the message a sentence saying what failed
and what state things are left in; the codes are `Refused.code`s plus method_not_allowed,
unavailable, upstream and internal. No stack trace ever leaves; unexpected errors are logged.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import flask
from pydantic import ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, RequestRedirect, Rule

from pitstop.core import access
from pitstop.core.models import DOC_ID, Access, Command, Rollout
from pitstop.log import log

if TYPE_CHECKING:
    from pitstop.core.release import Release
    from pitstop.engine import Engine, Reply
    from pitstop.gcp.identity import Identity

MAX_BODY = 512 * 1024  # bytes; the largest valid access document (5 roles x 200 members) is about 260 KB
DEFAULT_LIMIT, MAX_LIMIT = 20, 200
ACTIONS = ("promote", "pause", "resume", "abort", "approve", "rollback")
RELEASE_ACTIONS = ("approve", "abort", "rollback", "pause", "resume", "promote", "unfreeze")
OPENAPI = Path(__file__).with_name("openapi.json")
HTTP_STATUS = {"invalid_request": 400, "unauthenticated": 401, "insufficient_permissions": 403, "not_found": 404,
               "method_not_allowed": 405, "conflict": 409, "internal": 500, "upstream": 502, "unavailable": 503}


class _Segment(BaseConverter):
    """One path segment up to a colon: `/rollouts/{id}:promote` names rollout `{id}`, action `promote`."""

    regex = r"[^/:]+"


# ---------------------------------------------------------------- the routes

ROUTES = Map([
    Rule("/api/v1/openapi.json", methods=["GET"], endpoint="openapi"),
    Rule("/api/v1/whoami", methods=["GET"], endpoint="whoami"),
    Rule("/api/v1/rollouts", methods=["GET"], endpoint="list_rollouts"),
    Rule("/api/v1/rollouts/<segment:rollout_id>", methods=["GET"], endpoint="get_rollout"),
    Rule("/api/v1/rollouts/<segment:rollout_id>/audit", methods=["GET"], endpoint="get_audit"),
    Rule("/api/v1/rollouts/<segment:rollout_id>:<action>", methods=["POST"], endpoint="command"),
    Rule("/api/v1/rollback", methods=["POST"], endpoint="rollback_to"),
    Rule("/api/v1/deploy", methods=["POST"], endpoint="deploy"),
    Rule("/api/v1/specs", methods=["GET"], endpoint="list_specs"),
    Rule("/api/v1/specs/<key>", methods=["PUT"], endpoint="put_spec"),
    Rule("/api/v1/pipelines/<service>", methods=["PUT"], endpoint="put_pipeline"),
    Rule("/api/v1/releases", methods=["GET"], endpoint="list_releases"),
    Rule("/api/v1/releases/<segment:release_id>", methods=["GET"], endpoint="get_release"),
    Rule("/api/v1/releases/<segment:release_id>/audit", methods=["GET"], endpoint="get_release_audit"),
    Rule("/api/v1/releases/<segment:release_id>:<action>", methods=["POST"], endpoint="release_command"),
    Rule("/api/v1/access", methods=["PUT"], endpoint="put_access"),
    Rule("/api/v1/notifications", methods=["PUT"], endpoint="put_notifications"),
    Rule("/api/v1/metrics/dora", methods=["GET"], endpoint="dora_metrics"),
], converters={"segment": _Segment}, strict_slashes=False, merge_slashes=False)

PUBLIC = {"openapi"}
# So that a refused command is recorded.
VERIFIED_BY_THE_ENGINE = {"command", "rollback_to", "deploy", "release_command"}


class ApiError(Exception):
    """An answer other than success: its code (and HTTP status) and its sentence."""

    def __init__(self, code: str, message: str, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or HTTP_STATUS[code]
        self.extra = {k: v for k, v in extra.items() if v not in (None, [], ())}


@dataclass
class Call:
    """One request: its token, the engine (built on first use), and the caller once verified."""

    request: flask.Request
    engine_factory: Callable[[], Engine]
    _identity: Identity | None = None
    _body: bytes | None = None
    _grants: dict[tuple[str, str, str], access.Denial | None] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.engine_factory()

    @property
    def token(self) -> str | None:
        # On GCP, Cloud Run checks the Authorization token (run.invoker, audience: the API's URL) and then strips
        # its signature before the function sees it, so the CLI sends its token again in X-Pitstop-Token (audience:
        # pitstop), and that is the one verified here. Authorization serves clients of the local stack and tests.
        return self.request.headers.get("X-Pitstop-Token") or self.request.headers.get("Authorization")

    def who(self) -> Identity:
        from pitstop.gcp.identity import Unverified

        if self._identity is None:
            try:
                self._identity = self.engine.identify(self.token)
            except Unverified as err:
                raise ApiError("unauthenticated", f"request refused: {err.reason}; nothing was read or changed")
        return self._identity

    def may(self, permission: str, service: str, environment: str) -> access.Denial | None:
        """None if the caller holds `permission` on this service and environment (asked once per request)."""
        asked = (permission, service, environment)
        if asked not in self._grants:
            self._grants[asked] = self.engine.authorize(self.who().email, permission, service, environment,
                                                        self.who().hosted_domain)
        return self._grants[asked]

    def must(self, permission: str, service: str, environment: str) -> None:
        denial = self.may(permission, service, environment)
        if denial is not None:
            raise ApiError("insufficient_permissions", f"{denial.reason}; nothing was read or changed",
                           permission=denial.permission)

    def body(self) -> bytes:
        """The request body, at most MAX_BODY bytes (also when it comes chunked, without a Content-Length)."""
        if self._body is None:
            too_large = ApiError("invalid_request", f"the request body is larger than {MAX_BODY} bytes; nothing "
                                                    f"was read or changed", status=413)
            if (self.request.content_length or 0) > MAX_BODY:
                raise too_large  # refused unread (functions-framework drains it after the answer)
            self._body = self.request.stream.read(MAX_BODY + 1)
            if len(self._body) > MAX_BODY:
                raise too_large
        return self._body


def respond(request: flask.Request, engine: Callable[[], Engine]) -> flask.Response:
    """Route the request, verify its sender, run its route; every failure becomes a JSON error."""
    call = Call(request, engine)
    if request.path == "/dashboard" or request.path.startswith("/dashboard/"):  # the pages (dashboard.py)
        from pitstop.surfaces import dashboard

        return dashboard.respond(call)
    try:
        endpoint, args = ROUTES.bind_to_environ(request.environ).match()
        if endpoint not in PUBLIC | VERIFIED_BY_THE_ENGINE:
            call.who()
        status, body = HANDLERS[endpoint](call, **args)
        return _json(status, body)
    except ApiError as err:
        return _error(err)
    except (NotFound, RequestRedirect):
        return _error(ApiError("not_found", f"there is no route {request.method} {request.path}; the routes are "
                                            f"listed in /api/v1/openapi.json"))
    except MethodNotAllowed as err:
        allowed = sorted(set(err.valid_methods or ()) - {"HEAD", "OPTIONS"})
        return _error(ApiError("method_not_allowed", f"{request.path} does not take {request.method} (it takes "
                                                     f"{', '.join(allowed)}); nothing was read or changed"),
                      {"Allow": ", ".join(allowed)})
    except Exception as err:  # noqa: BLE001 - the one place every other failure becomes a sentence
        return _error(_unexpected(request, err))


# ---------------------------------------------------------------- reads

def openapi(call: Call) -> tuple[int, Any]:
    return 200, _openapi_document()


def whoami(call: Call) -> tuple[int, Any]:
    me, engine = call.who(), call.engine
    project = engine.store.project_access()
    admins = engine.config.admins
    specs = {}
    for spec in engine.store.specs():
        roles = access.roles_of(me.email, [spec.access, project], admins, me.hosted_domain)
        if roles:  # a spec the caller holds no role on is not theirs to know about
            specs[spec.key] = _ordered(roles)
    return 200, {"email": me.email, "audience": me.audience, "expires_at": me.expires_at.isoformat(),
                 "roles": {"project": _ordered(access.roles_of(me.email, [project], admins, me.hosted_domain)),
                           "specs": specs}}


def list_rollouts(call: Call) -> tuple[int, Any]:
    from pitstop.surfaces.rows import rollout_row

    service = call.request.args.get("service") or None
    limit = _limit(call.request.args.get("limit"))
    # Filtered after reading, so read more than asked (up to MAX_LIMIT): a page of others' rollouts must not
    # hide the caller's own.
    recent = call.engine.store.recent(service, MAX_LIMIT if limit < MAX_LIMIT else limit)
    readable = [r for r in recent if call.may("rollout:read", r.service, r.environment) is None][:limit]
    return 200, {"rollouts": [rollout_row(r) for r in readable]}


def get_rollout(call: Call, rollout_id: str) -> tuple[int, Any]:
    from pitstop.surfaces.rows import measurement_rows, rollout_row

    r = _readable_rollout(call, rollout_id)
    return 200, {
        **rollout_row(r),
        "kind": r.kind, "project": r.project, "stable_revision": r.stable_revision,
        "traffic": {"desired": [t.model_dump(mode="json", exclude_none=True) for t in r.desired],
                    "observed": [t.model_dump(mode="json", exclude_none=True) for t in r.observed]
                    if r.observed is not None else None,
                    "desired_generation": r.desired_generation, "observed_generation": r.observed_generation},
        "baseline": r.baseline.model_dump(mode="json", exclude_none=True) if r.baseline else None,
        "hold_until": _iso(r.hold_until), "started_by": r.started_by, "promoted_by": r.promoted_by,
        "superseded_by": r.superseded_by, "finished_at": _iso(r.finished_at),
        "measurements": measurement_rows(r),  # per step and metric, oldest first (the newest MAX_MEASUREMENTS)
    }


def get_audit(call: Call, rollout_id: str) -> tuple[int, Any]:
    from pitstop.surfaces.audit import verify_rollout
    from pitstop.surfaces.rows import event_row

    _readable_rollout(call, rollout_id)
    events = sorted(call.engine.store.events(rollout_id), key=lambda e: (e.seq is not None, e.seq or 0, e.at))
    report = verify_rollout(call.engine.store, rollout_id)
    return 200, {"rollout_id": rollout_id, "events": [event_row(e) for e in events],
                 "chain": {"intact": report.ok, "checked": report.checked, "head": report.head,
                           "problems": report.problems}}


def list_releases(call: Call) -> tuple[int, Any]:
    from pitstop.surfaces.releases import release_row

    service = call.request.args.get("service") or None
    limit = _limit(call.request.args.get("limit"))
    recent = call.engine.store.releases(service, MAX_LIMIT if limit < MAX_LIMIT else limit)  # as list_rollouts
    readable = [r for r in recent if call.may("rollout:read", r.service, _where(r)) is None][:limit]
    return 200, {"releases": [release_row(r) for r in readable]}


def get_release(call: Call, release_id: str) -> tuple[int, Any]:
    from pitstop.surfaces.releases import release_detail

    return 200, release_detail(_readable_release(call, release_id))


def get_release_audit(call: Call, release_id: str) -> tuple[int, Any]:
    from pitstop.surfaces.releases import release_story

    rel = _readable_release(call, release_id)
    events, report = release_story(call.engine.store, rel)
    # A release crosses environments: a region's events are shown only to those who may read its environment.
    events = [e for e in events if e["region"] is None or call.may("rollout:read", rel.service,
                                                                   e["environment"]) is None]
    return 200, {"release_id": rel.id, "events": events,
                 "chain": {"intact": report.ok, "checked": report.checked, "head": report.head,
                           "problems": report.problems}}


def list_specs(call: Call) -> tuple[int, Any]:
    specs = [s for s in call.engine.store.specs() if call.may("rollout:read", s.service, s.environment) is None]
    return 200, {"specs": [{"key": s.key, **s.model_dump(mode="json", exclude_none=True)} for s in specs]}


def dora_metrics(call: Call) -> tuple[int, Any]:
    """DORA metrics per service and environment; those the caller may not read (rollout:read) are left out."""
    from pitstop.core.models import SERVICE_NAME
    from pitstop.surfaces.metrics import dora_report

    args = call.request.args
    service, environment = args.get("service") or None, args.get("environment") or None
    if service and not re.fullmatch(SERVICE_NAME, service):
        raise ApiError("invalid_request", f"service {_short(service, 60)!r} is not a service name (lowercase letters, "
                                          f"digits and dashes)")
    if environment and not re.fullmatch(r"[a-z0-9][-a-z0-9]*", environment):
        raise ApiError("invalid_request", f"environment {_short(environment, 60)!r} is not an environment name "
                                          f"(lowercase letters, digits and dashes)")
    hotfix_days = args.get("hotfix_days") or "7"
    if not hotfix_days.isdigit() or not 1 <= int(hotfix_days) <= 90:
        raise ApiError("invalid_request", f"hotfix_days must be a whole number of days from 1 to 90, got "
                                          f"{_short(hotfix_days, 20)!r}")
    report = dora_report(call.engine.store, service, environment, call.engine.clock(), int(hotfix_days))
    report["services"] = [g for g in report["services"]
                          if call.may("rollout:read", g["service"], g["environment"]) is None]
    return 200, report


# ---------------------------------------------------------------- commands: the engine decides

def command(call: Call, rollout_id: str, action: str) -> tuple[int, Any]:
    if action not in ACTIONS:
        raise ApiError("invalid_request", f"there is no action {action!r}; a rollout takes "
                                          f"{', '.join(ACTIONS)}; nothing changed")
    fields = _fields(call, {"reason", "full"} if action == "promote" else {"reason"}, action)
    return _decide(call, _command(action=action, rollout_id=rollout_id, **fields))


def release_command(call: Call, release_id: str, action: str) -> tuple[int, Any]:
    if action not in RELEASE_ACTIONS:
        raise ApiError("invalid_request", f"there is no action {action!r}; a release takes "
                                          f"{', '.join(RELEASE_ACTIONS)}; nothing changed")
    allowed = {"environment", "region", "reason"} | ({"to_environment"} if action == "promote" else set())
    fields = _fields(call, allowed, action)
    return _decide(call, _command(action=action, release_id=release_id, **fields))


def rollback_to(call: Call) -> tuple[int, Any]:
    fields = _fields(call, {"service", "rollout_id", "environment", "region", "to_version", "reason"}, "rollback")
    if not fields.get("to_version"):
        raise ApiError("invalid_request", "to_version is required (the earlier good version to switch to); to roll "
                                          "back a rollout in progress, POST /api/v1/rollouts/{id}:rollback; "
                                          "nothing changed")
    return _decide(call, _command(action="rollback", **fields))


def deploy(call: Call) -> tuple[int, Any]:
    fields = _fields(call, {"service", "environment", "ref", "reason"}, "deploy")
    missing = [name for name in ("service", "environment", "ref") if not fields.get(name)]
    if missing:
        raise ApiError("invalid_request", f"deploy needs service, environment and ref ({', '.join(missing)} "
                                          f"missing); nothing deployed")
    cmd = _command(action="deploy", **fields)
    build = _reply(call, cmd).build or {}
    return 202, {"command_id": cmd.id, "actor": call.who().email, "build_id": build.get("id"),
                 "log_url": build.get("logUrl"), "service": cmd.service, "environment": cmd.environment,
                 "ref": cmd.ref}


def _decide(call: Call, cmd: Command) -> tuple[int, Any]:
    """One Engine.on_command; the decision for each rollout it reached (409 if none changed anything)."""
    done = _reply(call, cmd)
    results = [_release_result(target, outcome) if cmd.release_id else _result(target, outcome)
               for target, outcome in done.outcomes]
    body = {"command_id": cmd.id, "actor": call.who().email, "results": results}
    if results and all(r["decision"] == "ignored" for r in results):
        what = "release" if cmd.release_id else "rollout"
        reasons = "; ".join(reason for r in results for reason in r["reasons"]) or f"the {what} did not change"
        raise ApiError("conflict", f"{cmd.action} changed nothing: {reasons}", command_id=cmd.id, results=results)
    return 200, body


def _reply(call: Call, cmd: Command) -> Reply:
    from pitstop.engine import Refused

    reply = call.engine.on_command(cmd, call.token)
    if isinstance(reply, Refused):
        raise ApiError(reply.code, reply.reason, command_id=cmd.id, permission=reply.permission,
                       candidates=list(reply.candidates))
    return reply


def _result(rollout_id: str, outcome: Any) -> dict[str, Any]:
    if outcome.stored:
        audit, after = outcome.decision.audit, outcome.decision.rollout
        return {"rollout_id": rollout_id, "decision": audit.decision, "state": after.state,
                "reasons": list(audit.reasons), "traffic": audit.traffic_after}
    if outcome.missing:
        return {"rollout_id": rollout_id, "decision": "ignored", "state": None,
                "reasons": [f"rollout {rollout_id} no longer exists"], "traffic": None}
    before = outcome.rollout or (outcome.decision.rollout if outcome.decision else None)
    return {"rollout_id": rollout_id, "decision": "duplicate" if outcome.duplicate else "unchanged",
            "state": before.state if before else None, "reasons": [], "traffic": None}


def _release_result(release_id: str, outcome: Any) -> dict[str, Any]:
    """A release's decision: its state and where it is (the environment it is in or waits for)."""
    if outcome.stored:
        audit, after = outcome.decision.audit, outcome.decision.release
        return {"release_id": release_id, "decision": audit.decision, "state": after.state,
                "environment": after.current, "reasons": list(audit.reasons), "traffic": None}
    decision = "duplicate" if outcome.duplicate else "unchanged"
    after = outcome.decision.release if outcome.decision is not None else None
    return {"release_id": release_id, "decision": decision, "state": after.state if after else None,
            "environment": after.current if after else None, "reasons": [], "traffic": None}


# ---------------------------------------------------------------- specs and access: admins

def put_spec(call: Call, key: str) -> tuple[int, Any]:
    from pitstop.core.routing import spec_collisions
    from pitstop.core.spec import SpecError, parse_spec

    me, engine = call.who(), call.engine
    try:
        spec = parse_spec(_document(call, f"spec {key}"), f"spec {key}")
    except SpecError as err:
        raise ApiError("invalid_request", f"{err}\nNothing was applied; the stored spec is unchanged.") from None
    if spec.key != key:
        raise ApiError("invalid_request", f"the body is spec {spec.key} (service {spec.service}, environment "
                                          f"{spec.environment}) but the URL names {key}; nothing was applied")
    # Checked against the grants in force, never the body's: nobody makes themselves admin by writing a spec,
    # and a new spec (no grants yet) takes a project admin.
    call.must("spec:write", spec.service, spec.environment)
    clashes = spec_collisions(spec, engine.store.specs(), engine.config.project)
    if clashes:
        raise ApiError("conflict", f"spec {spec.key} was not applied: " + "; ".join(clashes)
                       + ". Two specs must not roll out the same Cloud Run service; the stored specs are unchanged.")
    engine.store.put_spec(spec, me.email, engine.clock())
    log("NOTICE", f"{me.email} applied spec {spec.key}", service=spec.service, actor=me.email)
    return 200, {"key": spec.key, "applied_by": me.email}


def put_pipeline(call: Call, service: str) -> tuple[int, Any]:
    """A pipeline and a spec per environment (`Store.put_pipeline`): spec:write on each, as `put_spec`."""
    from pitstop.core.pipeline import parse_pipeline
    from pitstop.core.routing import spec_collisions
    from pitstop.core.spec import SpecError

    me, engine = call.who(), call.engine
    what = f"pipeline {service}"
    unchanged = "Nothing was applied; the stored pipeline and specs are unchanged."
    try:
        doc = _document(call, what)
    except SpecError as err:
        raise ApiError("invalid_request", f"{err}\n{unchanged}") from None
    if not isinstance(doc, dict):
        raise ApiError("invalid_request", f"{what}: expected a mapping with service and environments. {unchanged}")
    try:
        pipeline = parse_pipeline(doc, what)
    except SpecError as err:
        raise ApiError("invalid_request", f"{err}\n{unchanged}") from None
    if pipeline.service != service:
        raise ApiError("invalid_request", f"the body is the pipeline of {pipeline.service} but the URL names "
                                          f"{service}; nothing was applied")
    for environment in pipeline.environments:  # each is a spec: its grants in force, never the body's
        call.must("spec:write", pipeline.service, environment)
    # Its own earlier environments are replaced (or left unused), never a collision; anything else is.
    derived = pipeline.specs()
    others = [s for s in engine.store.specs() if not (s.service == pipeline.service and s.pipeline)]
    clashes = list(dict.fromkeys(c for spec in derived
                                 for c in spec_collisions(spec, others + derived, engine.config.project)))
    if clashes:
        raise ApiError("conflict", f"pipeline {pipeline.service} was not applied: " + "; ".join(clashes)
                       + ". Two specs must not roll out the same Cloud Run service; the stored specs are unchanged.")
    engine.store.put_pipeline(pipeline, me.email, engine.clock())
    log("NOTICE", f"{me.email} applied the pipeline of {pipeline.service} ({', '.join(pipeline.environments)})",
        service=pipeline.service, actor=me.email)
    return 200, {"service": pipeline.service, "environments": list(pipeline.environments), "applied_by": me.email}


def put_access(call: Call) -> tuple[int, Any]:
    from pitstop.core.spec import SpecError

    me, engine = call.who(), call.engine
    _project_admin(call, "the access document")
    try:
        doc = _document(call, "access document")
    except SpecError as err:
        raise ApiError("invalid_request", f"{err}\nNothing was applied; the access document is unchanged.") from None
    if not isinstance(doc, dict):
        raise ApiError("invalid_request", "the access document must be a mapping of roles to members; nothing was "
                                          "applied")
    try:
        grants = Access.model_validate(doc, strict=False)
    except ValidationError as err:
        raise ApiError("invalid_request", "invalid access document:\n" + _field_errors(err)
                       + "\nNothing was applied; the access document is unchanged.") from None
    engine.store.put_access(grants, me.email, engine.clock())
    log("NOTICE", f"{me.email} applied the project access document", actor=me.email)
    return 200, {"applied_by": me.email, "access": grants.model_dump(mode="json")}


def put_notifications(call: Call) -> tuple[int, Any]:
    """The project-wide sinks (a document whose only key is `notify:`), for every service's events."""
    from pitstop.core.spec import SpecError
    from pitstop.surfaces.notifications import apply_project_sinks

    me, engine = call.who(), call.engine
    _project_admin(call, "the project-wide notifications")
    try:
        sinks = apply_project_sinks(engine.store.db, _document(call, "notifications document"), me.email,
                                    engine.clock())
    except SpecError as err:
        raise ApiError("invalid_request", f"{err}\nNothing was applied; the project-wide sinks are unchanged.") from None
    log("NOTICE", f"{me.email} applied the project-wide notifications", actor=me.email)
    return 200, {"applied_by": me.email, "notify": sinks.model_dump(mode="json", exclude_none=True)["notify"]}


def _project_admin(call: Call, what: str) -> None:
    me, engine = call.who(), call.engine
    denial = access.check(me.email, "spec:write", f"the project ({what})", [engine.store.project_access()],
                          engine.config.admins, me.hosted_domain)
    if denial is not None:
        raise ApiError("insufficient_permissions", f"{denial.reason}; {what} is unchanged",
                       permission=denial.permission)


HANDLERS: dict[str, Callable[..., tuple[int, Any]]] = {
    "openapi": openapi, "whoami": whoami, "list_rollouts": list_rollouts, "get_rollout": get_rollout,
    "get_audit": get_audit, "command": command, "rollback_to": rollback_to, "deploy": deploy,
    "list_specs": list_specs, "put_spec": put_spec, "put_access": put_access, "put_notifications": put_notifications, "put_pipeline": put_pipeline,
    "list_releases": list_releases, "get_release": get_release, "get_release_audit": get_release_audit,
    "release_command": release_command, "dora_metrics": dora_metrics,
}


# ---------------------------------------------------------------- helpers

def _readable_rollout(call: Call, rollout_id: str) -> Rollout:
    r = call.engine.store.rollout(rollout_id) if re.fullmatch(DOC_ID, rollout_id) else None
    if r is None:
        raise ApiError("not_found", f"there is no rollout {rollout_id}")
    call.must("rollout:read", r.service, r.environment)
    return r


def _readable_release(call: Call, release_id: str) -> Release:
    rel = call.engine.store.release(release_id) if re.fullmatch(DOC_ID, release_id) else None
    if rel is None:
        raise ApiError("not_found", f"there is no release {release_id}")
    call.must("rollout:read", rel.service, _where(rel))
    return rel


def _where(rel: Release) -> str:
    """The environment whose grants decide who reads a release: the one it is in or waits for."""
    return rel.current or rel.route[0]


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError("invalid_request", f"limit must be a whole number from 1 to {MAX_LIMIT}, got {value[:20]!r}")
    return int(value)


def _json_body(call: Call) -> dict[str, Any]:
    """The body as a JSON object ({} when empty)."""
    data = call.body()
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ApiError("invalid_request", f"the body is not valid JSON ({_short(err)}); nothing changed") from None
    if not isinstance(doc, dict):
        raise ApiError("invalid_request", f"the body must be a JSON object, not {type(doc).__name__}; nothing changed")
    return doc


def _fields(call: Call, allowed: set[str], action: str) -> dict[str, Any]:
    doc = _json_body(call)
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ApiError("invalid_request", f"{action} takes {', '.join(sorted(allowed))}; unknown field "
                                          f"{', '.join(_short(u) for u in unknown)}; nothing changed")
    return {k: v for k, v in doc.items() if v is not None}


def _command(**fields: Any) -> Command:
    try:
        return Command.model_validate({"id": f"api-{uuid.uuid4().hex}", **fields})
    except ValidationError as err:
        raise ApiError("invalid_request", f"invalid {fields.get('action')} request:\n" + _field_errors(err)
                       + "\nNothing changed.") from None


def _document(call: Call, what: str) -> Any:
    """The body as a document: JSON if Content-Type is application/json, YAML otherwise. A YAML body is read by
    spec.load_yaml (no aliases, bounded nesting); either refusal is a SpecError naming `what`."""
    from pitstop.core import limits
    from pitstop.core.spec import SpecError, load_yaml

    try:
        text = call.body().decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{what}: the body is not UTF-8 text") from None
    if call.request.mimetype != "application/json":
        return load_yaml(text, what)
    if limits.nests_deeper(text):
        raise SpecError(f"{what}: the JSON nests deeper than {limits.MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise SpecError(f"{what}: the body is not valid JSON ({_short(err)})") from None


def _field_errors(err: ValidationError) -> str:
    """One line per problem, with its field path (the values themselves are not quoted: they may be huge)."""
    lines = []
    for e in err.errors()[:20]:
        where = ".".join(str(p) for p in e["loc"]) or "(top)"
        message = "unknown field; check the spelling" if e["type"] == "extra_forbidden" else \
            "required field is missing" if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _ordered(roles: set[str]) -> list[str]:
    return [role for role in access.ROLES if role in roles]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


@cache
def _openapi_document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> flask.Response:
    response = flask.Response(json.dumps(body, default=str), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def _error(err: ApiError, headers: dict[str, str] | None = None) -> flask.Response:
    """The one error shape: {"error": {"code", "message", ...details}}."""
    if err.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="pitstop"'}
    return _json(err.status, {"error": {"code": err.code, "message": err.message, **err.extra}}, headers)


def _unexpected(request: flask.Request, err: Exception) -> ApiError:
    """A failure the routes did not foresee: named and logged, never a stack trace in the answer."""
    from google.api_core import exceptions as google

    from pitstop.gcp.identity import CertsUnavailable

    where = f"{request.method} {request.path}"
    if isinstance(err, CertsUnavailable):
        log("ERROR", f"{where}: {err}")
        return ApiError("unavailable", f"pitstop could not fetch the certificates to verify your token ({err}); "
                                       f"nothing was read or changed. Retry in a moment.")
    if isinstance(err, google.GoogleAPICallError):
        log("ERROR", f"{where}: a Google API call failed: {err}")
        return ApiError("upstream", f"a Google API call failed while handling {where}: {_short(err.message, 300)}. "
                                    f"It may have been partly carried out: read the rollout or spec again before "
                                    f"retrying.")
    import traceback

    incident = uuid.uuid4().hex[:12]
    log("ERROR", f"{where} failed: {type(err).__name__}: {_short(err, 500)}", incident=incident,
        stack_trace=traceback.format_exc())
    return ApiError("internal", f"pitstop failed on an unexpected error ({type(err).__name__}) while handling "
                                f"{where}; it is logged as incident {incident}. It may have been partly carried "
                                f"out: read the rollout or spec again before retrying.")

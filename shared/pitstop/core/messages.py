"""Pub/Sub messages -> pitstop inputs. Every way a message can be wrong raises
`BadMessage` with a sentence a person can act on; nothing here touches state.

Input ids make redelivery harmless: they come from the content where the
content names itself (build id + status, incident + state, a sample's window),
and from the Pub/Sub message id otherwise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Callable, ParamSpec, TypeVar

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from pitstop.core.models import Alert, Artifact, BuildFinished, Command, HealthSample, Tick


P = ParamSpec("P")
T = TypeVar("T")


class BadMessage(ValueError):
    """A message pitstop can never process: logged, acknowledged, nothing changed."""


def _explain(err: ValidationError, what: str) -> BadMessage:
    problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['msg']}" for e in err.errors())
    return BadMessage(f"invalid {what}: {problems}")


def refusing(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Any way a payload can be off (a wrong type deep inside, say) becomes a BadMessage, never a crash:
    a crash answers 500 and Pub/Sub would redeliver the message forever."""
    def wrap(parse: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(parse)
        def parse_or_refuse(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return parse(*args, **kwargs)
            except BadMessage:
                raise
            except ValidationError as err:
                raise _explain(err, what) from None
            except (TypeError, AttributeError, ValueError, KeyError) as err:
                raise BadMessage(f"invalid {what}: {type(err).__name__}: {err}") from None
        return parse_or_refuse
    return wrap


def doc_id(text: str) -> str:
    """An input id usable as a Firestore document id (no '/', no leading '__', bounded)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("_")[:200] or "x"


def message_id(event_data: Any) -> str:
    message = event_data.get("message") if isinstance(event_data, dict) else None
    if not isinstance(message, dict):
        raise BadMessage("not a Pub/Sub CloudEvent: data has no 'message' object")
    return str(message.get("messageId") or message.get("message_id") or "")


@refusing("Pub/Sub message")
def envelope(event_data: Any) -> tuple[dict[str, Any], dict[str, str], str]:
    """The Pub/Sub message inside a CloudEvent: (json payload, attributes, message id)."""
    mid = message_id(event_data)
    message = event_data["message"]
    name = f"message {mid or '?'}"
    raw = message.get("data")
    if not raw:
        raise BadMessage(f"{name} has no data")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as err:
        raise BadMessage(f"{name}: data is not valid base64-encoded UTF-8 ({err})") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadMessage(f"{name}: data is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(payload, dict):
        raise BadMessage(f"{name}: data is JSON {type(payload).__name__}, expected an object")
    return payload, dict(message.get("attributes") or {}), mid


# ---------------------------------------------------------------- Cloud Build

@refusing("Cloud Build message")
def parse_build(payload: dict[str, Any], attributes: dict[str, str]) -> BuildFinished:
    build_id = payload.get("id") or attributes.get("buildId")
    status = payload.get("status") or attributes.get("status")
    if not build_id or not status:
        raise BadMessage("Cloud Build message without build id or status (fields 'id' and 'status')")
    subs = payload.get("substitutions") or {}
    if not isinstance(subs, dict):
        raise BadMessage("Cloud Build message: 'substitutions' is not an object")
    subs = {str(k): str(v) for k, v in subs.items()}
    if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", str(build_id)):
        raise BadMessage(f"Cloud Build message: {str(build_id)[:80]!r} is not a build id")
    trigger = subs.get("TRIGGER_NAME") or None
    commit = subs.get("COMMIT_SHA") or None
    artifact = None
    if status == "SUCCESS":
        artifact = _artifact(payload, subs, str(build_id), commit, trigger)
    return BuildFinished(
        id=f"build-{build_id}-{status}", build_id=str(build_id), status=status,
        status_detail=payload.get("statusDetail"), repo=subs.get("REPO_NAME") or None,
        branch=subs.get("BRANCH_NAME") or None, tag=subs.get("TAG_NAME") or None, trigger=trigger,
        trigger_id=payload.get("buildTriggerId"), commit=commit, log_url=payload.get("logUrl"),
        artifact=artifact, substitutions=subs,
    )


def _artifact(payload: dict[str, Any], subs: dict[str, str], build_id: str, commit: str | None,
              trigger: str | None) -> Artifact | None:
    images = ((payload.get("results") or {}).get("images")) or []
    images = [i for i in images if isinstance(i, dict) and i.get("digest") and i.get("name")]
    if not images:
        return None  # the caller explains: the build pushed inside a step or listed no images
    service = subs.get("_SERVICE")
    # A build may push several images: `_SERVICE` names the one whose repository is the service's.
    chosen = next((i for i in images if re.split(r"[:@]", i["name"].rsplit("/", 1)[-1])[0] == service), images[0])
    version = (subs.get("_VERSION") or subs.get("TAG_NAME") or subs.get("SHORT_SHA")
               or (commit or "")[:7] or build_id[:8])
    return Artifact(
        image=chosen["name"], digest=chosen["digest"], build_id=build_id, commit=commit, version=version,
        repo=subs.get("REPO_NAME") or None, branch=subs.get("BRANCH_NAME") or None, tag=subs.get("TAG_NAME") or None,
        trigger=trigger, log_url=payload.get("logUrl"), created_at=_timestamp(payload.get("createTime")),
    )


def _timestamp(value: Any) -> datetime | None:
    return TypeAdapter(AwareDatetime).validate_python(value) if value else None


# ---------------------------------------------------------------- health samples

@refusing("health sample")
def parse_health(payload: dict[str, Any]) -> HealthSample:
    sample = HealthSample.model_validate_json(json.dumps(payload))
    # The same sample published twice is one sample: name it by its content.
    key = "|".join(str(x) for x in (sample.service, sample.region, sample.revision, sample.window_start.isoformat(),
                                    sample.window_end.isoformat(), sample.source, sample.request_count,
                                    sample.error_count, sample.latency_p99_ms))
    return sample.model_copy(update={"id": "health-" + hashlib.sha256(key.encode()).hexdigest()[:24]})


# ---------------------------------------------------------------- Cloud Monitoring incidents

@refusing("Cloud Monitoring incident")
def parse_alert(payload: dict[str, Any]) -> Alert:
    incident = payload.get("incident")
    if not isinstance(incident, dict):
        raise BadMessage("Cloud Monitoring notification without an 'incident' object")
    version = str(payload.get("version", "")).lower()
    state = str(incident.get("state", "")).lower()
    if state not in ("open", "closed"):
        raise BadMessage(f"Cloud Monitoring incident state {incident.get('state')!r} is neither open nor closed")
    incident_id = str(incident.get("incident_id") or "")
    if not incident_id:
        raise BadMessage("Cloud Monitoring incident without incident_id")
    resource = (incident.get("resource") or {}).get("labels") or {}
    user_labels = incident.get("policy_user_labels") or {}
    condition = incident.get("condition_name") or (incident.get("condition") or {}).get("name")
    return Alert(
        id=doc_id(f"alert-{incident_id}-{state}"), incident_id=incident_id, state=state, test=version == "test",
        policy=incident.get("policy_name"), condition=condition, summary=incident.get("summary"),
        url=incident.get("url"), service=resource.get("service_name") or user_labels.get("service"),
        revision=resource.get("revision_name"), location=resource.get("location"),
        project=resource.get("project_id"), started_at=_epoch(incident.get("started_at")),
        observed_value=_str(incident.get("observed_value")), threshold_value=_str(incident.get("threshold_value")),
    )


def _epoch(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), timezone.utc) if value not in (None, "") else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------- commands and ticks

@refusing("operator command")
def parse_command(payload: dict[str, Any], message_id: str) -> Command:
    given = payload.get("id")
    data = {**payload, "id": doc_id(str(given)) if given else f"command-{doc_id(message_id)}"}
    return Command.model_validate_json(json.dumps(data))


def parse_tick(message_id: str) -> Tick:
    return Tick(id=f"tick-{doc_id(message_id or 'manual')}")

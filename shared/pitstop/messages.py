"""Pub/Sub messages -> pitstop inputs. Every way a message can be wrong raises
`BadMessage` with a sentence a person can act on; nothing here touches state.

Input ids make redelivery harmless: they come from the content where the
content names itself (build id + status, incident + state, a sample's window),
and from the Pub/Sub message id otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from pydantic import ValidationError

from pitstop.models import Alert, Artifact, BuildFinished, Command, HealthSample, Tick


class BadMessage(ValueError):
    """A message pitstop can never process: logged, acknowledged, nothing changed."""


def message_id(event_data: Any) -> str:
    message = event_data.get("message") if isinstance(event_data, dict) else None
    if not isinstance(message, dict):
        raise BadMessage("not a Pub/Sub CloudEvent: data has no 'message' object")
    return str(message.get("messageId") or message.get("message_id") or "")


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


def _explain(err: ValidationError, what: str) -> BadMessage:
    problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['msg']}" for e in err.errors())
    return BadMessage(f"invalid {what}: {problems}")


# ---------------------------------------------------------------- Cloud Build

def parse_build(payload: dict[str, Any], attributes: dict[str, str]) -> BuildFinished:
    build_id = payload.get("id") or attributes.get("buildId")
    status = payload.get("status") or attributes.get("status")
    if not build_id or not status:
        raise BadMessage("Cloud Build message without build id or status (fields 'id' and 'status')")
    subs = payload.get("substitutions") or {}
    if not isinstance(subs, dict):
        raise BadMessage("Cloud Build message: 'substitutions' is not an object")
    subs = {str(k): str(v) for k, v in subs.items()}
    trigger = subs.get("TRIGGER_NAME") or payload.get("buildTriggerId")
    commit = subs.get("COMMIT_SHA") or None
    artifact = None
    if status == "SUCCESS":
        artifact = _artifact(payload, subs, str(build_id), commit, trigger)
    try:
        return BuildFinished(
            id=f"build-{build_id}-{status}", build_id=str(build_id), status=status,
            status_detail=payload.get("statusDetail"), repo=subs.get("REPO_NAME") or None,
            branch=subs.get("BRANCH_NAME") or None, tag=subs.get("TAG_NAME") or None, trigger=trigger,
            commit=commit, log_url=payload.get("logUrl"), artifact=artifact, substitutions=subs,
        )
    except ValidationError as err:
        raise _explain(err, f"Cloud Build message for build {build_id}") from None


def _artifact(payload: dict[str, Any], subs: dict[str, str], build_id: str, commit: str | None,
              trigger: str | None) -> Artifact | None:
    images = ((payload.get("results") or {}).get("images")) or []
    images = [i for i in images if isinstance(i, dict) and i.get("digest") and i.get("name")]
    if not images:
        return None  # the caller explains: the build pushed inside a step or listed no images
    service = subs.get("_SERVICE")
    chosen = next((i for i in images if service and service in i["name"].rsplit("/", 1)[-1]), images[0])
    version = (subs.get("_VERSION") or subs.get("TAG_NAME") or subs.get("SHORT_SHA")
               or (commit or "")[:7] or build_id[:8])
    return Artifact(
        image=chosen["name"], digest=chosen["digest"], build_id=build_id, commit=commit, version=version,
        repo=subs.get("REPO_NAME") or None, branch=subs.get("BRANCH_NAME") or None, tag=subs.get("TAG_NAME") or None,
        trigger=trigger, log_url=payload.get("logUrl"), created_at=None,
    )


# ---------------------------------------------------------------- health samples

def parse_health(payload: dict[str, Any], message_id: str) -> HealthSample:
    try:
        sample = HealthSample.model_validate_json(json.dumps(payload))
    except ValidationError as err:
        raise _explain(err, "health sample") from None
    # The same sample published twice is one sample: name it by its content.
    key = "|".join(str(x) for x in (sample.service, sample.region, sample.revision, sample.window_start.isoformat(),
                                    sample.window_end.isoformat(), sample.source, sample.request_count,
                                    sample.error_count, sample.latency_p99_ms))
    return sample.model_copy(update={"id": "health-" + hashlib.sha256(key.encode()).hexdigest()[:24]})


# ---------------------------------------------------------------- Cloud Monitoring incidents

def parse_alert(payload: dict[str, Any], message_id: str) -> Alert:
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
        id=f"alert-{incident_id}-{state}", incident_id=incident_id, state=state, test=version == "test",
        policy=incident.get("policy_name"), condition=condition, summary=incident.get("summary"),
        url=incident.get("url"), service=resource.get("service_name") or user_labels.get("service"),
        revision=resource.get("revision_name"), location=resource.get("location"),
        observed_value=_str(incident.get("observed_value")), threshold_value=_str(incident.get("threshold_value")),
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------- commands and ticks

def parse_command(payload: dict[str, Any], message_id: str) -> Command:
    data = {"id": payload.get("id") or f"command-{message_id}", **{k: v for k, v in payload.items() if k != "id"}}
    try:
        return Command.model_validate_json(json.dumps(data))
    except ValidationError as err:
        raise _explain(err, "operator command") from None


def parse_tick(message_id: str) -> Tick:
    return Tick(id=f"tick-{message_id or 'manual'}")

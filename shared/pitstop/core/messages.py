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
from typing import Any, Callable, ParamSpec, TypeVar, get_args

from pydantic import TypeAdapter, ValidationError

from pitstop.core import limits
from pitstop.core.models import (
    Alert, Artifact, BuildFinished, BuildStatus, Command, HealthSample, Tick, Timestamp,
)


P = ParamSpec("P")
T = TypeVar("T")


class BadMessage(ValueError):
    """A message pitstop can never process: logged, acknowledged, nothing changed."""


def _explain(err: ValidationError, what: str) -> BadMessage:
    problems = "; ".join(_where(e["loc"]) + e["msg"].removeprefix("Value error, ") for e in err.errors())
    return BadMessage(f"invalid {what}: {problems}")


def _where(loc: tuple[Any, ...]) -> str:
    """'field.sub: ', or '' for a problem of the whole message."""
    # An unknown field's name comes from the payload: it may be long, or not printable.
    path = ".".join(limits.truncate(limits.valid_unicode(str(x)), 40) for x in loc)
    return f"{path}: " if path else ""


# What a payload can make a parser raise. Python's own parsing and arithmetic raise OverflowError
# (1e20 seconds as a date), RecursionError (deep nesting) and UnicodeError (lone surrogates; a
# ValueError): the payload's fault all the same, so each becomes a BadMessage like any other.
_PAYLOAD_ERRORS = (TypeError, AttributeError, ValueError, KeyError, IndexError, ArithmeticError)


def refusing(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Any way a payload can be off (a wrong type deep inside, say) becomes a BadMessage, never a crash:
    a crash answers 500 and Pub/Sub would redeliver the message forever."""
    def wrap(parse: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(parse)
        def parse_or_refuse(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return parse(*args, **kwargs)
            except BadMessage as err:
                raise BadMessage(_short(str(err))) from None
            except ValidationError as err:
                raise BadMessage(_short(str(_explain(err, what)))) from None
            except RecursionError:
                raise BadMessage(f"invalid {what}: values nest too deeply to read") from None
            except _PAYLOAD_ERRORS as err:
                raise BadMessage(_short(f"invalid {what}: {type(err).__name__}: {err}")) from None
        return parse_or_refuse
    return wrap


def _short(reason: str) -> str:
    """A reason fit for one log line: valid Unicode, at most MAX_TEXT characters."""
    return limits.truncate(limits.valid_unicode(reason))


def _object(container: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """`container[key]`, which must be a JSON object when present; {} when absent or null."""
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadMessage(f"{where}.{key} is {_kind(value)}, expected an object")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def doc_id(text: str) -> str:
    """An input id usable as a Firestore document id: no '/', no leading '__', at most MAX_ID characters.
    A longer text keeps its start and ends in a hash of the whole, so two long ids stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("_") or "x"
    if len(safe) <= limits.MAX_ID:
        return safe
    digest = hashlib.sha256(limits.valid_unicode(text).encode()).hexdigest()[:24]
    return f"{safe[: limits.MAX_ID - len(digest) - 1]}-{digest}"


def message_id(event_data: Any) -> str:
    message = event_data.get("message") if isinstance(event_data, dict) else None
    if not isinstance(message, dict):
        raise BadMessage("not a Pub/Sub CloudEvent: data has no 'message' object")
    mid = message.get("messageId") or message.get("message_id") or ""
    if isinstance(mid, bool) or not isinstance(mid, (str, int)) or len(str(mid)) > limits.MAX_ID:
        raise BadMessage(f"not a Pub/Sub message: messageId {limits.preview(mid)} is not an id of at most "
                         f"{limits.MAX_ID} characters")
    return str(mid)


# base64 turns 3 bytes into 4 characters: a longer text cannot decode to MAX_PAYLOAD_BYTES or less.
_MAX_BASE64 = (limits.MAX_PAYLOAD_BYTES + 2) // 3 * 4


@refusing("Pub/Sub message")
def envelope(event_data: Any) -> tuple[dict[str, Any], dict[str, str], str]:
    """The Pub/Sub message inside a CloudEvent: (json payload, attributes, message id)."""
    mid = message_id(event_data)
    message = event_data["message"]
    name = f"message {mid or '?'}"
    raw = message.get("data")
    if not raw:
        raise BadMessage(f"{name} has no data")
    if not isinstance(raw, str):
        raise BadMessage(f"{name}: data is {_kind(raw)}, expected base64 text")
    if len(raw) > _MAX_BASE64:  # refused before decoding: a 10 MB message costs nothing
        raise BadMessage(f"{name}: data is larger than the {limits.MAX_PAYLOAD_BYTES // 1024} KiB pitstop "
                         f"accepts ({len(raw) * 3 // 4} bytes)")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as err:
        raise BadMessage(f"{name}: data is not valid base64-encoded UTF-8 ({err})") from None
    payload = _json_object(text, name)
    return payload, _attributes(message.get("attributes"), name), mid


def _json_object(text: str, name: str) -> dict[str, Any]:
    if len(text.encode("utf-8")) > limits.MAX_PAYLOAD_BYTES:
        raise BadMessage(f"{name}: data is larger than the {limits.MAX_PAYLOAD_BYTES // 1024} KiB pitstop accepts")
    if limits.nests_deeper(text, limits.MAX_DEPTH):
        raise BadMessage(f"{name}: data nests arrays and objects more than {limits.MAX_DEPTH} levels deep, "
                         f"deeper than any GCP message")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadMessage(f"{name}: data is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (ValueError, RecursionError) as err:  # a number of more than 4,300 digits; nesting, still
        raise BadMessage(f"{name}: data is JSON pitstop cannot read ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict):
        raise BadMessage(f"{name}: data is JSON {type(payload).__name__}, expected an object")
    return payload


def _attributes(value: Any, name: str) -> dict[str, str]:
    """Pub/Sub attributes: string keys and values, a bounded number (GCP allows 100; a stand-in may not)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadMessage(f"{name}: attributes is {_kind(value)}, expected an object")
    if len(value) > limits.MAX_ENTRIES:
        raise BadMessage(f"{name}: {len(value)} attributes, more than {limits.MAX_ENTRIES}")
    for key, item in value.items():
        if not (isinstance(key, str) and isinstance(item, str)) or len(key) > limits.MAX_LABEL \
                or len(item) > limits.MAX_TEXT:
            raise BadMessage(f"{name}: attribute {limits.preview(key, 40)} is not a string of at most "
                             f"{limits.MAX_TEXT} characters")
    return dict(value)


# ---------------------------------------------------------------- Cloud Build

@refusing("Cloud Build message")
def parse_build(payload: dict[str, Any], attributes: dict[str, str]) -> BuildFinished:
    build_id = payload.get("id") or attributes.get("buildId")
    status = payload.get("status") or attributes.get("status")
    if not build_id or not status:
        raise BadMessage("Cloud Build message without build id or status (fields 'id' and 'status')")
    if not isinstance(build_id, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,100}", build_id):
        raise BadMessage(f"Cloud Build message: {limits.preview(build_id)} is not a build id")
    if not isinstance(status, str) or status not in BUILD_STATUSES:
        raise BadMessage(f"Cloud Build message: status {limits.preview(status)} is not a Cloud Build status "
                         f"({', '.join(BUILD_STATUSES)})")
    subs = _substitutions(payload)
    trigger = subs.get("TRIGGER_NAME") or None
    commit = subs.get("COMMIT_SHA") or None
    artifact = None
    if status == "SUCCESS":
        artifact = _artifact(payload, subs, build_id, commit, trigger)
    name = payload.get("name")
    location = re.fullmatch(r"projects/[^/]+/locations/([a-z0-9-]{1,63})/builds/[^/]+", name) \
        if isinstance(name, str) else None
    project = payload.get("projectId")
    return BuildFinished(
        project=project if isinstance(project, str) and re.fullmatch(r"[a-z0-9.:-]{1,100}", project) else None,
        location=location.group(1) if location else None,
        images=[(i["name"], i["digest"]) for i in _images(payload)] if status == "SUCCESS" else [],
        id=f"build-{build_id}-{status}", build_id=build_id, status=status,
        status_detail=payload.get("statusDetail"), repo=subs.get("REPO_NAME") or None,
        branch=subs.get("BRANCH_NAME") or None, tag=subs.get("TAG_NAME") or None, trigger=trigger,
        trigger_id=payload.get("buildTriggerId"), commit=commit, log_url=payload.get("logUrl"),
        artifact=artifact, substitutions=subs,
    )


BUILD_STATUSES = get_args(BuildStatus)


def _substitutions(payload: dict[str, Any]) -> dict[str, str]:
    """Cloud Build's substitutions are strings; anything else is not a build message."""
    subs = _object(payload, "substitutions", "Cloud Build message")
    for key, value in subs.items():
        if not isinstance(value, str):
            raise BadMessage(f"Cloud Build message: substitution {limits.preview(key, 40)} is {_kind(value)}, "
                             f"expected a string")
    return subs


def _artifact(payload: dict[str, Any], subs: dict[str, str], build_id: str, commit: str | None,
              trigger: str | None) -> Artifact | None:
    images = _images(payload)
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


def _images(payload: dict[str, Any]) -> list[dict[str, str]]:
    """`results.images` with a name and a digest each; an image with a malformed digest is refused, since
    deploying it by that digest would fail (or deploy something else)."""
    images = _object(payload, "results", "Cloud Build message").get("images") or []
    if not isinstance(images, list):
        raise BadMessage(f"Cloud Build message: results.images is {_kind(images)}, expected an array")
    found = []
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not image.get("digest") or not image.get("name"):
            continue
        name, digest = image["name"], image["digest"]
        if not isinstance(name, str) or not isinstance(digest, str):
            raise BadMessage(f"Cloud Build message: results.images[{i}] has a name or digest that is not a string")
        if not limits.DIGEST.fullmatch(digest):
            raise BadMessage(f"Cloud Build message: results.images[{i}].digest {limits.preview(digest)} of image "
                             f"{limits.preview(name)} is not 'sha256:' and 64 lowercase hex digits")
        found.append(image)
    return found


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(Timestamp)


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return _TIMESTAMP.validate_python(value)
    except ValidationError as err:
        problem = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise BadMessage(f"Cloud Build message: createTime {limits.preview(value)}: {problem}") from None


# ---------------------------------------------------------------- health samples

def _as_json(payload: dict[str, Any], what: str) -> str:
    """The payload as JSON text, for pydantic's JSON mode (timestamps as text, nothing coerced)."""
    text = json.dumps(payload, ensure_ascii=False)
    if not limits.is_unicode(text):  # pydantic would only say "unexpected end of hex escape": say where
        where = _lone_surrogate(payload, "") or "a field name"
        raise BadMessage(f"invalid {what}: {where} contains a lone surrogate (\\ud800-\\udfff), which is not "
                         f"valid Unicode text")
    return text


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that is not valid Unicode; None if all are."""
    if isinstance(value, str):
        return None if limits.is_unicode(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not limits.is_unicode(key):
            return path
        found = _lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


@refusing("health sample")
def parse_health(payload: dict[str, Any]) -> HealthSample:
    sample = HealthSample.model_validate_json(_as_json(payload, "health sample"))
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
    state = incident.get("state")
    if not isinstance(state, str) or state.lower() not in ("open", "closed"):
        raise BadMessage(f"Cloud Monitoring incident state {limits.preview(state)} is neither open nor closed")
    state = state.lower()
    incident_id = incident.get("incident_id")
    if not incident_id:
        raise BadMessage("Cloud Monitoring incident without incident_id")
    if not isinstance(incident_id, str):
        raise BadMessage(f"Cloud Monitoring incident_id {limits.preview(incident_id)} is not a string")
    resource = _object(_object(incident, "resource", "incident"), "labels", "incident.resource")
    user_labels = _object(incident, "policy_user_labels", "incident")
    condition = incident.get("condition_name") or _object(incident, "condition", "incident").get("name")
    return Alert(
        id=doc_id(f"alert-{incident_id}-{state}"), incident_id=incident_id, state=state, test=version == "test",
        policy=incident.get("policy_name"), condition=condition, summary=incident.get("summary"),
        url=incident.get("url"), service=resource.get("service_name") or user_labels.get("service"),
        revision=resource.get("revision_name"), location=resource.get("location"),
        project=resource.get("project_id"), started_at=_epoch(incident.get("started_at"), "incident.started_at"),
        observed_value=_str(incident.get("observed_value")), threshold_value=_str(incident.get("threshold_value")),
    )


_EPOCH_RANGE = (limits.EARLIEST.timestamp(), limits.LATEST.timestamp())


def _epoch(value: Any, field: str) -> datetime | None:
    """Epoch seconds (a number, or digits in a string) -> a UTC time in 2000..2100."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadMessage(f"{field} is {_kind(value)}, expected epoch seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise BadMessage(f"{field} {limits.preview(value)} is not a number of epoch seconds") from None
    # Also false for NaN; checked before fromtimestamp, which overflows on 1e20.
    if not _EPOCH_RANGE[0] <= seconds < _EPOCH_RANGE[1]:
        raise BadMessage(f"{field} {limits.preview(value)} is not a time between {limits.EARLIEST:%Y-%m-%d} and "
                         f"{limits.LATEST:%Y-%m-%d} in epoch seconds")
    return datetime.fromtimestamp(seconds, timezone.utc)


def _str(value: Any) -> str | None:
    # Only scalars: str() of a nested value could be long, and GCP sends these as strings.
    return None if value is None else str(value) if isinstance(value, (str, int, float)) else limits.preview(value)


# ---------------------------------------------------------------- commands and ticks

MAX_TOKEN = 8192


def payload_digest(payload: dict[str, Any]) -> str:
    """What a token bound to one message names in its audience (`AUDIENCE#digest`): the canonical JSON's hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def sender_token(payload: dict[str, Any], attributes: dict[str, str]) -> str | None:
    """The sender's ID token: the `id_token` attribute, or (Pub/Sub attributes hold at most 1024 bytes, and a
    token can be longer) an `id_token` field of the payload, which is removed from it. Verified by the engine."""
    token = payload.pop("id_token", None) or attributes.get("id_token")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN):
        raise BadMessage(f"id_token is {_kind(token)} of {len(str(token))} characters; expected a JWT of at most "
                         f"{MAX_TOKEN}")
    return token or None


@refusing("operator command")
def parse_command(payload: dict[str, Any], message_id: str) -> Command:
    if "actor" in payload:
        raise BadMessage("operator command: field 'actor' is not accepted; who sent a command is the verified email "
                         "of the ID token in its 'id_token' attribute")
    given = payload.get("id")
    data = {**payload, "id": doc_id(str(given) if given else f"command-{message_id}")}
    return Command.model_validate_json(_as_json(data, "operator command"))


def parse_tick(message_id: str) -> Tick:
    return Tick(id=f"tick-{doc_id(message_id or 'manual')}")

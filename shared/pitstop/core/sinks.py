"""Where notifications go: the `notify:` sinks of a spec, a pipeline or the project, and which events each
wants. Pure: no I/O (surfaces/notifications.py delivers).

    notify:
      - {name: team-slack, type: slack, secret: slack-hook, events: [rolled_back, failed], min_severity: WARNING}
      - {name: ops-mail, type: email, secret: smtp-password, to: [ops@example.com], from: pitstop@example.com,
         smtp_host: smtp.example.com}

A sink's `secret` names a Secret Manager secret (`slack-hook`: in pitstop's project; or
`projects/P/secrets/S[/versions/V]`) holding its credential: the Slack or Chat webhook URL, a Slack bot
token (`xoxb-…`, with `channel`), the SMTP password, the webhook signing key. The secret may instead hold a
YAML mapping of sink fields (`{url: …, key: …}`, `{smtp_host: …, smtp_port: …, password: …}`), which then
override the file's: endpoints stay out of the repository.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SEVERITIES = ("INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")

# Every event type, what it means (README table).
EVENT_TYPES: dict[str, str] = {
    "started": "a build started a release (its route and version)",
    "awaiting_approval": "a release or rollout waits for an approver",
    "paused": "a rollout paused: its traffic could not be judged (not enough health data)",
    "succeeded": "a rollout or release is live on 100 % and judged healthy",
    "rolled_back": "a rollout or release rolled back (failed health, a person, a failed deploy) or a "
                   "rollback to an older version finished",
    "failed": "a rollout needs a person: even the rollback could not be applied",
    "check_failed": "a release's check (scan, migrate, smoke, verify, e2e) failed",
    "expired": "a release was not approved in time; nothing deployed there",
    "superseded": "a newer build replaced a rollout before it finished",
    "build_failed": "a build of a configured service failed or reported no image",
    "build_refused": "a build was refused (not a trusted trigger, an image outside the service's repository, "
                     "older than what serves)",
    "notification_failed": "(never sent) a sink failed every attempt; recorded in the audit trail",
}

_BY_CODE = {
    "note_deployed_first": "succeeded", "note_promoted": "succeeded", "note_promoted_by": "succeeded",
    "note_succeeded": "succeeded", "note_release_succeeded": "succeeded",
    "note_direct_done": "rolled_back", "note_deploy_failed": "rolled_back", "note_rolled_back": "rolled_back",
    "note_release_rolled_back": "rolled_back",
    "note_failed": "failed",
    "note_superseded": "superseded",
    "note_paused_no_data": "paused",
    "note_gate": "awaiting_approval", "note_release_gate": "awaiting_approval",
    "note_release_step_gate": "awaiting_approval",
    "note_check_failed": "check_failed", "note_release_check_failed": "check_failed",
    "note_release_expired": "expired",
}
_BY_STATE = {"rolling_back": "rolled_back", "rolled_back": "rolled_back", "failed": "failed",
             "succeeded": "succeeded", "paused": "paused", "awaiting_approval": "awaiting_approval",
             "superseded": "superseded"}
_BUILD = {"failed": "build_failed", "rejected": "build_failed", "refused": "build_refused", "released": "started"}


def event_type(event: dict[str, Any]) -> str:
    """The type a sink filters on, from the event's reason code (or a build's outcome, or its state)."""
    if event.get("kind") == "build" or ("build_id" in event and "outcome" in event):
        return _BUILD.get(str(event.get("outcome")), "build_failed")
    return _BY_CODE.get(str(event.get("reason"))) or _BY_STATE.get(str(event.get("state")), "other")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


_SECRET = re.compile(r"^(?:[A-Za-z0-9_-]{1,255}|projects/[^/]+/secrets/[A-Za-z0-9_-]+(?:/versions/[A-Za-z0-9]+)?)$")
_NAME = r"^[a-z0-9][-a-z0-9_]{0,62}$"
NEEDS_SECRET = {"slack", "chat", "webhook"}  # email may send unauthenticated; pubsub uses pitstop's own identity


class Sink(BaseModel):
    """One destination and what it wants to hear."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=_NAME)
    type: Literal["slack", "chat", "webhook", "email", "pubsub"]
    secret: str | None = None
    events: list[str] | None = None  # None: every type
    min_severity: str = "INFO"
    environments: list[str] | None = None  # at a pipeline's top level: only these environments (None: all)
    # slack (bot token): the channel; chat: nothing else; webhook: where (or in the secret)
    channel: str | None = None
    url: str | None = None
    # email
    to: list[str] = Field(default_factory=list)
    from_: str | None = Field(default=None, alias="from")
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    starttls: bool = True  # STARTTLS on a plain connection (port 587); false with ssl or a local relay
    ssl: bool = False  # implicit TLS (port 465)
    # pubsub
    topic: str | None = None

    @field_validator("min_severity", mode="before")
    @classmethod
    def _severity(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in SEVERITIES:
            return value.upper()
        raise ValueError(f"min_severity must be one of {', '.join(SEVERITIES)}, got {value!r}")

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        unknown = [e for e in value or [] if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(EVENT_TYPES)}")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET.match(value):
            raise ValueError(f"secret {value!r} is neither a secret name (slack-hook) nor "
                             f"projects/P/secrets/S[/versions/V]")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Sink:
        if self.type in NEEDS_SECRET and not self.secret:
            what = {"slack": "the incoming-webhook URL or a bot token", "chat": "the Chat webhook URL",
                    "webhook": "the signing key (and, if you like, the URL)"}[self.type]
            raise ValueError(f"sink {self.name!r} ({self.type}) needs `secret`: the Secret Manager secret holding "
                             f"{what}")
        if self.type == "email" and (not self.to or not self.from_):
            raise ValueError(f"sink {self.name!r} (email) needs `to` (a list of addresses) and `from`")
        if self.type == "pubsub" and not self.topic:
            raise ValueError(f"sink {self.name!r} (pubsub) needs `topic`")
        if self.ssl and self.starttls and self.type == "email" and "starttls" in self.model_fields_set:
            raise ValueError(f"sink {self.name!r}: give ssl (port 465) or starttls (port 587), not both")
        return self

    def wants(self, event: dict[str, Any]) -> bool:
        """Does this sink take this event: its type listed (or no list), severity at least min_severity, and
        (pipeline level) its environment named?"""
        if self.events is not None and event_type(event) not in self.events:
            return False
        if severity_rank(str(event.get("severity", "INFO"))) < severity_rank(self.min_severity):
            return False
        return self.environments is None or event.get("environment") in self.environments

    def with_fields(self, fields: dict[str, Any]) -> Sink:
        """This sink with fields a secret's mapping supplies (its endpoint kept out of the repository)."""
        known = {k: v for k, v in fields.items() if k in type(self).model_fields or k == "from"}
        return type(self).model_validate({**self.model_dump(by_alias=True), **known}) if known else self


def unique_names(sinks: list[Sink]) -> list[Sink]:
    """Sinks of one list need distinct names: a delivery is recorded per event and sink name."""
    seen: set[str] = set()
    for sink in sinks:
        if sink.name in seen:
            raise ValueError(f"two sinks are named {sink.name!r}; each sink needs its own name")
        seen.add(sink.name)
    return sinks


class ProjectNotify(BaseModel):
    """The project-wide sinks (`settings/notifications`), applied with `pitstop apply FILE` when FILE has only
    a top-level `notify:` list. They hear every service and environment (narrowed by `environments`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    notify: list[Sink] = Field(default_factory=list, max_length=50)

    @field_validator("notify")
    @classmethod
    def _unique(cls, value: list[Sink]) -> list[Sink]:
        return unique_names(value)

"""The nouns of pitstop: specs, rollouts, the inputs that move them, effects, audit.

Plain pydantic models with no I/O. Everything stored in Firestore goes through
`to_doc()` (and `Rollout.from_doc()`) so documents stay short and readable in the console:
timestamps, plain strings, small maps.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    field_validator,
    model_validator,
)

# ---------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: Any) -> int:
    """'5m', '1h30m', '45s', '90' or 90 -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 1h, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        m = _DURATION.match(text)
        if text and m and any(m.groups()):
            h, mi, s = (int(g or 0) for g in m.groups())
            return h * 3600 + mi * 60 + s
    raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")


def format_duration(seconds: int) -> str:
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"


Duration = Annotated[int, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")]


class Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_none=True)


# ---------------------------------------------------------------- the spec

class Match(Model):
    """Which builds start a rollout. Every field given must match."""

    repo: str | None = None
    branch: str | None = None  # exact name or glob: main, release/*
    tag: str | None = None  # glob: v*
    trigger: str | None = None  # Cloud Build trigger name or id

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not any((self.repo, self.branch, self.tag, self.trigger)):
            raise ValueError("give at least one of repo, branch, tag, trigger")
        if self.branch and self.tag:
            raise ValueError("a build is either a branch build or a tag build: give branch or tag, not both")
        return self


class Step(Model):
    weight: int = Field(ge=1, le=100)
    pause: Duration = 0
    approve: bool = False  # hold for `pitstop approve` once the step is healthy


def _default_steps() -> list[Step]:
    return [Step(weight=5, pause=300), Step(weight=10, pause=300), Step(weight=25, pause=300)]


class Canary(Model):
    steps: list[Step] = Field(default_factory=_default_steps, min_length=1)
    bake: Duration = 0  # watch at 100 % before calling it done

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[Step]) -> list[Step]:
        weights = [s.weight for s in steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must strictly increase, got {weights}")
        return steps


class BlueGreen(Model):
    verify: Duration = 60  # at 0 %, on the tagged URL
    bake: Duration = 600  # at 100 %, old revision kept for instant rollback
    approve: bool = False  # hold before the switch


class Strategy(Model):
    canary: Canary | None = None
    blue_green: BlueGreen | None = None

    @model_validator(mode="after")
    def _one(self) -> Strategy:
        if (self.canary is None) == (self.blue_green is None):
            raise ValueError("give exactly one of canary or blue_green")
        return self

    @property
    def kind(self) -> str:
        return "canary" if self.canary else "blue_green"


class Health(Model):
    min_requests: int = Field(default=50, ge=0)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p99_ms: float = Field(default=1000, gt=0)
    max_latency_increase: float = Field(default=0.20, ge=0)  # canary p99 vs stable p99
    no_data_timeout: Duration = 300  # inconclusive this long past a deadline -> paused


SERVICE_NAME = r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$"


class RolloutSpec(Model):
    service: str = Field(pattern=SERVICE_NAME)
    regions: list[str] = Field(min_length=1)
    environment: str = Field(default="production", pattern=r"^[a-z0-9][-a-z0-9]*$")
    project: str | None = None  # defaults to the project pitstop runs in
    match: Match
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary()))
    health: Health = Field(default_factory=Health)
    max_hold: Duration = 86400  # a paused or gated rollout rolls back after this

    @property
    def key(self) -> str:
        return f"{self.service}--{self.environment}"


# ---------------------------------------------------------------- traffic

class Target(Model):
    revision: str
    percent: int = Field(ge=0, le=100)
    tag: str | None = None


def describe_split(split: list[Target] | None) -> str:
    if not split:
        return "unknown"
    return ", ".join(f"{t.revision} {t.percent}%" + (f" ({t.tag})" if t.tag else "") for t in split)


# ---------------------------------------------------------------- inputs

class Artifact(Model):
    image: str  # repo path with tag, as built
    digest: str  # sha256:...
    build_id: str
    commit: str | None = None
    version: str
    repo: str | None = None
    branch: str | None = None
    tag: str | None = None
    trigger: str | None = None
    log_url: str | None = None
    created_at: datetime | None = None

    @property
    def image_by_digest(self) -> str:
        repo = self.image.split("@", 1)[0]
        last = repo.rsplit("/", 1)[-1]
        if ":" in last:  # drop the tag: name@sha256 is what we deploy
            repo = repo[: repo.rfind(":")]
        return f"{repo}@{self.digest}"


BuildStatus = Literal[
    "STATUS_UNKNOWN", "PENDING", "QUEUED", "WORKING", "SUCCESS",
    "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED",
]


class BuildFinished(Model):
    kind: Literal["build"] = "build"
    id: str
    build_id: str
    status: BuildStatus
    status_detail: str | None = None
    repo: str | None = None
    branch: str | None = None
    tag: str | None = None
    trigger: str | None = None  # TRIGGER_NAME
    trigger_id: str | None = None  # buildTriggerId
    commit: str | None = None
    log_url: str | None = None
    artifact: Artifact | None = None  # SUCCESS with results.images only
    substitutions: dict[str, str] = Field(default_factory=dict)


# Firestore document ids: no '/', not '__x__', bounded.
DOC_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class HealthSample(Model):
    kind: Literal["health"] = "health"
    id: str = ""
    service: str = Field(min_length=1, max_length=63)
    region: str = Field(min_length=1, max_length=63)
    revision: str = Field(min_length=1, max_length=63)
    window_start: AwareDatetime  # a timestamp without its zone is ambiguous: refused
    window_end: AwareDatetime
    request_count: int = Field(ge=0)
    error_count: int = Field(ge=0)
    latency_p50_ms: float | None = Field(default=None, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    latency_p99_ms: float | None = Field(default=None, ge=0)
    source: str
    rollout_id: str | None = Field(default=None, pattern=DOC_ID)

    @model_validator(mode="after")
    def _sane(self) -> HealthSample:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.error_count > self.request_count:
            raise ValueError("error_count cannot exceed request_count")
        return self

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.request_count if self.request_count else None


class Tick(Model):
    kind: Literal["tick"] = "tick"
    id: str


class Alert(Model):
    kind: Literal["alert"] = "alert"
    id: str
    incident_id: str
    state: Literal["open", "closed"]
    started_at: datetime | None = None
    test: bool = False
    policy: str | None = None
    condition: str | None = None
    summary: str | None = None
    url: str | None = None
    service: str | None = None
    revision: str | None = None
    location: str | None = None
    project: str | None = None
    observed_value: str | None = None
    threshold_value: str | None = None


Action = Literal["promote", "pause", "resume", "abort", "rollback", "approve"]


class Command(Model):
    kind: Literal["command"] = "command"
    id: str = ""
    action: Action
    rollout_id: str | None = Field(default=None, pattern=DOC_ID)
    service: str | None = None
    environment: str | None = None  # with service (and region): which rollout, when several are live
    region: str | None = None
    full: bool = False  # promote --full
    to_version: str | None = None  # rollback --to
    actor: str = "unknown"
    reason: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Command:
        if not self.rollout_id and not self.service:
            raise ValueError("name a rollout_id or a service")
        if self.action == "rollback" and not self.to_version and not self.rollout_id and not self.service:
            raise ValueError("rollback needs a rollout or --to VERSION")
        return self


class Applied(Model):
    """The Cloud Run adapter made the desired split real."""

    kind: Literal["applied"] = "applied"
    id: str
    generation: int
    observed: list[Target]


class ApplyFailed(Model):
    kind: Literal["apply_failed"] = "apply_failed"
    id: str
    generation: int
    error: str
    permanent: bool = False  # retrying cannot help (bad image, invalid request)


class Superseded(Model):
    kind: Literal["superseded"] = "superseded"
    id: str
    by_rollout: str
    by_version: str


Input = BuildFinished | HealthSample | Tick | Alert | Command | Applied | ApplyFailed | Superseded


# ---------------------------------------------------------------- rollout state

State = Literal[
    "deploying", "verifying", "progressing", "switching", "baking", "succeeded",
    "paused", "awaiting_approval", "rolling_back", "rolled_back", "failed", "superseded",
]
TERMINAL: frozenset[str] = frozenset({"succeeded", "rolled_back", "failed", "superseded"})
WATCHED: frozenset[str] = frozenset({"verifying", "progressing", "switching", "baking", "paused", "awaiting_approval"})
Kind = Literal["canary", "blue_green", "initial", "direct"]


class Check(Model):
    """One measured value against its threshold."""

    name: str
    measured: float | None
    threshold: float
    passed: bool | None  # None: could not be measured


class Verdict(Model):
    outcome: Literal["pass", "fail", "inconclusive"]
    rule: str  # the rule that decided it, as a sentence
    checks: list[Check]
    revision: str
    window_start: datetime
    window_end: datetime
    request_count: int
    source: str


class Rollout(Model):
    id: str
    service: str
    environment: str
    region: str
    project: str
    kind: Kind
    version: str
    revision: str
    image: str  # by digest
    artifact: Artifact | None = None
    strategy: Strategy
    health: Health
    max_hold: int
    state: State
    message: str = ""
    stable_revision: str | None = None
    stable_version: str | None = None
    step: int = 0  # index into canary steps; len(steps) means the final 100 %
    step_started_at: datetime | None = None  # when the current split became real
    next_step_at: datetime | None = None
    hold_until: datetime | None = None  # deadline of an inconclusive hold, pause or gate
    paused_from: State | None = None
    skip_bake: bool = False
    desired: list[Target]
    desired_generation: int = 1
    desired_at: datetime
    observed: list[Target] | None = None
    observed_generation: int = 0
    apply_attempts: int = 0
    retry_at: datetime | None = None
    verdict: Verdict | None = None  # latest verdict on the new revision in this step
    baseline: HealthSample | None = None  # latest sample of the stable revision
    superseded_by: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def due_at(self) -> datetime | None:
        """When a tick must look at this rollout; None once it is finished."""
        if self.state in TERMINAL:
            return None
        # A hold replaces the step deadline it extends: a past deadline must not make every tick due.
        times = [t for t in (self.hold_until or self.next_step_at, self.retry_at) if t]
        if not self.applied:
            times.append(self.reapply_at)
        return min(times) if times else None

    @property
    def reapply_at(self) -> datetime:
        """When an unobserved split is applied again: the retry time, or when its applier must be dead."""
        return self.retry_at or self.desired_at + timedelta(seconds=RECONCILE_AFTER)

    @property
    def applied(self) -> bool:
        return self.desired_generation == self.observed_generation

    @property
    def new_percent(self) -> int:
        return sum(t.percent for t in self.desired if t.revision == self.revision)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Rollout:
        doc = {k: v for k, v in doc.items() if k != "due_at"}
        return cls.model_validate(doc)


# Seconds an applier may take (a new revision can need a minute on GCP) before a tick assumes it died
# and applies the split again. Applying twice is harmless; too early only wastes a Cloud Run call.
RECONCILE_AFTER = 120


# ---------------------------------------------------------------- effects and audit

class ApplyTraffic(Model):
    """Make Cloud Run serve `split`; create `revision` from `image` first if asked."""

    kind: Literal["apply_traffic"] = "apply_traffic"
    generation: int
    split: list[Target]
    create_revision: bool = False


class Notify(Model):
    kind: Literal["notify"] = "notify"
    severity: Literal["INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL"]
    message: str


Effect = ApplyTraffic | Notify


class AuditEvent(Model):
    """One line of the audit trail: what came in, what was decided, and why."""

    id: str
    at: datetime
    input: str  # kind of input
    actor: str
    decision: str  # short verb: started, advanced, held, rolled_back, ignored, ...
    reasons: list[str]
    state_before: str | None = None
    state_after: str
    traffic_before: str | None = None
    traffic_after: str | None = None
    verdict: Verdict | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

"""The nouns of pitstop: specs, rollouts, the inputs that move them, effects, audit.

Plain pydantic models with no I/O. Everything stored in Firestore goes through
`to_doc()` (and `Rollout.from_doc()`) so documents stay short and readable in the console:
timestamps, plain strings, small maps.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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

from pitstop.core import limits
from pitstop.core.sinks import Sink, unique_names

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
    bake: Duration = 0  # watch at 100 % before calling it done (at least one health window, whatever this says)

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


def last_step(strategy: Strategy) -> int:
    """The step index of all traffic on the new revision: after the canary steps (blue-green: after verify)."""
    return len(strategy.canary.steps) if strategy.canary else 1


METRIC_NAME = r"^[a-z][a-z0-9_]{0,39}$"  # a CEL identifier: canary.NAME, stable.NAME
OnFail = Literal["rollback", "pause"]


class Limit(Model):
    """A resource metric's limit (a share, 0-1) and what a breach does."""

    max: float = Field(gt=0, le=1)
    dry_run: bool = False  # judged and recorded, never acts
    on_fail: OnFail = "rollback"


class MetricQuery(Model):
    """A Cloud Monitoring query: pitstop adds the resource labels (project, location, service, revision) and
    reads one value per revision over the health window."""

    filter: str = Field(min_length=1, max_length=2000)  # e.g. metric.type = "custom.googleapis.com/checkouts"
    aligner: str = Field(default="ALIGN_RATE", pattern=r"^ALIGN_[A-Z0-9_]+$")
    reducer: str = Field(default="REDUCE_SUM", pattern=r"^REDUCE_[A-Z0-9_]+$")


class CustomMetric(Model):
    """A metric of the spec's own, judged by a CEL condition over `canary`, `stable` and `thresholds`."""

    name: str = Field(pattern=METRIC_NAME)
    query: MetricQuery | None = None  # Monitoring filter; or
    log_metric: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_./-]{1,100}$")  # a log-based metric
    condition: str = Field(min_length=1, max_length=1000)  # true = healthy
    dry_run: bool = False
    on_fail: OnFail = "rollback"

    @model_validator(mode="after")
    def _one_source(self) -> CustomMetric:
        if self.query is not None and self.log_metric is not None:
            raise ValueError(f"metric {self.name}: give either query or log_metric, not both")
        return self


class Health(Model):
    # How a window is read: `threshold` (the absolute and relative limits below, on the window as it is) or
    # `statistical` (core/stats.py: the canary against stable with confidence; the limits stay as hard limits).
    judge: Literal["threshold", "statistical"] = "threshold"
    confidence: float = Field(default=0.99, gt=0.5, lt=1)  # statistical: fail at this confidence
    min_requests: int = Field(default=50, ge=0)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p99_ms: float = Field(default=1000, gt=0)
    max_latency_increase: float = Field(default=0.20, ge=0)  # canary p99 vs stable p99
    # ... but never for an increase of this many ms or less: 5 ms -> 7 ms is +40 % and harmless.
    min_latency_increase_ms: float = Field(default=50, ge=0)
    # A p99 of fewer requests is their slowest one: relative latency (p99 vs stable, or Mann–Whitney) needs this
    # many canary requests in the window before it can fail or pass anything.
    min_latency_requests: int = Field(default=100, ge=1)
    cpu: Limit = Field(default_factory=lambda: Limit(max=0.80))  # p95 of container/cpu/utilizations
    memory: Limit = Field(default_factory=lambda: Limit(max=0.85))  # p95 of container/memory/utilizations
    metrics: list[CustomMetric] = Field(default_factory=list, max_length=20)
    thresholds: dict[Annotated[str, Field(pattern=METRIC_NAME)], float] = Field(default_factory=dict, max_length=50)
    interval: Duration = Field(default=60, ge=1)  # one health window; also the shortest watch at 100 %
    # A step waits this long past its deadline for a healthy window that reaches the deadline (on GCP
    # Monitoring's 180 s lag and a one-minute tick use about 4 minutes of it), then pauses for a person.
    no_data_timeout: Duration = 600
    # Who may send health samples from outside pitstop (each signs it with an ID token); pitstop's own
    # sampler needs no listing.
    sources: list[Member] = Field(default_factory=list, max_length=50)

    @field_validator("sources")
    @classmethod
    def _machines(cls, sources: list[str]) -> list[str]:
        people = [m for m in sources if not m.startswith("serviceAccount:")]
        if people:
            raise ValueError(f"health sources are machines: list serviceAccount:EMAIL, not {', '.join(people)}")
        return sources


SERVICE_NAME = r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$"

# ---------------------------------------------------------------- who may do what (core/access.py decides)

_EMAIL = r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
_MEMBER = re.compile(rf"^(?:(?:user|serviceAccount):{_EMAIL}|domain:[A-Za-z0-9.-]+\.[A-Za-z]{{2,}}|{_EMAIL})$")


# Domains whose accounts anyone can have: a grant to them is a grant to the world.
PUBLIC_DOMAINS = ("gmail.com", "googlemail.com", "gserviceaccount.com", "developer.gserviceaccount.com",
                  "appspot.gserviceaccount.com", "iam.gserviceaccount.com", "cloudbuild.gserviceaccount.com")


def _member(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower().removeprefix("domain:") in PUBLIC_DOMAINS:
        raise ValueError(f"{value}: anyone can have an account there; grant users or service accounts instead")
    if isinstance(value, str) and value.startswith("group:"):
        raise ValueError(f"{value}: pitstop cannot expand Google groups (it has no directory access); list the users, "
                         f"service accounts or a domain:")
    if isinstance(value, str) and not _MEMBER.match(value.strip()):
        raise ValueError(f"{value!r} is not a member: expected user:EMAIL, serviceAccount:EMAIL, domain:DOMAIN or "
                         f"an email")
    if not isinstance(value, str):
        return value
    kind, _, rest = value.strip().rpartition(":")  # emails compare case-insensitively; the kind keeps its name
    return f"{kind}:{rest.lower()}" if kind else rest.lower()


Member = Annotated[str, BeforeValidator(_member), Field(max_length=limits.MAX_LABEL)]


class Access(Model):
    """Roles granted to users, service accounts and domains: per spec, or project-wide (`access/project`).

    viewer reads; operator pauses, resumes, promotes, aborts and rolls back; approver approves gates;
    deployer deploys a ref (runs the build trigger); admin does all of it and applies specs."""

    viewer: list[Member] = Field(default_factory=list, max_length=200)
    operator: list[Member] = Field(default_factory=list, max_length=200)
    approver: list[Member] = Field(default_factory=list, max_length=200)
    deployer: list[Member] = Field(default_factory=list, max_length=200)
    admin: list[Member] = Field(default_factory=list, max_length=200)
    # Four-eyes: whoever started a rollout (`pitstop deploy`, `rollback --to`) may not approve its gates.
    four_eyes: bool = False


class RolloutSpec(Model):
    service: str = Field(pattern=SERVICE_NAME)
    regions: list[str] = Field(min_length=1)
    environment: str = Field(default="production", pattern=r"^[a-z0-9][-a-z0-9]*$")
    project: str | None = None  # defaults to the project pitstop runs in
    match: Match | None = None  # required, unless the spec is an environment of a pipeline (core/pipeline.py)
    # An environment of a pipeline: releases start its rollouts (core/release.py), builds never do directly.
    pipeline: bool = False
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary()))
    health: Health = Field(default_factory=Health)
    max_hold: Duration = 86400  # a paused or gated rollout rolls back after this
    # Cloud Run API errors are retried, holding the current split, for this long before rolling back.
    apply_budget: Duration = 600
    # The image repositories this service may run (globs), checked against the build Cloud Build reports.
    # Default: an image named after the service in the project's Artifact Registry (`*-docker.pkg.dev/PROJECT/*/SERVICE`).
    image: list[str] | None = None
    # The Cloud Build triggers (name or id) allowed to build it; the first is the one `pitstop deploy` runs.
    triggers: list[Annotated[str, Field(min_length=1, max_length=limits.MAX_LABEL)]] = Field(default_factory=list, max_length=20)
    access: Access = Field(default_factory=Access)
    notify: list[Sink] = Field(default_factory=list, max_length=50)  # where its events go (core/sinks.py)

    @field_validator("image", mode="before")
    @classmethod
    def _images(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("notify")
    @classmethod
    def _sinks(cls, value: list[Sink]) -> list[Sink]:
        return unique_names(value)

    @model_validator(mode="after")
    def _matched(self) -> RolloutSpec:
        if self.match is None and not self.pipeline:
            raise ValueError("match: required field is missing (which builds start a rollout)")
        return self

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
# Inputs come from Pub/Sub, where anyone with publish rights can send anything. Each field is bounded
# so that whatever validates can be stored in Firestore (limits.py says why).


def _cut(value: Any) -> Any:
    """Free text is cut, not refused: an open incident with a huge policy name must still roll back."""
    return limits.truncate(limits.valid_unicode(value)) if isinstance(value, str) else value


def _digest(value: str) -> str:
    if not limits.DIGEST.fullmatch(value):
        raise ValueError(f"{limits.preview(value)} is not an image digest: expected 'sha256:' and 64 "
                         f"lowercase hex digits")
    return value


Text = Annotated[str, BeforeValidator(_cut)]  # at most MAX_TEXT characters, cut with a marker
Id = Annotated[str, Field(max_length=limits.MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=limits.MAX_NAME)]  # Cloud Run names, regions
Label = Annotated[str, Field(max_length=limits.MAX_LABEL)]  # git refs, repository names, actors
Count = Annotated[int, Field(ge=0, le=limits.INT64_MAX)]
Millis = Annotated[float, Field(ge=0, le=limits.MAX_LATENCY_MS, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Buckets = Annotated[list[Count], Field(max_length=limits.MAX_BUCKETS)]
MetricValues = Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")],
                              Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=20)]
Timestamp = Annotated[AwareDatetime, AfterValidator(limits.plausible_time)]  # zoned, in 2000..2100
Digest = Annotated[str, AfterValidator(_digest)]


def _unstorable(value: Any, path: str) -> str | None:
    """The first value Firestore could not store, as a sentence; None when all can be."""
    if isinstance(value, str):
        if not limits.is_unicode(value):
            return f"{path}: contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text"
        if len(value) > limits.MAX_TEXT:
            return f"{path}: {len(value)} characters, more than {limits.MAX_TEXT}"
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int) and not limits.INT64_MIN <= value <= limits.INT64_MAX:
        return f"{path}: {limits.preview(value)} is outside the 64-bit integer range"
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path}: {value} is not a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key, f"{path} key") or _unstorable(item, f"{path}.{key}")
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _unstorable(item, f"{path}.{i}")
            if problem:
                return problem
    return None


class Inbound(Model):
    """An input from outside. Besides each field's own bounds, every value in it, nested ones and fields
    added later included, must be storable: text in valid Unicode, ints in int64, finite numbers."""

    @model_validator(mode="after")
    def _storable(self) -> Inbound:
        for name, value in self.model_dump().items():
            problem = _unstorable(value, name)
            if problem:
                raise ValueError(problem)
        return self


class Artifact(Inbound):
    image: str = Field(min_length=1, max_length=limits.MAX_TEXT)  # repo path with tag, as built
    digest: Digest
    build_id: Id
    commit: Id | None = None
    version: Id
    repo: Label | None = None
    branch: Label | None = None
    tag: Label | None = None
    trigger: Label | None = None
    log_url: Text | None = None
    created_at: Timestamp | None = None

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


class BuildFinished(Inbound):
    kind: Literal["build"] = "build"
    id: Id
    build_id: Id
    status: BuildStatus
    status_detail: Text | None = None
    repo: Label | None = None
    branch: Label | None = None
    tag: Label | None = None
    trigger: Label | None = None  # TRIGGER_NAME
    trigger_id: Id | None = None  # buildTriggerId
    commit: Id | None = None
    log_url: Text | None = None
    artifact: Artifact | None = None  # SUCCESS with results.images only
    substitutions: dict[Label, Text] = Field(default_factory=dict, max_length=limits.MAX_ENTRIES)
    project: Name | None = None  # projectId: where Cloud Build says it ran
    location: Name | None = None  # a regional build's location (its `name`), for the API to find it
    images: list[tuple[Text, Text]] = Field(default_factory=list, max_length=limits.MAX_ENTRIES)  # results.images


class Baseline(Model):
    """The stable revision over the same window as a sample of the new one: what "relative" compares with."""

    revision: str = Field(min_length=1, max_length=63)
    request_count: int = Field(ge=0)
    error_count: int = Field(ge=0)
    latency_p99_ms: float | None = Field(default=None, ge=0)
    latency_buckets: Buckets | None = None
    cpu_utilization: Share | None = None
    memory_utilization: Share | None = None
    metrics: MetricValues = Field(default_factory=dict)


# Firestore document ids: no '/', not '__x__', bounded.
DOC_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class HealthSample(Inbound):
    kind: Literal["health"] = "health"
    id: Id = ""
    service: Name
    region: Name
    revision: Name
    window_start: Timestamp  # a timestamp without its zone is ambiguous: refused
    window_end: Timestamp
    request_count: Count
    error_count: Count
    latency_p50_ms: Millis | None = None
    latency_p95_ms: Millis | None = None
    latency_p99_ms: Millis | None = None
    # Counts per bucket of Monitoring's request_latencies distribution (core/stats.py LATENCY_LAYOUT); what the
    # statistical judge compares. Utilizations: p95 over the window (0-1). metrics: the spec's custom metrics.
    latency_buckets: Buckets | None = None
    cpu_utilization: Share | None = None
    memory_utilization: Share | None = None
    metrics: MetricValues = Field(default_factory=dict)
    source: Id
    rollout_id: str | None = Field(default=None, pattern=DOC_ID)
    stable: Baseline | None = None  # the stable revision over the same window, when the sender measured it

    @model_validator(mode="after")
    def _sane(self) -> HealthSample:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.window_end - self.window_start > limits.MAX_WINDOW:
            raise ValueError(f"the window from window_start to window_end lasts {self.window_end - self.window_start}; "
                             f"a sample covers at most {limits.MAX_WINDOW}")
        if self.error_count > self.request_count:
            raise ValueError("error_count cannot exceed request_count")
        return self

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.request_count if self.request_count else None


class Tick(Model):
    kind: Literal["tick"] = "tick"
    id: str


class Alert(Inbound):
    kind: Literal["alert"] = "alert"
    id: Id
    incident_id: Id
    state: Literal["open", "closed"]
    started_at: Timestamp | None = None
    test: bool = False
    policy: Text | None = None
    condition: Text | None = None
    summary: Text | None = None
    url: Text | None = None
    service: Name | None = None
    revision: Name | None = None
    location: Name | None = None
    project: Name | None = None
    observed_value: Text | None = None
    threshold_value: Text | None = None


Action = Literal["promote", "pause", "resume", "abort", "rollback", "approve", "deploy", "unfreeze"]


class Command(Inbound):
    kind: Literal["command"] = "command"
    id: Id = ""
    action: Action
    rollout_id: str | None = Field(default=None, pattern=DOC_ID)
    # A release (core/release.py): the whole release, or one `environment` of it, or one `region` there.
    release_id: str | None = Field(default=None, pattern=DOC_ID)
    to_environment: Name | None = None  # promote a release into this environment (`pitstop promote-release`)
    service: Name | None = None
    environment: Name | None = None  # with service (and region): which rollout, when several are live
    region: Name | None = None
    full: bool = False  # promote --full
    to_version: Id | None = None  # rollback --to
    ref: Label | None = None  # deploy: a branch, tag or commit (`pitstop deploy --ref`)
    # The verified email of the ID token the command came with; set by the engine, never from the payload.
    actor: Label = "unverified"
    reason: Text | None = None

    @model_validator(mode="after")
    def _target(self) -> Command:
        if not self.rollout_id and not self.service and not self.release_id:
            raise ValueError("name a rollout_id, a release_id or a service")
        if self.action == "unfreeze" and not (self.release_id and self.reason):
            raise ValueError("unfreeze needs a release_id and a reason (it is audited)")
        if self.to_environment and not (self.release_id and self.action == "promote"):
            raise ValueError("to_environment goes with promote of a release_id")
        if self.action == "deploy" and not (self.service and self.environment and self.ref):
            raise ValueError("deploy needs service, environment and ref")
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


class Observed(Model):
    """What Cloud Run serves now, read back by the reconciler (drift, or an apply that finished later)."""

    kind: Literal["observed"] = "observed"
    id: str
    split: list[Target]
    settled: bool = True  # False: Cloud Run is still working on an update


class Superseded(Model):
    kind: Literal["superseded"] = "superseded"
    id: str
    by_rollout: str
    by_version: str


class Proceed(Model):
    """A release clears a rollout of its wave to enter `step` (core/release.py): the wave moves together.
    `forced_by`: a person promoted the wave, so it moves without waiting for the step's judgment."""

    kind: Literal["proceed"] = "proceed"
    id: str
    step: int = Field(ge=0)
    actor: str = "pitstop"
    forced_by: str | None = None


Input = BuildFinished | HealthSample | Tick | Alert | Command | Applied | ApplyFailed | Observed | Superseded | Proceed


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
    # Defaults: to_doc() drops None, so a stored check without them reads back as what was written.
    measured: float | None = None
    threshold: float | None = None
    passed: bool | None = None  # None: could not be measured
    stable: float | None = None  # the stable revision's value over the same window, where compared
    condition: str | None = None  # a custom metric's CEL condition
    dry_run: bool = False  # recorded, never acts


class TestResult(Model):
    """One statistical test of a verdict (core/stats.py `Result`): what it computed and what it decided."""

    test: str  # beta-binomial, mann-whitney, max_error_rate, max_p99_ms
    statistic: str
    value: float | None
    p: float | None
    confidence: float
    effect: float | None
    decision: Literal["pass", "fail", "inconclusive"]
    sentence: str


class Verdict(Model):
    outcome: Literal["pass", "fail", "inconclusive"]
    rule: str  # the rule that decided it, as a sentence
    checks: list[Check]
    revision: str
    window_start: datetime
    window_end: datetime
    request_count: int
    source: str
    tests: list[TestResult] = Field(default_factory=list)  # the statistical judge's, when it judged
    on_fail: OnFail = "rollback"  # what a fail does: the rule that fired says which
    dry_run: list[str] = Field(default_factory=list)  # sentences of dry-run rules that failed: recorded, no action


class Measurement(Model):
    """One metric of one verdict, kept with the rollout: the history `status --watch` and `history` show."""

    at: datetime  # the window's end
    step: int
    metric: str
    value: float | None
    stable: float | None = None
    threshold: float | None = None
    condition: str | None = None
    outcome: Literal["pass", "fail", "inconclusive"]
    source: str
    dry_run: bool = False


MAX_MEASUREMENTS = 200  # kept per rollout (the newest); the audit trail keeps every verdict


# Fields the store keeps on a rollout's document beside the model: the last input, and the head of the
# audit chain (`core/audit.py`).
STORE_BOOKKEEPING = ("due_at", "last_input", "audit_seq", "audit_head")


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
    apply_budget: int = 600
    state: State
    message: str = ""
    stable_revision: str | None = None
    stable_version: str | None = None
    step: int = 0  # index into canary steps; len(steps) means the final 100 %
    step_started_at: datetime | None = None  # when the current split became real
    # The new revision's traffic is judged healthy, without a gap, from when it first served up to here.
    # A step advances (and the rollout succeeds) only once this reaches the step's deadline.
    judged_until: datetime | None = None
    next_step_at: datetime | None = None
    hold_until: datetime | None = None  # deadline of an inconclusive hold, pause or gate
    paused_from: State | None = None
    skip_bake: bool = False
    promoted_by: str | None = None  # who skipped steps with `promote`, for the success notice
    started_by: str | None = None  # the verified person who started it (`pitstop deploy`, `rollback --to`)
    desired: list[Target]
    desired_generation: int = 1
    desired_at: datetime
    observed: list[Target] | None = None
    observed_generation: int = 0
    apply_attempts: int = 0
    apply_failing_since: datetime | None = None  # first Cloud Run error of the pending split
    retry_at: datetime | None = None
    verdict: Verdict | None = None  # latest verdict on the new revision in this step
    measurements: list[Measurement] = Field(default_factory=list)  # newest last, at most MAX_MEASUREMENTS
    baseline: HealthSample | None = None  # latest sample of the stable revision
    superseded_by: str | None = None
    # In a release (core/release.py), a region's rollout moves only as far as its wave is cleared: it enters
    # step `cleared_step` at most (-1: deploy at 0 % and wait), holds (`wave_hold`) once its step is done, and
    # says when a step's deadline passed without enough evidence (`step_due`). None: a rollout on its own.
    release_id: str | None = None
    cleared_step: int | None = None
    wave_hold: bool = False
    step_due: bool = False
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def due_at(self) -> datetime | None:
        """When a tick must look at this rollout; None once it is finished."""
        if self.state in TERMINAL:
            return None
        if self.state in WATCHED:
            return self.updated_at  # its health is screened every tick, and its deadlines checked
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
    def position(self) -> int:
        """The step this rollout serves: -1 before it serves, the canary step (blue-green: 0 verifying), then
        `last_step` once all traffic is decided for the new revision."""
        state = self.paused_from if self.state in ("paused", "awaiting_approval") and self.paused_from else self.state
        if state in ("switching", "baking", "succeeded"):
            return last_step(self.strategy)
        if state == "deploying" or self.judged_until is None and state not in ("progressing", "verifying"):
            return -1
        return self.step if self.strategy.canary else 0

    @property
    def new_percent(self) -> int:
        return sum(t.percent for t in self.desired if t.revision == self.revision)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Rollout:
        doc = {k: v for k, v in doc.items() if k not in STORE_BOOKKEEPING}
        return cls.model_validate(doc)


# Seconds before a tick reads back an unobserved split (the applier may have died, or Cloud Run is still
# working on it) and applies it again if it is not served. Applying twice is harmless.
RECONCILE_AFTER = 20


# ---------------------------------------------------------------- effects and audit

class ApplyTraffic(Model):
    """Make Cloud Run serve `split`; create `revision` from `image` first if asked."""

    kind: Literal["apply_traffic"] = "apply_traffic"
    generation: int
    split: list[Target]
    create_revision: bool = False


class Reason(Model):
    """Why, as a code with its measured values; `pitstop.core.explain` renders the sentence."""

    code: str
    values: dict[str, Any] = Field(default_factory=dict)


class Notify(Model):
    kind: Literal["notify"] = "notify"
    severity: Literal["INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL"]
    message: str  # rendered from `reason`
    reason: Reason


Effect = ApplyTraffic | Notify


class AuditEvent(Model):
    """One line of the audit trail: what came in, what was decided, and why."""

    id: str
    at: datetime
    input: str  # kind of input
    actor: str
    decision: str  # short verb: started, advanced, held, rolled_back, ignored, ...
    reasons: list[str]  # the sentences, rendered from `why` (what the Firestore console shows)
    why: list[Reason] = Field(default_factory=list)
    state_before: str | None = None
    state_after: str
    traffic_before: str | None = None
    traffic_after: str | None = None
    verdict: Verdict | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    # The audit chain (`core/audit.py`), set by the store as it writes the event: its place in the rollout's
    # trail, the hash of the event before it, and its own hash over all of the above.
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def to_doc(self) -> dict[str, Any]:
        # Reasons quote inputs (a policy name, a build's status detail): cut so the event always fits Firestore.
        return limits.bounded(super().to_doc())

"""Checks of an environment (issue #10): what a release must pass besides the health judge. Pure.

    checks:
      scan:    {severity: CRITICAL, allow: [{cve: CVE-2024-1234, until: 2027-01-31}], wait: 5m}
      migrate: {args: [python, migrate.py], timeout: 10m}          # a Cloud Run job, once, before any traffic
      smoke:   {path: /healthz, expect_status: 200, expect_body: ok, success_threshold: 3, failure_threshold: 2}
      verify:  {args: [python, e2e.py], timeout: 5m}                # a job against the new revision at 0 %
      e2e:     {args: [python, e2e.py], timeout: 10m, on_fail: inform}   # a job once the environment is done

When they run in a stage (core/release.py):
  before anything is deployed   scan, then migrate (a failure leaves traffic untouched and stops the release)
  each wave at 0 %              smoke against every region's tag URL, and verify: before the first step
  (`smoke.at_steps`)            smoke again before each next step
  once the stage succeeded      e2e; an environment whose `promote_from` is this one waits for it to pass

Every check has a deadline (`timeout`; smoke's `deadline`; scan's `wait`) and retries with backoff
(`retries`, `backoff`: a failed attempt runs again after backoff × 2^n); `on_fail: block` stops (before
traffic) or rolls back (after) the environment, `inform` records and notifies only.

A check's state lives in the release (`Stage.checks`, a `CheckRun` per run); the engine carries a check
out one short step at a time (start a job, poll it, scan once, probe for a while) and reports back with a
`CheckUpdate`, so no function waits on a long job and a crash between a job's start and its result loses
nothing (jobs are named per release and check, and run at most once per name).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, field_validator, model_validator

from pitstop.core.models import Duration, Model

OnFail = Literal["block", "inform"]
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
# Seconds between polls of a running job or a pending scan: on GCP a tick comes every minute anyway, so this
# only paces a fast ticker (the laptop's); each poll costs one read of the job and one release write.
POLL = 2
# A step of a check being carried out holds it this long: no tick sends it again meanwhile (a job's setup takes
# up to ~30 s, smoke probes up to SMOKE_BUDGET); if the function carrying it died, the next tick after it does.
LEASE = 60
# A job's deadline is its task timeout plus a slack for the job's setup and start: as long as the timeout, at
# least 10 s and at most a minute.
JOB_SLACK = 60
SMOKE_BUDGET = 45  # seconds of probing in one call (checkrun.py); both thresholds must fit in it


# Firestore stores datetimes, not dates: a date is kept as its ISO text (2027-01-31).
Day = Annotated[date, PlainSerializer(lambda d: d.isoformat())]


class Allow(Model):
    """A vulnerability accepted until a date, that day included (after it, it blocks again)."""

    cve: str = Field(min_length=3, max_length=100)
    until: Day
    reason: str | None = None


class ScanCheck(Model):
    severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = "CRITICAL"  # refused at or above
    allow: list[Allow] = Field(default_factory=list, max_length=200)
    attestation: bool = False  # also require a Binary Authorization attestation of the digest
    wait: Duration = 300  # scanning is asynchronous: how long to wait for it to finish
    retries: int = Field(default=0, ge=0, le=5)
    backoff: Duration = 10
    on_fail: OnFail = "block"


class JobCheck(Model):
    """A Cloud Run job: the release's image (or `image`) with `command`/`args`; `TARGET_URL` is set for it."""

    image: str | None = None  # default: the image being released, by digest
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list, max_length=50)
    env: dict[str, str] = Field(default_factory=dict, max_length=50)
    timeout: Duration = 600
    retries: int = Field(default=0, ge=0, le=5)  # executions run again after a failure
    backoff: Duration = 10
    on_fail: OnFail = "block"


class SmokeCheck(Model):
    """HTTP probes of the new revision's tag URL, run by pitstop itself (the seed's HealthCheck)."""

    path: str = "/"
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: str | None = None  # a substring the body must contain
    interval: Duration = Field(default=2, ge=1)
    timeout: Duration = Field(default=2, ge=1)  # per probe
    success_threshold: int = Field(default=3, ge=1, le=100)  # consecutive successes to pass
    failure_threshold: int = Field(default=2, ge=1, le=100)  # consecutive failures to fail
    deadline: Duration = Field(default=60, ge=1)  # neither threshold reached by then: failed
    at_steps: bool = False  # also before each next step, not only at 0 %
    retries: int = Field(default=0, ge=0, le=5)
    backoff: Duration = 10
    on_fail: OnFail = "block"

    @model_validator(mode="after")
    def _fits(self) -> SmokeCheck:
        # Probes run in calls of at most SMOKE_BUDGET seconds and a threshold counts within one call.
        longest = (max(self.success_threshold, self.failure_threshold) - 1) * self.interval + self.timeout
        if longest > SMOKE_BUDGET:
            raise ValueError(f"a threshold needs up to {longest}s of probing ((threshold - 1) × interval + timeout); "
                             f"pitstop probes for at most {SMOKE_BUDGET}s at a time: lower the thresholds or interval")
        return self

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path starts with /")
        return value


class Checks(Model):
    scan: ScanCheck | None = None
    migrate: JobCheck | None = None
    smoke: SmokeCheck | None = None
    verify: JobCheck | None = None
    e2e: JobCheck | None = None

    @field_validator("e2e", mode="before")
    @classmethod
    def _e2e_informs(cls, value: Any) -> Any:
        # E2E informs unless told to block: a staging E2E failure must not stop staging (a production release
        # still waits for it to pass: core/release.py).
        if isinstance(value, dict) and "on_fail" not in value:
            return {**value, "on_fail": "inform"}
        return value


CheckState = Literal["running", "passed", "failed", "timed_out", "cancelled"]  # cancelled: its stage stopped


class CheckRun(Model):
    """One run of a check in a stage (key: `check_key`), as the release records it."""

    name: str  # scan | migrate | smoke | verify | e2e
    state: CheckState = "running"
    on_fail: OnFail = "block"
    attempt: int = 1
    wave: int | None = None  # smoke/verify: the wave and the step it guards (-1: at 0 %)
    step: int | None = None
    started_at: datetime
    deadline: datetime
    next_at: datetime | None = None  # when the engine carries it a step further (poll, retry)
    execution: str | None = None  # a job's execution name
    detail: dict[str, Any] = Field(default_factory=dict)  # measured values: probes, findings, exit, summary
    reason: str = ""  # the sentence: which check, which probe or test, measured value and limit
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def ok(self) -> bool:
        """Passed, or failed without blocking."""
        return self.state == "passed" or self.done and self.on_fail == "inform"


def check_key(name: str, wave: int | None = None, step: int | None = None) -> str:
    return name if wave is None else f"{name}-w{wave}-s{step}"


def timeout_of(checks: Checks, name: str) -> int:
    check = getattr(checks, name)
    if name == "scan":
        return check.wait
    if name == "smoke":
        return check.deadline
    return check.timeout + min(JOB_SLACK, max(10, check.timeout))


def begin(checks: Checks, name: str, now: datetime, wave: int | None = None, step: int | None = None,
          attempt: int = 1) -> CheckRun:
    check = getattr(checks, name)
    return CheckRun(name=name, on_fail=check.on_fail, attempt=attempt, wave=wave, step=step, started_at=now,
                    deadline=now + timedelta(seconds=timeout_of(checks, name)),
                    next_at=now + timedelta(seconds=LEASE))  # its first step is sent with the decision


def retry_of(checks: Checks, run: CheckRun, now: datetime) -> CheckRun | None:
    """The next attempt of a failed run, if retries are left: after backoff × 2^(attempt-1)."""
    check = getattr(checks, run.name)
    if run.state not in ("failed", "timed_out") or run.attempt > check.retries:
        return None
    if run.state == "timed_out" and run.execution and run.name == "migrate":
        return None  # its execution may still run (it was asked to stop): a second migration must not overlap
    wait = timedelta(seconds=check.backoff * 2 ** (run.attempt - 1))
    fresh = begin(checks, run.name, now + wait, run.wave, run.step, run.attempt + 1)
    return fresh.model_copy(update={"started_at": now, "next_at": now + wait,
                                    "deadline": now + wait + timedelta(seconds=timeout_of(checks, run.name)),
                                    "detail": {"previous": run.reason}})


def job_name(service: str, release_id: str, environment: str, key: str, attempt: int) -> str:
    """A Cloud Run job per release, environment, check and attempt: run at most once per name (63 chars,
    lowercase letters, digits, '-', starting with a letter)."""
    import hashlib

    digest = hashlib.sha256(f"{release_id}/{environment}/{key}/{attempt}".encode()).hexdigest()[:10]
    head = f"{service}-{key.split('-')[0]}"[:40].rstrip("-")
    return f"{head}-{digest}"


def smoke_verdict(smoke: SmokeCheck, probes: list[dict[str, Any]]) -> tuple[str, str]:
    """(passed | failed | running, sentence) of a series of probes, each {status, ms, ok, why}."""
    run_ok = run_bad = 0
    for probe in probes:
        run_ok, run_bad = (run_ok + 1, 0) if probe["ok"] else (0, run_bad + 1)
        if run_bad >= smoke.failure_threshold:
            return "failed", (f"smoke: {run_bad} probes in a row failed (failure threshold {smoke.failure_threshold}); "
                              f"last: {probe['why']}")
        if run_ok >= smoke.success_threshold:
            return "passed", (f"smoke: {run_ok} probes in a row passed (success threshold "
                              f"{smoke.success_threshold}); last {probe['status']} in {probe['ms']:.0f} ms")
    return "running", f"smoke: {len(probes)} probes, no threshold reached yet"


def probe_ok(smoke: SmokeCheck, status: int | None, body: str, ms: float, error: str | None) -> tuple[bool, str]:
    """One probe against the expectation, with the sentence a person reads when it failed."""
    if error is not None:
        return False, f"GET {smoke.path}: {error}"
    if status != smoke.expect_status:
        return False, f"GET {smoke.path} answered {status}, expected {smoke.expect_status}"
    if smoke.expect_body is not None and smoke.expect_body not in body:
        return False, f"GET {smoke.path} answered {status} without {smoke.expect_body!r} in its body"
    if ms > smoke.timeout * 1000:
        return False, f"GET {smoke.path} took {ms:.0f} ms, more than the {smoke.timeout}s timeout"
    return True, f"GET {smoke.path} answered {status} in {ms:.0f} ms"

"""The rollout state machine: `decide(rollout, input, now) -> Decision`.

Pure: no clock, network or randomness. Every call returns the next rollout, the
effects the shell must carry out, and the audit event explaining the change, or
`None` for the audit when the input changes nothing worth a line (an idle tick).

Read `TRANSITIONS` first: for each state, the inputs it accepts and the states
each may lead to. `decide` refuses any other move. The handlers below it are one
per input kind.

The invariant (README, "Never promote what was not measured"): a step advances,
and a rollout succeeds, by itself only once the new revision's traffic is judged
healthy without a gap from when it first served up to the step's deadline
(`judged_until`); the last step is a watch at 100 % of at least one health
window. A failing verdict or an open incident for the new revision rolls back in
every live state, whatever its window's age.

Traffic is desired, not done: a new split bumps `desired_generation`; the shell
applies it and feeds back `Applied`, `ApplyFailed` or `Observed`. Step clocks
start when the split is real, and every wait is an absolute deadline.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pitstop.core.explain import render, render_all
from pitstop.core.judge import judge
from pitstop.core.models import (
    MAX_MEASUREMENTS, TERMINAL, Alert, Applied, ApplyFailed, ApplyTraffic, Artifact, AuditEvent, Command, Effect,
    HealthSample, Input, Measurement, Notify, Observed, Proceed, RECONCILE_AFTER, Reason, Rollout, RolloutSpec,
    Superseded, Target, Tick, describe_split, last_step,
)

REQUEST_LOGS = "request-logs"  # the source of samples estimated from Cloud Run's request logs (issue #12)

BACKOFF_BASE = 2  # seconds; doubles per attempt, capped, with jitter
BACKOFF_CAP = 60

# ---------------------------------------------------------------- the transition table
#
# state -> input kind -> the states it may lead to (any input may also leave the state as it is).
# An input kind a state does not list is recorded as ignored, with the reason.

_LIVE = {"superseded": {"superseded"}}
TRANSITIONS: dict[str, dict[str, set[str]]] = {
    "deploying": {  # the new revision is being created at 0 %; it serves nothing yet
        "applied": {"deploying", "progressing", "verifying", "succeeded"},  # initial: straight to succeeded
        "apply_failed": {"deploying", "rolling_back", "failed"},
        "observed": {"deploying", "progressing", "verifying", "succeeded"},
        "tick": {"deploying", "rolling_back", "failed"},
        "health": {"deploying", "rolling_back"},  # a failure of the new revision is never discarded
        "alert": {"deploying", "rolling_back"},
        "command": {"deploying", "rolling_back"},
        "proceed": {"deploying", "progressing", "verifying"},  # a release clears its wave's first step
        **_LIVE,
    },
    "verifying": {  # blue-green: at 0 % on its tagged URL, judged until the verify deadline
        "health": {"verifying", "switching", "awaiting_approval", "paused", "rolling_back"},
        "tick": {"verifying", "switching", "awaiting_approval", "paused", "rolling_back"},
        "alert": {"verifying", "rolling_back"},
        "command": {"verifying", "paused", "switching", "awaiting_approval", "rolling_back"},
        "applied": {"verifying"}, "observed": {"verifying"},
        "apply_failed": {"verifying", "rolling_back"},
        "proceed": {"verifying", "switching"},
        **_LIVE,
    },
    "progressing": {  # canary: a step's weight on the new revision, judged until the step's deadline
        "health": {"progressing", "switching", "awaiting_approval", "paused", "rolling_back"},
        "tick": {"progressing", "switching", "awaiting_approval", "paused", "rolling_back"},
        "alert": {"progressing", "rolling_back"},
        "command": {"progressing", "paused", "switching", "awaiting_approval", "rolling_back"},
        "applied": {"progressing"}, "observed": {"progressing"},
        "apply_failed": {"progressing", "rolling_back"},
        "proceed": {"progressing", "switching"},
        **_LIVE,
    },
    "switching": {  # 100 % decided, not yet served
        "applied": {"baking", "succeeded"}, "observed": {"switching", "baking", "succeeded"},
        "apply_failed": {"switching", "rolling_back"},
        "health": {"switching", "rolling_back"},
        "alert": {"switching", "rolling_back"},
        "command": {"switching", "rolling_back"},
        "tick": {"switching", "rolling_back"},
        "proceed": {"switching"},
        **_LIVE,
    },
    "baking": {  # the final watch at 100 %: succeeds once judged healthy up to its end
        "health": {"baking", "succeeded", "paused", "rolling_back"},
        "tick": {"baking", "succeeded", "paused", "rolling_back"},
        "alert": {"baking", "rolling_back"},
        "command": {"baking", "paused", "succeeded", "rolling_back"},
        "applied": {"baking"}, "observed": {"baking"},
        "apply_failed": {"baking", "rolling_back"},
        "proceed": {"baking"},
        **_LIVE,
    },
    "paused": {  # a person's pause, or no conclusive health data: holds until resumed or `max_hold`
        "command": {"paused", "progressing", "verifying", "baking", "switching", "awaiting_approval", "succeeded",
                    "rolling_back"},
        "health": {"paused", "rolling_back"},
        "alert": {"paused", "rolling_back"},
        "tick": {"paused", "rolling_back"},
        "applied": {"paused"}, "observed": {"paused"},
        "apply_failed": {"paused", "rolling_back"},
        "proceed": {"paused", "progressing", "switching"},  # cleared while paused: moves on once resumed (or forced)
        **_LIVE,
    },
    "awaiting_approval": {  # healthy, held for `pitstop approve` until `max_hold`
        "command": {"awaiting_approval", "progressing", "switching", "rolling_back"},
        "health": {"awaiting_approval", "rolling_back"},
        "alert": {"awaiting_approval", "rolling_back"},
        "tick": {"awaiting_approval", "rolling_back"},
        "applied": {"awaiting_approval"}, "observed": {"awaiting_approval"},
        "apply_failed": {"awaiting_approval", "rolling_back"},
        "proceed": {"awaiting_approval"},
        **_LIVE,
    },
    "rolling_back": {  # all traffic back to the stable revision, decided, not yet served
        "applied": {"rolled_back", "succeeded"},  # a `rollback --to` rollout succeeds when served
        "observed": {"rolling_back", "rolled_back", "succeeded"},
        "apply_failed": {"rolling_back", "failed"},
        "tick": {"rolling_back", "failed"},
        "health": {"rolling_back"}, "alert": {"rolling_back"}, "command": {"rolling_back"},
        "proceed": {"rolling_back"},
        **_LIVE,
    },
    # Finished. Late Cloud Run results change nothing; the reconciler may repair drift of a recent one.
    "succeeded": {"observed": {"succeeded"}},
    "rolled_back": {"observed": {"rolled_back"}},
    "failed": {},
    "superseded": {},
}


class IllegalTransition(AssertionError):
    """A handler chose a move the table does not allow: a bug in pitstop, never a bad input."""


@dataclass(frozen=True)
class Decision:
    rollout: Rollout
    effects: list[Effect] = field(default_factory=list)
    audit: AuditEvent | None = None


class _Plan:
    """Collects the changes of one decision, then builds the Decision."""

    def __init__(self, rollout: Rollout, inp: Input, now: datetime, actor: str) -> None:
        self.before, self.inp, self.now, self.actor = rollout, inp, now, actor
        self.changes: dict[str, Any] = {}
        self.effects: list[Effect] = []
        self.reasons: list[Reason] = []
        self.verdict = None
        self.detail: dict[str, Any] = {}

    @property
    def r(self) -> Rollout:
        return self.before.model_copy(update=self.changes) if self.changes else self.before

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    def why(self, code: str, **values: Any) -> None:
        self.reasons.append(Reason(code=code, values=values))

    def split(self, targets: list[Target], create_revision: bool = False) -> None:
        gen = self.r.desired_generation + 1
        self.set(desired=targets, desired_generation=gen, desired_at=self.now, apply_attempts=0,
                 apply_failing_since=None, retry_at=None)
        self.effects.append(ApplyTraffic(generation=gen, split=targets, create_revision=create_revision))

    def notify(self, severity: str, code: str, **values: Any) -> None:
        reason = Reason(code=code, values=values)
        message = render(reason)
        self.set(message=message)
        self.effects.append(Notify(severity=severity, message=message, reason=reason))

    def _audit(self, decision: str, after: Rollout) -> AuditEvent:
        return AuditEvent(
            id=self.inp.id, at=self.now, input=self.inp.kind, actor=self.actor, decision=decision,
            reasons=render_all(self.reasons), why=self.reasons, state_before=self.before.state,
            state_after=after.state, traffic_before=describe_split(self.before.observed),
            traffic_after=describe_split(after.desired), verdict=self.verdict, detail=self.detail,
        )

    def done(self, decision: str) -> Decision:
        after = self.r.model_copy(update={"updated_at": self.now})
        if after.state in TERMINAL and after.finished_at is None:
            after = after.model_copy(update={"finished_at": self.now})
        return Decision(after, self.effects, self._audit(decision, after))

    def ignore(self, code: str, **values: Any) -> Decision:
        self.why(code, **values)
        audit = self._audit("ignored", self.before)
        return Decision(self.before, [], audit.model_copy(update={"traffic_before": None, "traffic_after": None}))

    def nothing(self) -> Decision:
        return Decision(self.before)


# ---------------------------------------------------------------- starting

def revision_name(service: str, version: str, build_id: str) -> str:
    """Cloud Run revision names: `<service>-…`, lowercase, digits, '-', at most 63 chars."""
    suffix = re.sub(r"[^a-z0-9]", "", build_id.lower())[:8] or "0"
    room = max(1, min(20, 63 - len(service) - len(suffix) - 2))  # the build suffix must survive: it makes it new
    slug = re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")[:room].strip("-") or "v"
    return f"{service}-{slug}-{suffix}"


def start(spec: RolloutSpec, region: str, project: str, artifact: Artifact, rollout_id: str,
          stable_revision: str | None, stable_version: str | None, now: datetime, input_id: str,
          requested_by: str | None = None, release_id: str | None = None) -> Decision:
    """A matching build: a new rollout that deploys the new revision at 0 %. `requested_by`: the verified
    person whose `pitstop deploy` ran the build, if one did (a push starts builds on its own). `release_id`:
    the release this region's rollout belongs to; it then waits at 0 % until its wave is cleared."""
    actor = requested_by or "cloud-build"
    revision = revision_name(spec.service, artifact.version, artifact.build_id)
    if stable_revision is None:
        kind, targets = "initial", [Target(revision=revision, percent=100, tag="stable")]
        why = Reason(code="first_version", values={"service": spec.service, "region": region})
    else:
        kind = spec.strategy.kind
        new_tag = "canary" if kind == "canary" else "green"
        targets = [Target(revision=stable_revision, percent=100, tag="stable"),
                   Target(revision=revision, percent=0, tag=new_tag)]
        why = Reason(code="build_matches", values={
            "build_id": artifact.build_id, "repo": artifact.repo or "the repo", "spec": spec.key,
            "strategy": kind.replace("_", "-"), "version": artifact.version,
            "stable": stable_version or stable_revision})
    rollout = Rollout(
        id=rollout_id, service=spec.service, environment=spec.environment, region=region, project=project,
        kind=kind, version=artifact.version, revision=revision, image=artifact.image_by_digest,
        artifact=artifact, strategy=spec.strategy, health=spec.health, max_hold=spec.max_hold,
        apply_budget=spec.apply_budget, state="deploying", stable_revision=stable_revision,
        stable_version=stable_version, desired=targets, desired_generation=1, desired_at=now, created_at=now,
        updated_at=now, message=f"Deploying version {artifact.version} as revision {revision}.",
        started_by=requested_by, release_id=release_id, cleared_step=-1 if release_id else None,
    )
    audit = AuditEvent(
        id=input_id, at=now, input="build", actor=actor, decision="started", reasons=[render(why)], why=[why],
        state_before=None, state_after="deploying", traffic_after=describe_split(targets),
        detail={"image": rollout.image, "build_id": artifact.build_id, "commit": artifact.commit or "",
                **({"release": release_id} if release_id else {})},
    )
    return Decision(rollout, [ApplyTraffic(generation=1, split=targets, create_revision=True)], audit)


def start_direct(rollout_id: str, service: str, environment: str, region: str, project: str, version: str,
                 revision: str, image: str, stable_revision: str | None, stable_version: str | None,
                 now: datetime, input_id: str, actor: str, template: Rollout,
                 release_id: str | None = None) -> Decision:
    """`rollback --to VERSION`: straight to an earlier good revision, no steps. A release's revert of a region
    that already succeeded is one too (`release_id`: it reports back to the release)."""
    targets = [Target(revision=revision, percent=100, tag="stable")]
    rollout = Rollout(
        id=rollout_id, service=service, environment=environment, region=region, project=project,
        kind="direct", version=version, revision=revision, image=image, strategy=template.strategy,
        health=template.health, max_hold=template.max_hold, apply_budget=template.apply_budget,
        state="rolling_back", stable_revision=stable_revision, stable_version=stable_version, desired=targets,
        desired_at=now, created_at=now, updated_at=now, started_by=actor, release_id=release_id,
        message=f"Rolling back {service} to version {version} (revision {revision}) on request of {actor}.",
    )
    why = Reason(code="rollback_to", values={"actor": actor, "version": version, "revision": revision})
    audit = AuditEvent(
        id=input_id, at=now, input="command", actor=actor, decision="rollback_to", reasons=[render(why)],
        why=[why], state_before=None, state_after=rollout.state, traffic_after=describe_split(targets),
    )
    return Decision(rollout, [ApplyTraffic(generation=1, split=targets)], audit)


# ---------------------------------------------------------------- deciding

ACTORS = {"health": "health-judge", "alert": "cloud-monitoring", "tick": "scheduler", "build": "cloud-build",
          "observed": "reconciler"}


def decide(rollout: Rollout, inp: Input, now: datetime) -> Decision:
    actor = inp.actor if isinstance(inp, (Command, Proceed)) else ACTORS.get(inp.kind, "pitstop")
    plan = _Plan(rollout, inp, now, actor)
    accepted = TRANSITIONS[rollout.state]
    if inp.kind not in accepted:
        if isinstance(inp, Tick):
            return plan.nothing()
        if isinstance(inp, (Applied, ApplyFailed)) and rollout.state in TERMINAL:
            return plan.ignore("late_effect", state=rollout.state)
        if rollout.state in TERMINAL:
            return plan.ignore("finished", state=rollout.state)
        return plan.ignore("not_accepted", input=inp.kind, state=rollout.state)
    decision = _HANDLERS[inp.kind](plan, inp)
    moved = decision.rollout.state != rollout.state
    if moved and decision.rollout.state not in accepted[inp.kind]:
        raise IllegalTransition(f"{rollout.state} --{inp.kind}--> {decision.rollout.state} is not in the table")
    return decision


# ---------------------------------------------------------------- traffic applied, failed or observed

def _applied(p: _Plan, inp: Applied) -> Decision:
    r = p.r
    if inp.generation != r.desired_generation or r.applied:
        return p.ignore("stale_effect", generation=inp.generation, desired=r.desired_generation,
                        observed=r.observed_generation)
    p.set(observed=inp.observed, observed_generation=inp.generation, apply_attempts=0, apply_failing_since=None,
          retry_at=None)
    p.why("split_applied", split=describe_split(inp.observed))
    state = r.state
    if state == "deploying":
        if r.kind == "initial":
            return _succeed(p, "note_deployed_first", version=r.version, service=r.service)
        p.why("revision_ready", revision=r.revision)
        if r.cleared_step is not None and r.cleared_step < 0:  # in a release: the wave starts together
            p.set(wave_hold=True)
            p.why("wave_hold_ready", release=r.release_id)
            return p.done("revision_ready")
        return _enter_step(p, 0) if r.kind == "canary" else _verify(p)
    if state == "progressing" and r.step_started_at is None:  # a new step's split (not a drift repair)
        _start_clock(p, r.strategy.canary.steps[r.step].pause)
        return p.done("step_started")
    if state == "switching":
        if r.skip_bake:
            return _succeed(p, "note_promoted_by", version=r.version, service=r.service, actor=r.promoted_by or "a person")
        bake = max(r.strategy.canary.bake if r.strategy.canary else r.strategy.blue_green.bake, r.health.interval)
        p.set(state="baking")
        _start_clock(p, bake)
        p.why("bake", revision=r.revision, seconds=bake)
        return p.done("baking")
    if state == "rolling_back":
        if r.kind == "direct":
            return _succeed(p, "note_direct_done", service=r.service, version=r.version, revision=r.revision)
        p.set(state="rolled_back")
        return p.done("rolled_back")
    return p.done("applied")  # paused, a repaired drift, etc.: the split is real, the state holds


def _observed(p: _Plan, o: Observed) -> Decision:
    """The reconciler read Cloud Run: confirm a split applied late, re-apply one lost, repair drift."""
    r = p.r
    p.detail = {"observed": describe_split(o.split), "desired": describe_split(r.desired)}
    if not o.settled:
        return p.nothing()  # Cloud Run is still working on it: look again next tick
    if _same(o.split, r.desired):
        if r.applied:
            return p.nothing()
        return _applied(p, Applied(id=o.id, generation=r.desired_generation, observed=o.split))
    if not r.applied:
        if r.retry_at and p.now < r.retry_at:
            return p.nothing()
        p.effects.append(ApplyTraffic(generation=r.desired_generation, split=r.desired,
                                      create_revision=r.state == "deploying"))
        p.set(retry_at=p.now + timedelta(seconds=RECONCILE_AFTER))
        p.why("split_reapplied", generation=r.desired_generation, split=describe_split(r.desired))
        return p.done("reconcile")
    # Served traffic no state explains (a late write, a person in the console): the decided split wins.
    p.why("drift", observed=describe_split(o.split), desired=describe_split(r.desired))
    p.set(observed=o.split)
    p.split(r.desired)  # a new generation: its `Applied` confirms the repair
    return p.done("drift_repaired")


def _apply_failed(p: _Plan, inp: ApplyFailed) -> Decision:
    r = p.r
    if inp.generation != r.desired_generation or r.applied:
        return p.ignore("stale_effect", generation=inp.generation, desired=r.desired_generation,
                        observed=r.observed_generation)
    attempts = r.apply_attempts + 1
    since = r.apply_failing_since or p.now
    spent = int((p.now - since).total_seconds())
    split = describe_split(r.observed)
    p.detail = {"error": inp.error, "attempt": attempts, "failing_for_s": spent}
    if not inp.permanent and spent < r.apply_budget:
        delay = _backoff(r.id, r.desired_generation, attempts)
        p.set(apply_attempts=attempts, apply_failing_since=since, retry_at=p.now + timedelta(seconds=delay))
        p.why("apply_retry", error=inp.error, attempt=attempts, delay=delay, budget=r.apply_budget, spent=spent,
              split=split)
        return p.done("retrying")
    return _give_up_applying(p, "cannot succeed" if inp.permanent else f"kept failing for {spent}s", inp.error)


def _give_up_applying(p: _Plan, why: str, error: str) -> Decision:
    """Past the retry budget (or a permanent error): an infrastructure failure, never a health verdict."""
    r = p.r
    p.why("apply_gave_up", why=why, error=error, split=describe_split(r.observed))
    if r.state != "rolling_back" and r.stable_revision:
        if r.state == "deploying":
            # The new revision never served; still, make sure the stable one has everything (a superseded
            # canary may hold a share), without naming a revision that may not exist.
            p.set(state="rolling_back", next_step_at=None, hold_until=None)
            p.split([Target(revision=r.stable_revision, percent=100, tag="stable")])
            p.notify("ERROR", "note_deploy_failed", version=r.version, error=error,
                     stable=r.stable_version or r.stable_revision)
            return p.done("deploy_failed")
        return _roll_back(p, "infrastructure", f"Cloud Run could not apply the next split ({error}); this is an "
                                               f"infrastructure failure, not a health verdict", severity="ERROR")
    p.set(state="failed", retry_at=None, next_step_at=None, hold_until=None)
    p.notify("CRITICAL", "note_failed", service=r.service, version=r.version, why=why, error=error,
             desired=describe_split(r.desired), observed=describe_split(r.observed))
    return p.done("failed")


def _backoff(rollout_id: str, generation: int, attempt: int) -> int:
    """Capped exponential backoff with jitter; the jitter comes from the ids, so `decide` stays pure."""
    cap = min(BACKOFF_BASE ** attempt, BACKOFF_CAP)
    h = int(hashlib.sha256(f"{rollout_id}/{generation}/{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return max(1, round(cap * (0.5 + h / 2)))


# ---------------------------------------------------------------- health and alerts

def _health(p: _Plan, s: HealthSample) -> Decision:
    r = p.r
    p.detail = {"revision": s.revision, "requests": s.request_count, "errors": s.error_count,
                "p99_ms": s.latency_p99_ms, "source": s.source}
    if s.stable is not None:  # the stable revision over the same window: kept for the dashboard's charts
        p.detail["stable"] = {"revision": s.stable.revision, "requests": s.stable.request_count,
                              "errors": s.stable.error_count, "p99_ms": s.stable.latency_p99_ms}
    if s.service != r.service or s.region != r.region:
        return p.ignore("wrong_service", service=s.service, region=s.region, want_service=r.service,
                        want_region=r.region)
    if s.revision == r.stable_revision and s.revision != r.revision:
        if r.baseline and r.baseline.window_end >= s.window_end:
            return p.ignore("baseline_older")
        p.set(baseline=s)
        p.why("baseline", revision=s.revision, requests=s.request_count, p99=_ms(s.latency_p99_ms),
              start=s.window_start, end=s.window_end)
        return p.done("baseline")
    if s.revision != r.revision:
        return p.ignore("other_revision", revision=s.revision, new=r.revision, stable=r.stable_revision)
    verdict = judge(s, r.health, s.stable or r.baseline)
    p.verdict = verdict
    p.why("verdict", rule=verdict.rule)
    if s.source == REQUEST_LOGS and verdict.outcome != "fail":
        # An estimate from a sampled share of the requests: evidence of failure, never coverage to step on.
        return p.ignore("logs_fail_only", outcome=verdict.outcome)
    for rule in verdict.dry_run:
        p.why("dry_run_failed", rule=rule)
    p.set(measurements=_measured(r, verdict))
    if verdict.outcome == "fail" and verdict.on_fail == "pause":
        return _pause_for(p, verdict)
    if verdict.outcome == "fail":  # whatever the window's age or the state: never discarded
        if r.state == "rolling_back":
            return p.ignore("already_rolling_back")
        p.set(verdict=verdict)  # the verdict that rolled it back is the one a person must see
        return _roll_back(p, "health", render(Reason(code="health_failed", values={"rule": verdict.rule})))
    if r.state in ("deploying", "rolling_back") or r.judged_until is None:
        return p.ignore("not_serving", state=r.state)
    extended = False
    if verdict.outcome == "pass":
        if s.window_end <= r.judged_until:
            return p.ignore("already_covered", end=s.window_end, until=r.judged_until)
        if s.window_start > r.judged_until:
            p.why("coverage_gap", start=s.window_start, until=r.judged_until)
        else:
            p.set(judged_until=s.window_end)
            p.why("covered", until=s.window_end)
            extended = True
    held = r.verdict
    # Samples arrive in any order: unless this one extends what is judged, the verdict on the later (or, for
    # the same window, larger) sample stands.
    if not extended and held and (held.window_end, held.request_count) > (verdict.window_end, verdict.request_count):
        p.why("verdict_stands", end=held.window_end, outcome=held.outcome)
    else:
        p.set(verdict=verdict)
    if _step_done(p.r, p.now):
        return _advance(p)
    return p.done("judged")


def _pause_for(p: _Plan, verdict) -> Decision:
    """A metric with `on_fail: pause` failed: a person decides, within `max_hold` (then it rolls back)."""
    r = p.r
    p.set(verdict=verdict)
    if r.state not in ("verifying", "progressing", "baking"):
        return p.done("judged")  # already paused, waiting for approval or past its steps: nothing more to hold
    until = p.now + timedelta(seconds=r.max_hold)
    p.set(state="paused", paused_from=r.state, hold_until=until)
    p.why("paused_by_metric", rule=verdict.rule, percent=r.new_percent, until=until)
    p.notify("WARNING", "note_paused_metric", service=r.service, version=r.version, percent=r.new_percent,
             rule=verdict.rule, id=r.id)
    return p.done("paused")


def _measured(r: Rollout, verdict) -> list[Measurement]:
    """The verdict's values, one per metric, added to the rollout's history (the newest MAX_MEASUREMENTS)."""
    new = [Measurement(at=verdict.window_end, step=r.step, metric=c.name, value=c.measured, stable=c.stable,
                       threshold=c.threshold, condition=c.condition, outcome=_outcome(c.passed),
                       source=verdict.source, dry_run=c.dry_run)
           for c in verdict.checks if c.name != "requests"]
    # A redelivered sample (or another one over the same window) replaces its measurements: deciding twice
    # changes nothing.
    fresh = {(m.at, m.source, m.metric) for m in new}
    kept = [m for m in r.measurements if (m.at, m.source, m.metric) not in fresh]
    return [*kept, *new][-MAX_MEASUREMENTS:]


def _outcome(passed: bool | None) -> str:
    return {True: "pass", False: "fail"}.get(passed, "inconclusive")


def _alert(p: _Plan, a: Alert) -> Decision:
    r = p.r
    p.detail = {"incident": a.incident_id, "policy": a.policy or "", "observed": a.observed_value or "",
                "threshold": a.threshold_value or ""}
    if a.test:
        return p.ignore("test_alert", policy=a.policy)
    if a.service and a.service != r.service:
        return p.ignore("alert_other_service", service=a.service, want=r.service)
    if a.revision and a.revision != r.revision:
        return p.ignore("alert_other_revision", revision=a.revision, new=r.revision)
    if a.revision is None and a.started_at and a.started_at < r.created_at:
        return p.ignore("alert_before", incident=a.incident_id, started=a.started_at)
    if a.state == "closed":
        p.why("alert_closed", incident=a.incident_id, policy=a.policy)
        return p.done("alert_closed")
    if r.state == "rolling_back":
        return p.ignore("already_rolling_back")
    why = render(Reason(code="alert_open", values={
        "incident": a.incident_id, "policy": a.policy or "alert policy", "condition": a.condition or "condition",
        "observed": a.observed_value, "threshold": a.threshold_value}))
    return _roll_back(p, "alert", why)


# ---------------------------------------------------------------- ticks: deadlines and retries

def _tick(p: _Plan, _: Tick) -> Decision:
    r, now = p.r, p.now
    if not r.applied:
        if r.retry_at and now >= r.retry_at:  # a Cloud Run error asked for another try
            since = r.apply_failing_since or r.desired_at
            if (now - since).total_seconds() >= r.apply_budget:
                return _give_up_applying(p, f"kept failing for {int((now - since).total_seconds())}s",
                                         "no attempt succeeded within the retry budget")
            p.effects.append(ApplyTraffic(generation=r.desired_generation, split=r.desired,
                                          create_revision=r.state == "deploying"))
            p.set(retry_at=now + timedelta(seconds=RECONCILE_AFTER))
            p.why("split_reapplied", generation=r.desired_generation, split=describe_split(r.desired))
            return p.done("reconcile")
        return p.nothing()  # the reconciler reads Cloud Run back (`Observed`) before applying again
    if r.state in ("paused", "awaiting_approval"):
        if r.hold_until and now >= r.hold_until:
            what = "paused" if r.state == "paused" else "waiting for approval"
            return _roll_back(p, "hold", render(Reason(code="hold_expired", values={
                "what": what, "since": r.hold_until - timedelta(seconds=r.max_hold), "max_hold": r.max_hold})))
        return p.nothing()
    if r.next_step_at is None or now < r.next_step_at:
        return p.nothing()
    if _step_done(r, now):
        return _advance(p)
    if r.release_id and not r.step_due and not r.wave_hold and r.state in ("progressing", "verifying"):
        # Past the deadline without enough evidence: the release may judge the wave's traffic as a whole.
        p.set(step_due=True)
        p.why("step_due", deadline=r.next_step_at, last=r.verdict.rule if r.verdict else "no health sample yet")
        return p.done("step_due")
    if now >= r.next_step_at + timedelta(seconds=r.health.no_data_timeout):
        p.set(state="paused", paused_from=r.state, hold_until=now + timedelta(seconds=r.max_hold))
        p.why("no_coverage", deadline=r.next_step_at, until=r.judged_until, timeout=r.health.no_data_timeout,
              last=r.verdict.rule if r.verdict else "no health sample of this step yet")
        p.notify("WARNING", "note_paused_no_data", service=r.service, version=r.version, percent=r.new_percent,
                 id=r.id)
        return p.done("paused")
    return p.nothing()  # waiting for a window that reaches the deadline (Monitoring lags): nothing to write


def _step_done(r: Rollout, now: datetime) -> bool:
    """The step's deadline has passed and its traffic is judged healthy, without a gap, up to it."""
    return (r.state in ("progressing", "verifying", "baking") and r.applied and r.next_step_at is not None
            and now >= r.next_step_at and r.judged_until is not None and r.judged_until >= r.next_step_at
            and r.verdict is not None and r.verdict.outcome == "pass")


# ---------------------------------------------------------------- operator commands

def _command(p: _Plan, c: Command) -> Decision:
    p.detail = {"action": c.action, "reason": c.reason or ""}
    if c.reason:
        p.why("actor_says", actor=c.actor, text=c.reason)
    r = p.r
    if c.action in ("abort", "rollback"):
        if r.state == "rolling_back":
            return p.ignore("already_rolling_back")
        return _roll_back(p, "person", render(Reason(code="asked", values={"actor": c.actor, "action": c.action})),
                          severity="NOTICE")
    if c.action == "pause":
        if r.state not in ("verifying", "progressing", "baking") or not r.applied:
            return p.ignore("pause_refused", state=r.state)
        until = p.now + timedelta(seconds=r.max_hold)
        p.set(state="paused", paused_from=r.state, hold_until=until,
              message=f"Paused by {c.actor} at {r.new_percent} %.")
        p.why("paused_by", actor=c.actor, percent=r.new_percent, until=until)
        return p.done("paused")
    if c.action == "resume":
        if r.state != "paused":
            return p.ignore("resume_refused", state=r.state)
        _release(p)
        if r.next_step_at and r.next_step_at < p.now:
            # The revision served all through the pause: the step ends once that time is judged too.
            p.set(next_step_at=p.now)
        p.why("resumed", actor=c.actor, deadline=p.r.next_step_at)
        if _step_done(p.r, p.now):
            return _advance(p)
        return p.done("resumed")
    if c.action == "approve":
        if r.state != "awaiting_approval":
            return p.ignore("approve_refused", state=r.state)
        _release(p)
        p.why("approved", actor=c.actor)
        return _advance(p, gate_passed=True)
    # promote
    if r.state in ("deploying", "rolling_back", "switching") or not r.applied:
        return p.ignore("promote_refused", state=r.state)
    if r.state == "awaiting_approval":
        return p.ignore("promote_at_gate")
    if c.full and r.cleared_step is not None:  # its wave moves together: promote the release instead
        return p.ignore("promote_full_in_release", release=r.release_id)
    gate = _gate_ahead(r)
    if c.full and gate:  # an operator may hurry a rollout, not take an approver's decision
        return p.ignore("promote_past_gate", gate=gate)
    if r.state == "paused":
        _release(p)
    r = p.r  # released: the state it was holding
    p.set(promoted_by=c.actor)
    if c.full and r.state == "baking":  # already at 100 %: only the watch is left to skip
        p.why("promoted_full_bake", actor=c.actor)
        return _succeed(p, "note_promoted_by", version=r.version, service=r.service, actor=c.actor)
    if c.full:
        p.set(skip_bake=True)
        p.why("promoted_full", actor=c.actor)
        return _switch(p)
    p.why("promoted", actor=c.actor, verdict=r.verdict.outcome if r.verdict else "none", until=r.judged_until)
    return _advance(p)


def _gate_ahead(r: Rollout) -> str | None:
    """The approval gate a rollout has still to pass, if any (as the audit names it)."""
    state = r.paused_from if r.state == "paused" else r.state
    if r.strategy.canary:
        steps = r.strategy.canary.steps
        ahead = [i for i in range(r.step, len(steps)) if steps[i].approve]
        return f"after step {ahead[0] + 1} ({steps[ahead[0]].weight} %)" if ahead else None
    if r.strategy.blue_green.approve and state in ("deploying", "verifying"):
        return "before the switch"
    return None


# ---------------------------------------------------------------- moves

def _advance(p: _Plan, gate_passed: bool = False) -> Decision:
    """The current step is done: the gate, the next step, the switch to 100 % or success."""
    r = p.r
    if r.cleared_step is not None and r.state != "baking":
        # In a release the wave moves together: the release clears the next step (its gates are the release's).
        if (1 if r.state == "verifying" else r.step + 1) > r.cleared_step:
            if r.wave_hold:
                return p.done("judged") if p.changes else p.nothing()
            p.set(wave_hold=True)
            p.why("wave_hold", until=r.judged_until, release=r.release_id)
            return p.done("step_reached")
        gate_passed = True
    if r.next_step_at and r.judged_until and r.judged_until >= r.next_step_at:
        p.why("advance", deadline=r.next_step_at, until=r.judged_until)
    if r.state == "baking":
        return _succeed(p, "note_succeeded", version=r.version, service=r.service, until=r.judged_until)
    if r.state == "verifying":
        if r.strategy.blue_green.approve and not gate_passed:
            return _gate(p)
        p.why("switch_verified")
        return _switch(p)
    steps = r.strategy.canary.steps  # progressing
    if steps[r.step].approve and not gate_passed:
        return _gate(p)
    if r.step + 1 < len(steps):
        return _enter_step(p, r.step + 1)
    p.why("switch_last_step")
    return _switch(p)


def _release(p: _Plan) -> None:
    """Leave a pause or an approval gate for the state it was holding."""
    p.set(state=p.r.paused_from or "progressing", paused_from=None, hold_until=None)


def _gate(p: _Plan) -> Decision:
    r = p.r
    p.set(state="awaiting_approval", paused_from=r.state, hold_until=p.now + timedelta(seconds=r.max_hold))
    p.notify("NOTICE", "note_gate", service=r.service, version=r.version, percent=r.new_percent, id=r.id)
    return p.done("awaiting_approval")


def _enter_step(p: _Plan, step: int) -> Decision:
    r = p.r
    steps = r.strategy.canary.steps
    weight = steps[step].weight
    p.set(state="progressing", step=step, step_started_at=None, next_step_at=None, hold_until=None,
          wave_hold=False, step_due=False)
    p.split(_with_new(r, weight))
    p.why("step", step=step + 1, steps=len(steps), weight=weight, revision=r.revision)
    p.set(message=f"Canary of version {r.version} at {weight} % (step {step + 1} of {len(steps)}).")
    return p.done("advanced")


def _verify(p: _Plan) -> Decision:
    r = p.r
    p.set(state="verifying", verdict=None, hold_until=None, wave_hold=False, step_due=False)
    _start_clock(p, r.strategy.blue_green.verify)
    p.why("verify", revision=r.revision, seconds=r.strategy.blue_green.verify)
    p.set(message=f"Verifying version {r.version} at 0 % on its tagged URL.")
    return p.done("verifying")


def _switch(p: _Plan) -> Decision:
    r = p.r
    targets = [Target(revision=r.revision, percent=100, tag="stable" if r.kind == "canary" else "green")]
    if r.stable_revision:  # keep the old revision addressable for an instant rollback
        targets.append(Target(revision=r.stable_revision, percent=0, tag="previous" if r.kind == "canary" else "blue"))
    p.set(message=f"Switching all traffic to version {r.version}.")
    p.set(state="switching", step=len(r.strategy.canary.steps) if r.strategy.canary else 0,
          step_started_at=None, next_step_at=None, hold_until=None, wave_hold=False, step_due=False)
    p.split(targets)
    return p.done("switching")


CAUSES = {"health": "New version failed health checks after deployment",
          "alert": "A Cloud Monitoring alert fired for the new version",
          "infrastructure": "Cloud Run could not apply the next traffic split (an infrastructure failure, not a "
                            "health verdict)",
          "hold": "The rollout was held past its limit"}


def _roll_back(p: _Plan, cause: str, why: str, severity: str = "ERROR") -> Decision:
    r = p.r
    p.why("cause", cause=why)
    if not r.stable_revision:
        return p.ignore("no_stable")
    p.set(state="rolling_back", next_step_at=None, hold_until=None, paused_from=None)
    p.split(_stable_only(r))
    served = sum(t.percent for t in r.observed or [] if t.revision == r.revision)
    impact = "No customer impact." if served == 0 else f"It was serving {served} % of requests."
    verb = f"Rolled back by {p.actor}" if cause == "person" else "Automatically rolled back"
    p.notify(severity, "note_rolled_back", cause=CAUSES.get(cause, why[:1].upper() + why[1:]), verb=verb,
             service=r.service, stable=r.stable_version or r.stable_revision, impact=impact)
    return p.done("rolling_back")


def _succeed(p: _Plan, note: str, **values: Any) -> Decision:
    p.set(state="succeeded", next_step_at=None, hold_until=None)
    p.notify("NOTICE", note, **values)
    return p.done("succeeded")


def _start_clock(p: _Plan, pause: int) -> None:
    p.set(step_started_at=p.now, next_step_at=p.now + timedelta(seconds=pause), hold_until=None)
    if p.r.judged_until is None:  # the new revision starts serving now: judged from here on
        p.set(judged_until=p.now)


def _with_new(r: Rollout, weight: int) -> list[Target]:
    return [Target(revision=r.stable_revision, percent=100 - weight, tag="stable"),
            Target(revision=r.revision, percent=weight, tag="canary")]


def _stable_only(r: Rollout) -> list[Target]:
    stable = [Target(revision=r.stable_revision, percent=100, tag="stable")]
    if r.state == "deploying" or r.kind not in ("canary", "blue_green"):
        return stable  # the new revision may not exist yet: don't name it
    # Keep the rolled-back revision reachable on its tag, at 0 %, for debugging.
    return stable + [Target(revision=r.revision, percent=0, tag="canary" if r.kind == "canary" else "green")]


def _same(a: list[Target], b: list[Target]) -> bool:
    """The same traffic: revisions, percents and tags (a tagged 0 % entry proves its revision exists)."""
    def served(split: list[Target]) -> set[tuple[str, int, str | None]]:
        return {(t.revision, t.percent, t.tag or None) for t in split if t.percent or t.tag}
    return served(a) == served(b)


def _superseded(p: _Plan, inp: Superseded) -> Decision:
    r = p.r
    p.set(state="superseded", superseded_by=inp.by_rollout, next_step_at=None, hold_until=None)
    p.why("superseded", version=inp.by_version, by=inp.by_rollout)
    p.notify("NOTICE", "note_superseded", version=r.version, by_version=inp.by_version)
    return p.done("superseded")


def _proceed(p: _Plan, inp: Proceed) -> Decision:
    """The release cleared this region's wave to enter `step` (or a person promoted the wave)."""
    r = p.r
    p.detail = {"step": inp.step, "release": r.release_id or "", "forced_by": inp.forced_by or ""}
    if r.cleared_step is None:
        return p.ignore("not_in_release")
    if inp.step <= r.cleared_step:
        return p.ignore("already_cleared", step=inp.step + 1)
    p.set(cleared_step=inp.step)
    if r.state == "paused" and inp.forced_by and r.paused_from in ("progressing", "verifying") and r.applied:
        # Paused for want of its own data, while its wave's pooled traffic (or a person) moves the wave on.
        _release(p)
        p.why("resumed_by_wave", actor=inp.forced_by)
        r = p.r
    moving = r.applied and r.state in ("deploying", "progressing", "verifying") and (r.wave_hold or inp.forced_by)
    position = -1 if r.state == "deploying" else (0 if r.state == "verifying" else r.step)
    if not moving or inp.step != position + 1:
        p.why("wave_cleared_ahead", step=inp.step + 1, state=r.state)
        return p.done("cleared")
    p.why("wave_cleared", step=inp.step + 1, actor=inp.forced_by or inp.actor)
    if inp.forced_by:
        p.set(promoted_by=inp.forced_by)
    if r.state == "deploying":
        return _enter_step(p, 0) if r.kind == "canary" else _verify(p)
    if r.state == "verifying" or inp.step >= last_step(r.strategy):
        return _switch(p)
    return _enter_step(p, inp.step)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


_HANDLERS = {
    "applied": _applied, "apply_failed": _apply_failed, "observed": _observed, "health": _health,
    "alert": _alert, "tick": _tick, "command": _command, "superseded": _superseded, "proceed": _proceed,
}

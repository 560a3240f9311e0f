"""The rollout state machine: `decide(rollout, input, now) -> Decision`.

Pure: no clock, network or randomness. Every call returns the next rollout, the
effects the shell must carry out, and the audit event explaining the change, or
`None` for the audit when the input changes nothing worth a line (an idle tick).

Traffic is desired, not done: a new split bumps `desired_generation`; the shell
applies it and feeds back `Applied` (or `ApplyFailed`). Step clocks start when
the split is real, and every wait is an absolute deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pitstop.core.judge import judge
from pitstop.core.models import (
    TERMINAL, WATCHED, Alert, Applied, ApplyFailed, ApplyTraffic, Artifact, AuditEvent, Command, Effect,
    HealthSample, Input, Notify, RECONCILE_AFTER, Rollout, RolloutSpec, Superseded, Target, Tick, describe_split,
)

MAX_APPLY_ATTEMPTS = 5
BACKOFF_BASE = 2  # seconds; doubles per attempt, capped
BACKOFF_CAP = 60


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
        self.reasons: list[str] = []
        self.verdict = None
        self.detail: dict[str, Any] = {}

    @property
    def r(self) -> Rollout:
        return self.before.model_copy(update=self.changes) if self.changes else self.before

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    def split(self, targets: list[Target], create_revision: bool = False) -> None:
        gen = self.r.desired_generation + 1
        self.set(desired=targets, desired_generation=gen, desired_at=self.now, apply_attempts=0, retry_at=None)
        self.effects.append(ApplyTraffic(generation=gen, split=targets, create_revision=create_revision))

    def notify(self, severity: str, message: str) -> None:
        self.set(message=message)
        self.effects.append(Notify(severity=severity, message=message))

    def done(self, decision: str) -> Decision:
        after = self.r.model_copy(update={"updated_at": self.now})
        if after.state in TERMINAL and after.finished_at is None:
            after = after.model_copy(update={"finished_at": self.now})
        audit = AuditEvent(
            id=self.inp.id, at=self.now, input=self.inp.kind, actor=self.actor, decision=decision,
            reasons=self.reasons, state_before=self.before.state, state_after=after.state,
            traffic_before=describe_split(self.before.observed), traffic_after=describe_split(after.desired),
            verdict=self.verdict, detail=self.detail,
        )
        return Decision(after, self.effects, audit)

    def ignore(self, reason: str) -> Decision:
        self.reasons.append(reason)
        audit = AuditEvent(
            id=self.inp.id, at=self.now, input=self.inp.kind, actor=self.actor, decision="ignored",
            reasons=self.reasons, state_before=self.before.state, state_after=self.before.state,
            detail=self.detail,
        )
        return Decision(self.before, [], audit)

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
          actor: str = "cloud-build") -> Decision:
    """A matching build: a new rollout that deploys the new revision at 0 %."""
    revision = revision_name(spec.service, artifact.version, artifact.build_id)
    if stable_revision is None:
        kind, targets = "initial", [Target(revision=revision, percent=100, tag="stable")]
        why = f"first version of {spec.service} in {region}: no stable revision to compare with, deployed at 100 %"
    else:
        kind = spec.strategy.kind
        new_tag = "canary" if kind == "canary" else "green"
        targets = [Target(revision=stable_revision, percent=100, tag="stable"),
                   Target(revision=revision, percent=0, tag=new_tag)]
        why = f"build {artifact.build_id} of {artifact.repo or 'the repo'} matches spec {spec.key}: " \
              f"{kind.replace('_', '-')} of {artifact.version} against stable {stable_version or stable_revision}"
    rollout = Rollout(
        id=rollout_id, service=spec.service, environment=spec.environment, region=region, project=project,
        kind=kind, version=artifact.version, revision=revision, image=artifact.image_by_digest,
        artifact=artifact, strategy=spec.strategy, health=spec.health, max_hold=spec.max_hold,
        state="deploying", stable_revision=stable_revision, stable_version=stable_version,
        desired=targets, desired_generation=1, desired_at=now, created_at=now, updated_at=now,
        message=f"Deploying version {artifact.version} as revision {revision}.",
    )
    audit = AuditEvent(
        id=input_id, at=now, input="build", actor=actor, decision="started", reasons=[why],
        state_before=None, state_after="deploying", traffic_after=describe_split(targets),
        detail={"image": rollout.image, "build_id": artifact.build_id, "commit": artifact.commit or ""},
    )
    return Decision(rollout, [ApplyTraffic(generation=1, split=targets, create_revision=True)], audit)


def start_direct(rollout_id: str, service: str, environment: str, region: str, project: str, version: str,
                 revision: str, image: str, stable_revision: str | None, stable_version: str | None,
                 now: datetime, input_id: str, actor: str, template: Rollout) -> Decision:
    """`rollback --to VERSION`: straight to an earlier good revision, no steps."""
    targets = [Target(revision=revision, percent=100, tag="stable")]
    rollout = Rollout(
        id=rollout_id, service=service, environment=environment, region=region, project=project,
        kind="direct", version=version, revision=revision, image=image, strategy=template.strategy,
        health=template.health, max_hold=template.max_hold, state="rolling_back",
        stable_revision=stable_revision, stable_version=stable_version, desired=targets,
        desired_at=now, created_at=now, updated_at=now,
        message=f"Rolling back {service} to version {version} (revision {revision}) on request of {actor}.",
    )
    audit = AuditEvent(
        id=input_id, at=now, input="command", actor=actor, decision="rollback_to",
        reasons=[f"{actor} asked to roll back to version {version}; all traffic goes to {revision} at once"],
        state_before=None, state_after=rollout.state, traffic_after=describe_split(targets),
    )
    return Decision(rollout, [ApplyTraffic(generation=1, split=targets)], audit)


# ---------------------------------------------------------------- deciding

def decide(rollout: Rollout, inp: Input, now: datetime) -> Decision:
    actor = inp.actor if isinstance(inp, Command) else {
        "health": "health-judge", "alert": "cloud-monitoring", "tick": "scheduler", "build": "cloud-build",
    }.get(inp.kind, "pitstop")
    plan = _Plan(rollout, inp, now, actor)
    if isinstance(inp, Applied):
        return _applied(plan, inp)
    if isinstance(inp, ApplyFailed):
        return _apply_failed(plan, inp)
    if rollout.state in TERMINAL:
        if isinstance(inp, Tick):
            return plan.nothing()
        return plan.ignore(f"rollout already {rollout.state}")
    if isinstance(inp, HealthSample):
        return _health(plan, inp)
    if isinstance(inp, Tick):
        return _tick(plan)
    if isinstance(inp, Alert):
        return _alert(plan, inp)
    if isinstance(inp, Command):
        return _command(plan, inp)
    if isinstance(inp, Superseded):
        plan.set(state="superseded", superseded_by=inp.by_rollout, next_step_at=None, hold_until=None)
        plan.reasons.append(f"a newer build (version {inp.by_version}) for the same service and environment "
                            f"supersedes this rollout; rollout {inp.by_rollout} takes over the traffic")
        plan.notify("NOTICE", f"Version {rollout.version} superseded by {inp.by_version} before it finished.")
        return plan.done("superseded")
    return plan.ignore(f"{inp.kind} input does not apply to a rollout")


# ---------------------------------------------------------------- traffic applied or not

def _applied(p: _Plan, inp: Applied) -> Decision:
    r = p.r
    if inp.generation != r.desired_generation or r.applied:
        return p.ignore(f"split generation {inp.generation} is not the pending one "
                        f"(desired {r.desired_generation}, observed {r.observed_generation})")
    p.set(observed=inp.observed, observed_generation=inp.generation, apply_attempts=0, retry_at=None)
    p.reasons.append(f"Cloud Run now serves {describe_split(inp.observed)}")
    state = r.state
    if state == "deploying":
        if r.kind == "initial":
            return _succeed(p, f"Version {r.version} deployed as the first revision of {r.service}.")
        p.reasons.append(f"revision {r.revision} is ready at 0 % behind its tag")
        return _enter_step(p, 0) if r.kind == "canary" else _verify(p)
    if state == "progressing":
        _start_clock(p, r.strategy.canary.steps[r.step].pause)
        return p.done("step_started")
    if state == "switching":
        bake = 0 if r.skip_bake else (r.strategy.canary.bake if r.strategy.canary else r.strategy.blue_green.bake)
        if bake == 0:
            return _succeed(p, f"Version {r.version} promoted to 100 % of {r.service}.")
        p.set(state="baking")
        _start_clock(p, bake)
        p.reasons.append(f"all traffic on {r.revision}; baking for {bake}s before calling it done")
        return p.done("baking")
    if state == "rolling_back":
        if r.kind == "direct":
            return _succeed(p, f"Rolled back {r.service} to version {r.version}: revision {r.revision} serves 100 %.")
        p.set(state="rolled_back")
        return p.done("rolled_back")
    return p.done("applied")  # paused etc.: the split is real, the state holds


def _apply_failed(p: _Plan, inp: ApplyFailed) -> Decision:
    r = p.r
    if inp.generation != r.desired_generation or r.applied:
        return p.ignore(f"failure of split generation {inp.generation} no longer matters "
                        f"(desired {r.desired_generation}, observed {r.observed_generation})")
    if r.state in TERMINAL:
        return p.ignore(f"rollout already {r.state}; the failed update changes nothing")
    attempts = r.apply_attempts + 1
    where = f"traffic is as last observed: {describe_split(r.observed)}"
    p.detail = {"error": inp.error, "attempt": attempts}
    if not inp.permanent and attempts < MAX_APPLY_ATTEMPTS:
        delay = min(BACKOFF_BASE ** attempts, BACKOFF_CAP)
        p.set(apply_attempts=attempts, retry_at=p.now + timedelta(seconds=delay))
        p.reasons.append(f"Cloud Run update failed ({inp.error}); retry {attempts + 1} of {MAX_APPLY_ATTEMPTS} "
                         f"in {delay}s; {where}. An API error never counts as the new version failing.")
        return p.done("retrying")
    why = "cannot succeed" if inp.permanent else f"failed {attempts} times"
    if r.state != "rolling_back" and r.stable_revision:
        p.reasons.append(f"Cloud Run update {why}: {inp.error}; {where}")
        if r.state == "deploying":
            # The new revision never served; still, make sure the stable one has everything (a superseded
            # canary may hold a share), without naming a revision that may not exist.
            p.set(state="rolling_back", next_step_at=None, hold_until=None)
            p.split([Target(revision=r.stable_revision, percent=100, tag="stable")])
            p.notify("ERROR", f"Version {r.version} could not be deployed: {inp.error}. All traffic goes to "
                              f"version {r.stable_version or r.stable_revision}. The new version served no requests.")
            return p.done("deploy_failed")
        return _roll_back(p, f"Cloud Run could not apply the next split ({inp.error})", severity="ERROR")
    p.set(state="failed", apply_attempts=attempts, retry_at=None, next_step_at=None, hold_until=None)
    p.reasons.append(f"Cloud Run update {why}: {inp.error}")
    p.notify("CRITICAL", f"Rollout of {r.service} version {r.version} FAILED and needs a person: Cloud Run update "
                         f"{why} ({inp.error}). Wanted {describe_split(r.desired)}; {where}.")
    return p.done("failed")


# ---------------------------------------------------------------- health and alerts

def _health(p: _Plan, s: HealthSample) -> Decision:
    r = p.r
    p.detail = {"revision": s.revision, "requests": s.request_count, "errors": s.error_count,
                "p99_ms": s.latency_p99_ms, "source": s.source}
    if s.service != r.service or s.region != r.region:
        return p.ignore(f"sample is for {s.service} in {s.region}, not {r.service} in {r.region}")
    if s.revision == r.stable_revision and s.revision != r.revision:
        if r.baseline and r.baseline.window_end >= s.window_end:
            return p.ignore("an equal or newer sample of the stable revision is already held")
        p.set(baseline=s)
        p.reasons.append(f"baseline: stable {s.revision} served {s.request_count} requests, p99 "
                         f"{_ms(s.latency_p99_ms)} in {s.window_start:%H:%M:%S}–{s.window_end:%H:%M:%S}")
        return p.done("baseline")
    if s.revision != r.revision:
        return p.ignore(f"sample is for revision {s.revision}, neither the new {r.revision} "
                        f"nor the stable {r.stable_revision}")
    if r.state not in WATCHED:
        return p.ignore(f"the new revision is not being judged while {r.state}")
    if r.step_started_at is None:
        return p.ignore("the current split is not applied yet; no window can belong to it")
    if s.window_end <= r.step_started_at:
        return p.ignore(f"stale: window ended {s.window_end.isoformat()}, before the current step began "
                        f"{r.step_started_at.isoformat()}")
    verdict = judge(s, r.health, r.baseline)
    p.verdict = verdict
    p.reasons.append(verdict.rule)
    if verdict.outcome == "fail":
        p.set(verdict=verdict)  # the verdict that rolled it back is the one a person must see
        return _roll_back(p, f"health check failed: {verdict.rule}")
    held = r.verdict
    if held and (held.window_end, held.request_count) > (verdict.window_end, verdict.request_count):
        # Samples arrive in any order: the verdict on the later (or larger) window stands.
        p.reasons.append(f"the verdict on the window ending {held.window_end:%H:%M:%S} ({held.outcome}) stands")
        return p.done("judged")
    p.set(verdict=verdict)
    if verdict.outcome == "pass" and r.next_step_at and p.now >= r.next_step_at and r.state not in ("paused", "awaiting_approval"):
        return _advance(p, "healthy and the step's pause is over")
    return p.done("judged")


def _alert(p: _Plan, a: Alert) -> Decision:
    r = p.r
    p.detail = {"incident": a.incident_id, "policy": a.policy or "", "observed": a.observed_value or "",
                "threshold": a.threshold_value or ""}
    if a.test:
        return p.ignore(f"test notification from policy {a.policy}: no action taken")
    if a.service and a.service != r.service:
        return p.ignore(f"incident concerns service {a.service}, not {r.service}")
    if a.revision and a.revision not in (r.revision,):
        return p.ignore(f"incident concerns revision {a.revision}, not the new revision {r.revision}")
    if a.revision is None and a.started_at and a.started_at < r.created_at:
        return p.ignore(f"incident {a.incident_id} began {a.started_at:%Y-%m-%d %H:%M:%S} UTC, before this rollout; "
                        f"it names no revision, so it cannot be about this one")
    if a.state == "closed":
        p.reasons.append(f"incident {a.incident_id} ({a.policy}) closed")
        return p.done("alert_closed")
    if r.state == "deploying":
        return p.ignore("the new revision is still being deployed and serves no traffic")
    return _roll_back(p, f"Cloud Monitoring incident {a.incident_id} opened: {a.policy or 'alert policy'}"
                         f" / {a.condition or 'condition'} observed {a.observed_value} against threshold {a.threshold_value}")


# ---------------------------------------------------------------- ticks: deadlines and reconciliation

def _tick(p: _Plan) -> Decision:
    r, now = p.r, p.now
    if not r.applied:
        if now < r.reapply_at:
            return p.nothing()
        p.effects.append(ApplyTraffic(generation=r.desired_generation, split=r.desired,
                                      create_revision=r.state == "deploying"))
        p.set(retry_at=now + timedelta(seconds=RECONCILE_AFTER))
        p.reasons.append(f"desired split generation {r.desired_generation} ({describe_split(r.desired)}) is not "
                         f"observed yet (observed generation {r.observed_generation}); applying it again")
        return p.done("reconcile")
    if r.state in ("paused", "awaiting_approval"):
        if r.hold_until and now >= r.hold_until:
            what = "paused" if r.state == "paused" else "waiting for approval"
            return _roll_back(p, f"{what} since before {r.hold_until - timedelta(seconds=r.max_hold):%Y-%m-%d %H:%M} "
                                 f"UTC, past the {r.max_hold}s hold limit")
        return p.nothing()
    if r.next_step_at is None or now < r.next_step_at:
        return p.nothing()
    if r.verdict and r.verdict.outcome == "pass":
        return _advance(p, "the step's pause is over and the last verdict was healthy")
    if r.hold_until is None:
        deadline = max(now, r.next_step_at) + timedelta(seconds=r.health.no_data_timeout)
        p.set(hold_until=deadline, message=f"Holding at {r.new_percent} %: no conclusive health verdict yet.")
        why = r.verdict.rule if r.verdict else "no health sample for this step yet"
        p.reasons.append(f"inconclusive ({why}); holding at {r.new_percent} % until {deadline:%H:%M:%S} UTC "
                         f"for a conclusive verdict: pitstop never promotes on no data")
        return p.done("held")
    if now >= r.hold_until:
        p.set(state="paused", paused_from=r.state, hold_until=now + timedelta(seconds=r.max_hold))
        p.reasons.append(f"still inconclusive {r.health.no_data_timeout}s past the step's deadline")
        p.notify("WARNING", f"Rollout of {r.service} version {r.version} paused at {r.new_percent} %: not enough "
                            f"health data to decide. Run `pitstop promote {r.id}` or `pitstop abort {r.id}`.")
        return p.done("paused")
    return p.nothing()


# ---------------------------------------------------------------- operator commands

def _command(p: _Plan, c: Command) -> Decision:
    r = p.r
    p.detail = {"action": c.action, "reason": c.reason or ""}
    if c.reason:
        p.reasons.append(f"{c.actor}: {c.reason}")
    if c.action in ("abort", "rollback"):
        return _roll_back(p, f"{c.actor} asked to {c.action}", severity="NOTICE")
    if c.action == "pause":
        if r.state not in ("verifying", "progressing", "baking") or not r.applied:
            return p.ignore(f"only a verifying, progressing or baking rollout whose split is applied can be "
                            f"paused; this one is {r.state}")
        until = p.now + timedelta(seconds=r.max_hold)
        p.set(state="paused", paused_from=r.state, hold_until=until,
              message=f"Paused by {c.actor} at {r.new_percent} %.")
        p.reasons.append(f"paused by {c.actor} at {r.new_percent} %; it rolls back if not resumed by "
                         f"{until:%Y-%m-%d %H:%M} UTC")
        return p.done("paused")
    if c.action == "resume":
        if r.state != "paused":
            return p.ignore(f"cannot resume: rollout is {r.state}, not paused")
        _release(p)
        p.reasons.append(f"resumed by {c.actor}; the step's deadline stays "
                         f"{r.next_step_at.isoformat() if r.next_step_at else 'unset'}")
        return p.done("resumed")
    if c.action == "approve":
        if r.state != "awaiting_approval":
            return p.ignore(f"nothing to approve: rollout is {r.state}")
        _release(p)
        return _advance(p, f"approved by {c.actor}", gate_passed=True)
    if c.action == "promote":
        if r.state in ("deploying", "rolling_back") or not r.applied:
            return p.ignore(f"cannot promote while {r.state} and the current split is not applied yet")
        if r.state in ("paused", "awaiting_approval"):
            _release(p)
        if c.full and r.state == "baking":  # already at 100 %: only the bake is left to skip
            p.reasons.append(f"{c.actor} promoted fully, skipping the rest of the bake")
            return _succeed(p, f"Version {r.version} promoted to 100 % of {r.service} by {c.actor}.")
        if c.full:
            p.set(skip_bake=True)
            return _switch(p, f"{c.actor} promoted to 100 % at once, skipping the remaining steps and analysis")
        return _advance(p, f"promoted by {c.actor} (last verdict: {r.verdict.outcome if r.verdict else 'none'})",
                        gate_passed=True)
    return p.ignore(f"unknown action {c.action}")


# ---------------------------------------------------------------- moves

def _advance(p: _Plan, why: str, gate_passed: bool = False) -> Decision:
    r = p.r
    p.reasons.append(why)
    if r.state == "baking":
        return _succeed(p, f"Version {r.version} is live on 100 % of {r.service} and healthy through the bake.")
    if r.state == "verifying":
        if r.strategy.blue_green.approve and not gate_passed:
            return _gate(p)
        return _switch(p, "verification passed on the tagged URL; switching all traffic at once")
    # progressing
    steps = r.strategy.canary.steps
    if steps[r.step].approve and not gate_passed:
        return _gate(p)
    if r.step + 1 < len(steps):
        return _enter_step(p, r.step + 1)
    return _switch(p, "last canary step passed; promoting to 100 %")


def _release(p: _Plan) -> None:
    """Leave a pause or an approval gate for the state it was holding."""
    p.set(state=p.r.paused_from or "progressing", paused_from=None, hold_until=None)


def _gate(p: _Plan) -> Decision:
    r = p.r
    p.set(state="awaiting_approval", paused_from=r.state, hold_until=p.now + timedelta(seconds=r.max_hold))
    p.notify("NOTICE", f"Rollout of {r.service} version {r.version} is healthy at {r.new_percent} % and waits for "
                       f"approval: `pitstop approve {r.id}`.")
    return p.done("awaiting_approval")


def _enter_step(p: _Plan, step: int) -> Decision:
    r = p.r
    weight = r.strategy.canary.steps[step].weight
    p.set(state="progressing", step=step, step_started_at=None, next_step_at=None, hold_until=None, verdict=None)
    p.split(_with_new(r, weight))
    p.reasons.append(f"step {step + 1} of {len(r.strategy.canary.steps)}: {weight} % to {r.revision}")
    p.set(message=f"Canary of version {r.version} at {weight} % (step {step + 1} of {len(r.strategy.canary.steps)}).")
    return p.done("advanced")


def _verify(p: _Plan) -> Decision:
    r = p.r
    p.set(state="verifying", verdict=None, hold_until=None)
    _start_clock(p, r.strategy.blue_green.verify)
    p.reasons.append(f"verifying {r.revision} at 0 % on its tagged URL for {r.strategy.blue_green.verify}s")
    p.set(message=f"Verifying version {r.version} at 0 % on its tagged URL.")
    return p.done("verifying")


def _switch(p: _Plan, why: str) -> Decision:
    r = p.r
    p.reasons.append(why)
    targets = [Target(revision=r.revision, percent=100, tag="stable" if r.kind == "canary" else "green")]
    if r.stable_revision:  # keep the old revision addressable for an instant rollback
        targets.append(Target(revision=r.stable_revision, percent=0, tag="previous" if r.kind == "canary" else "blue"))
    p.set(message=f"Switching all traffic to version {r.version}.")
    p.set(state="switching", step=len(r.strategy.canary.steps) if r.strategy.canary else 0,
          step_started_at=None, next_step_at=None, hold_until=None, verdict=None)
    p.split(targets)
    return p.done("switching")


def _roll_back(p: _Plan, why: str, severity: str = "ERROR") -> Decision:
    r = p.r
    p.reasons.append(why)
    if r.state == "rolling_back":
        return p.ignore("already rolling back")
    if not r.stable_revision:
        return p.ignore("no stable revision to roll back to (first version of the service)")
    p.set(state="rolling_back", next_step_at=None, hold_until=None, paused_from=None)
    p.split(_stable_only(r))
    served = sum(t.percent for t in r.observed or [] if t.revision == r.revision)
    impact = "No customer impact." if served == 0 else f"It was serving {served} % of requests."
    verb = "Automatically rolled back" if p.actor in ("health-judge", "cloud-monitoring", "scheduler", "pitstop") \
        else f"Rolled back by {p.actor}"
    reason = {"health-judge": "New version failed health checks after deployment",
              "cloud-monitoring": "A Cloud Monitoring alert fired for the new version"}.get(p.actor, why[:1].upper() + why[1:])
    p.notify(severity, f"{reason}. {verb} {r.service} to version {r.stable_version or r.stable_revision}. {impact}")
    return p.done("rolling_back")


def _succeed(p: _Plan, message: str) -> Decision:
    p.set(state="succeeded", next_step_at=None, hold_until=None)
    p.notify("NOTICE", message)
    return p.done("succeeded")


def _start_clock(p: _Plan, pause: int) -> None:
    p.set(step_started_at=p.now, next_step_at=p.now + timedelta(seconds=pause), hold_until=None, verdict=None)


def _with_new(r: Rollout, weight: int) -> list[Target]:
    return [Target(revision=r.stable_revision, percent=100 - weight, tag="stable"),
            Target(revision=r.revision, percent=weight, tag="canary")]


def _stable_only(r: Rollout) -> list[Target]:
    stable = [Target(revision=r.stable_revision, percent=100, tag="stable")]
    if r.state == "deploying" or r.kind not in ("canary", "blue_green"):
        return stable  # the new revision may not exist yet: don't name it
    # Keep the rolled-back revision reachable on its tag, at 0 %, for debugging.
    return stable + [Target(revision=r.revision, percent=0, tag="canary" if r.kind == "canary" else "green")]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"

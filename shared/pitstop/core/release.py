"""Releases: one artifact (by digest) moving through a service's environments, region by region. Pure.

A build the pipeline's rules send somewhere (core/pipeline.py) starts or extends a release. Its
**route** is the environments it must pass, in order: the destination and, before it, each
`promote_from` it has not yet succeeded in (a tag build of a digest staging never saw goes through
staging first). A hotfix path goes straight to its environment, never past the health judgment.

Each environment of the route is a **stage**: gates first (the `promote_from` success, a soak, an
approver, a freeze window), then its regions in **waves**. A region is an ordinary rollout
(core/machine.py) that moves only as far as the release clears it; the release clears a wave's
next step once every region of the wave has reached its current one, so a wave moves in one
decision and its Cloud Run updates go out together. The spread between the first and the last
region's traffic change for each step is recorded.

A region that rolls back (its own verdict, an alert, a person) rolls back **every** region of the
stage, earlier waves included, in one decision; later stages never start.

`decide_release(release, input, now) -> ReleaseDecision`, like `machine.decide`: the next release,
the effects for the shell (start regions, clear a wave's step, revert regions, forward a command,
notify) and the audit event.

The wave's health rule: a region passes a step on its own evidence (the rollout's judge), and a
failure anywhere fails the wave. A region whose step deadline passed with too little traffic to
judge (inconclusive) does not hold the wave if the wave's pooled counts over the step are enough:
at least `min_requests` requests in all its regions together, at an error rate within
`max_error_rate`, and no region failing. Otherwise it waits, and pauses at `no_data_timeout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, computed_field

from pitstop.core import checks as checking
from pitstop.core.checks import CheckRun, Checks
from pitstop.core.explain import render, render_all
from pitstop.core.models import (
    AuditEvent, Command, Health, Model, Notify, Reason, Strategy, Tick, last_step,
)
from pitstop.core.pipeline import Freeze, Pipeline, Waves

RESYNC = 30  # seconds: a running release is looked at by a tick this often, in case a region's report was lost
LIVE_REGION = frozenset({"deploying", "verifying", "progressing", "switching", "baking", "paused",
                         "awaiting_approval"})
FAILED_REGION = frozenset({"rolling_back", "rolled_back", "failed"})

# ---------------------------------------------------------------- the release as stored


class RegionProgress(Model):
    """What a region's rollout reports to its release (`Engine._report`)."""

    rollout_id: str | None = None
    state: str = "pending"  # the rollout's state; pending before its wave starts
    position: int = -1  # the step it serves (-1: not yet; last_step: all traffic decided for the new revision)
    percent: int = 0  # the new revision's share of its traffic
    holding: bool = False  # its step is done; it waits for its wave
    cleared: int = -1  # the step its release cleared it for (the rollout's own record)
    due: bool = False  # its step's deadline passed without enough evidence
    served_at: datetime | None = None  # when its traffic for `position` became real
    requests: int = 0  # its latest verdict in this step
    errors: int = 0
    message: str = ""
    at: datetime | None = None  # the rollout's decision this reports (reports may arrive out of order)


class Spread(Model):
    """How far apart a wave's regions changed traffic for one step."""

    wave: int
    step: int
    spread_ms: float
    first: str
    last: str


StageState = Literal["planned", "soaking", "awaiting_approval", "checking", "running", "succeeded", "rolled_back",
                     "failed", "cancelled", "superseded"]


class Stage(Model):
    """One environment of a release: its gates, its waves of regions, and where each region is."""

    environment: str
    project: str | None = None
    state: StageState = "planned"
    waves: Waves
    strategy: Strategy
    health: Health
    max_hold: int = 86400
    approve: bool = False  # a person with the approver role starts it
    promote_from: str | None = None
    soak: int | None = None  # follows promote_from by itself, this long after it succeeded
    gates: list[int] = Field(default_factory=list)  # steps after which an approver must clear the wave
    check_spec: Checks = Field(default_factory=Checks)  # its checks as configured (core/checks.py)
    checks: dict[str, CheckRun] = Field(default_factory=dict)  # each run: state, measured values, reason
    wave: int = 0
    step: int = -1  # the step the current wave is cleared to enter (-1: deployed at 0 %, waiting)
    regions: dict[str, RegionProgress] = Field(default_factory=dict)
    waiting_for: str | None = None  # what holds it, in words (approval, a freeze window, a soak)
    not_before: datetime | None = None  # end of a soak
    hold_until: datetime | None = None  # an approval's deadline
    frozen_until: datetime | None = None
    unfrozen_by: str | None = None
    approved_by: str | None = None
    sent_by: str | None = None  # the verified person who sent the release here (four eyes: not its approver)
    approved_steps: list[int] = Field(default_factory=list)
    cleared_by: str | None = None  # who forced the current step, if it was forced (the pooled rule, a person)
    spreads: list[Spread] = Field(default_factory=list)
    entered_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str = ""

    @property
    def last(self) -> int:
        return last_step(self.strategy)

    def wave_regions(self) -> list[str]:
        return self.waves[self.wave]

    def rollouts(self, regions: list[str] | None = None) -> dict[str, str]:
        regions = regions if regions is not None else list(self.regions)
        return {r: self.regions[r].rollout_id for r in regions if r in self.regions and self.regions[r].rollout_id}


ReleaseState = Literal["running", "waiting", "succeeded", "rolled_back", "failed", "cancelled", "superseded"]
RELEASE_DONE = frozenset({"succeeded", "rolled_back", "failed", "cancelled", "superseded"})


class Release(Model):
    id: str
    service: str
    digest: str
    image: str  # by digest
    version: str
    build_id: str
    commit: str | None = None
    branch: str | None = None
    tag: str | None = None
    path: str | None = None  # the pipeline path that started it (a hotfix), if any
    hotfix: bool = False
    started_by: str | None = None  # the verified person who asked for it (deploy, promote-release)
    route: list[str]
    stages: dict[str, Stage]
    freeze: list[Freeze] = Field(default_factory=list)
    state: ReleaseState = "running"
    current: str | None = None  # the environment it is in or waits for
    message: str = ""
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    synced_at: datetime | None = None  # the last tick that checked its regions (engine._sync_releases)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def due_at(self) -> datetime | None:
        """When a tick must look at it: a soak, approval or freeze ending, or a resync of a wave in flight (or of
        one rolling back) in case a region's report or one of the release's own effects was lost."""
        stage = self.stages.get(self.current) if self.current else None
        if stage is None:
            return None
        resync = max(self.updated_at, self.synced_at or self.updated_at) + timedelta(seconds=RESYNC)
        # A running check anywhere (a staging E2E while production goes on) is looked at when it is due or overdue.
        polls = [t for st in self.stages.values() for run in st.checks.values() if not run.done
                 for t in (run.next_at, run.deadline) if t]
        if polls:
            return min(polls + [resync])
        if self.state in RELEASE_DONE:
            return resync if owed(self) else None
        times = [t for t in (stage.not_before, stage.hold_until, stage.frozen_until) if t]
        if stage.state == "running":
            times.append(resync)
        return min(times) if times else None

    @property
    def stage(self) -> Stage | None:
        return self.stages.get(self.current) if self.current else None


# ---------------------------------------------------------------- inputs and effects


class Enter(Model):
    """A build, a person or a soak sends the release on to `environment`."""

    kind: Literal["enter"] = "enter"
    id: str
    environment: str
    actor: str
    why: str


class RegionReport(Model):
    kind: Literal["region"] = "region"
    id: str
    environment: str
    region: str
    progress: RegionProgress


class CheckUpdate(Model):
    """The engine carried a check a step further (a job started or polled, a scan read, probes run)."""

    kind: Literal["check"] = "check"
    id: str
    environment: str
    key: str  # checks.check_key
    attempt: int
    state: checking.CheckState
    execution: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    next_at: datetime | None = None


class StartRegions(Model):
    """Start the rollouts of one wave (each deploys at 0 % and waits)."""

    kind: Literal["start_regions"] = "start_regions"
    environment: str
    regions: list[str]


class ProceedWave(Model):
    """Clear the wave's rollouts to enter `step`, concurrently."""

    kind: Literal["proceed_wave"] = "proceed_wave"
    environment: str
    rollouts: dict[str, str]  # region -> rollout id
    step: int
    forced_by: str | None = None


class RevertRegions(Model):
    """Put every given region back on the revision it served before the release (live or finished)."""

    kind: Literal["revert_regions"] = "revert_regions"
    environment: str
    rollouts: dict[str, str]
    why: str


class ForwardCommand(Model):
    kind: Literal["forward_command"] = "forward_command"
    environment: str
    rollouts: dict[str, str]
    action: str


class RunCheck(Model):
    """Carry a check one step further: start or poll a job, read a scan, probe the wave's tag URLs."""

    kind: Literal["run_check"] = "run_check"
    environment: str
    key: str
    run: CheckRun
    rollouts: dict[str, str] = Field(default_factory=dict)  # smoke/verify: the wave's regions
    cancel: bool = False  # stop its job's execution instead (a deadline passed, or its stage stopped)


ReleaseEffect = StartRegions | ProceedWave | RevertRegions | ForwardCommand | RunCheck | Notify


@dataclass(frozen=True)
class ReleaseDecision:
    release: Release
    effects: list[ReleaseEffect] = field(default_factory=list)
    audit: AuditEvent | None = None


def progress_of(rollout: Any) -> RegionProgress:
    """What a region's rollout tells its release: only what the release decides on, so most of the rollout's
    own decisions (a verdict that changes nothing for the wave) cost the release no write."""
    verdict = rollout.verdict if rollout.step_due or rollout.wave_hold else None  # evidence for the pooled rule
    rate = next((c.measured for c in verdict.checks if c.name == "error_rate"), None) if verdict else None
    percent = sum(t.percent for t in rollout.observed or [] if t.revision == rollout.revision)
    return RegionProgress(
        rollout_id=rollout.id, state=rollout.state, position=rollout.position, percent=percent,
        holding=rollout.wave_hold, due=rollout.step_due, served_at=rollout.step_started_at,
        cleared=rollout.cleared_step if rollout.cleared_step is not None else -1,
        requests=verdict.request_count if verdict else 0,
        errors=round((rate or 0) * verdict.request_count) if verdict else 0,
        message=rollout.message if rollout.state in FAILED_REGION else "", at=rollout.updated_at,
    )


# ---------------------------------------------------------------- creating a release


def release_id(service: str, digest: str) -> str:
    """One release per service and digest: a later build of the same artifact finds it."""
    return f"{service}-{digest.removeprefix('sha256:')[:16]}"


def route_to(pipeline: Pipeline, environment: str, path: str | None) -> list[str]:
    """The environments a release must pass to reach `environment`: its promote_from chain, then it. A path
    (hotfix) goes straight there."""
    if path is not None:
        return [environment]
    chain = [environment]
    while (before := pipeline.environments[chain[0]].promote_from) is not None:
        chain.insert(0, before)
    return chain


def stage_of(pipeline: Pipeline, environment: str, path: str | None, max_hold: int = 86400) -> Stage:
    env = pipeline.environments[environment]
    rule = pipeline.paths.get(path) if path else None
    strategy = (rule.strategy if rule and rule.strategy else None) or env.strategy
    approve = rule.approve if rule and rule.approve is not None else env.approve
    if strategy.canary:
        gates = [i for i, s in enumerate(strategy.canary.steps) if s.approve]
    else:
        gates = [0] if strategy.blue_green.approve else []
    return Stage(environment=environment, project=env.project, waves=env.wave_list, strategy=strategy,
                 health=env.health, max_hold=max_hold, approve=approve, soak=env.soak,
                 promote_from=None if path else env.promote_from, gates=gates, check_spec=env.checks)


def _stages(pipeline: Pipeline, route: list[str], path: str | None, max_hold: int,
            sent_by: str | None = None) -> dict[str, Stage]:
    """The route's stages, and those that follow one of them by themselves after a soak (not routed yet)."""
    stages = {e: stage_of(pipeline, e, path, max_hold).model_copy(update={"sent_by": sent_by}) for e in route}
    names = list(route)
    for name in names:
        for other, env in pipeline.environments.items():
            if env.promote_from == name and env.soak is not None and other not in stages:
                stages[other] = stage_of(pipeline, other, None, max_hold)
                names.append(other)
    return stages


def begin(pipeline: Pipeline, rid: str, artifact: Any, environment: str, path: str | None, actor: str,
          why: str, now: datetime, input_id: str, started_by: str | None = None,
          max_hold: int = 86400) -> ReleaseDecision:
    """A new release of `artifact` on its way to `environment` (through `path`, if a path's rule took it).
    `actor`: who sent it (cloud-build, or a person); `started_by`: the verified person who asked, if any."""
    route = route_to(pipeline, environment, path)
    release = Release(
        id=rid, service=pipeline.service, digest=artifact.digest, image=artifact.image_by_digest,
        version=artifact.version, build_id=artifact.build_id, commit=artifact.commit, branch=artifact.branch,
        tag=artifact.tag, path=path, hotfix=path is not None, started_by=started_by, route=route,
        stages=_stages(pipeline, route, path, max_hold, sent_by=started_by or (actor if "@" in actor else None)),
        freeze=pipeline.freeze, current=route[0], created_at=now, updated_at=now,
    )
    p = _Plan(release, Enter(id=input_id, environment=environment, actor=actor, why=why), now, actor)
    p.why("release_started", version=artifact.version, digest=artifact.digest[:19], route=" → ".join(route),
          why=why, hotfix=" (hotfix path " + path + ")" if path else "")
    return _progress(p, "started", state_before=None, keep=True)


def extend(pipeline: Pipeline, release: Release, environment: str, path: str | None, actor: str, why: str,
           now: datetime, input_id: str, max_hold: int = 86400) -> ReleaseDecision:
    """An existing release (the same digest) is sent on to another environment."""
    p = _Plan(release, Enter(id=input_id, environment=environment, actor=actor, why=why), now, actor)
    person = actor if "@" in actor else None
    if environment in release.route and release.stages[environment].state == "cancelled":
        # Nobody approved it in time (or someone cancelled it): a new tag or promote-release opens it again.
        fresh = stage_of(pipeline, environment, path, max_hold).model_copy(update={"sent_by": person})
        p.set(stages={**release.stages, environment: fresh})
        p.set(state="running", finished_at=None)
        p.why("release_reopened", environment=environment, why=why)
        return _progress(p, "extended", keep=True)
    if environment in release.route:
        stage = release.stages[environment]
        return p.ignore("release_already_routed", environment=environment, state=stage.state)
    added = [e for e in route_to(pipeline, environment, path) if e not in release.route]
    stages = dict(release.stages)
    stages.update({e: stage_of(pipeline, e, path, max_hold) for e in added if e not in stages or path})
    stages[environment] = stages[environment].model_copy(update={"sent_by": person})
    p.set(route=release.route + added, stages=stages)
    if release.state in RELEASE_DONE and release.state != "succeeded":
        return p.ignore("release_finished", state=release.state)
    if path:
        p.set(path=path, hotfix=True)
    if release.state == "succeeded":
        p.set(state="running", finished_at=None)
    p.why("release_extended", environment=environment, route=" → ".join(added), why=why)
    return _progress(p, "extended", keep=True)


def owed(release: Release) -> list[ReleaseEffect]:
    """What the release decided and its regions do not show yet: the effects a lost delivery (a function that
    died after the release's write, before its effects) would leave undone. Each is idempotent: a tick resends
    them (`Engine._sync_releases`)."""
    effects: list[ReleaseEffect] = []
    for other in release.stages.values():
        if other.state in ("rolled_back", "superseded"):
            # Rolled back: every region not back yet (one that had finished too); superseded: those still live.
            back = LIVE_REGION | ({"succeeded"} if other.state == "rolled_back" else set())
            left = {x: g.rollout_id for x, g in other.regions.items() if g.rollout_id and g.state in back}
            if left:
                effects.append(RevertRegions(environment=other.environment, rollouts=left, why=other.reason))
    stage = release.stage
    if stage is None or stage.state != "running" or release.state in RELEASE_DONE:
        return effects
    wave = stage.wave_regions()
    missing = [x for x in wave if not (stage.regions.get(x) and stage.regions[x].rollout_id)]
    if missing:
        effects.append(StartRegions(environment=stage.environment, regions=missing))
    behind = {x: g.rollout_id for x in wave if (g := stage.regions.get(x)) and g.rollout_id
              and g.state in LIVE_REGION and g.cleared < stage.step}
    if behind and stage.step >= 0:
        effects.append(ProceedWave(environment=stage.environment, rollouts=behind, step=stage.step,
                                   forced_by=stage.cleared_by))
    return effects


# ---------------------------------------------------------------- deciding


class _Plan:
    def __init__(self, release: Release, inp: Any, now: datetime, actor: str) -> None:
        self.before, self.inp, self.now, self.actor = release, inp, now, actor
        self.changes: dict[str, Any] = {}
        self.effects: list[ReleaseEffect] = []
        self.reasons: list[Reason] = []
        self.detail: dict[str, Any] = {}

    @property
    def r(self) -> Release:
        return self.before.model_copy(update=self.changes) if self.changes else self.before

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    def stage(self, name: str, **changes: Any) -> Stage:
        stage = self.r.stages[name].model_copy(update=changes)
        self.set(stages={**self.r.stages, name: stage})
        return stage

    def why(self, code: str, **values: Any) -> None:
        self.reasons.append(Reason(code=code, values=values))

    def notify(self, severity: str, code: str, **values: Any) -> None:
        reason = Reason(code=code, values=values)
        self.set(message=render(reason))
        self.effects.append(Notify(severity=severity, message=render(reason), reason=reason))

    def done(self, decision: str, state_before: str | None = "") -> ReleaseDecision:
        after = self.r.model_copy(update={"updated_at": self.now})
        if after.state in RELEASE_DONE and after.finished_at is None:
            after = after.model_copy(update={"finished_at": self.now})
        audit = AuditEvent(
            id=self.inp.id, at=self.now, input=self.inp.kind, actor=self.actor, decision=decision,
            reasons=render_all(self.reasons), why=self.reasons,
            state_before=self.before.state if state_before == "" else state_before, state_after=after.state,
            detail={"environment": after.current or "", **self.detail},
        )
        return ReleaseDecision(after, self.effects, audit)

    def ignore(self, code: str, **values: Any) -> ReleaseDecision:
        self.why(code, **values)
        audit = AuditEvent(id=self.inp.id, at=self.now, input=self.inp.kind, actor=self.actor, decision="ignored",
                           reasons=render_all(self.reasons), why=self.reasons, state_before=self.before.state,
                           state_after=self.before.state, detail=self.detail)
        return ReleaseDecision(self.before, [], audit)

    def nothing(self) -> ReleaseDecision:
        return ReleaseDecision(self.before)


def decide_release(release: Release, inp: Any, now: datetime) -> ReleaseDecision:
    actor = getattr(inp, "actor", None) or {"region": "release", "tick": "scheduler"}.get(inp.kind, "pitstop")
    p = _Plan(release, inp, now, actor)
    if isinstance(inp, RegionReport):
        return _report(p, inp)
    if isinstance(inp, Command):
        return _command(p, inp)
    if isinstance(inp, CheckUpdate):
        return _check_update(p, inp)
    if isinstance(inp, Tick):
        _tick_checks(p)
        return _progress(p, "progressed", quiet=True)
    raise TypeError(f"a release does not take {inp.kind} inputs here (enter goes through begin/extend)")


def _report(p: _Plan, rep: RegionReport) -> ReleaseDecision:
    r = p.r
    stage = r.stages.get(rep.environment)
    if stage is None or rep.region not in {x for wave in stage.waves for x in wave}:
        return p.ignore("release_unknown_region", environment=rep.environment, region=rep.region)
    known = stage.regions.get(rep.region)
    if known is not None and known.model_copy(update={"at": None}) == rep.progress.model_copy(update={"at": None}):
        return p.nothing()  # nothing the release decides on changed: no write
    if known and known.rollout_id == rep.progress.rollout_id and known.at and rep.progress.at \
            and rep.progress.at < known.at:
        return p.nothing()  # an older report of the same rollout, overtaken by a newer one
    if known and known.rollout_id and rep.progress.rollout_id != known.rollout_id:
        # A revert (a rollback to the earlier revision) reports from its own rollout: keep the region's.
        if rep.progress.state not in ("succeeded", "failed"):
            return p.nothing()
        p.stage(rep.environment, regions={**stage.regions, rep.region: known.model_copy(
            update={"message": rep.progress.message, "percent": 0,
                    "state": "rolled_back" if rep.progress.state == "succeeded" else rep.progress.state})})
        p.why("region_reverted", region=rep.region, state=rep.progress.state)
        return p.done("region_reverted")
    p.stage(rep.environment, regions={**stage.regions, rep.region: rep.progress})
    p.detail = {"region": rep.region, "region_state": rep.progress.state, "position": rep.progress.position}
    if stage.state in ("rolled_back", "superseded") and rep.progress.state in LIVE_REGION and rep.progress.rollout_id \
            and (known is None or known.rollout_id != rep.progress.rollout_id or known.state not in LIVE_REGION):
        # It was still deploying (unknown to the release) when the stage was rolled back: it goes back too.
        p.effects.append(RevertRegions(environment=rep.environment, rollouts={rep.region: rep.progress.rollout_id},
                                       why=stage.reason or f"{rep.environment} was rolled back"))
        p.why("region_late_revert", region=rep.region, environment=rep.environment)
        return p.done("region_reverted")
    p.why("region_reports", region=rep.region, state=rep.progress.state, percent=rep.progress.percent,
          step=_step_name(stage, rep.progress.position))
    return _progress(p, "region_update")


def _progress(p: _Plan, decision: str, quiet: bool = False, state_before: str | None = "",
              keep: bool = False) -> ReleaseDecision:
    """Move the release as far as its gates allow: the one place that decides what happens next. The audit
    names the last move made (or `decision`, if `keep`)."""
    last = decision
    for _ in range(len(p.r.route) * 4 + 4):  # each pass finishes a stage or stops; bounded for safety
        r = p.r
        if r.state in RELEASE_DONE:
            break
        name = next((e for e in r.route if r.stages[e].state != "succeeded"), None)
        if name is None:
            p.set(state="succeeded", current=r.route[-1])
            p.notify("NOTICE", "note_release_succeeded", service=r.service, version=r.version,
                     route=" → ".join(r.route), hotfix=" (hotfix)" if r.hotfix else "")
            last = "succeeded"
            break
        if r.current != name:
            p.set(current=name)
        moved = _stage_step(p, name)
        if moved is None:  # nothing more can happen now
            break
        last = moved
        if p.r.stages[name].state != "succeeded":
            break
    if quiet and not p.changes:
        return p.nothing()
    return p.done(decision if keep else last, state_before)


def _stage_step(p: _Plan, name: str) -> str | None:
    """One move of the current stage; None if it waits."""
    r, now = p.r, p.now
    stage = r.stages[name]
    if stage.state in ("planned", "soaking", "awaiting_approval", "checking"):
        before = r.stages.get(stage.promote_from) if stage.promote_from else None
        if before is not None and before.state != "succeeded":
            return None  # not yet: the route passes promote_from first
        if before is not None and before.check_spec.e2e is not None:
            e2e = before.checks.get("e2e")
            if e2e is None or not e2e.done:
                return _wait(p, name, "planned", f"E2E in {stage.promote_from} to pass")
            if e2e.state != "passed":  # informing there, required here (the seed's rule)
                return _fail_stage(p, name, f"E2E in {stage.promote_from} did not pass: {e2e.reason}")
        gate = _pre_check(p, name, "scan")  # before anything else: nobody approves a refused image
        if gate is not None:
            return gate or None
        if stage.not_before and now < stage.not_before:
            return _wait(p, name, "soaking", f"soak in {stage.promote_from} until {stage.not_before:%H:%M:%S} UTC")
        if stage.approve and not stage.approved_by:
            if stage.hold_until and now >= stage.hold_until:
                p.stage(name, state="cancelled", waiting_for=None, finished_at=now,
                        reason=f"nobody approved within {stage.max_hold}s")
                p.set(state="cancelled")
                p.notify("WARNING", "note_release_expired", service=r.service, version=r.version, environment=name,
                         max_hold=stage.max_hold)
                return "expired"
            if stage.state != "awaiting_approval":
                p.stage(name, state="awaiting_approval", waiting_for="approval to start",
                        hold_until=now + timedelta(seconds=stage.max_hold))
                p.set(state="waiting")
                p.notify("NOTICE", "note_release_gate", service=r.service, version=r.version, environment=name,
                         id=r.id, until=f"{now + timedelta(seconds=stage.max_hold):%Y-%m-%d %H:%M} UTC")
                return "awaiting_approval"
            return None
        if _frozen(p, name, "start"):
            return "frozen" if p.changes else None
        gate = _pre_check(p, name, "migrate")  # once, before any traffic; a failure leaves traffic untouched
        if gate is not None:
            return gate or None
        stage = p.r.stages[name]
        wave = stage.waves[0]
        p.stage(name, state="running", wave=0, step=-1, waiting_for=None, hold_until=None, frozen_until=None,
                not_before=None, entered_at=stage.entered_at or now,
                regions={x: RegionProgress() for w in stage.waves for x in w})
        p.set(state="running", message=f"Release of {r.version} entering {name}: wave 1 of {len(stage.waves)} "
                                       f"({', '.join(wave)}) deploys at 0 %.")
        p.why("stage_entered", environment=name, regions=", ".join(x for w in stage.waves for x in w),
              waves=len(stage.waves))
        p.why("wave_started", environment=name, wave=1, waves=len(stage.waves), regions=", ".join(wave))
        p.effects.append(StartRegions(environment=name, regions=wave))
        return "stage_entered"
    if stage.state == "running":
        return _wave(p, name)
    return None  # rolled back, failed, cancelled: the release state says so


def _wave(p: _Plan, name: str) -> str | None:
    r, now = p.r, p.now
    stage = r.stages[name]
    failed = [x for x, g in stage.regions.items() if g.state in FAILED_REGION]
    if failed:
        return _revert(p, name, failed[0])
    superseded = [x for x, g in stage.regions.items() if g.state == "superseded"]
    if superseded:
        return _superseded(p, name, superseded[0])
    regions = stage.wave_regions()
    progress = [stage.regions[x] for x in regions]
    _record_spread(p, name)
    stage = p.r.stages[name]
    if all(g.state == "succeeded" for g in progress):
        if stage.wave + 1 < len(stage.waves):
            if _frozen(p, name, f"wave {stage.wave + 2}"):
                return "frozen" if p.changes else None
            nxt = stage.waves[stage.wave + 1]
            p.stage(name, wave=stage.wave + 1, step=-1, waiting_for=None, frozen_until=None, approved_steps=[])
            p.set(message=f"Release of {r.version} in {name}: wave {stage.wave + 2} of {len(stage.waves)} "
                          f"({', '.join(nxt)}) deploys at 0 %.")
            p.why("wave_started", environment=name, wave=stage.wave + 2, waves=len(stage.waves),
                  regions=", ".join(nxt))
            p.effects.append(StartRegions(environment=name, regions=nxt))
            return "wave_started"
        p.stage(name, state="succeeded", finished_at=now, waiting_for=None)
        p.set(message=f"Release of {r.version} succeeded in {name}.")
        p.why("stage_succeeded", environment=name, regions=", ".join(stage.regions),
              spread=_worst_spread(stage))
        if stage.check_spec.e2e is not None and "e2e" not in stage.checks:
            _start_check(p, name, "e2e")
        _schedule_soaks(p, name)
        return "stage_succeeded"
    if stage.step >= stage.last:
        return None  # switched: each region bakes and succeeds on its own
    # A region is there when it holds at the wave's step (a first deploy, with nothing to compare, succeeds at once).
    reached = [g for g in progress if g.rollout_id and (g.state == "succeeded" or g.position == stage.step and g.holding)]
    due = [g for g in progress if g.position == stage.step and g.due and not g.holding and g.state != "succeeded"]
    if len(reached) + len(due) < len(progress) or len(reached) < len(progress) and not _pooled(stage, progress):
        return None
    forced = None
    if due:
        requests, errors = sum(g.requests for g in progress), sum(g.errors for g in progress)
        p.why("wave_pooled", environment=name, regions=len(due), requests=requests,
              rate=f"{errors / requests if requests else 0.0:.2%}", min_requests=stage.health.min_requests,
              max_rate=f"{stage.health.max_error_rate:.2%}")
        forced = "the wave's pooled health"
    if stage.step in stage.gates and stage.step not in stage.approved_steps:
        if stage.waiting_for is None or not stage.waiting_for.startswith("approval"):
            until = now + timedelta(seconds=stage.max_hold)
            p.stage(name, waiting_for=f"approval after {_step_name(stage, stage.step)}", hold_until=until)
            p.set(state="waiting")
            p.notify("NOTICE", "note_release_step_gate", service=r.service, version=r.version, environment=name,
                     step=_step_name(stage, stage.step), id=r.id)
            return "awaiting_approval"
        if stage.hold_until and now >= stage.hold_until:
            return _revert(p, name, None, f"nobody approved {name} past {_step_name(stage, stage.step)} within "
                                          f"{stage.max_hold}s")
        return None
    gate = _wave_checks(p, name)
    if gate is not None:
        return gate or None
    stage = p.r.stages[name]
    if _frozen(p, name, _step_name(stage, stage.step + 1)):
        return "frozen" if p.changes else None
    step = stage.step + 1
    p.stage(name, step=step, waiting_for=None, hold_until=None, frozen_until=None, cleared_by=forced)
    p.set(state="running", message=f"Release of {r.version} in {name}: wave {stage.wave + 1} of {len(stage.waves)} "
                                   f"({', '.join(regions)}) at {_step_name(stage, step)}.")
    p.why("wave_step", environment=name, wave=stage.wave + 1, step=_step_name(stage, step),
          regions=", ".join(regions))
    p.effects.append(ProceedWave(environment=name, rollouts=stage.rollouts(regions), step=step, forced_by=forced))
    return "wave_step"


# ---------------------------------------------------------------- checks (core/checks.py)


def _start_check(p: _Plan, name: str, check: str, wave: int | None = None, step: int | None = None) -> CheckRun:
    stage = p.r.stages[name]
    key = checking.check_key(check, wave, step)
    run = checking.begin(stage.check_spec, check, p.now, wave, step)
    p.stage(name, checks={**stage.checks, key: run})
    p.why("check_started", environment=name, check=key, deadline=run.deadline)
    p.effects.append(RunCheck(environment=name, key=key, run=run, rollouts=_probed(stage, wave)))
    return run


def _probed(stage: Stage, wave: int | None) -> dict[str, str]:
    """The wave's regions a smoke or verify check looks at: not a first deploy, which serves 100 % at once and
    has no tag of its own (nothing to compare it with, nothing to probe at 0 %)."""
    if wave is None:
        return {}
    return {x: rid for x, rid in stage.rollouts(stage.waves[wave]).items() if stage.regions[x].state != "succeeded"}


def _stop_checks(p: _Plan, name: str) -> None:
    """The stage stopped: its checks still running stop too (a job's execution is asked to stop)."""
    stage = p.r.stages[name]
    running = {key: run for key, run in stage.checks.items() if not run.done}
    if not running:
        return
    stopped = {key: run.model_copy(update={"state": "cancelled", "finished_at": p.now, "next_at": None,
                                           "reason": f"{key} stopped: {name} stopped"})
               for key, run in running.items()}
    p.stage(name, checks={**stage.checks, **stopped})
    for key, run in running.items():
        if run.execution:
            p.effects.append(RunCheck(environment=name, key=key, run=run, cancel=True))


def _pre_check(p: _Plan, name: str, check: str) -> str | None:
    """A check before the stage deploys: None when passed (or not configured); "" while it runs (waits);
    a decision when it started one or stopped the release."""
    stage = p.r.stages[name]
    if getattr(stage.check_spec, check) is None:
        return None
    run = stage.checks.get(check)
    if run is None:
        _start_check(p, name, check)
        p.stage(name, state="checking", waiting_for=f"{check} (until {p.r.stages[name].checks[check].deadline:%H:%M:%S} UTC)")
        if p.r.state != "running":
            p.set(state="running")
        return "checking"
    if not run.done:
        return ""
    if run.ok:
        return None
    return _fail_stage(p, name, run.reason)


def _wave_checks(p: _Plan, name: str) -> str | None:
    """Smoke (and verify, at 0 %) of the wave before it leaves its step: None when passed or none configured."""
    stage = p.r.stages[name]
    spec = stage.check_spec
    wanted = []
    if spec.smoke is not None and (stage.step == -1 or spec.smoke.at_steps) and stage.step < stage.last:
        wanted.append("smoke")
    if spec.verify is not None and stage.step == -1:
        wanted.append("verify")
    for check in wanted:
        key = checking.check_key(check, stage.wave, stage.step)
        run = p.r.stages[name].checks.get(key)
        if run is None:
            _start_check(p, name, check, stage.wave, stage.step)
            p.stage(name, waiting_for=f"{check} of wave {stage.wave + 1} at {_step_name(stage, stage.step)}")
            return "checking"
        if not run.done:
            return ""
        if not run.ok:
            return _revert(p, name, None, run.reason)
    return None


def _fail_stage(p: _Plan, name: str, why: str) -> str:
    """A blocking check failed before the stage deployed anything: the release stops, traffic untouched."""
    r = p.r
    p.stage(name, state="failed", finished_at=p.now, waiting_for=None, hold_until=None, reason=why)
    _stop_checks(p, name)
    p.set(state="failed", message=f"Release of {r.version} stopped before {name}: {why.rstrip('. ')}.")
    p.why("release_check_failed", environment=name, why=why)
    p.notify("ERROR", "note_release_check_failed", service=r.service, version=r.version, environment=name,
             why=why.rstrip(". "))
    return "failed"


def _check_update(p: _Plan, u: CheckUpdate) -> ReleaseDecision:
    stage = p.r.stages.get(u.environment)
    run = stage.checks.get(u.key) if stage else None
    p.detail = {"check": u.key, "attempt": u.attempt, "state": u.state}
    if run is not None and run.attempt == u.attempt and run.state == "cancelled" and u.state != "running":
        # Its stage stopped while this step was under way: what it measured is kept, it changes nothing now.
        p.stage(u.environment, checks={**stage.checks, u.key: run.model_copy(update={
            "state": u.state, "detail": u.detail or run.detail, "reason": u.reason,
            "execution": u.execution or run.execution})})
        p.why("check_result", check=u.key, state=u.state.replace("_", " "), why=u.reason)
        return p.done("check_recorded")
    if run is None or run.attempt != u.attempt or run.done:
        return p.ignore("check_stale", check=u.key, attempt=u.attempt)
    if u.state == "running":
        if u.execution == run.execution and u.detail == run.detail and u.next_at == run.next_at:
            return p.nothing()
        p.stage(u.environment, checks={**stage.checks, u.key: run.model_copy(update={
            "execution": u.execution or run.execution, "detail": u.detail or run.detail, "next_at": u.next_at,
            "reason": u.reason or run.reason})})
        if u.execution and u.execution != run.execution:
            p.why("check_execution", check=u.key, execution=u.execution)
        else:
            p.why("check_progress", check=u.key, what=u.reason or "still running")
        return p.done("check_running")
    finished = run.model_copy(update={"state": u.state, "detail": u.detail or run.detail, "reason": u.reason,
                                      "finished_at": p.now, "next_at": None,
                                      "execution": u.execution or run.execution})
    p.stage(u.environment, checks={**stage.checks, u.key: finished})
    decided = _check_finished(p, u.environment, u.key)
    return p.done(decided) if decided else _progress(p, "check_" + u.state)


def _check_finished(p: _Plan, name: str, key: str) -> str | None:
    """What a finished run leads to by itself (a retry, or a rollback after the stage), else None: the
    release's next move then follows from its checks (`_progress`)."""
    r = p.r
    stage = r.stages[name]
    run = stage.checks[key]
    p.why("check_result", check=key, state=run.state.replace("_", " "), why=run.reason,
          on_fail=run.on_fail if run.state != "passed" else "")
    if run.state != "passed":
        retry = checking.retry_of(stage.check_spec, run, p.now)
        if retry is not None:
            p.stage(name, checks={**stage.checks, key: retry})
            p.why("check_retry", check=key, attempt=retry.attempt, at=retry.next_at)
            return "check_retry"
        severity = "WARNING" if run.on_fail == "inform" else "ERROR"
        p.notify(severity, "note_check_failed", service=r.service, version=r.version, environment=name, check=key,
                 why=run.reason.rstrip(". "), consequence="recorded only (on_fail: inform)" if run.on_fail == "inform"
                 else "the release stops here")
        if run.on_fail == "block" and run.name == "e2e" and stage.state == "succeeded":
            return _revert(p, name, None, run.reason)
    return None


def _tick_checks(p: _Plan) -> None:
    """Deadlines of running checks, and polls that are due (a job's execution, a pending scan)."""
    for name, stage in p.r.stages.items():
        for key, run in stage.checks.items():
            if run.done:
                continue
            if p.now >= run.deadline:
                why = (f"{key} did not finish within its {checking.timeout_of(stage.check_spec, run.name)}s deadline"
                       + (f" (execution {run.execution} still running)" if run.execution else ""))
                p.stage(name, checks={**p.r.stages[name].checks, key: run.model_copy(update={
                    "state": "timed_out", "reason": why, "finished_at": p.now, "next_at": None})})
                if run.execution:  # past its deadline, its job must not go on (nor overlap a retry)
                    p.effects.append(RunCheck(environment=name, key=key, run=run, cancel=True))
                _check_finished(p, name, key)
            elif run.next_at is not None and p.now >= run.next_at:
                polled = run.model_copy(update={"next_at": p.now + timedelta(seconds=checking.LEASE)})
                p.stage(name, checks={**p.r.stages[name].checks, key: polled})
                p.why("check_poll", check=key, attempt=run.attempt, environment=name)
                p.effects.append(RunCheck(environment=name, key=key, run=polled,
                                          rollouts=_probed(p.r.stages[name], run.wave)))


def _pooled(stage: Stage, progress: list[RegionProgress]) -> bool:
    """The wave's rule for regions with too little traffic: enough requests pooled, within the error limit."""
    requests, errors = sum(g.requests for g in progress), sum(g.errors for g in progress)
    return requests >= max(1, stage.health.min_requests) and errors / requests <= stage.health.max_error_rate


def _record_spread(p: _Plan, name: str) -> None:
    stage = p.r.stages[name]
    if stage.step < 0 or len(stage.wave_regions()) < 2 \
            or any(s.wave == stage.wave and s.step == stage.step for s in stage.spreads):
        return
    times = {x: stage.regions[x].served_at for x in stage.wave_regions() if stage.regions[x].state != "succeeded"
             or stage.regions[x].position == stage.step}
    if len(times) < 2 and len(stage.wave_regions()) > 1:
        return
    if any(stage.regions[x].position < stage.step or t is None for x, t in times.items()):
        return
    if any(stage.regions[x].position > stage.step for x in times):
        return  # a region is already past it (it succeeded): the step's times are gone
    first, last = min(times, key=lambda x: (times[x], x)), max(times, key=lambda x: (times[x], x))
    spread = (times[last] - times[first]).total_seconds() * 1000
    p.stage(name, spreads=stage.spreads + [Spread(wave=stage.wave, step=stage.step, spread_ms=round(spread, 1),
                                                  first=first, last=last)])
    p.why("wave_spread", environment=name, wave=stage.wave + 1, step=_step_name(stage, stage.step),
          regions=len(times), spread=round(spread), first=first, last=last)


def _revert(p: _Plan, name: str, region: str | None, why: str | None = None) -> str:
    """Every region of the stage back on what it served before the release, in one decision."""
    r, now = p.r, p.now
    stage = r.stages[name]
    if why is None:
        why = f"{region} {stage.regions[region].state.replace('_', ' ')}: {stage.regions[region].message}".rstrip(": ")
    targets = {x: g.rollout_id for x, g in stage.regions.items()
               if g.rollout_id and g.state not in FAILED_REGION}
    p.stage(name, state="rolled_back", finished_at=now, waiting_for=None, hold_until=None, reason=why)
    _stop_checks(p, name)
    p.set(state="rolled_back")
    p.why("release_revert", environment=name, why=why, regions=", ".join(targets) or "none left",
          skipped=", ".join(x for w in stage.waves[stage.wave + 1:] for x in w) or "none")
    if targets:
        p.effects.append(RevertRegions(environment=name, rollouts=targets, why=why))
    p.notify("ERROR", "note_release_rolled_back", service=r.service, version=r.version, environment=name,
             why=why.rstrip(". "),
             regions=", ".join(stage.regions))
    return "rolled_back"


def _superseded(p: _Plan, name: str, region: str) -> str:
    """A newer release (or a person's `rollback --to`) took over a region: this stage stops, and its regions still
    rolling out go back to what they served (regions that finished stay: they are the newer owner's now)."""
    r = p.r
    stage = r.stages[name]
    live = {x: g.rollout_id for x, g in stage.regions.items() if g.rollout_id and g.state in LIVE_REGION}
    why = f"{region}'s rollout was superseded (a newer release or a rollback took over)"
    p.stage(name, state="superseded", finished_at=p.now, waiting_for=None, hold_until=None, reason=why)
    _stop_checks(p, name)
    p.set(state="superseded", message=f"Release of {r.version} stopped in {name}: {why}.")
    p.why("release_superseded", environment=name, why=why, regions=", ".join(live) or "none")
    if live:
        p.effects.append(RevertRegions(environment=name, rollouts=live, why=why))
    return "superseded"


def _frozen(p: _Plan, name: str, what: str) -> bool:
    """Inside a freeze window (unless an admin lifted it for this stage): hold, and say until when."""
    r, now = p.r, p.now
    stage = r.stages[name]
    if stage.unfrozen_by:
        return False
    hit = None
    for freeze in r.freeze:
        if r.path and r.path in freeze.except_:
            continue
        if (window := freeze.window_at(now)) is not None:
            hit = (freeze, window)
            break
    if hit is None:
        return False
    freeze, (start, end) = hit
    if stage.frozen_until != end:
        p.stage(name, frozen_until=end.astimezone(now.tzinfo),
                waiting_for=f"freeze window until {end:%Y-%m-%d %H:%M} {freeze.tz}")
        p.set(state="waiting", message=f"Release of {r.version}: {what} in {name} waits for the end of a freeze "
                                       f"window ({end:%Y-%m-%d %H:%M} {freeze.tz}).")
        p.why("frozen", environment=name, what=what, cron=freeze.cron, tz=freeze.tz,
              start=start.astimezone(now.tzinfo), end=end.astimezone(now.tzinfo))
    return True


def _schedule_soaks(p: _Plan, name: str) -> None:
    """Stages that follow this one by themselves after a soak: routed now, their clock starts now."""
    for other, stage in p.r.stages.items():
        if stage.promote_from == name and stage.soak is not None and stage.state == "planned" \
                and stage.not_before is None:
            p.stage(other, not_before=p.now + timedelta(seconds=stage.soak))
            if other not in p.r.route:
                p.set(route=p.r.route + [other])
            p.why("release_soak", environment=other, after=name,
                  until=f"{p.now + timedelta(seconds=stage.soak):%Y-%m-%d %H:%M:%S} UTC")


def _worst_spread(stage: Stage) -> str:
    if not stage.spreads:
        return "no multi-region step"
    worst = max(stage.spreads, key=lambda s: s.spread_ms)
    return f"{worst.spread_ms:.0f} ms at most ({worst.first} → {worst.last})"


def _step_name(stage: Stage, step: int) -> str:
    if step < 0:
        return "0 % (deployed)"
    if step >= stage.last:
        return "100 %"
    if stage.strategy.canary:
        return f"step {step + 1} ({stage.strategy.canary.steps[step].weight} %)"
    return "verify (0 %)"


def _wait(p: _Plan, name: str, state: str, what: str) -> str | None:
    stage = p.r.stages[name]
    if stage.state == state and stage.waiting_for == what:
        return None
    p.stage(name, state=state, waiting_for=what)
    p.set(state="waiting", message=f"Release of {p.r.version} waits to enter {name}: {what}.")
    p.why("release_waits", environment=name, what=what)
    return state


# ---------------------------------------------------------------- commands


def _command(p: _Plan, c: Command) -> ReleaseDecision:
    r = p.r
    p.detail = {"action": c.action, "reason": c.reason or "", "region": c.region or ""}
    if c.reason:
        p.why("actor_says", actor=c.actor, text=c.reason)
    name = c.environment or r.current
    if name not in r.stages:
        return p.ignore("release_no_environment", environment=name, route=" → ".join(r.route))
    stage = r.stages[name]
    if c.action == "approve":
        if stage.state == "awaiting_approval":
            p.stage(name, approved_by=c.actor, hold_until=None, waiting_for=None, state="planned")
            p.why("release_approved", actor=c.actor, environment=name)
            return _progress(p, "approved")
        if stage.state == "running" and stage.waiting_for and stage.waiting_for.startswith("approval"):
            p.stage(name, approved_steps=stage.approved_steps + [stage.step], waiting_for=None, hold_until=None)
            p.why("release_step_approved", actor=c.actor, environment=name, step=_step_name(stage, stage.step))
            return _progress(p, "approved")
        return p.ignore("release_nothing_to_approve", environment=name, state=stage.state)
    if c.action in ("abort", "rollback"):
        if stage.state == "running":
            where = f" in {c.region}" if c.region else ""
            return p.done(_revert(p, name, None, f"{c.actor} asked to {c.action}{where}"))
        if stage.state in ("planned", "soaking", "awaiting_approval", "checking"):
            p.stage(name, state="cancelled", finished_at=p.now, waiting_for=None, hold_until=None,
                    reason=f"cancelled by {c.actor}")
            _stop_checks(p, name)
            p.set(state="cancelled")
            p.why("release_cancelled", actor=c.actor, environment=name)
            return p.done("cancelled")
        return p.ignore("release_stage_finished", environment=name, state=stage.state)
    if c.action == "unfreeze":
        p.stage(name, unfrozen_by=c.actor, frozen_until=None)
        p.why("release_unfrozen", actor=c.actor, environment=name, text=c.reason)
        return _progress(p, "unfrozen")
    live = {x: g.rollout_id for x, g in stage.regions.items() if g.rollout_id and g.state in LIVE_REGION}
    if c.action in ("pause", "resume"):
        if stage.state != "running" or not live:
            return p.ignore("release_nothing_live", environment=name, state=stage.state)
        p.effects.append(ForwardCommand(environment=name, rollouts=live, action=c.action))
        p.why("release_forwarded", action=c.action, actor=c.actor, regions=", ".join(live))
        return p.done(c.action)
    # promote: hurry the wave to its next step (never past an approver's gate)
    if stage.state != "running" or stage.step >= stage.last:
        return p.ignore("release_nothing_to_promote", environment=name, state=stage.state)
    if stage.step in stage.gates and stage.step not in stage.approved_steps:
        return p.ignore("promote_past_gate", gate=f"after {_step_name(stage, stage.step)}")
    regions = stage.wave_regions()
    if any(not stage.regions[x].rollout_id or stage.regions[x].position < stage.step for x in regions):
        return p.ignore("release_wave_not_there", environment=name, step=_step_name(stage, stage.step))
    if _frozen(p, name, _step_name(stage, stage.step + 1)):  # an operator hurries a wave, never past a freeze
        return p.done("frozen") if p.changes else p.ignore("release_frozen", environment=name)
    step = stage.step + 1
    p.stage(name, step=step, waiting_for=None, cleared_by=c.actor)
    p.why("wave_promoted", actor=c.actor, environment=name, step=_step_name(stage, step))
    p.effects.append(ProceedWave(environment=name, rollouts=stage.rollouts(regions), step=step, forced_by=c.actor))
    return p.done("promoted")

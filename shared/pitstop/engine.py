"""The shell around `decide`: find the rollout an input names, decide and store it in one
atomic Firestore write, then carry out the effects (Cloud Run traffic, events).

One loop of clear phases per input: route -> decide and store -> act. Cloud Run
results come back in as inputs (`Applied`, `ApplyFailed`, and the reconciler's
`Observed`), so every consequence of an effect is itself decided, recorded and
explained. Which rollout an input concerns is pure policy (`core/routing.py`);
this module only reads the few documents that policy needs.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from dataclasses import dataclass, field

from pitstop import drain
from pitstop.core import access, machine, routing, sampling
from pitstop.core.models import (
    TERMINAL, Alert, Applied, ApplyFailed, ApplyTraffic, Artifact, BuildFinished, Command, HealthSample, Input,
    Notify, Observed, Proceed, RECONCILE_AFTER, Rollout, RolloutSpec, Superseded, Tick,
)
from pitstop.core.spec import describe_source, matches
from pitstop.gcp.store import Outcome, Store
from pitstop.log import log, rollout_fields

if TYPE_CHECKING:
    from pitstop.config import Config
    from pitstop.core.pipeline import Pipeline
    from pitstop.gcp.bus import Bus
    from pitstop.gcp.cloudbuild import CloudBuild
    from pitstop.gcp.cloudrun import CloudRun
    from pitstop.gcp.identity import Identity, Verifier
    from pitstop.gcp.metrics import Metrics

class _OnFirstUse:
    """A module imported when first used: releases (and their checks) cost a function's cold start nothing
    until an input concerns one."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self._name), attr)


releases = _OnFirstUse("pitstop.core.release")

IGNORED_BUILD_STATES = {"STATUS_UNKNOWN", "PENDING", "QUEUED", "WORKING"}
TICK_CONCURRENCY = 8  # due rollouts handled at once by one tick (each mostly waits on I/O)
RELEASES_PER_TICK = 100  # due releases one tick looks at; the rest wait for the next (oldest due first)
RECENTLY_FINISHED = (timedelta(seconds=120), timedelta(seconds=60))  # checked for drift once, about a minute after


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rollout_key(service: str, environment: str, region: str, started_by: str) -> str:
    """Rollout ids derive from what started them (build id, command id): a redelivery finds its rollout."""
    return f"{service}-{environment}-{region}-" + "".join(c for c in started_by.lower() if c.isalnum())



@dataclass(frozen=True)
class Refused:
    """A request pitstop did not carry out, and why: `code` is stable (the HTTP API's error code)."""

    code: str  # unauthenticated | insufficient_permissions | not_found | conflict | invalid_request
    reason: str
    permission: str | None = None
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    """What a command did: the decision stored for each rollout it reached, or the build it started."""

    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    build: dict[str, Any] | None = None


Reply = Done | Refused


class Engine:
    def __init__(self, config: Config, store: Store, cloudrun: Callable[[], CloudRun], bus: Bus,
                 metrics: Callable[[], Metrics] | None = None, clock: Callable[[], datetime] = utcnow, *,
                 verifier: Callable[[], Verifier], cloudbuild: Callable[[], CloudBuild],
                 tokens: Callable[[], Callable[[str], str]] | None = None, jobs: Callable[[], Any] | None = None,
                 scanner: Callable[[], Any] | None = None) -> None:
        self.config, self.store, self.bus, self.clock = config, store, bus, clock
        self._cloudrun_factory, self._metrics_factory = cloudrun, metrics
        # jobs (gcp/jobs.py) and scanner (gcp/scan.py) carry out a release's checks (checkrun.py).
        self._factories = {"verifier": verifier, "cloudbuild": cloudbuild, "tokens": tokens, "jobs": jobs,
                           "scanner": scanner}
        self._cloudrun: CloudRun | None = None
        self._metrics: Metrics | None = None
        self._made: dict[str, Any] = {}

    @property
    def cloudrun(self) -> CloudRun:
        if self._cloudrun is None:
            self._cloudrun = self._cloudrun_factory()
        return self._cloudrun

    def _adapter(self, name: str) -> Any:
        """Clients are built on first use and kept for the instance's life (cold start stays small)."""
        if name not in self._made:
            self._made[name] = self._factories[name]()
        return self._made[name]

    # ------------------------------------------------------------ the core loop

    def handle(self, rollout_id: str, inp: Input, snap: Any = None) -> Outcome:
        now = self.clock()
        outcome = self.store.apply(rollout_id, inp.id, lambda r: machine.decide(r, inp, now), snap)
        if outcome.missing:
            log("WARNING", f"{inp.kind} input {inp.id} names rollout {rollout_id}, which does not exist; ignored",
                rollout_id=rollout_id)
        elif outcome.duplicate:
            r = outcome.rollout
            if r is not None and not r.applied and r.state not in TERMINAL:
                # Its decision was stored, but the process may have died before Cloud Run was told: a
                # redelivery re-applies the decided split at once (idempotent) instead of waiting for a tick.
                log("NOTICE", f"{inp.kind} input {inp.id} was already decided, but split generation "
                              f"{r.desired_generation} is not observed yet; applying it again", **rollout_fields(r))
                self._apply(r, ApplyTraffic(generation=r.desired_generation, split=r.desired,
                                            create_revision=r.state == "deploying"))
            else:
                log("INFO", f"{inp.kind} input {inp.id} was already handled; nothing changed", rollout_id=rollout_id)
        elif outcome.stored:
            self._act(outcome.decision, outcome.event_hash)
        return outcome

    def _act(self, decision: machine.Decision, event_hash: str | None = None) -> None:
        r, audit = decision.rollout, decision.audit
        if audit is not None:
            # The audit event as a structured log entry too: Terraform routes entries with `event_hash` to a
            # locked log bucket, so the trail survives even someone who may edit Firestore.
            log("INFO", f"{r.service} {r.version}: {audit.decision} ({r.state}). " + " ".join(audit.reasons),
                decision=audit.decision, state=r.state, input=audit.input, input_id=audit.id, actor=audit.actor,
                traffic=audit.traffic_after, event_hash=event_hash, **rollout_fields(r))
        # A region of a release reports what it decided: a failure at once (every other region of the release
        # rolls back on it), anything else once its Cloud Run update is out, so the updates of a wave are not
        # held up by the reports' writes to the one release document (reports are ordered by `at`).
        urgent = r.release_id and r.state in releases.FAILED_REGION
        if urgent and audit is not None:
            self._report(r, audit.id)
        for effect in decision.effects:
            if isinstance(effect, Notify):
                self._notify(r, effect, audit.id if audit is not None else f"gen{r.desired_generation}")
            elif isinstance(effect, ApplyTraffic):
                self._apply(r, effect)
        if r.release_id and not urgent and audit is not None:
            self._report(r, audit.id)

    def _notify(self, r: Rollout, note: Notify, input_id: str) -> None:
        log(note.severity, note.message, state=r.state, **rollout_fields(r))
        steps = r.strategy.canary.steps if r.strategy.canary else None
        self._publish_event({
            # The same decision (rollout, input, reason) has the same id however often it is sent again.
            "event_id": f"{r.id}:{input_id}:{note.reason.code}", "kind": "rollout",
            "rollout_id": r.id, "release_id": r.release_id, "service": r.service, "environment": r.environment,
            "region": r.region, "project": r.project, "version": r.version, "stable_version": r.stable_version,
            "revision": r.revision, "stable_revision": r.stable_revision, "state": r.state,
            "severity": note.severity, "message": note.message, "reason": note.reason.code,
            "values": note.reason.values,
            "verdict": r.verdict.model_dump(mode="json") if r.verdict else None,
            "traffic": [t.model_dump(mode="json") for t in r.desired],
            "step": r.step if steps else None, "steps": len(steps) if steps else None,
            "build_id": r.artifact.build_id if r.artifact else None,
            "log_url": r.artifact.log_url if r.artifact else None, "at": self.clock().isoformat(),
        }, rollout_id=r.id, severity=note.severity)

    def _publish_event(self, event: dict[str, Any], **attributes: str) -> None:
        """An event on `pitstop-events` (README, "Notifications", has the schema); its id is an attribute too,
        so a subscriber can drop a duplicate without parsing the body."""
        attributes = {k: v for k, v in attributes.items() if v}
        try:
            self.bus.publish(self.config.events_topic, event, event_id=event["event_id"], kind=event["kind"],
                             **attributes)
        except Exception as err:  # a lost notification must not undo a decision already stored
            log("ERROR", f"could not publish event to {self.config.events_topic}: {err}")

    def _apply(self, r: Rollout, effect: ApplyTraffic, depth: int = 0) -> None:
        gen, split, create = effect.generation, effect.split, effect.create_revision
        try:
            observed = self.cloudrun.apply(r.project, r.region, r.service, split,
                                           revision=r.revision if create else None, image=r.image)
        except Exception as err:  # CloudRunError, or a transport failure of any kind
            self.handle(r.id, ApplyFailed(id=f"apply-failed-g{gen}-a{r.apply_attempts}", generation=gen,
                                          error=str(err)[:1000], permanent=getattr(err, "permanent", False)))
            return
        if observed is None:  # Cloud Run is still at it: the reconciler reads it back on a later tick
            log("INFO", f"Cloud Run is still applying split generation {gen}; it is read back within "
                        f"{RECONCILE_AFTER}s", **rollout_fields(r))
            return
        outcome = self.handle(r.id, Applied(id=f"applied-g{gen}", generation=gen, observed=observed))
        if outcome.stored and outcome.decision.audit.decision != "ignored":
            return
        if depth < 3:
            self._reassert(r, gen, depth)

    def _reassert(self, r: Rollout, gen: int, depth: int) -> None:
        """Our split landed late (a newer one was decided meanwhile, or the rollout was superseded): Cloud Run
        must serve what the current owner of the service's traffic decided, not what we just wrote."""
        current = self.store.rollout(r.id)
        owner = current
        if current is not None and current.state == "superseded" and current.superseded_by:
            owner = self.store.rollout(current.superseded_by)
        if owner is None or (owner.id == r.id and owner.desired_generation == gen):
            return
        log("NOTICE", f"split generation {gen} of {r.id} landed after a newer decision; re-applying "
                      f"{owner.id} generation {owner.desired_generation}", **rollout_fields(r))
        self._apply(owner, ApplyTraffic(generation=owner.desired_generation, split=owner.desired,
                                        create_revision=owner.state == "deploying"), depth + 1)

    # ------------------------------------------------------------ builds

    def on_build(self, claimed: BuildFinished) -> None:
        """A Cloud Build status message. Anyone with publish rights can send one, so only its build id is
        taken from it: what is deployed comes from the build as the Cloud Build API reports it."""
        where = f"build {claimed.build_id} ({describe_source(claimed)})"
        if claimed.status in IGNORED_BUILD_STATES:
            log("INFO", f"{where} is {claimed.status}: waiting for it to finish", build_id=claimed.build_id)
            return
        # A message no spec would match starts nothing whatever it claims: no API call for other teams' builds.
        candidates = self._matching_specs(claimed)
        pipelines = self._matching_pipelines(claimed)
        if not candidates and not pipelines:
            self._record_build(claimed, "ignored", f"No rollout spec matches {where}; nothing deployed.")
            return
        build = self._confirmed(claimed)
        if build is None:
            return
        specs = [s for s in candidates if matches(s, build)]  # what Cloud Build says, not what the message said
        pipelines = [p for p in pipelines if p.takes(build, self.config.project)]
        if pipelines:
            self._release_build(pipelines, build)
        if not specs and pipelines:
            return
        if not specs:
            self._record_build(build, "ignored", f"No rollout spec matches {where}; nothing deployed.")
            return
        services = ", ".join(s.key for s in specs)
        if build.status != "SUCCESS":
            detail = f": {build.status_detail}" if build.status_detail else ""
            self._record_build(build, "failed", f"Build {build.build_id} for {services} ended {build.status}{detail}. "
                                                f"Nothing deployed; the current versions keep serving.", "ERROR")
            return
        if build.artifact is None:
            self._record_build(build, "rejected",
                               f"Build {build.build_id} for {services} succeeded but its message carries no image "
                               f"digest (results.images is empty). List the image under `images:` in cloudbuild.yaml "
                               f"so Cloud Build reports it. Nothing deployed.", "ERROR")
            return
        refusals = [f"{spec.key}: {why}" for spec in specs if (why := self._build_refusal(spec, build))]
        if refusals:
            self._record_build(build, "refused", f"Build {build.build_id} refused: " + "; ".join(refusals)
                               + ". Nothing deployed; the current versions keep serving.", "ERROR")
            return
        self.store.put_artifact(build.artifact)
        requested = self.store.deploy_request(build.build_id)  # who ran `pitstop deploy`, if anyone did
        for spec in specs:
            for region in spec.regions:
                self._start(spec, region, build, (requested or {}).get("actor"))

    def _matching_pipelines(self, build: BuildFinished) -> list[Pipeline]:
        keys = routing.build_keys(build.repo, build.trigger, build.trigger_id)
        return [p for p in self.store.pipelines_for(keys) if p.takes(build, self.config.project)]

    def _matching_specs(self, build: BuildFinished) -> list[RolloutSpec]:
        keys = routing.build_keys(build.repo, build.trigger, build.trigger_id)
        return [s for s in self.store.specs_for(keys) if matches(s, build)]

    def _confirmed(self, claimed: BuildFinished) -> BuildFinished | None:
        """The build as Cloud Build reports it, if the message describes it truly; None (recorded) if not."""
        from pitstop.core import messages

        project = self.config.build_project
        if claimed.project and claimed.project != project:
            return self._forged(claimed, f"the message says it ran in project {claimed.project}; pitstop deploys "
                                         f"only builds of project {project}")
        fetched = self._adapter("cloudbuild").build(project, claimed.build_id, claimed.location)
        if fetched is None:
            return self._forged(claimed, f"Cloud Build has no build {claimed.build_id} in project {project}: the "
                                         f"message was forged, or comes from another project")
        try:
            real = messages.parse_build(fetched, {})
        except messages.BadMessage as err:
            return self._forged(claimed, f"the build Cloud Build reports cannot be read ({err})")
        if real.status != claimed.status:
            return self._forged(claimed, f"the message says {claimed.status} but Cloud Build says {real.status}")
        unknown = [f"{name}@{digest}" for name, digest in claimed.images if (name, digest) not in real.images]
        if unknown:
            return self._forged(claimed, f"image {unknown[0]} is not among the build's results.images "
                                         f"({', '.join(f'{n}@{d}' for n, d in real.images) or 'none'})")
        return real

    def _forged(self, claimed: BuildFinished, why: str) -> None:
        # Nothing the message claims is repeated (its repo, commit or log link may be the forger's words).
        unclaimed = claimed.model_copy(update={"repo": None, "branch": None, "tag": None, "commit": None,
                                               "log_url": None})
        self._record_build(unclaimed, "refused", f"Build message for {claimed.build_id} refused: {why}. Nothing "
                                                 f"deployed; the current versions keep serving.", "ERROR")
        return None

    def _build_refusal(self, spec: RolloutSpec, build: BuildFinished) -> str | None:
        return (access.trigger_refusal(spec, build.trigger, build.trigger_id)
                or access.image_refusal(spec, self.config.project, build.artifact.image))

    def _start(self, spec, region: str, build: BuildFinished, requested_by: str | None = None,
               release_id: str | None = None) -> None:
        artifact = build.artifact
        project = spec.project or self.config.project
        rollout_id = rollout_key(spec.service, spec.environment, region, build.build_id[:8])
        known = self.store.service(spec.service, region, spec.environment)
        serving = None
        if not (known and known.get("stable_revision")):
            # A service pitstop has not managed yet may already serve a revision: that is the stable one.
            serving = self.cloudrun.serving(project, region, spec.service)
        now = self.clock()
        refused: list[str] = []

        def begin(record, active: Rollout | None):
            # A release checked its build's age once, when it began (`_release_build`).
            why = None if release_id else routing.older_build(artifact, record, active)
            if why:
                refused.append(why)
                return None, None
            stable = (record or {}).get("stable_revision") or serving
            stable_version = (record or {}).get("stable_version") or serving
            new = machine.start(spec, region, project, artifact, rollout_id, stable, stable_version, now, build.id,
                                requested_by=requested_by, release_id=release_id)
            old = None
            if active is not None and active.id != rollout_id:
                old = machine.decide(active, Superseded(id=f"superseded-by-{rollout_id}", by_rollout=rollout_id,
                                                        by_version=artifact.version), now)
            return new, old

        outcome = self.store.start(rollout_id, spec.service, region, spec.environment, begin)
        if refused:
            self._record_build(build, "refused", refused[0][:1].upper() + refused[0][1:] + ".", "WARNING")
        elif outcome.duplicate:
            log("INFO", f"build {build.build_id} already started rollout {rollout_id}; nothing changed",
                rollout_id=rollout_id, service=spec.service, region=region)
        else:
            self._act_started(outcome)

    def _record_build(self, build: BuildFinished, outcome: str, message: str, severity: str = "INFO") -> None:
        log(severity, message, build_id=build.build_id, status=build.status)
        new = self.store.record_build(build.build_id, {
            "build_id": build.build_id, "status": build.status, "outcome": outcome, "message": message,
            "repo": build.repo, "branch": build.branch, "tag": build.tag, "commit": build.commit,
            "log_url": build.log_url, "at": self.clock(),
        })
        if new and outcome in ("failed", "rejected", "refused", "released"):  # once per build and outcome
            artifact = build.artifact
            self._publish_event({
                "event_id": f"build:{build.build_id}:{outcome}", "kind": "build", "build_id": build.build_id,
                "service": build.substitutions.get("_SERVICE") or None, "version": artifact.version if artifact
                else None, "state": outcome, "severity": severity, "outcome": outcome, "message": message,
                "reason": f"build_{outcome}", "values": {"status": build.status, "repo": build.repo,
                                                        "branch": build.branch, "tag": build.tag,
                                                        "commit": build.commit},
                "log_url": build.log_url, "at": self.clock().isoformat()}, severity=severity)

    # ------------------------------------------------------------ releases (core/release.py)

    def _release_build(self, pipelines: list[Pipeline], build: BuildFinished) -> None:
        """A build of a pipeline's service: a release on its way to where the branch rules send it."""
        for pipeline in pipelines:
            places = pipeline.destinations(build.branch, build.tag)
            if not places:  # a feature branch: built and tested, deployed nowhere
                why = pipeline.why_nothing(build.branch, build.tag)
                self._record_build(build, "ignored", why[:1].upper() + why[1:] + ".")
                continue
            if build.status != "SUCCESS" or build.artifact is None:
                detail = f" ({build.status_detail})" if build.status_detail else ""
                self._record_build(build, "failed" if build.status != "SUCCESS" else "rejected",
                                   f"Build {build.build_id} of {pipeline.service} ended {build.status}{detail}"
                                   + ("" if build.status != "SUCCESS" else " but reports no image digest "
                                      "(results.images is empty)") + "; nothing deployed.", "ERROR")
                continue
            refusal = self._build_refusal(pipeline, build)
            if refusal:
                self._record_build(build, "refused", f"Build {build.build_id} refused: {refusal}. Nothing deployed; "
                                                     f"the current versions keep serving.", "ERROR")
                continue
            older = self._older_than_stable(pipeline, places[0][0], places[0][1], build.artifact)
            if older:
                self._record_build(build, "refused", older[:1].upper() + older[1:] + ".", "WARNING")
                continue
            self.store.put_artifact(build.artifact)
            requested = (self.store.deploy_request(build.build_id) or {}).get("actor")
            ref = f"tag {build.tag}" if build.tag else f"branch {build.branch}"
            for environment, path in places:
                why = f"build {build.build_id} of {ref} goes to {environment}" + (f" by path {path}" if path else "")
                self._send_release(pipeline, build.artifact, environment, path, requested or "cloud-build", why,
                                   f"build-{build.build_id}-{environment}", started_by=requested)
            self._record_build(build, "released", f"Build {build.build_id} of {ref}: release "
                                                  f"{releases.release_id(pipeline.service, build.artifact.digest)} "
                                                  f"to {', '.join(e for e, _ in places)}.")

    def _older_than_stable(self, pipeline: Pipeline, environment: str, path: str | None,
                           artifact: Artifact) -> str | None:
        """Builds finish and arrive out of order: an older build never starts a release over newer code."""
        first = releases.route_to(pipeline, environment, path)[0]
        for region in pipeline.environments[first].regions:
            why = routing.older_build(artifact, self.store.service(pipeline.service, region, first), None)
            if why:
                return why
        return None

    def _send_release(self, pipeline: Pipeline, artifact: Artifact, environment: str, path: str | None, actor: str,
                      why: str, input_id: str, started_by: str | None = None) -> Outcome:
        rid = releases.release_id(pipeline.service, artifact.digest)
        now = self.clock()

        def decide(current: releases.Release | None) -> releases.ReleaseDecision:
            if current is None:
                return releases.begin(pipeline, rid, artifact, environment, path, actor, why, now, input_id,
                                      started_by=started_by, max_hold=pipeline.max_hold)
            return releases.extend(pipeline, current, environment, path, actor, why, now, input_id,
                                   max_hold=pipeline.max_hold)

        outcome = self.store.apply_release(rid, input_id, decide)
        if outcome.stored:
            self._act_release(outcome.decision, outcome.event_hash)
        return outcome

    def release_input(self, release_id: str, inp: Any) -> Outcome:
        """Decide one input of a release, store it with its audit event, then carry out its effects."""
        now = self.clock()

        def decide(current: releases.Release | None) -> releases.ReleaseDecision | None:
            return None if current is None else releases.decide_release(current, inp, now)

        outcome = self.store.apply_release(release_id, inp.id, decide)
        if outcome.stored:
            self._act_release(outcome.decision, outcome.event_hash)
        return outcome

    def _report(self, r: Rollout, input_id: str) -> None:
        """A region's rollout decided something: its release hears what it decides on (most times nothing new)."""
        report = releases.RegionReport(id=f"{r.id}-{input_id}"[:500], environment=r.environment, region=r.region,
                                       progress=releases.progress_of(r))
        try:
            self.release_input(r.release_id, report)
        except Exception as err:  # the release resyncs from its rollouts on a tick (releases.RESYNC)
            log("ERROR", f"release {r.release_id} did not hear from {r.region}: {err!r}; a tick catches up",
                **rollout_fields(r))

    def _act_release(self, decision: releases.ReleaseDecision, event_hash: str | None = None) -> None:
        rel, audit = decision.release, decision.audit
        log("INFO", f"release {rel.id} of {rel.service} {rel.version}: {audit.decision} ({rel.state}). "
                    + " ".join(audit.reasons), release_id=rel.id, service=rel.service, decision=audit.decision,
            input=audit.input, input_id=audit.id, actor=audit.actor, event_hash=event_hash)
        for effect in decision.effects:
            self._carry_out(rel, effect, audit.id, audit.actor)

    def _carry_out(self, rel: releases.Release, effect: Any, input_id: str, actor: str) -> None:
        """One effect of a release decision; each is idempotent, so a tick may send it again (`releases.owed`)."""
        if isinstance(effect, Notify):
            log(effect.severity, effect.message, release_id=rel.id, service=rel.service)
            environment = effect.reason.values.get("environment") or rel.current
            stage = rel.stages.get(environment) if environment else None
            artifact = self.store.artifact(rel.digest) if rel.digest else None  # for its Cloud Build log
            self._publish_event({
                "event_id": f"{rel.id}:{input_id}:{effect.reason.code}", "kind": "release",
                "release_id": rel.id, "service": rel.service, "environment": environment,
                "project": stage.project if stage else None, "version": rel.version, "state": rel.state,
                "hotfix": rel.hotfix, "severity": effect.severity, "message": effect.message,
                "reason": effect.reason.code, "values": effect.reason.values,
                "regions": {region: {"rollout_id": p.rollout_id, "state": p.state, "percent": p.percent}
                            for region, p in stage.regions.items()} if stage else {},
                "build_id": rel.build_id, "log_url": artifact.log_url if artifact else None,
                "at": self.clock().isoformat(),
            }, release_id=rel.id, severity=effect.severity)
        elif isinstance(effect, releases.StartRegions):
            self._fan_out(effect.regions, lambda region: self._start_region(rel, effect.environment, region))
        elif isinstance(effect, releases.ProceedWave):
            stage = rel.stages[effect.environment]
            proceed = Proceed(id=f"proceed-w{stage.wave}-s{effect.step}", step=effect.step,
                              actor=f"release {rel.id}", forced_by=effect.forced_by)
            self._fan_out(list(effect.rollouts.values()), lambda rid: self.handle(rid, proceed))
        elif isinstance(effect, releases.RevertRegions):
            self._fan_out(list(effect.rollouts.values()), lambda rid: self._revert_region(rel, rid, effect.why))
        elif isinstance(effect, releases.ForwardCommand):
            self._fan_out(list(effect.rollouts.values()), lambda rid: self.handle(rid, Command(
                id=f"{input_id}-{effect.action}"[:500], action=effect.action, rollout_id=rid, actor=actor)))
        elif isinstance(effect, releases.RunCheck):
            self._run_check(rel, effect)

    def _run_check(self, rel: releases.Release, effect: releases.RunCheck) -> None:
        """One step of a check (checkrun.py); what it found goes back to the release as a CheckUpdate."""
        from pitstop import checkrun
        from pitstop.core.checks import POLL

        if effect.cancel:  # a deadline passed or its stage stopped: its execution must not go on
            try:
                self._adapter("jobs").cancel(effect.run.execution, quietly=True)
            except Exception as err:
                log("WARNING", f"release {rel.id}: could not cancel {effect.run.execution}: {err!r}", release_id=rel.id)
            return
        try:
            fields = checkrun.run(self, rel, effect)
        except Exception as err:  # an API fault is no verdict: again at the next poll, within the check's deadline
            why = f"{effect.key} could not be carried out: {type(err).__name__}: {err}"[:500]
            log("ERROR", f"release {rel.id}: {why}", release_id=rel.id, check=effect.key)
            fields = ({"state": "failed", "reason": why} if getattr(err, "permanent", False) else
                      {"state": "running", "reason": why + "; tried again at the next poll",
                       "next_at": self.clock() + timedelta(seconds=POLL)})
        update = releases.CheckUpdate(id=f"check-{effect.key}-a{effect.run.attempt}-{int(self.clock().timestamp() * 1e6)}",
                                      environment=effect.environment, key=effect.key, attempt=effect.run.attempt,
                                      **fields)
        self.release_input(rel.id, update)

    def _fan_out(self, items: list[Any], work: Callable[[Any], Any]) -> None:
        """A wave's Cloud Run updates go out together, one thread per region."""
        if len(items) <= 1:
            for item in items:
                work(item)
            return
        with ThreadPoolExecutor(len(items)) as pool:
            for future in [pool.submit(work, item) for item in items]:
                try:
                    future.result()
                except Exception as err:  # one region's failure is its rollout's (and the release's) to handle
                    log("ERROR", f"release fan-out: {err!r}")

    def _start_region(self, rel: releases.Release, environment: str, region: str) -> None:
        stage = rel.stages[environment]
        spec = self.store.spec(rel.service, environment)
        artifact = self.store.artifact(rel.digest)
        if spec is None or artifact is None:
            log("ERROR", f"release {rel.id}: no spec for {rel.service} in {environment} or no artifact "
                         f"{rel.digest}; {region} not started", release_id=rel.id)
            return
        spec = spec.model_copy(update={"strategy": stage.strategy, "health": stage.health})
        build = BuildFinished(id=f"release-{rel.id}", build_id=rel.build_id, status="SUCCESS", artifact=artifact)
        self._start(spec, region, build, rel.started_by, release_id=rel.id)

    def _revert_region(self, rel: releases.Release, rollout_id: str, why: str) -> None:
        """A live region aborts; one that already succeeded goes straight back to the revision it replaced."""
        r = self.store.rollout(rollout_id)
        if r is None or r.state in ("rolling_back", "rolled_back", "failed", "superseded"):
            return
        actor = f"release {rel.id}"
        if r.state != "succeeded":
            self.handle(rollout_id, Command(id=f"revert-{rel.id}"[:500], action="abort", rollout_id=rollout_id,
                                            actor=actor, reason=why))
            return
        if not r.stable_revision:
            log("WARNING", f"release {rel.id}: {r.region} had no earlier revision to go back to", **rollout_fields(r))
            return
        record = self.store.service(r.service, r.region, r.environment) or {}
        if record.get("last_rollout") != r.id or record.get("active_rollout") not in (None, r.id):
            # A newer rollout (another release, a rollback) owns the region now: this release's revert would undo it.
            owner = record.get("active_rollout") or record.get("last_rollout")
            log("NOTICE", f"release {rel.id}: {r.region} is left as it is: {owner} owns it now", **rollout_fields(r))
            # The release hears it, so it stops owing this revert (its ticks would resend it forever otherwise).
            taken = releases.progress_of(r).model_copy(update={"state": "superseded", "at": self.clock()})
            self.release_input(rel.id, releases.RegionReport(id=f"{r.id}-taken-over", environment=r.environment,
                                                             region=r.region, progress=taken))
            return
        revert_id = rollout_key(r.service, r.environment, r.region, f"revert{rel.id[-12:]}")
        prior = self.store.find_version(r.service, r.region, r.environment, r.stable_version or "")
        now = self.clock()

        def begin(current, active: Rollout | None):
            new = machine.start_direct(revert_id, r.service, r.environment, r.region, r.project,
                                       r.stable_version or r.stable_revision, r.stable_revision,
                                       prior.image if prior else r.image,
                                       r.revision, r.version, now, f"revert-{rel.id}", actor, r,
                                       release_id=rel.id)
            old = None
            if active is not None:
                old = machine.decide(active, Superseded(id=f"superseded-by-{revert_id}", by_rollout=revert_id,
                                                        by_version=r.stable_version or ""), now)
            return new, old

        self._act_started(self.store.start(revert_id, r.service, r.region, r.environment, begin))

    def _sync_releases(self, now: datetime) -> None:
        """Releases due: a soak, approval or freeze ending, or a wave in flight looked at again (RESYNC)."""
        due = self.store.due_releases(now, limit=RELEASES_PER_TICK)
        with ThreadPoolExecutor(TICK_CONCURRENCY) as pool:
            list(pool.map(lambda rel: self._sync_release(rel, now), due))

    def _sync_release(self, rel: releases.Release, now: datetime) -> None:
        """Hear every region again (a report may have been lost), resend what the release still owes its regions
        (a function may have died between the release's write and its effects), then let time pass."""
        try:
            stage = rel.stage
            if stage is not None:
                ids = [g.rollout_id for g in stage.regions.values() if g.rollout_id]
                for r in self.store.rollouts(ids):
                    self._report(r, f"sync-{int(r.updated_at.timestamp() * 1000)}")
                rel = self.store.release(rel.id) or rel
            for effect in releases.owed(rel):
                log("NOTICE", f"release {rel.id}: resending {effect.kind} for {effect.environment}", release_id=rel.id)
                self._carry_out(rel, effect, f"sync-{int(now.timestamp())}", "scheduler")
            outcome = self.release_input(rel.id, Tick(id=f"tick-{int(now.timestamp() * 1000)}"))
            if not outcome.stored:
                self.store.synced_release(rel.id, now)  # nothing changed: not due again before RESYNC
        except Exception as err:  # one stuck release must not stop the others; the next tick retries it
            log("ERROR", f"tick could not handle release {rel.id}: {err!r}", release_id=rel.id)

    def _release_command(self, command: Command, sender: Identity) -> Reply:
        rel = self.store.release(command.release_id)
        if rel is None:
            return self._refuse(command, Refused("not_found", f"there is no release {command.release_id}; nothing "
                                                              f"changed"))
        environment = command.to_environment or command.environment or rel.current
        if environment not in rel.stages and command.to_environment is None:
            return self._refuse(command, Refused("not_found", f"release {rel.id} does not go to {environment} "
                                                              f"(route {' → '.join(rel.route)}); nothing changed"))
        action = "promote_release" if command.to_environment else command.action
        denial = self.authorize(sender.email, access.PERMISSION_OF_ACTION[action], rel.service, environment,
                                sender.hosted_domain)
        if denial is None and command.action == "approve":
            spec = self.store.spec(rel.service, environment)
            stage = rel.stages.get(environment)
            for starter in dict.fromkeys([rel.started_by, stage.sent_by if stage else None]):
                denial = denial or access.four_eyes(sender.email, starter, spec)
        if denial is not None:
            return self._denied(command, denial)
        if command.to_environment:
            pipeline = self.store.pipeline(rel.service)
            if pipeline is None or command.to_environment not in pipeline.environments:
                return self._refuse(command, Refused("not_found", f"{rel.service}'s pipeline has no environment "
                                                                  f"{command.to_environment}; nothing changed"))
            artifact = self.store.artifact(rel.digest)
            why = f"{sender.email} promoted it" + (f": {command.reason}" if command.reason else "")
            outcome = self._send_release(pipeline, artifact, command.to_environment, None, sender.email, why,
                                         command.id)
        else:
            outcome = self.release_input(rel.id, command.model_copy(update={"environment": environment}))
        return Done([(rel.id, outcome)])

    # ------------------------------------------------------------ who sent it

    def identify(self, token: str | None, bound: str | None = None) -> Identity:
        """The verified sender of a token (raises `identity.Unverified` with the reason)."""
        return self._adapter("verifier").verify(token, bound)

    def grants(self, service: str, environment: str) -> tuple[RolloutSpec | None, list]:
        """The spec of one service and environment, and the grants that apply there."""
        spec = self.store.spec(service, environment)
        return spec, [spec.access if spec else None, self.store.project_access()]

    def authorize(self, email: str, permission: str, service: str, environment: str,
                  hosted_domain: str | None = None) -> access.Denial | None:
        _, grants = self.grants(service, environment)
        return access.check(email, permission, f"{service} ({environment})", grants, self.config.admins,
                            hosted_domain)

    # ------------------------------------------------------------ health, alerts

    def on_health(self, sample: HealthSample, token: str | None = None, bound: str | None = None) -> None:
        """`bound`: the digest of the sample's payload (`messages.payload_digest`)."""
        from pitstop.gcp.identity import Unverified

        try:
            sender = self.identify(token, bound)
        except Unverified as err:
            log("ERROR", f"health sample for {sample.service}/{sample.revision} refused: {err.reason}. Nothing "
                         f"changed.", claimed_sender=err.claimed, service=sample.service, region=sample.region)
            return
        own = sender.email == self.config.sampler_identity  # pitstop's sampler (on_tick) signed it
        if own and not (bound and sender.audience.endswith("#" + bound)):
            # The sampler may judge any rollout, so its token must be this sample's alone: one read off the topic
            # and replayed with forged counts proves nothing.
            log("ERROR", f"health sample for {sample.service}/{sample.revision} refused: it carries pitstop's "
                         f"sampler token minted for another message (audience {sender.audience}). Nothing changed.",
                service=sample.service, region=sample.region)
            return
        if sample.rollout_id and own:
            self.handle(sample.rollout_id, sample)  # no read before deciding: the sampler's samples cost nothing more
            return
        if sample.rollout_id:
            named = self.store.rollout(sample.rollout_id)
            rollouts = [named] if named else []
        else:
            rollouts = self.store.active_rollouts(sample.service, sample.region)
            chosen = set(routing.health_targets(sample.revision, None, rollouts))
            rollouts = [r for r in rollouts if r.id in chosen] or rollouts
        if not rollouts:
            log("WARNING", f"health sample for {sample.service}/{sample.revision} in {sample.region}: no rollout "
                           f"in progress; ignored", service=sample.service, region=sample.region)
        for rollout in rollouts:
            if not own and not any(access.member_matches(m, sender.email) for m in rollout.health.sources):
                log("ERROR", f"health sample for {rollout.id} from {sender.email} refused: it is not pitstop's sampler "
                             f"and not listed in the spec's health.sources. Nothing changed.",
                    sender=sender.email, **rollout_fields(rollout))
                continue
            self.handle(rollout.id, sample)

    def on_alert(self, alert: Alert) -> None:
        """Unsigned on purpose: an incident can only roll back (see README, Security model)."""
        if alert.test:
            log("NOTICE", f"test notification from alert policy {alert.policy!r} received; no action taken",
                incident=alert.incident_id)
            return
        if not alert.service:
            log("WARNING", f"incident {alert.incident_id} ({alert.policy}) names no Cloud Run service "
                           f"(resource.labels.service_name or policy label 'service'); ignored")
            return
        rollouts = [r for r in self.store.active_rollouts(alert.service, alert.location)
                    if alert.project in (None, r.project)]
        if not rollouts:
            log("INFO", f"incident {alert.incident_id} for {alert.service}: no rollout in progress; nothing to do",
                service=alert.service)
        for rollout in rollouts:
            self.handle(rollout.id, alert)

    # ------------------------------------------------------------ commands (Pub/Sub and the HTTP API)

    def on_command(self, command: Command, token: str | None = None) -> Reply:
        """Verify the sender, check the permission on every rollout the command reaches, then decide.
        One path for `pitstop-commands` and the HTTP API: one decision, one audit event per rollout."""
        from pitstop.gcp.identity import Unverified

        try:
            sender = self.identify(token)
        except Unverified as err:
            return self._refuse(command, Refused("unauthenticated", f"{command.action} refused: {err.reason}; "
                                                                    f"nothing changed"), err.claimed, verified=False)
        command = command.model_copy(update={"actor": sender.email})
        if command.release_id:
            return self._release_command(command, sender)
        if command.action == "deploy":
            return self._deploy(command, sender.hosted_domain)
        if command.action == "rollback" and command.to_version:
            return self._rollback_to(command, sender.hosted_domain)
        if command.rollout_id:
            named = self.store.rollout(command.rollout_id)
            if named is None:
                return self._refuse(command, Refused("not_found", f"there is no rollout {command.rollout_id}; "
                                                                  f"nothing changed"))
            rollouts = [named]
        else:
            targets = routing.command_targets(command, self.store.services_of(command.service, command.region))
            if isinstance(targets, routing.Refusal):
                code = "conflict" if targets.candidates else "not_found"
                return self._refuse(command, Refused(code, targets.reason, candidates=targets.candidates))
            rollouts = [r for r in (self.store.rollout(t) for t in targets) if r is not None]
        permission = access.PERMISSION_OF_ACTION[command.action]
        for rollout in rollouts:  # all or nothing: a command reaches every rollout it names, or none
            spec, grants = self.grants(rollout.service, rollout.environment)
            denial = access.check(sender.email, permission, f"{rollout.service} ({rollout.environment})", grants,
                                  self.config.admins, sender.hosted_domain)
            if denial is None and command.action == "approve":
                denial = access.four_eyes(sender.email, rollout.started_by, spec)
            if denial is not None:
                return self._denied(command, denial, rollout_id=rollout.id)
        return Done([(r.id, self.handle(r.id, command)) for r in rollouts])

    def _refuse(self, command: Command, refusal: Refused, claimed: str | None = None, verified: bool = True,
                rollout_id: str | None = None) -> Refused:
        """Recorded in commands/{id} (the CLI waits on it; auditors read it) and logged; nothing else changes."""
        actor = command.actor if verified else f"{claimed or 'anonymous'} (unverified)"
        log("ERROR", f"{command.action} by {actor} refused: {refusal.reason}", code=refusal.code,
            permission=refusal.permission, candidates=list(refusal.candidates) or None, service=command.service,
            rollout_id=rollout_id or command.rollout_id)
        self.store.record_command(command.id, {
            "action": command.action, "actor": actor, "verified": verified, "service": command.service,
            "environment": command.environment, "region": command.region,
            "rollout_id": rollout_id or command.rollout_id, "release_id": command.release_id,
            "outcome": "refused", "code": refusal.code,
            "reason": refusal.reason, "permission": refusal.permission, "candidates": list(refusal.candidates),
            "at": self.clock()})
        return refusal

    def _denied(self, command: Command, denial: access.Denial, left: str = "nothing changed",
                rollout_id: str | None = None) -> Refused:
        return self._refuse(command, Refused("insufficient_permissions", f"{command.action} refused: "
                                             f"{denial.reason}; {left}", denial.permission), rollout_id=rollout_id)

    def _deploy(self, command: Command, hosted_domain: str | None = None) -> Reply:
        """`pitstop deploy`: run the service's build trigger at a ref; its SUCCESS then flows through on_build."""
        spec, grants = self.grants(command.service, command.environment)
        if spec is None:
            return self._refuse(command, Refused("not_found", f"no spec for {command.service} in environment "
                                                              f"{command.environment}; nothing deployed"))
        denial = access.check(command.actor, "deployment:create", spec.key, grants, self.config.admins, hosted_domain)
        if denial is not None:
            return self._denied(command, denial, "nothing deployed")
        trigger = (spec.triggers or [spec.match.trigger if spec.match else None])[0]
        if not trigger:
            return self._refuse(command, Refused("invalid_request", f"{spec.key} names no Cloud Build trigger "
                                                 f"(`triggers:` or `match.trigger`); nothing deployed"))
        earlier = self.store.command(command.id)
        if earlier and earlier.get("build_id") and earlier.get("actor") == command.actor:  # a redelivery
            log("INFO", f"deploy {command.id} already started build {earlier['build_id']}; nothing changed")
            return Done(build={"id": earlier["build_id"], "logUrl": earlier.get("log_url")})
        from google.api_core import exceptions

        source = routing.ref_source(command.ref, spec)
        mismatch = routing.ref_refusal(source, spec)
        if mismatch:
            return self._refuse(command, Refused("invalid_request", f"deploy refused: {mismatch}; nothing deployed"))
        try:
            build = self._adapter("cloudbuild").run_trigger(
                self.config.build_project, trigger, **source,
                substitutions={"_SERVICE": spec.service, "_ENVIRONMENT": spec.environment})
        except (exceptions.NotFound, exceptions.InvalidArgument, exceptions.PermissionDenied) as err:
            # Retrying cannot help: say what Cloud Build answered instead of redelivering forever.
            return self._refuse(command, Refused("invalid_request", f"Cloud Build refused to run trigger {trigger} of "
                                                 f"project {self.config.build_project} at {command.ref}: "
                                                 f"{getattr(err, 'message', err)}; nothing deployed"))
        self.store.record_command(command.id, {
            "action": "deploy", "actor": command.actor, "verified": True, "service": spec.service,
            "environment": spec.environment, "ref": command.ref, "outcome": "build_started",
            "build_id": build["id"], "log_url": build.get("logUrl"), "at": self.clock()})
        self.store.record_deploy(build["id"], {
            "actor": command.actor, "service": spec.service, "environment": spec.environment, "ref": command.ref,
            "trigger": trigger, "command": command.id, "log_url": build.get("logUrl"), "at": self.clock()})
        log("NOTICE", f"{command.actor} deploys {spec.key} at {command.ref}: build {build['id']} of trigger "
                      f"{trigger} started", build_id=build["id"], service=spec.service)
        return Done(build=build)

    def _rollback_to(self, command: Command, hosted_domain: str | None = None) -> Reply:
        """Straight to an earlier good version, in every region of the one environment named."""
        if command.rollout_id:
            named = self.store.rollout(command.rollout_id)
            records = [self.store.service(named.service, named.region, named.environment)] if named else []
        else:
            records = [s for s in self.store.services_of(command.service, command.region)
                       if command.environment in (None, s.get("environment"))]
        records = [r for r in records if r]
        environments = sorted({r.get("environment") for r in records})
        if not records:
            return self._refuse(command, Refused("not_found", f"pitstop has never deployed "
                                                              f"{command.service or command.rollout_id}"
                                                              f"{' there' if command.region else ''}; nothing changed"))
        if len(environments) > 1:
            return self._refuse(command, Refused(
                "conflict", f"{command.service} runs in {len(environments)} environments; name one with "
                            f"--environment; nothing changed", candidates=tuple(environments)))
        service, environment = records[0]["service"], environments[0]
        denial = self.authorize(command.actor, "rollout:operate", service, environment, hosted_domain)
        if denial is not None:
            return self._denied(command, denial)
        done = Done()
        for record in records:
            region = record["region"]
            target = self.store.find_version(service, region, environment, command.to_version)
            if target is None:
                log("ERROR", f"rollback of {service} ({environment}) in {region} to {command.to_version}: no "
                             f"successful rollout of that version is recorded; nothing changed",
                    service=service, region=region)
                continue
            done.outcomes.append(self._start_direct(command, record, target))
        if not done.outcomes:
            return self._refuse(command, Refused("not_found", f"no successful rollout of {service} at version "
                                                              f"{command.to_version} is recorded; nothing changed"))
        return done

    def _start_direct(self, command: Command, record: dict, target: Rollout) -> tuple[str, Outcome]:
        rollout_id = rollout_key(target.service, target.environment, target.region, command.id[-12:])
        now = self.clock()

        def begin(current, active: Rollout | None):
            new = machine.start_direct(rollout_id, target.service, target.environment, target.region,
                                       target.project, target.version, target.revision, target.image,
                                       (current or {}).get("stable_revision"), (current or {}).get("stable_version"),
                                       now, command.id, command.actor, target)
            old = None
            if active is not None:
                old = machine.decide(active, Superseded(id=f"superseded-by-{rollout_id}", by_rollout=rollout_id,
                                                        by_version=target.version), now)
            return new, old

        outcome = self.store.start(rollout_id, target.service, target.region, target.environment, begin)
        self._act_started(outcome)
        return rollout_id, outcome

    def _act_started(self, outcome: Outcome) -> None:
        if outcome.superseded is not None:  # its notification; the successor's split takes its traffic
            self._act(outcome.superseded, outcome.superseded_hash)
        if outcome.decision is not None:
            self._act(outcome.decision, outcome.event_hash)

    # ------------------------------------------------------------ ticks: deadlines, reconcile, sample

    def on_tick(self, tick: Tick) -> None:
        """One query for what is due; each due rollout handled on its own, a few at a time."""
        now = self.clock()
        due = self.store.due(now)
        finished = self.store.finished_between(now - RECENTLY_FINISHED[0], now - RECENTLY_FINISHED[1])
        with ThreadPoolExecutor(TICK_CONCURRENCY) as pool:
            list(pool.map(lambda item: self._isolated(item[0], self._tick_one, item[0], item[1], tick, now), due))
            list(pool.map(lambda r: self._isolated(r, self._reconcile_finished, r, now), finished))
        drain.arm(due, now)  # while a rollout is watched, the request-log drain runs every 5 s (pitstop/drain.py)
        self._sync_releases(now)

    def _isolated(self, r: Rollout, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception as err:  # one stuck rollout must not starve the others; the next tick retries it
            log("ERROR", f"tick could not handle rollout {r.id}: {err!r}", **rollout_fields(r))

    def _tick_one(self, rollout: Rollout, snap: Any, tick: Tick, now: datetime) -> None:
        outcome = self.handle(rollout.id, tick, snap)
        r = outcome.decision.rollout if outcome.decision is not None else rollout
        if r.state in TERMINAL:
            return
        self._reconcile(r, now)
        if self._metrics_factory is not None:
            self._sample(r, now)

    def _reconcile_finished(self, r: Rollout, now: datetime) -> None:
        """A rollout that just finished still owns the service's traffic unless a newer one took over."""
        record = self.store.service(r.service, r.region, r.environment) or {}
        if record.get("last_rollout") == r.id and not record.get("active_rollout"):
            self._reconcile(r, now)

    def _reconcile(self, r: Rollout, now: datetime) -> None:
        """Read what Cloud Run really serves; the machine decides what to make of it (`Observed`)."""
        if r.state in ("superseded", "failed"):
            return  # the successor owns the traffic; a failed rollout waits for a person
        if not r.applied and now < r.desired_at + timedelta(seconds=RECONCILE_AFTER):
            return  # its applier may still be at work
        traffic = self.cloudrun.traffic(r.project, r.region, r.service)
        if traffic is None:
            return
        seen = "|".join(f"{t.revision}:{t.percent}:{t.tag}" for t in traffic.split)
        observed_id = f"observed-g{r.desired_generation}-{hashlib.sha256(seen.encode()).hexdigest()[:12]}"
        observed = Observed(id=observed_id, split=traffic.split, settled=traffic.settled)
        # Mostly Cloud Run serves what was decided: judged on the rollout the tick just read, that costs no
        # Firestore read or write. Only a reading that changes something goes through the store.
        if machine.decide(r, observed, self.clock()).audit is not None:
            self.handle(r.id, observed)

    def _sample(self, r: Rollout, now: datetime) -> None:
        """Read Monitoring over the windows the sampler policy names; publish what can change a decision."""
        from dataclasses import replace

        from pitstop.gcp.metrics import MetricQueryRefused, MetricsUnavailable

        windows = sampling.windows(r, now, self.config.health_lag)
        if windows is None:
            return
        revisions = [r.revision] + ([r.stable_revision] if r.stable_revision else [])
        read = {}
        refused: dict[str, MetricQueryRefused] = {}
        try:
            self._metrics = self._metrics or self._metrics_factory()
            for window in dict.fromkeys(windows):  # the recent window may be the whole one
                read[window] = self._metrics.revision_health(r.project, r.region, r.service, revisions,
                                                             window.start, window.end)
                if r.health.metrics:  # one list call per custom metric; none for a spec that declares none
                    custom = self._metrics.custom_values(r.project, r.region, r.service, revisions, window.start,
                                                         window.end, r.health.metrics,
                                                         on_refused=lambda e: refused.setdefault(e.metric, e))
                    read[window] = {rev: replace(h, metrics=custom.get(rev, {})) for rev, h in read[window].items()}
        except MetricsUnavailable as err:
            log("WARNING", f"health of {r.service} not sampled: {err}. Not a verdict; retried next tick.",
                **rollout_fields(r))
            return
        for err in refused.values():
            # The spec is wrong, not Monitoring: asking again will not help. The other measures are still
            # published; this metric has no value in them, so its condition cannot be judged (never a pass on
            # no data): the step waits, then pauses at no_data_timeout, until the spec is fixed and applied again.
            log("ERROR", f"{err}. Until the spec's query is fixed, custom metric {err.metric!r} of {r.service} has "
                         f"no value: its condition cannot be judged and never passes, so the step waits and pauses "
                         f"at no_data_timeout; the other measures are still sampled.", **rollout_fields(r))
        whole, recent = (sampling.sample_of(r, w, read[w].get(r.revision), read[w].get(r.stable_revision))
                         for w in windows)
        for sample in sampling.to_publish(r, whole, recent):
            self.publish_sample(sample)

    def publish_sample(self, sample: HealthSample) -> None:
        """A sample of pitstop's own (the tick's sampler, the request-log drain) on the health topic, signed like
        any sender's: on_health trusts pitstop's own identity (PITSTOP_SAMPLER_IDENTITY), and the token names this
        payload's digest, so it proves nothing for any other message."""
        from pitstop.core import messages

        payload = sample.model_dump(mode="json", exclude={"kind", "id"}, exclude_none=True)
        token = self._adapter("tokens")(f"{self.config.audiences[0]}#{messages.payload_digest(payload)}")
        self.bus.publish(self.config.health_topic, {**payload, "id_token": token})

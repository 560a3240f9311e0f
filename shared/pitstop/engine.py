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

from pitstop.core import machine, routing, sampling
from pitstop.core.models import (
    TERMINAL, Alert, Applied, ApplyFailed, ApplyTraffic, BuildFinished, Command, HealthSample, Input,
    Notify, Observed, RECONCILE_AFTER, Rollout, Superseded, Tick,
)
from pitstop.core.spec import describe_source, matches
from pitstop.gcp.store import Outcome, Store
from pitstop.log import log, rollout_fields

if TYPE_CHECKING:
    from pitstop.gcp.bus import Bus
    from pitstop.gcp.cloudrun import CloudRun
    from pitstop.config import Config
    from pitstop.gcp.metrics import Metrics

IGNORED_BUILD_STATES = {"STATUS_UNKNOWN", "PENDING", "QUEUED", "WORKING"}
TICK_CONCURRENCY = 8  # due rollouts handled at once by one tick (each mostly waits on I/O)
RECENTLY_FINISHED = (timedelta(seconds=120), timedelta(seconds=60))  # checked for drift once, about a minute after


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rollout_key(service: str, environment: str, region: str, started_by: str) -> str:
    """Rollout ids derive from what started them (build id, command id): a redelivery finds its rollout."""
    return f"{service}-{environment}-{region}-" + "".join(c for c in started_by.lower() if c.isalnum())



class Engine:
    def __init__(self, config: Config, store: Store, cloudrun: Callable[[], CloudRun], bus: Bus,
                 metrics: Callable[[], Metrics] | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config, self.store, self.bus, self.clock = config, store, bus, clock
        self._cloudrun_factory, self._metrics_factory = cloudrun, metrics
        self._cloudrun: CloudRun | None = None
        self._metrics: Metrics | None = None

    @property
    def cloudrun(self) -> CloudRun:
        if self._cloudrun is None:
            self._cloudrun = self._cloudrun_factory()
        return self._cloudrun

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
            self._act(outcome.decision)
        return outcome

    def _act(self, decision: machine.Decision) -> None:
        r, audit = decision.rollout, decision.audit
        if audit is not None:
            log("INFO", f"{r.service} {r.version}: {audit.decision} ({r.state}). " + " ".join(audit.reasons),
                decision=audit.decision, state=r.state, input=audit.input, input_id=audit.id,
                traffic=audit.traffic_after, **rollout_fields(r))
        for effect in decision.effects:
            if isinstance(effect, Notify):
                self._notify(r, effect)
            elif isinstance(effect, ApplyTraffic):
                self._apply(r, effect)

    def _notify(self, r: Rollout, note: Notify) -> None:
        log(note.severity, note.message, state=r.state, **rollout_fields(r))
        self._publish_event({
            "rollout_id": r.id, "service": r.service, "environment": r.environment, "region": r.region,
            "version": r.version, "state": r.state, "severity": note.severity, "message": note.message,
            "reason": note.reason.code, "values": note.reason.values, "at": self.clock().isoformat(),
        }, rollout_id=r.id, severity=note.severity)

    def _publish_event(self, event: dict[str, Any], **attributes: str) -> None:
        try:
            self.bus.publish(self.config.events_topic, event, **attributes)
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

    def on_build(self, build: BuildFinished) -> None:
        where = f"build {build.build_id} ({describe_source(build)})"
        if build.status in IGNORED_BUILD_STATES:
            log("INFO", f"{where} is {build.status}: waiting for it to finish", build_id=build.build_id)
            return
        keys = routing.build_keys(build.repo, build.trigger, build.trigger_id)
        specs = [s for s in self.store.specs_for(keys) if matches(s, build)]
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
        self.store.put_artifact(build.artifact)
        for spec in specs:
            for region in spec.regions:
                self._start(spec, region, build)

    def _start(self, spec, region: str, build: BuildFinished) -> None:
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
            why = routing.older_build(artifact, record, active)
            if why:
                refused.append(why)
                return None, None
            stable = (record or {}).get("stable_revision") or serving
            stable_version = (record or {}).get("stable_version") or serving
            new = machine.start(spec, region, project, artifact, rollout_id, stable, stable_version, now, build.id)
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
        if new and outcome in ("failed", "rejected", "refused"):  # once per build, however often delivered
            self._publish_event({"build_id": build.build_id, "severity": severity, "outcome": outcome,
                                 "message": message, "log_url": build.log_url}, severity=severity)

    # ------------------------------------------------------------ health, alerts, commands

    def on_health(self, sample: HealthSample) -> None:
        if sample.rollout_id:
            targets = [sample.rollout_id]
        else:
            rollouts = self.store.active_rollouts(sample.service, sample.region)
            targets = routing.health_targets(sample.revision, None, rollouts) or [r.id for r in rollouts]
        if not targets:
            log("WARNING", f"health sample for {sample.service}/{sample.revision} in {sample.region}: no rollout "
                           f"in progress; ignored", service=sample.service, region=sample.region)
        for rollout_id in targets:
            self.handle(rollout_id, sample)

    def on_alert(self, alert: Alert) -> None:
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

    def on_command(self, command: Command) -> None:
        if command.action == "rollback" and command.to_version:
            self._rollback_to(command)
            return
        if command.rollout_id:
            self.handle(command.rollout_id, command)
            return
        targets = routing.command_targets(command, self.store.services_of(command.service, command.region))
        if isinstance(targets, routing.Refusal):
            self._refuse(command, targets)
            return
        for rollout_id in targets:
            self.handle(rollout_id, command)

    def _refuse(self, command: Command, refusal: routing.Refusal) -> None:
        log("ERROR", f"{command.action} by {command.actor} refused: {refusal.reason}",
            candidates=list(refusal.candidates) or None, service=command.service)
        self.store.record_command(command.id, {
            "action": command.action, "actor": command.actor, "service": command.service,
            "environment": command.environment, "region": command.region, "outcome": "refused",
            "reason": refusal.reason, "candidates": list(refusal.candidates), "at": self.clock()})

    def _rollback_to(self, command: Command) -> None:
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
            self._refuse(command, routing.Refusal(f"pitstop has never deployed {command.service or command.rollout_id}"
                                                  f"{' there' if command.region else ''}; nothing changed"))
            return
        if len(environments) > 1:
            self._refuse(command, routing.Refusal(
                f"{command.service} runs in {len(environments)} environments; name one with --environment; "
                f"nothing changed", tuple(environments)))
            return
        for record in records:
            service, region, environment = record["service"], record["region"], record["environment"]
            target = self.store.find_version(service, region, environment, command.to_version)
            if target is None:
                log("ERROR", f"rollback of {service} ({environment}) in {region} to {command.to_version}: no "
                             f"successful rollout of that version is recorded; nothing changed",
                    service=service, region=region)
                continue
            self._start_direct(command, record, target)

    def _start_direct(self, command: Command, record: dict, target: Rollout) -> None:
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

        self._act_started(self.store.start(rollout_id, target.service, target.region, target.environment, begin))

    def _act_started(self, outcome: Outcome) -> None:
        if outcome.superseded is not None:  # its notification; the successor's split takes its traffic
            self._act(outcome.superseded)
        if outcome.decision is not None:
            self._act(outcome.decision)

    # ------------------------------------------------------------ ticks: deadlines, reconcile, sample

    def on_tick(self, tick: Tick) -> None:
        """One query for what is due; each due rollout handled on its own, a few at a time."""
        now = self.clock()
        due = self.store.due(now)
        finished = self.store.finished_between(now - RECENTLY_FINISHED[0], now - RECENTLY_FINISHED[1])
        with ThreadPoolExecutor(TICK_CONCURRENCY) as pool:
            list(pool.map(lambda item: self._isolated(item[0], self._tick_one, item[0], item[1], tick, now), due))
            list(pool.map(lambda r: self._isolated(r, self._reconcile_finished, r, now), finished))

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
        from pitstop.gcp.metrics import MetricsUnavailable

        windows = sampling.windows(r, now, self.config.health_lag)
        if windows is None:
            return
        revisions = [r.revision] + ([r.stable_revision] if r.stable_revision else [])
        read = {}
        try:
            self._metrics = self._metrics or self._metrics_factory()
            for window in dict.fromkeys(windows):  # the recent window may be the whole one
                read[window] = self._metrics.revision_health(r.project, r.region, r.service, revisions,
                                                             window.start, window.end)
        except MetricsUnavailable as err:
            log("WARNING", f"health of {r.service} not sampled: {err}. Not a verdict; retried next tick.",
                **rollout_fields(r))
            return
        whole, recent = (sampling.sample_of(r, w, read[w].get(r.revision), read[w].get(r.stable_revision))
                         for w in windows)
        for sample in sampling.to_publish(r, whole, recent):
            self.bus.publish(self.config.health_topic, sample.model_dump(mode="json", exclude={"kind", "id"},
                                                                        exclude_none=True))

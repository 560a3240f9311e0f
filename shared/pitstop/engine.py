"""The shell around `decide`: find the rollout an input names, decide and store it in one
atomic Firestore write, then carry out the effects (Cloud Run traffic, events).

One loop of clear phases per input: route -> transact -> act. Cloud Run results
come back in as inputs (`Applied`, `ApplyFailed`), so every consequence of an
effect is itself decided, recorded and explained.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable

from pitstop.core import machine
from pitstop.log import log, rollout_fields
from pitstop.core.models import (
    Alert, Applied, ApplyFailed, ApplyTraffic, BuildFinished, Command, HealthSample, Input, Notify, Rollout,
    Superseded, Tick,
)
from pitstop.core.spec import describe_source, matches
from pitstop.gcp.store import Outcome, Store

if TYPE_CHECKING:
    from pitstop.gcp.bus import Bus
    from pitstop.gcp.cloudrun import CloudRun
    from pitstop.config import Config
    from pitstop.gcp.metrics import Metrics

IGNORED_BUILD_STATES = {"STATUS_UNKNOWN", "PENDING", "QUEUED", "WORKING"}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rollout_key(service: str, environment: str, region: str, started_by: str) -> str:
    """Rollout ids derive from what started them (build id, command id): a redelivery finds its rollout."""
    return f"{service}-{environment}-{region}-" + "".join(c for c in started_by.lower() if c.isalnum())


def _newer(active: Rollout, artifact) -> bool:
    """Is the rollout in progress built later than this artifact? (Pub/Sub does not keep order.)"""
    mine, theirs = artifact.created_at, active.artifact.created_at if active.artifact else None
    return bool(mine and theirs and theirs > mine)


class Engine:
    def __init__(self, config: Config, store: Store, cloudrun: Callable[[], CloudRun], bus: Bus,
                 metrics: Callable[[], Metrics] | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config, self.store, self.bus, self.clock = config, store, bus, clock
        self._cloudrun_factory, self._metrics_factory = cloudrun, metrics
        self._cloudrun: CloudRun | None = None

    @property
    def cloudrun(self) -> CloudRun:
        if self._cloudrun is None:
            self._cloudrun = self._cloudrun_factory()
        return self._cloudrun

    # ------------------------------------------------------------ the core loop

    def handle(self, rollout_id: str, inp: Input) -> Outcome:
        now = self.clock()
        outcome = self.store.apply(rollout_id, inp.id, lambda r: machine.decide(r, inp, now))
        if outcome.missing:
            log("WARNING", f"{inp.kind} input {inp.id} names rollout {rollout_id}, which does not exist; ignored",
                rollout_id=rollout_id)
        elif outcome.duplicate:
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
        try:
            self.bus.publish(self.config.events_topic, {
                "rollout_id": r.id, "service": r.service, "region": r.region, "version": r.version,
                "state": r.state, "severity": note.severity, "message": note.message, "at": self.clock().isoformat(),
            }, rollout_id=r.id, severity=note.severity)
        except Exception as err:  # a lost notification must not undo a decision already stored
            log("ERROR", f"could not publish event to {self.config.events_topic}: {err}", **rollout_fields(r))

    def _apply(self, r: Rollout, effect: ApplyTraffic) -> None:
        gen, split, create = effect.generation, effect.split, effect.create_revision
        for _ in range(3):
            try:
                observed = self.cloudrun.apply(r.project, r.region, r.service, split,
                                               revision=r.revision if create else None, image=r.image)
            except Exception as err:  # CloudRunError, or a transport failure of any kind
                permanent = getattr(err, "permanent", False)
                self.handle(r.id, ApplyFailed(id=f"apply-failed-g{gen}-a{r.apply_attempts}", generation=gen,
                                              error=str(err), permanent=permanent))
                return
            outcome = self.handle(r.id, Applied(id=f"applied-g{gen}", generation=gen, observed=observed))
            if outcome.stored and outcome.decision.audit.decision != "ignored":
                return
            # A newer split was decided while ours was in flight; ours may have overwritten it.
            current = self.store.rollout(r.id)
            if current is None or current.desired_generation == gen:
                return
            r, gen, split, create = current, current.desired_generation, current.desired, False

    # ------------------------------------------------------------ builds

    def on_build(self, build: BuildFinished) -> None:
        where = f"build {build.build_id} ({describe_source(build)})"
        if build.status in IGNORED_BUILD_STATES:
            log("INFO", f"{where} is {build.status}: waiting for it to finish", build_id=build.build_id)
            return
        specs = [s for s in self.store.specs() if matches(s, build)]
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
            if active is not None and _newer(active, artifact):
                refused.append(f"build {build.build_id} (created {artifact.created_at:%H:%M:%S}) is older than "
                               f"the rollout in progress {active.id} of version {active.version}; not deployed")
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
            self._record_build(build, "ignored", refused[0][:1].upper() + refused[0][1:] + ".", "WARNING")
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
        if new and outcome in ("failed", "rejected"):  # one notification per build, however often delivered
            try:
                self.bus.publish(self.config.events_topic, {"build_id": build.build_id, "severity": severity,
                                                            "message": message}, severity=severity)
            except Exception as err:
                log("ERROR", f"could not publish event to {self.config.events_topic}: {err}")

    # ------------------------------------------------------------ health, alerts, commands

    def on_health(self, sample: HealthSample) -> None:
        if sample.rollout_id:
            targets = [sample.rollout_id]
        else:
            rollouts = self.store.active_rollouts(sample.service, sample.region)
            # Environments in other projects share service names: judge the rollout the revision belongs to.
            mine = [r for r in rollouts if sample.revision in (r.revision, r.stable_revision)]
            targets = [r.id for r in mine or rollouts]
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
        rollouts = self.store.active_rollouts(command.service, command.region)
        if not rollouts:
            log("ERROR", f"{command.action} for {command.service}: no rollout in progress; nothing changed",
                service=command.service)
        for rollout in rollouts:
            self.handle(rollout.id, command)

    def _rollback_to(self, command: Command) -> None:
        """Straight to an earlier good version, in every region (and environment) named."""
        if command.rollout_id:
            named = self.store.rollout(command.rollout_id)
            records = [self.store.service(named.service, named.region, named.environment)] if named else []
        else:
            records = [s for s in self.store.services() if s.get("service") == command.service
                       and command.region in (None, s.get("region"))]
        if not records:
            log("ERROR", f"rollback of {command.service or command.rollout_id}: pitstop has never deployed it; "
                         f"nothing changed")
        for record in filter(None, records):
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

    # ------------------------------------------------------------ ticks

    def on_tick(self, tick: Tick) -> None:
        now = self.clock()
        for rollout in self.store.due(now):
            try:
                self.handle(rollout.id, tick)
            except Exception as err:  # one stuck rollout must not starve the others; the next tick retries it
                log("ERROR", f"tick could not handle rollout {rollout.id}: {err!r}", **rollout_fields(rollout))
        if self._metrics_factory is not None:
            self._sample(now)

    def _sample(self, now: datetime) -> None:
        """Publish a health sample per watched revision over its current step's window."""
        from pitstop.gcp.metrics import MetricsUnavailable

        end = now - timedelta(seconds=self.config.health_lag)
        metrics = None
        for r in self.store.watched():
            if r.step_started_at is None or end <= r.step_started_at:
                continue
            revisions = [r.revision] + ([r.stable_revision] if r.stable_revision else [])
            try:
                metrics = metrics or self._metrics_factory()
                health = metrics.revision_health(r.project, r.region, r.service, revisions, r.step_started_at, end)
            except MetricsUnavailable as err:
                log("WARNING", f"health of {r.service} not sampled: {err}. Not a verdict; retried next tick.",
                    **rollout_fields(r))
                continue
            for revision in reversed(revisions):  # stable first: the canary's verdict compares against it
                h = health.get(revision)
                if h is None or not h.has_data:  # no traffic is no data: nothing to publish
                    continue
                self.bus.publish(self.config.health_topic, {
                    "service": r.service, "region": r.region, "revision": revision, "rollout_id": r.id,
                    "window_start": r.step_started_at.isoformat(), "window_end": end.isoformat(),
                    "request_count": h.request_count, "error_count": h.error_count,
                    "latency_p50_ms": h.latency_p50_ms, "latency_p95_ms": h.latency_p95_ms,
                    "latency_p99_ms": h.latency_p99_ms, "source": "cloud-monitoring",
                })

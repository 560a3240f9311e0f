"""Firestore: rollout state and its append-only audit trail, written together.

Collections, each readable in the Firestore console:
  specs/{service}--{environment}        the registered rollout specs
  rollouts/{id}                          current state of one rollout
  rollouts/{id}/events/{input id}        audit: input, decision, reasons, traffic
  services/{service}--{env}--{region}    active rollout, stable revision, last outcome
  artifacts/{sha256-…}                   image, digest, build, commit
  builds/{build id}                      builds that started nothing, and why
  deploys/{build id}                     who ran `pitstop deploy` for a build
  commands/{command id}                  commands refused (unverified, no permission, no target), and why
  access/project                         project-wide role grants
  pipelines/{service}                    a service's pipeline (its environments are specs too)
  releases/{id}                          one artifact through environments and regions (core/release.py)
  releases/{id}/events/{input id}        its audit, chained like a rollout's

Every state change and its audit event commit in one atomic batch keyed by the
input id, so a redelivered input finds its event and changes nothing.

The audit trail is a hash chain (`pitstop.core.audit`): each event is sealed with
its seq and the hash of the event before it, and the rollout document keeps the
head (`audit_seq`, `audit_head`), written in the event's batch under the rollout's
update-time precondition, so one rollout's chain has no races and costs no extra
read or write. A rollout written before chaining starts its chain at its next event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from pitstop.core import audit
from pitstop.core.models import STORE_BOOKKEEPING, TERMINAL, WATCHED, Access, Artifact, AuditEvent, Rollout, RolloutSpec

if TYPE_CHECKING:
    from google.cloud import firestore

    from pitstop.core.machine import Decision
    from pitstop.core.pipeline import Pipeline
    from pitstop.core.release import Release, ReleaseDecision


MAX_ATTEMPTS = 20
SPEC_BOOKKEEPING = ("applied_at", "applied_by", "match_repo", "match_keys")


class Contention(RuntimeError):
    """Too many concurrent changes in a row; the input is redelivered and tried again."""


@dataclass(frozen=True)
class Outcome:
    """What a write did: the decision it stored, or why it stored none."""

    decision: Decision | None
    duplicate: bool = False
    missing: bool = False
    superseded: Decision | None = None  # the rollout a new one replaced, by `start`
    rollout: Rollout | None = None  # as read before deciding (for a duplicate: the state its decision left)
    event_hash: str | None = None  # the hash of the audit event this write stored (its place in the chain)
    superseded_hash: str | None = None  # and of the superseded rollout's last event, by `start`

    @property
    def stored(self) -> bool:
        return self.decision is not None and self.decision.audit is not None


def service_key(service: str, region: str, environment: str = "production") -> str:
    """One Cloud Run service of one environment (its own project) in one region."""
    return f"{service}--{environment}--{region}"


def service_after(record: dict[str, Any] | None, rollout: Rollout) -> dict[str, Any]:
    """The services/{key} document once `rollout` has changed state (pure)."""
    record = dict(record or {})
    record.update(service=rollout.service, region=rollout.region, environment=rollout.environment,
                  project=rollout.project, last_rollout=rollout.id, last_version=rollout.version,
                  last_state=rollout.state, updated_at=rollout.updated_at)
    if rollout.state == "succeeded":
        record.update(stable_revision=rollout.revision, stable_version=rollout.version, stable_image=rollout.image,
                      stable_created_at=rollout.artifact.created_at if rollout.artifact else None)
    if rollout.state in TERMINAL:
        if record.get("active_rollout") == rollout.id:
            record["active_rollout"] = None
    else:
        record["active_rollout"] = rollout.id
    return record


class Store:
    def __init__(self, client: firestore.Client) -> None:
        self.db = client

    @classmethod
    def from_env(cls, project: str) -> Store:
        from google.cloud import firestore  # late: keeps cold start small

        return cls(firestore.Client(project=project))

    # ------------------------------------------------------------ specs

    def put_spec(self, spec: RolloutSpec, actor: str, now: datetime) -> None:
        from pitstop.core.routing import match_keys

        doc = spec.model_dump(mode="json", exclude_none=True)
        doc.update(applied_at=now, applied_by=actor, match_keys=match_keys(spec))
        self.db.collection("specs").document(spec.key).set(doc)

    def spec(self, service: str, environment: str) -> RolloutSpec | None:
        snap = self.db.collection("specs").document(f"{service}--{environment}").get()
        return (self._parse_specs([snap]) or [None])[0] if snap.exists else None

    def project_access(self) -> Access | None:
        """The project-wide grants (`access/project`), applied with `pitstop access apply`."""
        snap = self.db.collection("access").document("project").get()
        if not snap.exists:
            return None
        doc = {k: v for k, v in snap.to_dict().items() if k not in SPEC_BOOKKEEPING}
        return Access.model_validate(doc, strict=False)

    def put_access(self, grants: Access, actor: str, now: datetime) -> None:
        self.db.collection("access").document("project").set({**grants.model_dump(), "applied_at": now,
                                                              "applied_by": actor})

    def record_deploy(self, build_id: str, doc: dict[str, Any]) -> None:
        """Who asked for a build (`pitstop deploy`): the rollout it starts names them as its starter."""
        self.db.collection("deploys").document(build_id).set(doc)

    def deploy_request(self, build_id: str) -> dict[str, Any] | None:
        snap = self.db.collection("deploys").document(build_id).get()
        return snap.to_dict() if snap.exists else None

    def specs(self) -> list[RolloutSpec]:
        return self._parse_specs(self.db.collection("specs").stream())

    def specs_for(self, keys: list[str]) -> list[RolloutSpec]:
        """Only the specs a build with these index keys can match (`routing.build_keys`)."""
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("specs").where(filter=FieldFilter("match_keys", "array_contains_any", keys[:30]))
        return self._parse_specs(query.stream())

    def _parse_specs(self, snaps: Any) -> list[RolloutSpec]:
        from pydantic import ValidationError

        from pitstop.log import log

        out = []
        for snap in snaps:
            doc = {k: v for k, v in snap.to_dict().items() if k not in SPEC_BOOKKEEPING}
            try:
                out.append(RolloutSpec.model_validate(doc, strict=False))  # stored as JSON-mode values ("5m")
            except ValidationError as err:  # one bad document must not stop every other service's builds
                log("ERROR", f"stored spec {snap.id} is invalid and is skipped: {err.error_count()} problem(s), "
                             f"first: {err.errors()[0]['msg']}. Fix it with `pitstop apply`.", spec=snap.id)
        return out

    # ------------------------------------------------------------ pipelines

    def put_pipeline(self, pipeline: Pipeline, actor: str, now: datetime) -> None:
        """The pipeline and a spec per environment, in one batch: grants and deploys read the specs."""
        from pitstop.core.routing import match_keys

        batch = self.db.batch()
        doc = pipeline.model_dump(mode="json", exclude_none=True, by_alias=True)
        doc.update(applied_at=now, applied_by=actor, match_keys=pipeline.match_keys())
        batch.set(self.db.collection("pipelines").document(pipeline.service), doc)
        from google.cloud.firestore_v1 import FieldFilter

        kept = {spec.key for spec in pipeline.specs()}
        earlier = self.db.collection("specs").where(filter=FieldFilter("service", "==", pipeline.service))
        for snap in earlier.stream():  # an environment the pipeline no longer has: its spec goes too
            if snap.id not in kept and (snap.to_dict() or {}).get("pipeline"):
                batch.delete(snap.reference)
        for spec in pipeline.specs():
            spec_doc = spec.model_dump(mode="json", exclude_none=True)
            spec_doc.update(applied_at=now, applied_by=actor, match_keys=match_keys(spec))
            batch.set(self.db.collection("specs").document(spec.key), spec_doc)
        batch.commit()

    def pipeline(self, service: str) -> Pipeline | None:
        snap = self.db.collection("pipelines").document(service).get()
        return (self._parse_pipelines([snap]) or [None])[0] if snap.exists else None

    def pipelines_for(self, keys: list[str]) -> list[Pipeline]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("pipelines").where(filter=FieldFilter("match_keys", "array_contains_any",
                                                                         keys[:30]))
        return self._parse_pipelines(query.stream())

    def _parse_pipelines(self, snaps: Any) -> list[Pipeline]:
        from pydantic import ValidationError

        from pitstop.core.pipeline import Pipeline
        from pitstop.log import log

        out = []
        for snap in snaps:
            doc = {k: v for k, v in snap.to_dict().items() if k not in SPEC_BOOKKEEPING}
            try:
                out.append(Pipeline.model_validate(doc, strict=False))
            except ValidationError as err:
                log("ERROR", f"stored pipeline {snap.id} is invalid and is skipped: {err.errors()[0]['msg']}. Fix "
                             f"it with `pitstop apply`.", pipeline=snap.id)
        return out

    # ------------------------------------------------------------ releases

    def release(self, release_id: str) -> Release | None:
        snap = self.db.collection("releases").document(release_id).get()
        return _release(snap.to_dict()) if snap.exists else None

    def releases(self, service: str | None = None, limit: int = 20) -> list[Release]:
        from google.cloud import firestore
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("releases")
        if service:
            query = query.where(filter=FieldFilter("service", "==", service))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [_release(s.to_dict()) for s in query.stream()]

    def release_events(self, release_id: str) -> list[AuditEvent]:
        ref = self.db.collection("releases").document(release_id)
        return [AuditEvent.model_validate(s.to_dict()) for s in ref.collection("events").order_by("at").stream()]

    def due_releases(self, now: datetime, limit: int = 100) -> list[Release]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("releases").where(filter=FieldFilter("due_at", "<=", now)).order_by("due_at")
        return [_release(s.to_dict()) for s in query.limit(limit).stream()]

    def synced_release(self, release_id: str, now: datetime) -> None:
        """A tick looked at a release and nothing changed: bookkeeping only (no audit event), so that it is due
        again in RESYNC seconds, not on every tick."""
        from google.api_core import exceptions

        ref = self.db.collection("releases").document(release_id)
        snap = ref.get()
        if snap.exists:
            due = _release(snap.to_dict()).model_copy(update={"synced_at": now}).due_at
            try:
                ref.update({"synced_at": now, "due_at": due},
                           option=self.db.write_option(last_update_time=snap.update_time))
            except exceptions.FailedPrecondition:
                pass  # it changed meanwhile: that write set its due time

    def apply_release(self, release_id: str, input_id: str,
                      decide: Callable[[Release | None], ReleaseDecision | None]) -> Outcome:
        """Load (None if there is none yet), decide, store the release and its audit event atomically. As
        `apply` for rollouts: optimistic, a known input id does nothing, `decide` may create the release."""
        from google.api_core import exceptions

        ref = self.db.collection("releases").document(release_id)
        for attempt in range(MAX_ATTEMPTS):
            snap = ref.get()
            before = _release(snap.to_dict()) if snap.exists else None
            decision = decide(before)
            if decision is None or decision.audit is None:
                return Outcome(decision)
            batch = self.db.batch()
            link = audit.next_link(snap.to_dict() if snap.exists else None)
            event = audit.seal(decision.audit.to_doc(), *link)
            doc = _full(decision.release) if decision.audit.decision != "ignored" else {"last_input": input_id}
            doc.update(audit_seq=event["seq"], audit_head=event["hash"])
            if snap.exists:
                batch.update(ref, doc, option=self.db.write_option(last_update_time=snap.update_time))
            else:
                batch.create(ref, doc)
            batch.create(ref.collection("events").document(decision.audit.id), event)
            try:
                if self._commit(batch, attempt):
                    return Outcome(decision, event_hash=event["hash"])
            except exceptions.AlreadyExists:
                if snap.exists:
                    return Outcome(None, duplicate=True)
                # a twin created the release first: decide again on it
        raise Contention(f"release {release_id} changed under input {input_id} {MAX_ATTEMPTS} times in a row")

    # ------------------------------------------------------------ reads

    def rollout(self, rollout_id: str) -> Rollout | None:
        snap = self.db.collection("rollouts").document(rollout_id).get()
        return Rollout.from_doc(snap.to_dict()) if snap.exists else None

    def service(self, service: str, region: str, environment: str = "production") -> dict[str, Any] | None:
        snap = self.db.collection("services").document(service_key(service, region, environment)).get()
        return snap.to_dict() if snap.exists else None

    def services(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.db.collection("services").stream()]

    def services_of(self, service: str, region: str | None = None) -> list[dict[str, Any]]:
        """The records of one service (every environment), in one region if given: a query, not a scan."""
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("services").where(filter=FieldFilter("service", "==", service))
        if region:
            query = query.where(filter=FieldFilter("region", "==", region))
        return [s.to_dict() for s in query.stream()]

    def active_rollout(self, service: str, region: str, environment: str = "production") -> Rollout | None:
        record = self.service(service, region, environment)
        active = record and record.get("active_rollout")
        return self.rollout(active) if active else None

    def active_rollouts(self, service: str, region: str | None = None) -> list[Rollout]:
        """Rollouts in progress for a service, across environments (and regions unless given)."""
        ids = [s["active_rollout"] for s in self.services_of(service, region) if s.get("active_rollout")]
        if not ids:
            return []
        refs = [self.db.collection("rollouts").document(i) for i in ids]
        return [Rollout.from_doc(s.to_dict()) for s in self.db.get_all(refs) if s.exists]

    def due(self, now: datetime) -> list[tuple[Rollout, Any]]:
        """Rollouts a tick must look at, each with the snapshot it was read from (no second read to decide)."""
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("rollouts").where(filter=FieldFilter("due_at", "<=", now))
        return [(Rollout.from_doc(s.to_dict()), s) for s in query.stream()]

    def finished_between(self, start: datetime, end: datetime) -> list[Rollout]:
        """Rollouts that finished in [start, end): the reconciler checks each about once, shortly after."""
        from google.cloud.firestore_v1 import FieldFilter

        query = (self.db.collection("rollouts").where(filter=FieldFilter("finished_at", ">=", start))
                 .where(filter=FieldFilter("finished_at", "<", end)))
        return [Rollout.from_doc(s.to_dict()) for s in query.stream()]

    def watched(self) -> list[Rollout]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("rollouts").where(filter=FieldFilter("state", "in", sorted(WATCHED)))
        return [Rollout.from_doc(s.to_dict()) for s in query.stream()]

    def in_flight(self, limit: int = 500) -> tuple[list[Rollout], list[Release]]:
        """Rollouts and releases not finished yet (the dashboard's live parts): two single-field queries, so a
        refresh reads what is moving, not the history."""
        from google.cloud.firestore_v1 import FieldFilter

        from pitstop.core.models import TERMINAL
        from pitstop.core.release import RELEASE_DONE

        rollouts = self.db.collection("rollouts").where(filter=FieldFilter("state", "not-in", sorted(TERMINAL)))
        releases = self.db.collection("releases").where(filter=FieldFilter("state", "not-in", sorted(RELEASE_DONE)))
        return ([Rollout.from_doc(s.to_dict()) for s in rollouts.limit(limit).stream()],
                [_release(s.to_dict()) for s in releases.limit(limit).stream()])

    def recent(self, service: str | None = None, limit: int = 20) -> list[Rollout]:
        from google.cloud import firestore
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("rollouts")
        if service:
            query = query.where(filter=FieldFilter("service", "==", service))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [Rollout.from_doc(s.to_dict()) for s in query.stream()]

    def events(self, rollout_id: str) -> list[AuditEvent]:
        snaps = self.db.collection("rollouts").document(rollout_id).collection("events").order_by("at").stream()
        return [AuditEvent.model_validate(s.to_dict()) for s in snaps]

    def audit_trail(self, rollout_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The raw event documents of a rollout (each with its document id as "id" if it has none), in no
        particular order, and the chain's head from the rollout document: None if there is no rollout
        document, {"audit_seq": None, "audit_head": None} if it was written before chaining."""
        ref = self.db.collection("rollouts").document(rollout_id)
        snap = ref.get()
        # Not ordered by a field: a query ordered by seq (or at) would silently skip events without it.
        events = [{"id": s.id, **s.to_dict()} for s in ref.collection("events").stream()]
        if not snap.exists:
            return events, None
        doc = snap.to_dict()
        return events, {"audit_seq": doc.get("audit_seq"), "audit_head": doc.get("audit_head")}

    def find_version(self, service: str, region: str, environment: str, version: str) -> Rollout | None:
        """The newest rollout that made `version` stable here."""
        for rollout in self.recent(service, limit=200):
            if (rollout.region, rollout.environment, rollout.version, rollout.state) == (
                    region, environment, version, "succeeded"):
                return rollout
        return None

    # ------------------------------------------------------------ writes

    def record_build(self, build_id: str, doc: dict[str, Any]) -> bool:
        """Record what a build led to; False if this very status was recorded before (a redelivery).

        The marker is created, not read then written: of two concurrent deliveries exactly one is first."""
        from google.api_core import exceptions

        ref = self.db.collection("builds").document(build_id)
        try:
            ref.collection("statuses").document(doc["status"]).create({"at": doc["at"]})
        except exceptions.AlreadyExists:
            return False
        ref.set(doc, merge=True)
        return True

    def record_command(self, command_id: str, doc: dict[str, Any]) -> bool:
        """A command refused (or a deploy's build): the CLI shows why. Created, never overwritten: a message that
        reuses an id cannot erase the record of an earlier one. False if the id was recorded before."""
        from google.api_core import exceptions

        try:
            self.db.collection("commands").document(command_id).create(doc)
            return True
        except exceptions.AlreadyExists:
            return False

    def refusals(self, rollout_id: str) -> list[dict[str, Any]]:
        """Commands refused for this rollout (unverified, no permission, four eyes), oldest first."""
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("commands").where(filter=FieldFilter("rollout_id", "==", rollout_id))
        found = [{"id": s.id, **s.to_dict()} for s in query.stream()]
        return sorted((c for c in found if c.get("outcome") == "refused"), key=lambda c: c["at"])

    def command(self, command_id: str) -> dict[str, Any] | None:
        snap = self.db.collection("commands").document(command_id).get()
        return snap.to_dict() if snap.exists else None

    def artifact(self, digest: str) -> Artifact | None:
        snap = self.db.collection("artifacts").document(digest.replace(":", "-")).get()
        return Artifact.model_validate(snap.to_dict()) if snap.exists else None

    def rollouts(self, ids: list[str]) -> list[Rollout]:
        refs = [self.db.collection("rollouts").document(i) for i in ids]
        return [Rollout.from_doc(s.to_dict()) for s in self.db.get_all(refs) if s.exists] if refs else []

    def put_artifact(self, artifact: Artifact) -> None:
        doc = artifact.model_dump(mode="python", exclude_none=True)
        self.db.collection("artifacts").document(artifact.digest.replace(":", "-")).set(doc, merge=True)

    def apply(self, rollout_id: str, input_id: str, decide: Callable[[Rollout], Decision],
              snap: Any = None) -> Outcome:
        """Load, decide, store state + audit atomically; a known input id does nothing.

        Optimistic: the batch commits only if the rollout is unchanged since it
        was read (update-time precondition) and the audit event is new (create):
        a redelivered input fails that create and is reported as a duplicate,
        with the rollout as its decision left it. No lock is held while deciding,
        so concurrent inputs cannot deadlock; the loser re-reads and decides
        again on the newer state. `snap`, if given, is a fresh read to start from.
        """
        from google.api_core import exceptions

        ref = self.db.collection("rollouts").document(rollout_id)
        for attempt in range(MAX_ATTEMPTS):
            snap = snap if snap is not None and attempt == 0 else ref.get()
            if not snap.exists:
                return Outcome(None, missing=True)
            before = Rollout.from_doc(snap.to_dict())
            decision = decide(before)
            if decision.audit is None:
                return Outcome(decision, rollout=before)
            batch = self.db.batch()
            # Ignored inputs are preconditioned too: an input ignored on a stale read must be decided again.
            event_hash = self._put_rollout(batch, decision, snap)
            if decision.rollout.state != before.state:
                self._put_service(batch, decision.rollout)
            try:
                if self._commit(batch, attempt):
                    return Outcome(decision, rollout=before, event_hash=event_hash)
            except exceptions.AlreadyExists:
                return Outcome(None, duplicate=True, rollout=before)
        raise Contention(f"rollout {rollout_id} changed under input {input_id} {MAX_ATTEMPTS} times in a row")

    def start(self, rollout_id: str, service: str, region: str, environment: str,
              begin: Callable[[dict[str, Any] | None, Rollout | None], tuple[Decision | None, Decision | None]]
              ) -> Outcome:
        """Create a rollout and supersede the one it replaces, atomically.

        `begin(service record, active rollout)` returns the new rollout's decision
        (None: start nothing) and the old rollout's (or None). The rollout id is derived from the
        build, so a redelivered build finds its rollout and does nothing.
        """
        from google.api_core import exceptions

        ref = self.db.collection("rollouts").document(rollout_id)
        for attempt in range(MAX_ATTEMPTS):
            if ref.get().exists:
                return Outcome(None, duplicate=True)
            service_snap = self.db.collection("services").document(service_key(service, region, environment)).get()
            record = service_snap.to_dict() if service_snap.exists else None
            active_snap = None
            if record and record.get("active_rollout"):
                active_snap = self.db.collection("rollouts").document(record["active_rollout"]).get()
            active = Rollout.from_doc(active_snap.to_dict()) if active_snap and active_snap.exists else None
            new, old = begin(record, active)
            if new is None:
                return Outcome(None)
            batch = self.db.batch()
            old_hash = None
            if old is not None and old.audit is not None:
                old_hash = self._put_rollout(batch, old, active_snap)
            event = audit.seal(new.audit.to_doc(), *audit.next_link(None))
            batch.create(ref, {**_full(new.rollout), "audit_seq": event["seq"], "audit_head": event["hash"]})
            batch.create(ref.collection("events").document(new.audit.id), event)
            # Preconditioned on the record `begin` decided from: a concurrent start loses and retries.
            self._put_service(batch, new.rollout, service_snap)
            try:
                if self._commit(batch, attempt):
                    return Outcome(new, superseded=old, event_hash=event["hash"], superseded_hash=old_hash)
            except exceptions.AlreadyExists:
                continue  # a twin delivery created it first: the next read finds it

        raise Contention(f"service {service} in {region} changed under rollout {rollout_id} {MAX_ATTEMPTS} times")

    # ------------------------------------------------------------ writing, optimistically

    def _put_rollout(self, batch: Any, decision: Decision, snap: Any) -> str:
        """The rollout's new state and its next audit event, chained to the head read in `snap`; the hash."""
        ref = self.db.collection("rollouts").document(decision.rollout.id)
        # Sealed as written: the hash covers the bounded document, exactly what Firestore stores.
        event = audit.seal(decision.audit.to_doc(), *audit.next_link(snap.to_dict()))
        doc = _full(decision.rollout) if decision.audit.decision != "ignored" else {"last_input": decision.audit.id}
        doc.update(audit_seq=event["seq"], audit_head=event["hash"])
        batch.update(ref, doc, option=self.db.write_option(last_update_time=snap.update_time))
        batch.create(ref.collection("events").document(decision.audit.id), event)
        return event["hash"]

    def _put_service(self, batch: Any, rollout: Rollout, snap: Any = None) -> None:
        ref = self._service_ref(rollout)
        snap = snap or ref.get()
        if snap.exists:
            doc = service_after(snap.to_dict(), rollout)
            batch.update(ref, doc, option=self.db.write_option(last_update_time=snap.update_time))
        else:
            batch.create(ref, service_after(None, rollout))

    def _commit(self, batch: Any, attempt: int) -> bool:
        """True if written; False if something changed since it was read (decide again)."""
        from google.api_core import exceptions

        try:
            batch.commit()
            return True
        except (exceptions.FailedPrecondition, exceptions.Aborted):
            # Lost a race: a newer state. (AlreadyExists, the same input recorded before, is the caller's.)
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
            return False

    def _service_ref(self, rollout: Rollout) -> Any:
        return self.db.collection("services").document(
            service_key(rollout.service, rollout.region, rollout.environment))

    # ------------------------------------------------------------ history for DORA metrics (issue #11)

    HISTORY_CAP = 5000  # rollouts (and releases) a DORA report reads at most: its 90 days, bounded

    def history_since(self, since: datetime, service: str | None = None, cap: int = HISTORY_CAP
                      ) -> tuple[list[Rollout], list[Release], bool]:
        """The rollouts and releases created at or after `since` (of one service, if given), newest first, at
        most `cap` of each; True if a cap cut the oldest off. Served by the automatic created_at index and the
        (service, created_at desc) composite ones `recent` and `releases` use."""
        from google.cloud import firestore
        from google.cloud.firestore_v1 import FieldFilter

        def newest(collection: str) -> list[dict[str, Any]]:
            query = self.db.collection(collection)
            if service:
                query = query.where(filter=FieldFilter("service", "==", service))
            query = query.where(filter=FieldFilter("created_at", ">=", since))
            query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(cap + 1)
            return [s.to_dict() for s in query.stream()]

        rollouts, releases = newest("rollouts"), newest("releases")
        return ([Rollout.from_doc(d) for d in rollouts[:cap]], [_release(d) for d in releases[:cap]],
                len(rollouts) > cap or len(releases) > cap)


def _release(doc: dict[str, Any]) -> Release:
    from pitstop.core.release import Release

    return Release.model_validate({k: v for k, v in doc.items() if k not in STORE_BOOKKEEPING}, strict=False)


def _full(rollout: Any) -> dict[str, Any]:
    """Every field, None included: an update must clear what the new state no longer has."""
    return rollout.model_dump(mode="python")

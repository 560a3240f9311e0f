"""Firestore: rollout state and its append-only audit trail, written together.

Collections, each readable in the Firestore console:
  specs/{service}--{environment}        the registered rollout specs
  rollouts/{id}                          current state of one rollout
  rollouts/{id}/events/{input id}        audit: input, decision, reasons, traffic
  services/{service}--{region}           active rollout, stable revision, last outcome
  artifacts/{sha256-…}                   image, digest, build, commit
  builds/{build id}                      builds that started nothing, and why

Every state change and its audit event commit in one transaction keyed by the
input id, so a redelivered input finds its event and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from pitstop.models import TERMINAL, WATCHED, Artifact, AuditEvent, Rollout, RolloutSpec

if TYPE_CHECKING:
    from google.cloud import firestore

    from pitstop.machine import Decision


@dataclass(frozen=True)
class Outcome:
    """What a transaction did: the decision it stored, or why it stored none."""

    decision: Decision | None
    duplicate: bool = False
    missing: bool = False

    @property
    def stored(self) -> bool:
        return self.decision is not None and self.decision.audit is not None


def service_key(service: str, region: str) -> str:
    return f"{service}--{region}"


def service_after(record: dict[str, Any] | None, rollout: Rollout) -> dict[str, Any]:
    """The services/{key} document once `rollout` has moved (pure)."""
    record = dict(record or {})
    record.update(service=rollout.service, region=rollout.region, environment=rollout.environment,
                  last_rollout=rollout.id, last_version=rollout.version, last_state=rollout.state,
                  updated_at=rollout.updated_at)
    if rollout.state == "succeeded":
        record.update(stable_revision=rollout.revision, stable_version=rollout.version, stable_image=rollout.image)
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
        doc = spec.model_dump(mode="json", exclude_none=True)
        doc.update(applied_at=now, applied_by=actor, match_repo=spec.match.repo)
        self.db.collection("specs").document(spec.key).set(doc)

    def specs(self) -> list[RolloutSpec]:
        out = []
        for snap in self.db.collection("specs").stream():
            doc = {k: v for k, v in snap.to_dict().items() if k not in ("applied_at", "applied_by", "match_repo")}
            out.append(RolloutSpec.model_validate_json(_json(doc)))
        return out

    # ------------------------------------------------------------ reads

    def rollout(self, rollout_id: str) -> Rollout | None:
        snap = self.db.collection("rollouts").document(rollout_id).get()
        return Rollout.from_doc(snap.to_dict()) if snap.exists else None

    def service(self, service: str, region: str) -> dict[str, Any] | None:
        snap = self.db.collection("services").document(service_key(service, region)).get()
        return snap.to_dict() if snap.exists else None

    def services(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.db.collection("services").stream()]

    def active_rollout(self, service: str, region: str) -> Rollout | None:
        record = self.service(service, region)
        active = record and record.get("active_rollout")
        return self.rollout(active) if active else None

    def due(self, now: datetime) -> list[Rollout]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("rollouts").where(filter=FieldFilter("due_at", "<=", now))
        return [Rollout.from_doc(s.to_dict()) for s in query.stream()]

    def watched(self) -> list[Rollout]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self.db.collection("rollouts").where(filter=FieldFilter("state", "in", sorted(WATCHED)))
        return [Rollout.from_doc(s.to_dict()) for s in query.stream()]

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

    def find_version(self, service: str, region: str, version: str) -> Rollout | None:
        """The newest rollout that made `version` stable here."""
        for rollout in self.recent(service, limit=200):
            if rollout.region == region and rollout.version == version and rollout.state == "succeeded":
                return rollout
        return None

    # ------------------------------------------------------------ writes

    def record_build(self, build_id: str, doc: dict[str, Any]) -> None:
        self.db.collection("builds").document(build_id).set(doc, merge=True)

    def put_artifact(self, artifact: Artifact) -> None:
        doc = artifact.model_dump(mode="python", exclude_none=True)
        self.db.collection("artifacts").document(artifact.digest.replace(":", "-")).set(doc, merge=True)

    def apply(self, rollout_id: str, input_id: str, decide: Callable[[Rollout], Decision]) -> Outcome:
        """Load, decide, store state + audit in one transaction; a known input id does nothing."""
        from google.cloud import firestore

        ref = self.db.collection("rollouts").document(rollout_id)
        event_ref = ref.collection("events").document(input_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> Outcome:
            snap = ref.get(transaction=txn)
            if not snap.exists:
                return Outcome(None, missing=True)
            if event_ref.get(transaction=txn).exists:
                return Outcome(None, duplicate=True)
            rollout = Rollout.from_doc(snap.to_dict())
            service_ref = self._service_ref(rollout)
            record = service_ref.get(transaction=txn)
            decision = decide(rollout)
            if decision.audit is not None:
                txn.set(ref, decision.rollout.to_doc())
                txn.create(event_ref, decision.audit.to_doc())
                txn.set(service_ref, service_after(record.to_dict() if record.exists else None, decision.rollout))
            return Outcome(decision)

        return run(self.db.transaction())

    def start(self, rollout_id: str, service: str, region: str,
              begin: Callable[[dict[str, Any] | None, Rollout | None], tuple[Decision, Decision | None]]) -> Outcome:
        """Create a rollout and supersede the one it replaces, atomically.

        `begin(service record, active rollout)` returns the new rollout's decision
        and the old rollout's (or None). The rollout id is derived from the
        build, so a redelivered build finds its rollout and does nothing.
        """
        from google.cloud import firestore

        ref = self.db.collection("rollouts").document(rollout_id)
        service_ref = self.db.collection("services").document(service_key(service, region))

        @firestore.transactional
        def run(txn: firestore.Transaction) -> Outcome:
            if ref.get(transaction=txn).exists:
                return Outcome(None, duplicate=True)
            record_snap = service_ref.get(transaction=txn)
            record = record_snap.to_dict() if record_snap.exists else None
            active = None
            if record and record.get("active_rollout"):
                active_snap = self.db.collection("rollouts").document(record["active_rollout"]).get(transaction=txn)
                active = Rollout.from_doc(active_snap.to_dict()) if active_snap.exists else None
            new, old = begin(record, active)
            if old is not None and old.audit is not None:
                old_ref = self.db.collection("rollouts").document(old.rollout.id)
                txn.set(old_ref, old.rollout.to_doc())
                txn.set(old_ref.collection("events").document(old.audit.id), old.audit.to_doc())
                record = service_after(record, old.rollout)
            txn.set(ref, new.rollout.to_doc())
            txn.create(ref.collection("events").document(new.audit.id), new.audit.to_doc())
            txn.set(service_ref, service_after(record, new.rollout))
            return Outcome(new)

        return run(self.db.transaction())

    def _service_ref(self, rollout: Rollout) -> Any:
        return self.db.collection("services").document(service_key(rollout.service, rollout.region))


def _json(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc, default=str)

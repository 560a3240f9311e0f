"""Rollouts started in the Firestore store the way the engine starts them, for the store's tests."""

from __future__ import annotations

from datetime import datetime, timezone

from pitstop.core import machine
from pitstop.core.messages import parse_build
from pitstop.core.models import Superseded
from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.payloads import cloud_build

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
SPEC = load_spec("service: web\nregions: [r1]\nmatch: {repo: web}\n")


def start(store: Store, build_id: str, version: str, now: datetime = T0):
    """Start web's rollout of `version` in r1 for build `build_id`, superseding the one in progress."""
    artifact = parse_build(cloud_build("SUCCESS", build_id=build_id, substitutions={"_VERSION": version}), {}).artifact
    rollout_id = f"web-production-r1-{build_id[:8]}"

    def begin(record, active):
        stable = (record or {}).get("stable_revision")
        new = machine.start(SPEC, "r1", "p", artifact, rollout_id, stable, (record or {}).get("stable_version"),
                            now, f"build-{build_id}")
        old = None if active is None else machine.decide(
            active, Superseded(id=f"superseded-by-{rollout_id}", by_rollout=rollout_id, by_version=version), now)
        return new, old

    return store.start(rollout_id, "web", "r1", "production", begin)

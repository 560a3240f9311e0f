"""The Firestore store on the real emulator: atomic state + audit, idempotency, races."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from pitstop.core import machine
from pitstop.core.models import Alert, Applied, Command
from pitstop.gcp.store import Store
from rollouts import T0, start

pytestmark = pytest.mark.emulators


@pytest.fixture
def store(firestore_clean) -> Store:
    return Store.from_env(firestore_clean.project)


def finish(store: Store, rollout_id: str, now: datetime = T0) -> None:
    """Apply every split the rollout asks for, then promote it fully."""
    for _ in range(6):
        r = store.rollout(rollout_id)
        if r.state == "succeeded":
            return
        if not r.applied:
            inp = Applied(id=f"applied-g{r.desired_generation}", generation=r.desired_generation, observed=r.desired)
        else:
            inp = Command(id=f"c-{r.desired_generation}", action="promote", rollout_id=rollout_id, full=True)
        store.apply(rollout_id, inp.id, lambda x, inp=inp: machine.decide(x, inp, now))
    raise AssertionError(store.rollout(rollout_id))


def test_state_and_audit_are_written_together_and_a_duplicate_changes_nothing(store):
    outcome = start(store, "aaaaaaaa-1", "v1")
    r = outcome.decision.rollout
    assert store.rollout(r.id).state == "deploying"
    inp = Applied(id="applied-g1", generation=1, observed=r.desired)
    first = store.apply(r.id, inp.id, lambda x: machine.decide(x, inp, T0 + timedelta(seconds=1)))
    assert first.stored and store.rollout(r.id).state == "succeeded"
    again = store.apply(r.id, inp.id, lambda x: machine.decide(x, inp, T0 + timedelta(seconds=5)))
    assert again.duplicate
    assert [e.id for e in store.events(r.id)] == ["build-aaaaaaaa-1", "applied-g1"]
    assert store.service("web", "r1")["stable_version"] == "v1"
    snap = store.db.collection("rollouts").document(r.id).get().to_dict()
    assert isinstance(snap["created_at"], datetime) and snap["state"] == "succeeded", "console-readable"


def test_an_ignored_input_on_an_old_rollout_leaves_the_service_alone(store):
    start(store, "aaaaaaaa-1", "v1")
    finish(store, "web-production-r1-aaaaaaaa")
    start(store, "bbbbbbbb-2", "v2", T0 + timedelta(minutes=1))
    finish(store, "web-production-r1-bbbbbbbb", T0 + timedelta(minutes=1))
    assert store.service("web", "r1")["stable_version"] == "v2"
    abort = Command(id="late-abort", action="abort", rollout_id="web-production-r1-aaaaaaaa", actor="bob")
    outcome = store.apply(abort.rollout_id, abort.id, lambda x: machine.decide(x, abort, T0 + timedelta(minutes=2)))
    assert outcome.decision.audit.decision == "ignored"
    record = store.service("web", "r1")
    assert (record["stable_version"], record["last_rollout"]) == ("v2", "web-production-r1-bbbbbbbb")


def test_concurrent_builds_leave_exactly_one_rollout_in_progress(store):
    start(store, "aaaaaaaa-1", "v1")
    finish(store, "web-production-r1-aaaaaaaa")
    ids = [f"{c * 8}-{n}" for n, c in enumerate("cdefgh")]
    threads = [threading.Thread(target=start, args=(store, b, f"v{n + 2}", T0 + timedelta(minutes=1)))
               for n, b in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rollouts = [store.rollout(f"web-production-r1-{b[:8]}") for b in ids]
    live = [r for r in rollouts if r.state == "deploying"]
    assert len(live) == 1, [(r.id, r.state) for r in rollouts]
    assert store.service("web", "r1")["active_rollout"] == live[0].id
    assert all(r.state == "superseded" for r in rollouts if r is not live[0])


def test_an_input_ignored_on_a_stale_read_is_decided_again(store):
    """Ignored inputs commit under the same precondition: one ignored on a stale read is not made permanent."""
    r = start(store, "aaaaaaaa-1", "v1").decision.rollout
    alert = Alert(id="alert-i1-open", incident_id="i1", state="open", service="web", revision="web-other-1")
    reads = []

    def decide(current):
        reads.append(current.state)
        if len(reads) == 1:  # meanwhile another input lands: the first read is stale when it commits
            store.db.collection("rollouts").document(r.id).update({"message": "a concurrent decision"})
        return machine.decide(current, alert, T0)

    outcome = store.apply(r.id, alert.id, decide)
    assert len(reads) == 2, "the stale read's commit failed its precondition and the input was decided again"
    assert outcome.decision.audit.decision == "ignored" and alert.id in [e.id for e in store.events(r.id)]


def test_a_failed_build_is_recorded_new_exactly_once_under_concurrent_deliveries(store):
    doc = {"build_id": "b1", "status": "FAILURE", "outcome": "failed", "message": "m", "at": T0}
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.record_build("b1", dict(doc))))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True], "one delivery notifies, the others find it recorded"


def test_in_flight_reads_the_unfinished_rollouts_only(store):
    done = start(store, "aaaaaaaa-1", "v1").decision.rollout  # the first version: succeeded once applied
    inp = Applied(id="applied-g1", generation=1, observed=done.desired)
    store.apply(done.id, inp.id, lambda x: machine.decide(x, inp, T0 + timedelta(seconds=1)))
    moving = start(store, "bbbbbbbb-2", "v2", T0 + timedelta(minutes=1)).decision.rollout
    rollouts, releases = store.in_flight()
    assert [r.id for r in rollouts] == [moving.id] and releases == []

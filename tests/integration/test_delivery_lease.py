"""Once per event and sink, against the Firestore emulator: the delivery's claim is a lease that a dead holder
loses, a live holder keeps, only one of two instances wins, and a delivered or failed one is never sent again.
The notifier is built as `on_event` builds it (Store, Secrets), delivering to the local HTTP sink."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from google.cloud.firestore_v1.document import DocumentReference

from pitstop.core.sinks import ProjectNotify
from pitstop.gcp.secrets import Secrets
from pitstop.gcp.store import Store
from pitstop.local.sinks import start_sinks
from pitstop.surfaces.notifications import LEASE, Busy, Notifier, delivery_id

pytestmark = pytest.mark.emulators
EVENT = {"event_id": "lease-test-1", "kind": "rollout", "service": "web", "severity": "ERROR",
         "reason": "note_failed", "state": "failed", "message": "web v2 failed"}


@pytest.fixture(scope="module")
def sinks():
    running = start_sinks()
    yield running
    running.stop()


@pytest.fixture
def store(firestore_clean, monkeypatch) -> Store:
    monkeypatch.setenv("PITSTOP_SECRET_HOOK_KEY", "k")
    return Store.from_env(firestore_clean.project)


def notifier(store: Store, sinks, path: str = "/hook", **kwargs) -> Notifier:
    """A Notifier whose project-wide sink is one webhook at the local sink's `path`."""
    store.db.collection("settings").document("notifications").set(ProjectNotify.model_validate({"notify": [
        {"name": "hook", "type": "webhook", "secret": "hook-key", "url": sinks.url + path}]}).model_dump(
        mode="json", exclude_none=True))
    return Notifier(store.db, Secrets(store.db.project), store, backoff=0, **kwargs)


def delivery(store: Store) -> DocumentReference:
    return store.db.collection("deliveries").document(delivery_id(EVENT["event_id"], "hook"))


def sent(sinks, path: str = "/hook") -> int:
    return len([r for r in sinks.at(path) if r.json.get("event_id") == EVENT["event_id"]])


def claimed(store: Store, lease_left: timedelta, **fields) -> None:
    """Another instance's claim, its lease ending `lease_left` from now."""
    now = datetime.now(timezone.utc)
    delivery(store).create({"state": "sending", "event_id": EVENT["event_id"], "sink": "hook", "attempts": 0,
                            "claimed_at": now - timedelta(minutes=5), "lease_until": now + lease_left, **fields})


def test_an_expired_claim_is_taken_over_and_delivered_once(store, sinks):
    before = sent(sinks)
    claimed(store, -timedelta(seconds=1))  # its holder died mid-delivery
    n = notifier(store, sinks)
    assert n.on_event(EVENT) == {"hook": "delivered"}
    doc = delivery(store).get().to_dict()
    assert doc["state"] == "delivered" and doc["taken_over_at"] and doc["attempts"] == 1
    assert n.on_event(EVENT) == {"hook": "duplicate"}  # Pub/Sub delivering it again
    assert sent(sinks) - before == 1


def test_a_live_lease_of_another_instance_means_busy_and_nothing_sent(store, sinks):
    before = sent(sinks)
    claimed(store, timedelta(seconds=60))
    with pytest.raises(Busy, match="under way"):  # functions/main.py answers an error: Pub/Sub redelivers
        notifier(store, sinks).on_event(EVENT)
    assert sent(sinks) == before and delivery(store).get().to_dict()["state"] == "sending"


def test_of_two_instances_taking_over_at_once_one_wins_the_other_is_busy(store, sinks, monkeypatch):
    before = sent(sinks)
    claimed(store, -timedelta(seconds=1))
    real_get = DocumentReference.get

    def get_then_taken_over(ref, *args, **kwargs):  # the other instance takes over between our read and write
        snap = real_get(ref, *args, **kwargs)
        if ref.parent.id == "deliveries":
            ref.update({"taken_over_at": datetime.now(timezone.utc), "lease_until": datetime.now(timezone.utc) + LEASE})
        return snap
    monkeypatch.setattr(DocumentReference, "get", get_then_taken_over)
    with pytest.raises(Busy, match="another instance took over"):
        notifier(store, sinks).on_event(EVENT)
    assert sent(sinks) == before


def test_an_instance_whose_delivery_was_taken_over_writes_nothing_more(store, sinks):
    n = notifier(store, sinks)
    real_send = n.send

    def send_while_taken_over(sink, event):  # its lease ran out mid-attempt; another instance took it over
        real_send(sink, event)
        delivery(store).update({"taken_over_at": datetime.now(timezone.utc), "attempts": 0})
    n.send = send_while_taken_over
    with pytest.raises(Busy, match="taken over"):
        n.on_event(EVENT)
    doc = delivery(store).get().to_dict()
    assert doc["state"] == "sending" and doc["attempts"] == 0  # the new owner's record, not overwritten


@pytest.mark.parametrize("state", ["delivered", "failed"])
def test_a_delivered_or_failed_delivery_is_never_sent_again(store, sinks, state):
    before = sent(sinks)
    claimed(store, -timedelta(hours=1), **{"state": state})  # long past its lease, too
    assert notifier(store, sinks).on_event(EVENT) == {"hook": "duplicate"}
    assert sent(sinks) == before and delivery(store).get().to_dict()["state"] == state


def test_a_retry_that_would_outlive_the_lease_is_not_made(store, sinks):
    now = [datetime.now(timezone.utc)]

    def slow_sleep(seconds: float) -> None:  # the wait overran (say, a throttled instance): the lease is nearly out
        now[0] += LEASE - timedelta(seconds=5)
    n = notifier(store, sinks, path="/fail/lease", clock=lambda: now[0], sleep=slow_sleep)
    assert n.on_event(EVENT) == {"hook": "failed"}
    doc = delivery(store).get().to_dict()
    assert doc["state"] == "failed" and doc["attempts"] == 1 and "not retried: the lease ends" in doc["last_error"]
    assert sent(sinks, "/fail/lease") == 1

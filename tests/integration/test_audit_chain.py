"""The audit chain on the Firestore emulator: written by the store, verified after a round trip, and
tampering with the raw documents reported at the right event."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from google.cloud import firestore

from pitstop.core import machine
from pitstop.core.audit import GENESIS
from pitstop.core.models import Alert, Applied, Command, HealthSample
from pitstop.gcp.store import Store
from pitstop.surfaces.audit import render, verify_rollout
from rollouts import T0, start

pytestmark = pytest.mark.emulators
V1, V2, V3 = "web-production-r1-aaaaaaaa", "web-production-r1-bbbbbbbb", "web-production-r1-cccccccc"


@pytest.fixture
def store(firestore_clean) -> Store:
    return Store.from_env(firestore_clean.project)


def send(store: Store, rollout_id: str, inp, now: datetime = T0):
    return store.apply(rollout_id, inp.id, lambda r: machine.decide(r, inp, now))


def applied(store: Store, rollout_id: str, now: datetime = T0):
    r = store.rollout(rollout_id)
    return send(store, rollout_id, Applied(id=f"applied-g{r.desired_generation}", generation=r.desired_generation,
                                           observed=r.desired), now)


def foreign_alert(n: int) -> Alert:
    """An alert on another revision: ignored, yet written to the trail."""
    return Alert(id=f"alert-{n}", incident_id=f"i{n}", state="open", service="web", revision="web-other-1")


@pytest.fixture
def canary(store: Store) -> str:
    """v1 stable, then v2 in canary with a trail of several kinds of events: its rollout id."""
    start(store, "aaaaaaaa-1", "v1")
    assert applied(store, V1).decision.rollout.state == "succeeded"
    start(store, "bbbbbbbb-2", "v2", T0 + timedelta(minutes=1))  # build, then deploy at 0 %
    now = T0 + timedelta(minutes=1, seconds=30)
    applied(store, V2, now)  # the canary's revision serves: first step
    applied(store, V2, now)  # the first step's split applied
    r = store.rollout(V2)
    assert r.state == "progressing", r.state
    health = HealthSample(id="h-1", service="web", region="r1", revision=r.revision,
                          window_start=r.judged_until or r.step_started_at, window_end=now + timedelta(seconds=60),
                          request_count=400, error_count=1, latency_p50_ms=12.25, latency_p99_ms=120.5, source="test")
    assert send(store, V2, health, now + timedelta(seconds=60)).stored
    assert send(store, V2, foreign_alert(1), now + timedelta(seconds=61)).decision.audit.decision == "ignored"
    pause = Command(id="c-pause", action="pause", rollout_id=V2, actor="bob@example.com", reason="looking, ü ✓")
    assert send(store, V2, pause, now + timedelta(seconds=62)).stored
    return V2


def trail(store: Store, rollout_id: str) -> dict[int, dict]:
    events, _ = store.audit_trail(rollout_id)
    return {e["seq"]: e for e in events}


def events_ref(store: Store, rollout_id: str):
    return store.db.collection("rollouts").document(rollout_id).collection("events")


# ---------------------------------------------------------------- written and verified

def test_every_write_extends_the_chain_and_it_verifies_after_the_round_trip(store, canary):
    events, head = store.audit_trail(canary)
    by_seq = {e["seq"]: e for e in events}
    assert sorted(by_seq) == list(range(1, len(events) + 1)) and len(events) >= 5
    assert by_seq[1]["prev_hash"] == GENESIS and by_seq[1]["id"] == "build-bbbbbbbb-2"
    assert head == {"audit_seq": len(events), "audit_head": by_seq[len(events)]["hash"]}
    verdicts = [e for e in events if "verdict" in e]
    assert verdicts and isinstance(verdicts[0]["verdict"]["window_start"], datetime), "a nested map, read back"
    assert any(e["decision"] == "ignored" for e in events), "ignored inputs are chained too"

    report = verify_rollout(store, canary)
    assert report.ok and report.checked == len(events), report.problems
    assert render(report, canary) == (f"audit trail of {canary}: {len(events)} events, chain intact "
                                      f"(head {head['audit_head'][:12]}…)")
    assert verify_rollout(store, V1).ok
    assert [e.seq for e in store.events(canary)] == list(range(1, len(events) + 1)), "events() reads the chain"


def test_the_outcome_carries_the_hash_it_stored_and_a_redelivery_extends_nothing(store, canary):
    before = trail(store, canary)
    resume = Command(id="c-resume", action="resume", rollout_id=canary, actor="bob@example.com")
    outcome = send(store, canary, resume, T0 + timedelta(minutes=3))
    assert outcome.stored and outcome.event_hash == trail(store, canary)[len(before) + 1]["hash"]
    head = store.audit_trail(canary)[1]

    again = send(store, canary, resume, T0 + timedelta(minutes=4))  # Pub/Sub delivers it once more
    assert again.duplicate and again.event_hash is None
    redelivered_alert = send(store, canary, foreign_alert(1), T0 + timedelta(minutes=4))
    assert redelivered_alert.duplicate
    assert store.audit_trail(canary)[1] == head and len(trail(store, canary)) == len(before) + 1
    assert verify_rollout(store, canary).ok


def test_a_superseded_rollout_gets_its_last_event_chained(store, canary):
    outcome = start(store, "cccccccc-3", "v3", T0 + timedelta(minutes=5))
    assert outcome.event_hash == trail(store, V3)[1]["hash"]
    last = trail(store, canary)
    assert last[len(last)]["id"] == f"superseded-by-{V3}"
    assert outcome.superseded_hash == last[len(last)]["hash"], "its log line can carry the hash too"
    assert verify_rollout(store, canary).ok and verify_rollout(store, V3).ok


def test_concurrent_inputs_on_one_rollout_leave_one_intact_chain(store, canary):
    n = len(trail(store, canary))
    outcomes = []
    threads = [threading.Thread(target=lambda i=i: outcomes.append(
        send(store, canary, foreign_alert(10 + i), T0 + timedelta(minutes=3))))
        for i in range(6)]
    threads.append(threading.Thread(target=lambda: outcomes.append(send(
        store, canary, Command(id="c-resume", action="resume", rollout_id=canary, actor="bob@example.com"),
        T0 + timedelta(minutes=3)))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 7 and all(o.stored for o in outcomes)
    chain = trail(store, canary)
    assert sorted(chain) == list(range(1, n + 8))
    assert {o.event_hash for o in outcomes} == {chain[s]["hash"] for s in range(n + 1, n + 8)}
    report = verify_rollout(store, canary)
    assert report.ok and report.checked == n + 7, report.problems


def test_a_rollout_written_before_chaining_starts_its_chain_at_its_next_event(store, canary):
    """No migration: the old events stay as they are, and verify says they are unchained."""
    ref = store.db.collection("rollouts").document(canary)
    old = trail(store, canary)
    ref.update({"audit_seq": firestore.DELETE_FIELD, "audit_head": firestore.DELETE_FIELD})
    for doc in old.values():
        events_ref(store, canary).document(doc["id"]).update(
            {k: firestore.DELETE_FIELD for k in ("seq", "prev_hash", "hash")})
    outcome = send(store, canary, foreign_alert(20), T0 + timedelta(minutes=3))
    new = store.db.collection("rollouts").document(canary).collection("events").document("alert-20").get().to_dict()
    assert (new["seq"], new["prev_hash"], new["hash"]) == (1, GENESIS, outcome.event_hash)
    report = verify_rollout(store, canary)
    assert report.problems == [f"event {d['id']!r} has no chain fields (written before chaining, or inserted by hand)"
                               for d in sorted(old.values(), key=lambda d: d["id"])]
    assert len(store.events(canary)) == len(old) + 1


# ---------------------------------------------------------------- tampered with

def test_an_edited_event_is_reported(store, canary):
    third = trail(store, canary)[3]
    events_ref(store, canary).document(third["id"]).update({"actor": "mallory"})
    report = verify_rollout(store, canary)
    assert report.problems == [f"event {third['id']!r} (#3) was edited after it was written: "
                               "its hash does not match its content"]
    text = render(report, canary)
    assert text.startswith(f"audit trail of {canary}: ") and "1 problem:" in text and third["id"] in text


def test_an_edited_nested_value_is_reported(store, canary):
    (event,) = [e for e in trail(store, canary).values() if "verdict" in e]
    events_ref(store, canary).document(event["id"]).update({"verdict.request_count": 4000})
    (problem,) = verify_rollout(store, canary).problems
    assert problem.startswith(f"event {event['id']!r} (#{event['seq']}) was edited after it was written")


def test_a_deleted_middle_event_is_reported(store, canary):
    events_ref(store, canary).document(trail(store, canary)[3]["id"]).delete()
    assert verify_rollout(store, canary).problems == ["event #3 is missing: #4 follows #2 (deleted?)"]


def test_a_deleted_last_event_is_reported(store, canary):
    chain = trail(store, canary)
    n = len(chain)
    events_ref(store, canary).document(chain[n]["id"]).delete()
    assert verify_rollout(store, canary).problems == [
        f"the trail ends at #{n - 1} but the rollout's head says #{n} (the last event was deleted)"]


def test_swapped_events_are_reported_by_name(store, canary):
    chain = trail(store, canary)
    a, b = chain[2], chain[3]
    events_ref(store, canary).document(a["id"]).update({"seq": 3})
    events_ref(store, canary).document(b["id"]).update({"seq": 2})
    problems = verify_rollout(store, canary).problems
    assert problems[:4] == [
        f"event {b['id']!r} (#2) was edited after it was written: its hash does not match its content",
        problems[1], f"event {a['id']!r} (#3) was edited after it was written: its hash does not match its content",
        problems[3]]
    assert problems[1].startswith(f"event {b['id']!r} (#2) does not follow {chain[1]['id']!r} (#1)")
    assert problems[3].startswith(f"event {a['id']!r} (#3) does not follow {b['id']!r} (#2)")


def test_an_unknown_or_deleted_rollout(store, canary):
    report = verify_rollout(store, "web-production-r1-nothere")
    assert not report.ok and report.problems == ["no rollout 'web-production-r1-nothere': nothing to verify"]
    store.db.collection("rollouts").document(canary).delete()  # its events stay: a subcollection
    (problem,) = verify_rollout(store, canary).problems
    assert problem.startswith(f"no rollout document {canary!r}, yet ") and "(the rollout was deleted?)" in problem

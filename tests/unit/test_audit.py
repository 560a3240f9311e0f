"""The audit chain, pure: a stable hash, and `verify` naming the event where a trail was tampered with."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pitstop.core.audit import GENESIS, canonical, event_hash, next_link, seal, verify
from pitstop.core.models import AuditEvent, Reason, Verdict

T0 = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)


class Nanos(datetime):
    """Stands in for Firestore's DatetimeWithNanoseconds: a datetime subclass."""


def event(n: int, **extra) -> dict:
    doc = {"id": f"input-{n}", "at": T0 + timedelta(minutes=n), "input": "tick", "actor": "pitstop",
           "decision": "advanced", "reasons": [f"step {n}"], "state_after": "progressing",
           "detail": {"p99": 123.5, "requests": n, "nested": {"ok": True, "items": [1, 2.0, "x"]}}}
    return doc | extra


def chain(n: int) -> tuple[list[dict], dict]:
    """n sealed events and the head the rollout document would hold."""
    docs, prev = [], GENESIS
    for i in range(1, n + 1):
        docs.append(seal(event(i), i, prev))
        prev = docs[-1]["hash"]
    return docs, {"audit_seq": n, "audit_head": prev}


def by_seq(docs: list[dict], seq: int) -> dict:
    return next(d for d in docs if d["seq"] == seq)


# ---------------------------------------------------------------- canonical and hash

def test_canonical_is_stable_across_key_order_and_excludes_the_hash():
    doc = event(1)
    shuffled = dict(reversed(list(doc.items())))
    shuffled["detail"] = dict(reversed(list(doc["detail"].items())))
    assert canonical(doc) == canonical(shuffled)
    assert canonical(doc | {"hash": "anything"}) == canonical(doc)
    assert b" " not in canonical({"a": [1, 2], "b": {"c": 1}})
    assert canonical({"a": "ü"}) == '{"a":"ü"}'.encode()


def test_datetimes_hash_alike_whatever_their_class_and_timezone():
    utc = T0
    subclass = Nanos(2026, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)
    elsewhere = T0.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    naive = T0.replace(tzinfo=None)  # Firestore reads a naive datetime as UTC
    texts = {canonical({"at": t}) for t in (utc, subclass, elsewhere, naive)}
    assert texts == {b'{"at":"2026-11-22T12:00:00.123456Z"}'}
    assert canonical({"at": T0}) != canonical({"at": T0 + timedelta(microseconds=1)})


def test_firestore_datetime_class_hashes_like_the_datetime_written():
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds

    read_back = DatetimeWithNanoseconds(2026, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert canonical({"at": read_back}) == canonical({"at": T0})


def test_numbers_keep_their_type_and_value():
    assert canonical({"n": 5}) != canonical({"n": 5.0})
    assert canonical({"n": True}) != canonical({"n": 1})
    assert canonical({"n": 0.1 + 0.2}) == b'{"n":0.30000000000000004}'


def test_a_value_no_event_holds_is_refused():
    with pytest.raises(TypeError):
        canonical({"x": {1, 2}})
    with pytest.raises(TypeError):
        canonical({"x": {1: "a"}})


def test_seal_covers_seq_and_prev_hash():
    doc = seal(event(1), 1, GENESIS)
    assert (doc["seq"], doc["prev_hash"]) == (1, GENESIS) and doc["hash"] == event_hash(doc)
    assert seal(event(1), 2, GENESIS)["hash"] != doc["hash"]
    assert seal(event(1), 1, "f" * 64)["hash"] != doc["hash"]
    assert seal(doc, 1, GENESIS) == doc, "sealing again with the same link changes nothing"
    assert "hash" not in event(1), "the input is not changed"


def test_a_real_audit_event_document_seals():
    verdict = Verdict(outcome="pass", rule="all checks passed", checks=[], revision="web-2",
                      window_start=T0, window_end=T0 + timedelta(minutes=5), request_count=1200, source="monitoring")
    e = AuditEvent(id="health-1", at=T0, input="health", actor="pitstop", decision="advanced",
                   reasons=["healthy"], why=[Reason(code="verdict", values={"rule": "ok", "p99": 12.5})],
                   state_after="progressing", verdict=verdict)
    doc = seal(e.to_doc(), 1, GENESIS)
    assert verify([doc], {"audit_seq": 1, "audit_head": doc["hash"]}).ok
    assert AuditEvent.model_validate(doc).seq == 1, "the model reads its chain fields back"


def test_next_link_starts_a_chain_where_there_is_no_head():
    assert next_link(None) == (1, GENESIS)
    assert next_link({"state": "progressing"}) == (1, GENESIS), "a rollout written before chaining"
    assert next_link({"audit_seq": 4, "audit_head": "ab" * 32}) == (5, "ab" * 32)


# ---------------------------------------------------------------- verify

def test_an_intact_chain_is_ok_in_any_order():
    docs, head = chain(6)
    report = verify(list(reversed(docs)), head)
    assert report.ok and report.checked == 6 and report.problems == []
    assert report.head == head["audit_head"]
    assert verify([], {"audit_seq": None, "audit_head": None}).ok, "a rollout with no event yet"
    assert verify(docs, None).ok, "no head to compare: the events alone"


def test_an_edited_event_is_named():
    docs, head = chain(6)
    by_seq(docs, 4)["reasons"] = ["nothing to see here"]
    report = verify(docs, head)
    assert report.problems == ["event 'input-4' (#4) was edited after it was written: "
                               "its hash does not match its content"]
    assert not report.ok and report.head is None


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link():
    docs, head = chain(6)
    four = by_seq(docs, 4)
    four["reasons"] = ["rewritten"]
    four["hash"] = event_hash(four)
    (problem,) = verify(docs, head).problems
    assert problem.startswith("event 'input-5' (#5) does not follow 'input-4' (#4): its prev_hash is ")
    assert problem.endswith("(reordered or replaced)")


def test_a_deleted_middle_event_leaves_a_gap():
    docs, head = chain(6)
    docs.remove(by_seq(docs, 3))
    assert verify(docs, head).problems == ["event #3 is missing: #4 follows #2 (deleted?)"]
    docs.remove(by_seq(docs, 4))
    assert verify(docs, head).problems == ["events #3–#4 are missing: #5 follows #2 (deleted?)"]


def test_a_deleted_first_event():
    docs, head = chain(3)
    docs.remove(by_seq(docs, 1))
    assert verify(docs, head).problems == ["event #1 is missing: #2 is the first (deleted?)"]


def test_a_deleted_tail_is_short_of_the_head():
    docs, head = chain(8)
    docs = [d for d in docs if d["seq"] <= 6]
    assert verify(docs, head).problems == [
        "the trail ends at #6 but the rollout's head says #8 (the last 2 events were deleted)"]
    assert verify(docs[:-1] + [], {"audit_seq": 6, "audit_head": head["audit_head"]}).problems == [
        "the trail ends at #5 but the rollout's head says #6 (the last event was deleted)"]
    assert verify([], head).problems == [
        "the trail has no chained event but the rollout's head says #8 (the last 8 events were deleted)"]


def test_a_head_that_does_not_match_the_last_event():
    docs, head = chain(3)
    (problem,) = verify(docs, head | {"audit_head": "e" * 64}).problems
    assert problem.startswith("the last event 'input-3' (#3) hashes to ")
    (problem,) = verify(docs, {"audit_seq": None, "audit_head": None}).problems
    assert problem == "the rollout has no chain head, yet its trail is chained up to #3 (the head was removed)"
    (problem,) = verify(docs, {"audit_seq": 2, "audit_head": head["audit_head"]}).problems
    assert problem == "the trail goes on to #3 but the rollout's head says #2 (events after #2 were inserted by hand)"


def test_swapped_seqs_name_both_events():
    docs, head = chain(5)
    a, b = by_seq(docs, 2), by_seq(docs, 3)
    a["seq"], b["seq"] = 3, 2
    problems = verify(docs, head).problems
    assert problems[0] == "event 'input-3' (#2) was edited after it was written: its hash does not match its content"
    assert problems[1].startswith("event 'input-3' (#2) does not follow 'input-1' (#1)")
    assert problems[2] == "event 'input-2' (#3) was edited after it was written: its hash does not match its content"
    assert problems[3].startswith("event 'input-2' (#3) does not follow 'input-3' (#2)")
    assert all("input-1" not in p.split(" does not follow ")[0] for p in problems)


def test_an_event_inserted_with_a_taken_seq():
    docs, head = chain(4)
    forged = seal(event(9) | {"id": "forged"}, 3, by_seq(docs, 2)["hash"])  # a valid hash, a valid link
    # The chain goes on with the one #4 follows: only the duplicate is reported, not a broken link.
    assert verify(docs + [forged], head).problems == [
        "events 'forged' and 'input-3' both claim #3 (copied, or inserted by hand)"]


def test_an_event_inserted_at_the_end_is_past_the_head():
    docs, head = chain(4)
    forged = seal(event(5) | {"id": "forged"}, 5, head["audit_head"])
    assert verify(docs + [forged], head).problems == [
        "the trail goes on to #5 but the rollout's head says #4 (events after #4 were inserted by hand)"]


def test_an_event_without_chain_fields():
    docs, head = chain(3)
    hand = event(7) | {"id": "by-hand"}
    assert verify(docs + [hand], head).problems == [
        "event 'by-hand' has no chain fields (written before chaining, or inserted by hand)"]


def test_a_rollout_chained_part_way_through_its_life():
    """Events written before chaining, then a chain from seq 1 (the store's migration-free start)."""
    old = [event(1) | {"id": "old-1"}, event(2) | {"id": "old-2"}]
    docs, head = chain(2)
    report = verify(old + docs, head)
    assert report.problems == [
        "event 'old-1' has no chain fields (written before chaining, or inserted by hand)",
        "event 'old-2' has no chain fields (written before chaining, or inserted by hand)"]
    assert verify(old, {"audit_seq": None, "audit_head": None}).checked == 2


def test_damaged_chain_fields():
    docs, head = chain(3)
    by_seq(docs, 2)["seq"] = "2"
    problems = verify(docs, head).problems
    assert problems[0] == "event 'input-2' was edited after it was written: its chain fields are damaged"
    assert problems[1] == "event #2 is missing: #3 follows #1 (deleted?)"


def test_a_value_no_event_holds_reads_as_an_edit():
    docs, head = chain(2)
    by_seq(docs, 1)["detail"] = {"x": {1, 2}}
    assert verify(docs, head).problems == [
        "event 'input-1' (#1) was edited after it was written: its hash does not match its content"]

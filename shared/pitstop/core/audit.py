"""The audit chain: each event of a rollout carries the hash of the one before it (issue #8).

The store seals every event it writes: `seq` (its place in the rollout's trail, from 1), `prev_hash`
(the hash of event seq - 1, GENESIS for the first) and `hash` (sha256 over the whole event, seq and
prev_hash included). The rollout document keeps the head (`audit_seq`, `audit_head`), written in the
same batch as the event. So an event edited after it was written no longer matches its hash, one
deleted leaves a gap, one reordered or replaced breaks the link of the next, and deleting the last
ones leaves the trail short of the head. `verify` finds each of these and says where.

What a chain cannot show: someone who can write Firestore can recompute every hash and the head. The
engine logs each event's hash (Cloud Logging, another system) as a witness of what was written.

Pure: no I/O. The hash is over the event as Firestore returns it, so it verifies after a round trip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

GENESIS = "0" * 64  # the prev_hash of a rollout's first event
CHAIN = ("seq", "prev_hash", "hash")


def canonical(doc: dict[str, Any]) -> bytes:
    """A stable serialization of an event document: sorted keys, no whitespace, UTF-8, datetimes in UTC
    RFC 3339 with microseconds (what Firestore keeps), without the `hash` field itself."""
    body = {k: v for k, v in doc.items() if k != "hash"}
    return json.dumps(_plain(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


def seal(doc: dict[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """`doc` as the store writes it: placed at `seq` after the event hashed `prev_hash`, and hashed."""
    out = {k: v for k, v in doc.items() if k != "hash"}
    out.update(seq=seq, prev_hash=prev_hash)
    out["hash"] = event_hash(out)
    return out


def next_link(rollout_doc: dict[str, Any] | None) -> tuple[int, str]:
    """(seq, prev_hash) of the next event of a rollout, from its document's head. A rollout written
    before chaining has no head: its chain starts at its next event."""
    head = rollout_doc or {}
    if isinstance(head.get("audit_seq"), int) and head.get("audit_head"):
        return head["audit_seq"] + 1, head["audit_head"]
    return 1, GENESIS


@dataclass(frozen=True)
class Report:
    checked: int  # events looked at
    problems: list[str] = field(default_factory=list)  # sentences, the first break first
    head: str | None = None  # the hash the intact chain ends at (compare with the engine's log)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(events: list[dict[str, Any]], head: dict[str, Any] | None) -> Report:
    """Check the stored event documents of one rollout (any order) against its head: `{"audit_seq": n,
    "audit_head": hash}` from the rollout document (both None if it was written before chaining), or
    None to check the events alone (no rollout document to compare with: the tail is not checked)."""
    problems: list[str] = []
    chained: dict[int, list[dict[str, Any]]] = {}
    for doc in sorted(events, key=lambda d: str(d.get("id"))):
        if all(doc.get(k) is None for k in CHAIN):
            problems.append(f"event {_name(doc)} has no chain fields (written before chaining, or inserted by hand)")
        elif not _is_seq(doc.get("seq")) or not isinstance(doc.get("hash"), str):
            problems.append(f"event {_name(doc)} was edited after it was written: its chain fields are damaged")
        else:
            chained.setdefault(doc["seq"], []).append(doc)

    expected, prev, last = 1, GENESIS, None  # the seq due next, the hash it must follow, the event before it
    for seq in sorted(chained):
        docs = chained[seq]
        if len(docs) > 1:
            names = ", ".join(_name(d) for d in docs[:-1]) + f" and {_name(docs[-1])}"
            problems.append(f"events {names} {'both' if len(docs) == 2 else 'all'} claim #{seq} "
                            "(copied, or inserted by hand)")
            followed = {d.get("prev_hash") for d in chained.get(seq + 1, [])}
            # Go on with the one that fits: intact, linked to the one before, and followed by the next.
            docs.sort(key=lambda d: (not _intact(d), d.get("prev_hash") != prev, d["hash"] not in followed))
        doc = docs[0]
        if not _intact(doc):
            problems.append(f"event {_name(doc)} (#{seq}) was edited after it was written: "
                            "its hash does not match its content")
        if seq > expected:
            gap = f"#{expected}" if seq == expected + 1 else f"#{expected}–#{seq - 1}"
            after = f"follows #{expected - 1}" if last else "is the first"
            problems.append(f"event{'s' if seq > expected + 1 else ''} {gap} "
                            f"{'are' if seq > expected + 1 else 'is'} missing: #{seq} {after} (deleted?)")
        elif doc.get("prev_hash") != prev:
            before = f"{_name(last)} (#{last['seq']})" if last else "the start of the trail"
            problems.append(f"event {_name(doc)} (#{seq}) does not follow {before}: its prev_hash is "
                            f"{_short(doc.get('prev_hash'))}, not {_short(prev)} (reordered or replaced)")
        expected, prev, last = seq + 1, doc["hash"], doc

    if head is not None:
        problems += _check_head(last, head)
    return Report(checked=len(events), problems=problems, head=prev if last and not problems else None)


def _check_head(last: dict[str, Any] | None, head: dict[str, Any]) -> list[str]:
    seq, hash_ = head.get("audit_seq"), head.get("audit_head")
    end = last["seq"] if last else 0
    if seq is None and hash_ is None:
        return [f"the rollout has no chain head, yet its trail is chained up to #{end} (the head was removed)"] \
            if last else []
    if not _is_seq(seq) or not isinstance(hash_, str):
        return [f"the rollout's chain head is damaged: audit_seq {seq!r}, audit_head {_short(hash_)}"]
    if end < seq:
        n = seq - end
        ends = f"ends at #{end}" if last else "has no chained event"
        which = "the last event was" if n == 1 else f"the last {n} events were"
        return [f"the trail {ends} but the rollout's head says #{seq} ({which} deleted)"]
    if end > seq:
        return [f"the trail goes on to #{end} but the rollout's head says #{seq} "
                f"(events after #{seq} were inserted by hand)"]
    if last["hash"] != hash_:
        return [f"the last event {_name(last)} (#{end}) hashes to {_short(last['hash'])} but the rollout's head "
                f"says {_short(hash_)} (the event was replaced, or the head edited)"]
    return []


def _intact(doc: dict[str, Any]) -> bool:
    try:
        return event_hash(doc) == doc.get("hash")
    except (TypeError, ValueError):  # a value no event is written with: edited by hand
        return False


def _plain(value: Any) -> Any:
    """`value` as JSON types; a datetime as UTC RFC 3339 with microseconds (naive: UTC, as Firestore reads it)."""
    if isinstance(value, datetime):
        t = value.astimezone(timezone.utc) if value.tzinfo else value
        return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
                f".{t.microsecond:06d}Z")
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    raise TypeError(f"an audit event cannot hold a {type(value).__name__}")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"an audit event's map keys are strings, not {type(key).__name__}")
    return key


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _name(doc: dict[str, Any]) -> str:
    return repr(doc.get("id", "?"))


def _short(hash_: Any) -> str:
    return f"{hash_[:12]}…" if isinstance(hash_, str) and len(hash_) > 12 else repr(hash_)

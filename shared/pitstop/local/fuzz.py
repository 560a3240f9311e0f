"""Mutated Pub/Sub messages for the parsers, shared by tests/unit/test_fuzz.py and bench/fuzz_messages.py.

Each case starts from a valid message of one kind, shaped as GCP sends it (payloads.py), mutates it one to
three times (wrong types, missing fields, huge and deep values, odd Unicode, NaN and 2**64, dates out of
range, broken base64, non-JSON...) and takes the real path: the CloudEvent data a push becomes, then
`messages.envelope`, then the kind's parser. Whatever comes out must be a valid input or a BadMessage;
anything else is a crash. An accepted input must also hold the bounds that make it storable (`violations`).

A message the envelope refuses for its size or depth is also handed to the parser directly, as a
Python object: the parser must cope on its own (a huge policy name is cut, deep nesting refused).

Case `i` of seed `s` depends on nothing else (`case(s, i)` rebuilds it), so a crash is reproducible.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from pydantic import BaseModel

from pitstop.core import limits
from pitstop.core.messages import BadMessage, envelope, parse_alert, parse_build, parse_command, parse_health
from pitstop.core.models import AuditEvent
from pitstop.local.payloads import cloud_build, health_sample, incident

KINDS = ("build", "health", "alert", "alert_test", "command")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

# ---------------------------------------------------------------- valid messages, as GCP sends them


def _builds() -> list[dict[str, Any]]:
    facts = cloud_build("SUCCESS", build_id="0d97c63e-a349-4bf7-80d0-8f6e21786d87", now=NOW,
                        commit="a017b5e59a1cf9fdbed5999e1a9aced5404de4cd")
    return [
        facts,
        cloud_build("SUCCESS", build_id="5b1c2a9e-0000-4bf7-80d0-8f6e21786d87", tag="v1.2.3", branch=None, now=NOW),
        cloud_build("SUCCESS", build_id="7c1c2a9e-1111-4bf7-80d0-8f6e21786d87", now=NOW,
                    substitutions={"_SERVICE": "web", "_VERSION": "1.4.0"}),
        cloud_build("SUCCESS", build_id="8d1c2a9e-2222-4bf7-80d0-8f6e21786d87", with_images=False, now=NOW),
        cloud_build("FAILURE", build_id="9e1c2a9e-3333-4bf7-80d0-8f6e21786d87", now=NOW),
        cloud_build("WORKING", build_id="ae1c2a9e-4444-4bf7-80d0-8f6e21786d87", now=NOW),
    ]


def _healths() -> list[dict[str, Any]]:
    start = NOW - timedelta(minutes=5)
    return [
        health_sample("web", "web-v2-aaaa1111", start, NOW, 1200, 3, 250.0),
        health_sample("web", "web-v2-aaaa1111", start, NOW, 40, 0, 12.5, p50_ms=3.0, p95_ms=9.0,
                      rollout_id="web-production-us-central1-aaaa1111", source="cloud-monitoring"),
        health_sample("api", "api-00007-xyz", start, NOW, 0, 0, None, region="europe-west1"),
        # The baseline a sender may measure alongside (HealthSample's optional `stable`).
        dict(health_sample("web", "web-v2-aaaa1111", start, NOW, 500, 2, 90.0),
             stable={"revision": "web-v1-bbbb2222", "request_count": 4000, "error_count": 1, "latency_p99_ms": 80.0}),
    ]


def _alerts() -> list[dict[str, Any]]:
    return [incident("web", "web-00003-canary"), incident("web", None), incident("web", None, state="closed"),
            incident("api", "api-00002-abc", incident_id="0.abcdefghij", region="europe-west1")]


def _commands() -> list[dict[str, Any]]:
    # No `actor`: who sent a command is the verified email of its ID token, never a payload field.
    return [
        {"action": "promote", "service": "web", "full": True},
        {"action": "pause", "service": "web", "environment": "production", "region": "us-central1",
         "reason": "investigating latency"},
        {"action": "rollback", "service": "web", "to_version": "v1.2.3"},
        {"action": "abort", "rollout_id": "web-production-us-central1-aaaa1111", "id": "cmd-42"},
        {"action": "deploy", "service": "web", "environment": "production", "ref": "v1.2.3"},
    ]


SEEDS: dict[str, list[dict[str, Any]]] = {
    "build": _builds(), "health": _healths(), "alert": _alerts(), "alert_test": [incident("web", None, test=True)],
    "command": _commands(),
}

PARSERS: dict[str, Callable[[dict[str, Any], dict[str, str], str], BaseModel]] = {
    "build": lambda payload, attributes, mid: parse_build(payload, attributes),
    "health": lambda payload, attributes, mid: parse_health(payload),
    "alert": lambda payload, attributes, mid: parse_alert(payload),
    "alert_test": lambda payload, attributes, mid: parse_alert(payload),
    "command": lambda payload, attributes, mid: parse_command(payload, mid),
}

# ---------------------------------------------------------------- nasty values


class Deep:
    """A value nested `levels` deep. json.dumps itself recurses, so the text is spliced in (`_dumps`)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def text(self) -> str:
        return "[" * self.levels + "]" * self.levels

    def value(self) -> Any:
        out: Any = []
        for _ in range(self.levels - 1):
            out = [out]
        return out


NUMBERS: list[Any] = [0, -1, 1, -0.0, 0.5, 1e308, -1e308, 1e20, 5e-324, math.nan, math.inf, -math.inf,
                      2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30, True, False, None]
TEXTS: list[str] = [
    "", " ", "x", "\x00", "web\x00", "\ud800", "a\udfffb", "\ud83d", "\u202eevil\u202c", "مرحبا", "😀" * 40,
    "e\u0301", "\ufeff", "a/b", "../..", "__x__", "%s%n", "{}", "null", "NaN", "1e20", "-1", "9" * 5000,
    "WEB", "web-00003-canary", "sha256:" + "0" * 63, "sha256:" + "A" * 64, "sha256:" + "0" * 64 + "\n",
    "md5:" + "0" * 32, "sha512:" + "f" * 128, "sha256:" + "g" * 64, "open", "CLOSED", "SUCCESS", "success",
    "x" * 64, "x" * 129, "x" * 1001,
]
DATES: list[Any] = [
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z",
    "2000-01-01T00:00:00Z", "2099-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01", "yesterday", "2026-01-01T25:00:00Z",
    "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00.123456789Z", "2026-03-01T12:00:00+14:00",
    1746178794, 1746178794.5, "1746178794", 1e20, -1, 0, 946684800, 4102444800, 253402300800,
]
HUGE_BYTES = 1_100_000  # over Firestore's 1 MiB document limit, and over the envelope's 256 KiB
FITTING_BYTES = 200_000  # under the envelope's limit: reaches the parser


def _huge(rng: random.Random) -> Any:
    # Mostly values that pass the envelope (the parser must bound them); a few that it refuses.
    return rng.choice([
        lambda: "x" * HUGE_BYTES, lambda: "y" * FITTING_BYTES, lambda: "é" * (FITTING_BYTES // 2),
        lambda: "\u202e" * 20_000, lambda: list(range(10_000)), lambda: {f"k{i}": i for i in range(3_000)},
        lambda: ["x" * 500] * 300,
    ])()


# ---------------------------------------------------------------- mutations


def _slots(tree: Any) -> list[tuple[Any, Any]]:
    """(container, key) for every value in the tree (at most 50 children per container)."""
    slots, stack = [], [tree]
    while stack:
        node = stack.pop()
        children = (list(node.items())[:50] if isinstance(node, dict) else
                    list(enumerate(node))[:50] if isinstance(node, list) else [])
        for key, child in children:
            slots.append((node, key))
            stack.append(child)
    return slots


def _replacement(rng: random.Random, old: Any) -> tuple[str, Any]:
    """A new value for a slot, and its description."""
    pick = rng.random()
    if pick < 0.20:
        value = rng.choice(NUMBERS)
        return f"number {value!r}", value
    if pick < 0.38:
        value = rng.choice(TEXTS)
        return f"text {limits.preview(value, 30)}", value
    if pick < 0.50:
        value = rng.choice(DATES)
        return f"date {value!r}", value
    if pick < 0.62:  # another type for the same content
        value = rng.choice([[old], {"value": old}, str(old)[:200], len(str(old)), None, bool(old)])
        return f"type {type(old).__name__} -> {type(value).__name__}", value
    if pick < 0.72 and isinstance(old, str):  # odd Unicode inside a real value
        odd = rng.choice(["\ud800", "\x00", "\u202e", "\u200f", "\udc80", "😀", "\u0000\u0000", "\ufffd"])
        at = rng.randrange(len(old) + 1)
        return f"insert {odd!r}", old[:at] + odd + old[at:]
    if pick < 0.78:
        value = _huge(rng)
        return f"huge {type(value).__name__} of {len(value)}", value
    if pick < 0.84:
        levels = rng.choice([33, 100, 1000, 5000])
        return f"nested {levels} levels", Deep(levels)
    if pick < 0.92 and isinstance(old, (int, float)) and not isinstance(old, bool):
        value = rng.choice([-old, old * 2**40, old + 0.5, -1, 2**63, math.nan])
        return f"number {old!r} -> {value!r}", value
    value = rng.choice([{}, [], [None], {"": ""}, {"\ud800": 1}, [1, "a", None]])
    return f"container {value!r}", value


def mutate(tree: dict[str, Any], rng: random.Random) -> str:
    """Change one value in place (or delete it, or add one); describe what was done."""
    slots = _slots(tree)
    if not slots or rng.random() < 0.05:
        key = rng.choice(["extra", "", "\ud800", "id", "kind", "x" * 300])
        tree[key] = rng.choice(NUMBERS + TEXTS[:5])
        return f"add field {limits.preview(key, 30)}"
    container, key = rng.choice(slots)
    path = f"[{limits.preview(key, 30)}]"
    if rng.random() < 0.15:
        del container[key]
        return f"delete {path}"
    what, value = _replacement(rng, container[key])
    container[key] = value
    return f"{path} = {what}"


def _window(tree: dict[str, Any], rng: random.Random) -> str:
    """A health sample's window made implausible as a whole (each end alone may look fine)."""
    start = NOW - timedelta(minutes=5)
    span = rng.choice([timedelta(days=2), timedelta(0), -timedelta(minutes=1), timedelta(days=1),
                       timedelta(days=1, seconds=1), timedelta(days=36500)])
    tree["window_start"] = start.isoformat()
    try:
        tree["window_end"] = (start + span).isoformat()
    except OverflowError:
        tree["window_end"] = "9999-12-31T23:59:59Z"
    return f"window of {span}"


def dumps(tree: Any) -> str:
    """JSON text of a tree, NaN and Infinity included (Python's json reads them), deep values spliced in."""
    deep: list[Deep] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Deep):
            deep.append(value)
            return f"__deep_{len(deep) - 1}__"
        raise TypeError(type(value).__name__)

    text = json.dumps(tree, default=mark)
    for i, d in enumerate(deep):
        text = text.replace(f'"__deep_{i}__"', d.text(), 1)
    return text


def _materialise(tree: Any) -> Any:
    """The tree as the parser would see it, Deep values built for real (iteratively: they are deep)."""
    if isinstance(tree, Deep):
        return tree.value()
    if isinstance(tree, dict):
        return {k: _materialise(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_materialise(v) for v in tree]
    return tree


def event_data(text: bytes | str | None, attributes: Any, mid: Any) -> dict[str, Any]:
    """The CloudEvent `data` of a Pub/Sub push carrying `text` (base64-encoded when bytes)."""
    data = text if not isinstance(text, bytes) else base64.b64encode(text).decode()
    message: dict[str, Any] = {"attributes": attributes, "messageId": mid, "publishTime": "2026-03-01T12:00:00Z"}
    if data is not None:
        message["data"] = data
    return {"message": message, "subscription": "projects/pitstop-local/subscriptions/pitstop-push"}


def _broken_envelope(rng: random.Random, text: str, attributes: dict[str, str], mid: str) -> tuple[str, Any]:
    """What the transport can get wrong around a good payload."""
    raw = text.encode()
    b64 = base64.b64encode(raw).decode()
    choices: list[tuple[str, Callable[[], Any]]] = [
        ("bad base64 character", lambda: event_data(b64[:-4] + "!!!!", attributes, mid)),
        ("base64 without padding", lambda: event_data(b64.rstrip("="), attributes, mid)),
        ("base64 of base64", lambda: event_data(base64.b64encode(b64.encode()), attributes, mid)),
        ("not UTF-8", lambda: event_data(b"\xff\xfe" + raw, attributes, mid)),
        ("not JSON", lambda: event_data(raw[: len(raw) // 2], attributes, mid)),
        ("JSON array", lambda: event_data(f"[{text}]".encode(), attributes, mid)),
        ("JSON scalar", lambda: event_data(rng.choice([b"null", b"42", b'"text"', b"NaN", b"true"]), attributes,
                                           mid)),
        ("empty data", lambda: event_data(b"", attributes, mid)),
        ("no data", lambda: event_data(None, attributes, mid)),
        ("data as object", lambda: event_data({"payload": "not encoded"}, attributes, mid)),
        ("attributes as list", lambda: event_data(raw, list(attributes.items()), mid)),
        ("attribute not a string", lambda: event_data(raw, {**attributes, "status": 3}, mid)),
        ("attributes huge", lambda: event_data(raw, {f"k{i}": "v" for i in range(500)}, mid)),
        ("message id odd", lambda: event_data(raw, attributes, rng.choice([None, 7, ["1"], {"a": 1}, "9" * 500]))),
        ("no message", lambda: {"data": b64}),
        ("event data not an object", lambda: rng.choice([None, [1], "text", 5])),
        ("payload 300 KB", lambda: event_data(text[:-1].encode() + b',"pad":"' + b"p" * 300_000 + b'"}',
                                              attributes, mid)),
        ("JSON 1,000 levels", lambda: event_data(b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}", attributes, mid)),
        ("JSON 100,000 levels", lambda: event_data(b"[" * 100_000 + b"]" * 100_000, attributes, mid)),
        ("number of 5,000 digits", lambda: event_data(b'{"id":' + b"9" * 5000 + b"}", attributes, mid)),
        ("trailing garbage", lambda: event_data(raw + b" {}", attributes, mid)),
        ("NUL bytes", lambda: event_data(raw.replace(b'"', b'"\x00', 1), attributes, mid)),
        ("escaped lone surrogate", lambda: event_data(raw.replace(b'":"', b'":"\\ud800', 1), attributes, mid)),
    ]
    what, make = rng.choice(choices)
    return what, make()


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    seed: int
    index: int
    kind: str
    mutations: list[str]
    event_data: Any
    tree: Any  # the mutated payload before encoding; None when the envelope itself was broken


def case(seed: int, index: int) -> Case:
    """Case `index` of run `seed`: the same every time, whatever ran before it."""
    rng = random.Random(f"{seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    tree = json.loads(json.dumps(rng.choice(SEEDS[kind])))  # a fresh copy
    attributes = ({"buildId": str(tree.get("id")), "status": str(tree.get("status"))} if kind == "build" else {})
    mid = str(rng.randrange(10**15, 10**16))
    mutations: list[str] = []
    if kind == "health" and rng.random() < 0.1:
        mutations.append(_window(tree, rng))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        mutations.append(mutate(tree, rng))
    text = dumps(tree)
    if rng.random() < 0.12:
        what, broken = _broken_envelope(rng, text, attributes, mid)
        return Case(seed, index, kind, mutations + [f"envelope: {what}"], broken, None)
    return Case(seed, index, kind, mutations, event_data(text.encode(), attributes, mid), tree)


# ---------------------------------------------------------------- outcomes and invariants


@dataclass
class Tally:
    cases: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    direct_accepted: Counter = field(default_factory=Counter)  # refused by the envelope, parser alone accepts
    failures: list[str] = field(default_factory=list)  # the first few crashes and violations, described
    seconds: float = 0.0

    def total(self, name: str) -> int:
        return sum(getattr(self, name).values())

    def fail(self, c: Case, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(f"case({c.seed}, {c.index}) {c.kind} {c.mutations}: {limits.truncate(what, 600)}")


def run_case(c: Case, tally: Tally) -> None:
    tally.cases[c.kind] += 1
    try:
        payload, attributes, mid = envelope(c.event_data)
    except BadMessage as err:
        tally.refused[c.kind] += 1
        if c.tree is not None and ("larger than" in str(err) or "nests" in str(err)):
            _direct(c, tally)
        return
    except Exception as err:  # noqa: BLE001 - a crash is what we count
        tally.crashes[c.kind] += 1
        tally.fail(c, f"envelope crashed: {type(err).__name__}: {err}")
        return
    _parse(c, tally, payload, attributes, mid, direct=False)


def _direct(c: Case, tally: Tally) -> None:
    attributes = c.event_data["message"].get("attributes") or {}
    _parse(c, tally, _materialise(c.tree), attributes, "1234567890", direct=True)


def _parse(c: Case, tally: Tally, payload: Any, attributes: dict[str, str], mid: str, direct: bool) -> None:
    try:
        model = PARSERS[c.kind](payload, attributes, mid)
    except BadMessage as err:
        if not direct:
            tally.refused[c.kind] += 1
        if not str(err) or len(str(err)) > limits.MAX_TEXT or not limits.is_unicode(str(err)):
            tally.violations[c.kind] += 1
            tally.fail(c, f"unusable reason ({len(str(err))} characters): {limits.preview(str(err), 200)}")
        return
    except Exception as err:  # noqa: BLE001
        tally.crashes[c.kind] += 1
        tally.fail(c, f"{'parser alone' if direct else 'parser'} crashed: {type(err).__name__}: {err}")
        return
    (tally.direct_accepted if direct else tally.accepted)[c.kind] += 1
    try:
        problems = violations(model)
    except Exception as err:  # noqa: BLE001 - checking must not crash either
        problems = [f"checking crashed: {type(err).__name__}: {err}"]
    if problems:
        tally.violations[c.kind] += 1
        tally.fail(c, "; ".join(problems))


_IDS = ("id", "build_id", "incident_id", "trigger_id", "commit", "version", "source", "rollout_id", "to_version")
_NAMES = ("service", "region", "revision", "location", "project", "environment")


def violations(model: BaseModel) -> list[str]:
    """How an accepted input breaks the bounds that make it storable and plausible; [] if it holds them."""
    problems: list[str] = []
    data = model.model_dump()
    _walk(data, type(model).__name__, problems)
    try:
        json.dumps(model.model_dump(mode="json"), allow_nan=False)  # what a log line or a publish does with it
        if type(model).model_validate_json(model.model_dump_json()) != model:
            problems.append("changes in a JSON round trip")
    except ValueError as err:  # NaN or inf; refused when read back
        problems.append(f"does not survive a JSON round trip: {limits.truncate(str(err), 200)}")
    artifact = getattr(model, "artifact", None)
    digest = artifact.digest if artifact is not None else getattr(model, "digest", None)
    if digest is not None and not limits.DIGEST.fullmatch(digest):
        problems.append(f"digest {digest!r} is not sha256:<64 hex>")
    start, end = getattr(model, "window_start", None), getattr(model, "window_end", None)
    if start and end and not timedelta(0) < end - start <= limits.MAX_WINDOW:
        problems.append(f"window {start} .. {end} is empty or longer than {limits.MAX_WINDOW}")
    audit = AuditEvent(id=model.id or "x", at=NOW, input=model.kind, actor=getattr(model, "actor", "fuzz"),
                       decision="fuzz", reasons=[repr(model)], state_after="fuzz", detail=data).to_doc()
    size = limits.doc_bytes(audit)
    if size > limits.MAX_DOC_BYTES:
        problems.append(f"audit document of {size} bytes")
    _walk(audit, "audit", problems)
    return problems


def _walk(value: Any, path: str, problems: list[str]) -> None:
    name = path.rsplit(".", 1)[-1]
    if isinstance(value, str):
        limit = (limits.MAX_ID if name in _IDS else limits.MAX_NAME if name in _NAMES else limits.MAX_TEXT)
        if len(value) > limit:
            problems.append(f"{path}: {len(value)} characters, more than {limit}")
        if not limits.is_unicode(value):
            problems.append(f"{path}: not valid Unicode")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not limits.INT64_MIN <= value <= limits.INT64_MAX or (name.endswith("_count") and value < 0):
            problems.append(f"{path}: {limits.preview(value)} out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{path}: {value} is not finite")
    elif isinstance(value, datetime):
        if value.tzinfo is None or not limits.EARLIEST <= value < limits.LATEST:
            problems.append(f"{path}: {value!r} outside {limits.EARLIEST:%Y}..{limits.LATEST:%Y} or without a zone")
    elif isinstance(value, date):
        problems.append(f"{path}: a date without a time")
    elif isinstance(value, dict):
        if len(value) > limits.MAX_ENTRIES:
            problems.append(f"{path}: {len(value)} entries")
        for k, v in value.items():
            _walk(k, f"{path} key", problems)
            _walk(v, f"{path}.{k}", problems)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, f"{path}.{i}", problems)
    else:
        problems.append(f"{path}: unexpected {type(value).__name__}")


def run(cases: int, seed: int) -> Tally:
    tally = Tally()
    began = time.perf_counter()
    for index in range(cases):
        run_case(case(seed, index), tally)
    tally.seconds = time.perf_counter() - began
    return tally


def table(tally: Tally) -> str:
    """Counts by kind, one line each, and the total."""
    rows = [f"{'kind':<11} {'cases':>8} {'accepted':>9} {'refused':>8} {'crashes':>8} {'violations':>10} "
            f"{'direct ok':>9}"]
    for kind in (*KINDS, "total"):
        pick = (lambda c: sum(c.values())) if kind == "total" else (lambda c: c[kind])
        rows.append(f"{kind:<11} {pick(tally.cases):>8} {pick(tally.accepted):>9} {pick(tally.refused):>8} "
                    f"{pick(tally.crashes):>8} {pick(tally.violations):>10} {pick(tally.direct_accepted):>9}")
    return "\n".join(rows)

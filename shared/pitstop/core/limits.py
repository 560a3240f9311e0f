"""Bounds on what comes in from outside, shared by the parsers (messages.py) and the input models.

Whatever an input carries ends up in Firestore (the rollout, its audit trail), and Firestore refuses a
document over 1 MiB, an integer outside int64 and a string that is not UTF-8. A value outside these bounds
must be refused (or, for free text, cut) while parsing, where the message can still be acknowledged with
a reason; found later, at commit, it fails on every delivery and Pub/Sub redelivers it forever.
"""

from __future__ import annotations

import json
import re
import reprlib
from datetime import datetime, timedelta, timezone
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

MAX_ID = 128  # ids: build, incident, input, trigger, commit, version
MAX_NAME = 63  # Cloud Run service and revision names, regions, environments
MAX_LABEL = 256  # git refs, repository and trigger names, actors, Pub/Sub attribute keys
MAX_TEXT = 1000  # free text: summaries, reasons, status details, policy names, URLs
MAX_ITEMS = 100  # list entries and map keys kept in an audit document
MAX_BUCKETS = 100  # latency histogram buckets in a sample (Monitoring's layouts hold fewer)
MAX_ENTRIES = 200  # map entries in an input: Cloud Build substitutions, Pub/Sub attributes (at most 100)

# Real messages are a few KiB (a Cloud Build resource with many steps stays well under 64 KiB), but an
# incident with a 1 MB policy name is still an incident that must roll back: accept up to 4 MiB (Pub/Sub
# allows 10 MB) and truncate the text, rather than refuse it whole.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# Cloud Build's resource nests about 6 levels, an incident 4. Deeper is not a GCP message, and 1,000
# levels is enough to exhaust Python's recursion limit in json or pydantic.
MAX_DEPTH = 32
MAX_DOC_BYTES = 100_000  # an audit document, well under Firestore's 1 MiB

# The parsers have no clock: plausible means this century. A sample's window is at most 8 days: the
# sampler's window runs from the end of what is judged, which a long hold (max_hold) can leave behind.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
MAX_WINDOW = timedelta(days=8)
# No request outlasts Cloud Run's 60-minute timeout, but a percentile read from Monitoring's exponential
# buckets can land above it: a day (a window's longest) refuses only what cannot be a measurement.
MAX_LATENCY_MS = 86_400_000.0

TRUNCATED = "…[truncated]"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to at most `limit` characters, the cut marked so nobody mistakes it for the whole."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON allows "\\ud800"): UTF-8, hence Firestore, cannot hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_unicode(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, the replacement character."""
    return text if is_unicode(text) else _SURROGATE.sub("\ufffd", text)


class _Preview(reprlib.Repr):
    """reprlib's bounded repr (Python 3.11's Repr takes no arguments: the bounds are set here), except that a long
    string keeps its beginning and is marked cut with "…" (reprlib keeps both ends and puts "..." between)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = 5
        self.maxdict = 5
        self.maxstring = self.maxlong = self.maxother = max(limit, 12)

    def repr_str(self, x: str, level: int) -> str:
        return repr(x) if len(x) <= self.maxstring else repr(x[: self.maxstring]) + "…"


def preview(value: Any, limit: int = 60) -> str:
    """A short, printable rendering of a value for an error message (never the 1 MB it may be).

    Bounded while it is built, not only cut after: a repr of everything costs what the value expands to, and
    a few hundred bytes of YAML aliases (a list of 9 references to a list of 9 references...) expand to
    megabytes. At most 3 levels and 5 entries per container are rendered, each scalar in about `limit`
    characters (at most 155 scalars in all), and the text is then cut to `limit`."""
    try:
        text = _Preview(limit).repr(value)
    except (RecursionError, ValueError):  # ints beyond 4,300 digits; a repr that fails on its own
        text = f"<{type(value).__name__}>"
    return truncate(text, limit)


def plausible_time(t: datetime) -> datetime:
    """`t` if it lies in 2000..2100; ValueError otherwise (also when it cannot even be expressed in UTC)."""
    try:
        utc = t.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # "9999-12-31T23:59:59-23:59" is in year 10000 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"{t.isoformat()} is not a time between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return t


# A JSON string (escapes included), what is not a bracket, an innermost pair: enough to measure depth
# without parsing, so a 1,000-level document is refused before json.loads recurses into it.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def nests_deeper(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in a JSON text nest more than `limit` levels."""
    if text.count("[") + text.count("{") <= limit:  # the common case, and cheap: not even that many brackets
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    # Each pass removes the innermost pairs, one level: at most limit + 1 passes over a short string, in C.
    for depth in range(limit + 1):
        if not brackets:
            return False
        if "[" * (limit + 1 - depth) in brackets or "{" * (limit + 1 - depth) in brackets:
            return True  # a bomb of plain openers: found at once, where removing pairs takes a pass each
        shorter = _INNERMOST.sub("", brackets)
        if shorter == brackets:  # unbalanced, so not JSON; json.loads may still recurse into its openers first
            return depth + brackets.count("[") + brackets.count("{") > limit
        brackets = shorter
    return True


# ---------------------------------------------------------------- documents

# Successively tighter (text, items, depth) bounds: the first that fits MAX_DOC_BYTES is used.
_BUDGETS = ((MAX_TEXT, MAX_ITEMS, 16), (200, 20, 8), (40, 5, 4))


def bounded(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` cut to fit Firestore: strings at most MAX_TEXT characters of valid UTF-8, lists and maps at
    most MAX_ITEMS entries, ints in int64, the whole under MAX_DOC_BYTES. Every cut is marked TRUNCATED."""
    for text, items, depth in _BUDGETS:
        out = _bound(doc, text, items, depth)
        if doc_bytes(out) <= MAX_DOC_BYTES:
            return out
    return out  # the tightest budget: 5 entries of 40 characters, 4 levels deep, cannot reach the limit


def doc_bytes(doc: Any) -> int:
    """The UTF-8 size of a document as JSON: close to, and above, what Firestore counts."""
    return len(json.dumps(doc, default=str, ensure_ascii=False).encode("utf-8"))


def _bound(value: Any, text: int, items: int, depth: int) -> Any:
    if isinstance(value, str):
        return truncate(valid_unicode(value), text)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):  # Firestore integers are int64: a larger one is kept as text
        return value if INT64_MIN <= value <= INT64_MAX else preview(value, text)
    if isinstance(value, (dict, list, tuple)) and depth <= 0:
        return TRUNCATED
    if isinstance(value, dict):
        out = {truncate(valid_unicode(str(k)), MAX_ID): _bound(v, text, items, depth - 1)
               for k, v in list(value.items())[:items]}
        if len(value) > items:
            out[TRUNCATED] = f"{len(value) - items} more entries"
        return out
    if isinstance(value, (list, tuple)):
        out_list = [_bound(v, text, items, depth - 1) for v in value[:items]]
        if len(value) > items:
            out_list.append(f"{TRUNCATED} {len(value) - items} more items")
        return out_list
    return value  # datetimes and other values Firestore stores as they are

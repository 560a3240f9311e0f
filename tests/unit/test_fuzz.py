"""Fuzzing the parsers: 10,000 mutated GCP messages with a fixed seed, through envelope and parser.

Each case is a valid Cloud Build, health sample, alert (1.2 and test) or command message, mutated
(pitstop.local.fuzz says how). Every one must become a valid input or a BadMessage, and every accepted
input must stay within the bounds that make it storable. `pytest -s` shows the counts;
bench/fuzz_messages.py runs the same fuzzer longer.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pitstop.core.limits import MAX_TEXT
from pitstop.core.models import Alert, HealthSample
from pitstop.local import fuzz

SEED = 20260301
CASES = 4_000  # bench/fuzz_messages.py runs 200,000


def test_no_payload_crashes_a_parser_or_is_accepted_out_of_bounds():
    tally = fuzz.run(CASES, SEED)
    print(f"\nfuzz seed {SEED}: {tally.total('cases')} cases in {tally.seconds:.1f} s\n{fuzz.table(tally)}")
    assert tally.total("cases") == CASES
    assert tally.total("crashes") == 0 and tally.total("violations") == 0, "\n".join(tally.failures)
    # A fuzzer whose mutations are all refused (or all harmless) tests nothing: each kind must see both.
    for kind in fuzz.KINDS:
        assert tally.accepted[kind] >= 0.05 * tally.cases[kind], f"too few {kind} messages accepted"
        assert tally.refused[kind] >= 0.2 * tally.cases[kind], f"too few {kind} messages refused"
    assert tally.direct_accepted["alert"] > 0, "no huge free text reached parse_alert to be cut"


def test_a_case_is_rebuilt_the_same_from_its_seed_and_index():
    assert fuzz.case(SEED, 1234).event_data == fuzz.case(SEED, 1234).event_data
    assert fuzz.case(SEED, 1234).event_data != fuzz.case(SEED + 1, 1234).event_data


def test_the_invariants_catch_what_validation_would_have_refused():
    """model_construct skips validation: what the checker must flag if a bound were ever lost."""
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    alert = Alert.model_construct(id="a", incident_id="i", state="open", policy="p" * (MAX_TEXT + 1),
                                  started_at=datetime(2101, 1, 1, tzinfo=timezone.utc))
    sample = HealthSample.model_construct(id="h", service="web", region="r", revision="web-1", window_start=at,
                                          window_end=at.replace(day=10), request_count=2**64, error_count=-1,
                                          latency_p99_ms=float("inf"), source="probe")
    alert_problems, sample_problems = " ".join(fuzz.violations(alert)), " ".join(fuzz.violations(sample))
    for fragment in ("policy: 1001 characters", "started_at"):
        assert fragment in alert_problems
    for fragment in ("request_count", "error_count", "latency_p99_ms", "window"):
        assert fragment in sample_problems


def _valid(kind: str, payload: dict) -> fuzz.Case:
    return fuzz.Case(SEED, 0, kind, [], fuzz.event_data(fuzz.dumps(payload).encode(), {}, "1"), payload)


def test_a_crash_is_counted_not_hidden(monkeypatch):
    def crash(payload, attributes, mid):
        raise OverflowError("timestamp out of range")

    tally = fuzz.Tally()
    monkeypatch.setitem(fuzz.PARSERS, "alert", crash)
    fuzz.run_case(_valid("alert", fuzz.SEEDS["alert"][0]), tally)
    assert tally.crashes["alert"] == 1 and "parser crashed: OverflowError" in tally.failures[0]


@pytest.mark.parametrize("kind", fuzz.KINDS)
def test_unmutated_messages_of_every_kind_are_accepted(kind):
    """The seeds are valid as GCP sends them: a refusal of an unmutated seed would be a parser bug."""
    tally = fuzz.Tally()
    for payload in fuzz.SEEDS[kind]:
        fuzz.run_case(_valid(kind, payload), tally)
    assert tally.accepted[kind] == len(fuzz.SEEDS[kind]), tally.failures

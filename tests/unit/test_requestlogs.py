"""The request-log path's pure part (core/requestlogs.py): entries as a sink exports them, de-duplication,
the estimate, the windows, and which windows are published (failures only, clear ones only)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from pitstop.core import requestlogs as rl
from pitstop.core.judge import judge

from sim import Sim, spec

T = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
# A Cloud Run request log entry as a Log Router sink publishes it (Cloud Logging's LogEntry JSON).
ENTRY = {
    "insertId": "65f1a2b3000c4d5e6f7a8b9c",
    "httpRequest": {"requestMethod": "GET", "requestUrl": "https://web-abc-uc.a.run.app/", "status": 503,
                    "responseSize": "120", "userAgent": "curl/8", "remoteIp": "203.0.113.9",
                    "latency": "0.012345s", "protocol": "HTTP/1.1"},
    "resource": {"type": "cloud_run_revision", "labels": {
        "project_id": "p", "location": "us-central1", "service_name": "web", "revision_name": "web-v2-b2000000",
        "configuration_name": "web"}},
    "timestamp": "2026-11-22T12:00:03.123456Z",
    "severity": "ERROR",
    "labels": {"instanceId": "0087"},
    "logName": "projects/p/logs/run.googleapis.com%2Frequests",
    "trace": "projects/p/traces/abc",
    "receiveTimestamp": "2026-11-22T12:00:03.300000Z",
}


def request(insert_id: str, status: int, at: datetime, revision: str = "web-v2-b2000000") -> rl.Request:
    return rl.Request(insert_id, at, "p", "us-central1", "web", revision, status, 12.0)


def test_an_exported_entry_is_read_with_its_labels_status_latency_and_time():
    r = rl.parse_entry(ENTRY)
    assert (r.project, r.location, r.service, r.revision) == ("p", "us-central1", "web", "web-v2-b2000000")
    assert (r.status, r.latency_ms, r.insert_id) == (503, pytest.approx(12.345), ENTRY["insertId"])
    assert r.at == datetime(2026, 11, 22, 12, 0, 3, 123456, tzinfo=timezone.utc)
    assert rl.parse_entry(json.loads(json.dumps(rl.entry_json(r)))) == r, "the local router writes the same shape"
    no_latency = {**ENTRY, "httpRequest": {"status": 200}}
    assert rl.parse_entry(no_latency).latency_ms is None


@pytest.mark.parametrize("change, reason", [
    ({"logName": "projects/p/logs/run.googleapis.com%2Fstdout"}, "is not a Cloud Run request log"),
    ({"resource": {"type": "cloud_function", "labels": {}}}, "resource.type"),
    ({"resource": {"type": "cloud_run_revision", "labels": {"project_id": "p"}}}, "resource.labels.location"),
    ({"insertId": None}, "insertId"),
    ({"httpRequest": {"status": "500"}}, "httpRequest.status"),
    ({"httpRequest": {"status": True}}, "httpRequest.status"),
    ({"httpRequest": None}, "httpRequest.status"),
    ({"httpRequest": {"status": 200, "latency": "12ms"}}, "httpRequest.latency"),
    ({"httpRequest": {"status": 200, "latency": "-1s"}}, "httpRequest.latency"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": "2026-11-22T12:00:03"}, "time zone"),
])
def test_malformed_entries_say_what_is_wrong(change, reason):
    with pytest.raises(rl.BadEntry, match=reason):
        rl.parse_entry({**ENTRY, **change})
    with pytest.raises(rl.BadEntry):
        rl.parse_entry(["not", "an", "object"])


def test_the_export_keeps_every_5xx_and_a_deterministic_share_of_the_rest():
    ids = [f"id{i}" for i in range(20_000)]
    assert all(rl.exported(i, 503, 0.01) for i in ids[:100])
    kept = sum(rl.exported(i, 200, 0.1) for i in ids)
    assert 1800 < kept < 2200
    assert [rl.exported(i, 200, 0.1) for i in ids[:50]] == [rl.exported(i, 404, 0.1) for i in ids[:50]], \
        "chosen by insertId alone, like sample(insertId, F)"


def test_duplicates_are_counted_once_and_the_memory_is_bounded():
    tally = rl.Tally(remember=3)
    assert tally.add(request("a", 500, T)) and not tally.add(request("a", 500, T))
    for i in "bcd":
        tally.add(request(i, 200, T))
    assert tally.count("p", "us-central1", "web", "web-v2-b2000000", T, T + timedelta(seconds=1)) == rl.Count(1, 3)
    assert tally.add(request("a", 500, T)), "forgotten: the oldest id leaves a bounded memory"


def test_windows_count_by_second_per_revision_and_old_counts_are_forgotten():
    tally = rl.Tally(keep=timedelta(seconds=60))
    for s in range(30):
        tally.add(request(f"n{s}", 500 if s % 3 == 0 else 200, T + timedelta(seconds=s)))
        tally.add(request(f"o{s}", 200, T + timedelta(seconds=s), revision="web-v1-aaaa"))
    count = tally.count("p", "us-central1", "web", "web-v2-b2000000", T + timedelta(seconds=10),
                        T + timedelta(seconds=20))
    assert count == rl.Count(errors=3, ok_seen=7)  # seconds 10..19: 12, 15 and 18 answered 5xx
    assert count.requests(0.1) == 3 + 70
    assert tally.services() == {("p", "us-central1", "web")}
    tally.forget(T + timedelta(seconds=75))
    assert tally.count("p", "us-central1", "web", "web-v1-aaaa", T, T + timedelta(seconds=30)) == rl.Count(0, 15)
    tally.forget(T + timedelta(seconds=200))
    assert tally.services() == set()


@pytest.mark.parametrize("errors, ok_seen, clear", [
    (11, 1, True),  # q 0.92 of 12 entries seen: 30 % errors or more
    (9, 1, False),  # q 0.9 of 10 entries: 5 in 10,000 at the limit, not clear enough
    (3, 0, False),  # too few entries for any confidence
    (16, 4, True),
    (12, 7, False),  # ~17 % perhaps, but 19 entries seen do not say so at z = 3
    (5, 20, False),  # 5 errors and ~200 good requests: 2.4 %
    (20, 40, False),  # ~5 %: at the limit, not over it
    (60, 40, True),  # ~13 %
])
def test_a_failure_is_clear_only_beyond_the_noise_of_the_sample(errors, ok_seen, clear):
    assert rl.clearly_failing(rl.Count(errors, ok_seen), 0.1, 0.05) is clear


def test_a_canary_with_few_entries_of_its_own_is_judged_by_its_share_of_the_service():
    """At 5 % of the service, 10 errors and 3 good entries seen are not clear on their own; the service's 72
    entries (F = 0.1) say the canary had at most ~41 requests, where 10 errors are far over 5 %."""
    canary = rl.Count(errors=10, ok_seen=3)
    assert not rl.clearly_failing(canary, 0.1, 0.05)
    service = rl.Count(errors=12, ok_seen=60)
    assert rl.clearly_failing_by_share(10, service, 0.05, 0.1, 0.05)
    assert not rl.clearly_failing_by_share(4, service, 0.05, 0.1, 0.05), "4 errors in ~30-41 requests: noise"
    assert not rl.clearly_failing_by_share(9, service, 0.5, 0.1, 0.05), "at 50 % the canary had ~300-400 requests"


def test_clear_failures_are_rare_for_a_healthy_revision():
    """A revision at 2 % errors (the healthy range's top), F = 0.1, windows of 10 to 60 entries seen."""
    rng = random.Random(7)
    q = 0.02 / (0.02 + 0.1 * 0.98)
    trials = 20_000
    false = 0
    for _ in range(trials):
        n = rng.randint(5, 60)
        errors = sum(rng.random() < q for _ in range(n))
        false += rl.clearly_failing(rl.Count(errors, n - errors), 0.1, 0.05)
    assert false / trials < 0.001


def rollout_at_step():
    sim = Sim(spec())
    sim.advance(5)
    sim.tick()
    r = sim.rollout
    assert r.state == "progressing" and r.step_started_at is not None
    return r


def test_a_clearly_failing_window_becomes_a_sample_the_judge_fails_with_stable_beside_it():
    r = rollout_at_step()
    now = r.step_started_at + timedelta(seconds=40)
    tally = rl.Tally()
    for s in range(12):  # the last 12 s: 30 % errors on the canary, the stable one healthy
        at = now - timedelta(seconds=12 - s)
        for k in range(3):
            tally.add(request(f"n{s}-{k}", 500 if k == 0 else 200, at, r.revision))
        tally.add(request(f"o{s}", 200, at, r.stable_revision))

    def counts(revision, start, end):
        return tally.count(r.project, r.region, r.service, revision, start, end)

    sample = rl.failing_sample(r, counts, 1.0, now)
    assert sample is not None and sample.source == "request-logs" and sample.rollout_id == r.id
    assert (sample.revision, sample.window_end, sample.window_start) == (r.revision, now, now - timedelta(seconds=5))
    assert sample.stable is not None and sample.stable.revision == r.stable_revision
    assert sample.latency_p99_ms is None, "latency stays Monitoring's"
    assert judge(sample, r.health, sample.stable).outcome == "fail"


def test_no_sample_for_a_healthy_canary_nor_a_rollout_not_watched():
    r = rollout_at_step()
    now = r.step_started_at + timedelta(seconds=40)
    tally = rl.Tally()
    for s in range(60):
        tally.add(request(f"n{s}", 500 if s == 30 else 200, now - timedelta(seconds=60 - s), r.revision))

    def counts(revision, start, end):
        return tally.count(r.project, r.region, r.service, revision, start, end)

    assert rl.failing_sample(r, counts, 1.0, now) is None, "a pass is never claimed from logs"
    for s in range(60):
        tally.add(request(f"e{s}", 500, now - timedelta(seconds=60 - s), r.revision))
    assert rl.failing_sample(r, counts, 1.0, now) is not None
    done = r.model_copy(update={"state": "rolling_back"})
    assert rl.failing_sample(done, counts, 1.0, now) is None

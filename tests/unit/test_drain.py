"""The drain's shell (pitstop/drain.py) over fakes: what it acknowledges, counts and publishes, and in what
order; and the Cloud Tasks chain the tick arms (gcp/tasks.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pitstop.core import requestlogs as rl
from pitstop.drain import Drain, arm
from pitstop.gcp.subscription import Pulled
from pitstop.gcp.tasks import DrainChain

from sim import Sim, spec


class FakeSubscription:
    def __init__(self, batches, calls):
        self.batches, self.calls = list(batches), calls

    def pull(self, max_messages=1000, timeout=2.0):
        return self.batches.pop(0) if self.batches else []

    def ack(self, ack_ids):
        self.calls.append(("ack", list(ack_ids)))


class FakeStore:
    def __init__(self, rollouts):
        self.rollouts = rollouts

    def watched(self):
        return self.rollouts


class FakeEngine:
    def __init__(self, rollouts, now, calls):
        self.store, self.now, self.calls = FakeStore(rollouts), now, calls

    def clock(self):
        return self.now

    def publish_sample(self, sample):
        self.calls.append(("publish", sample))


def canary():
    sim = Sim(spec())
    sim.advance(5)
    sim.tick()
    return sim.rollout


def message(i, r, status, at):
    entry = rl.entry_json(rl.Request(f"id{i}", at, r.project, r.region, r.service, r.revision, status, 5.0))
    return Pulled(f"ack{i}", f"m{i}", json.dumps(entry).encode())


def test_a_failing_canary_is_published_then_everything_acknowledged_malformed_included(capsys):
    r = canary()
    now = r.step_started_at + timedelta(seconds=30)
    batch = [message(i, r, 500 if i % 2 else 200, now - timedelta(seconds=5)) for i in range(20)]
    batch += [message(3, r, 500, now - timedelta(seconds=5)),  # a duplicate of the export
              Pulled("ack-bad", "m-bad", b"{not json"), Pulled("ack-other", "m-other", b'{"logName": "x"}')]
    calls = []
    drain = Drain(FakeEngine([r], now, calls), FakeSubscription([batch], calls), fraction=1.0)
    counts = drain.run()
    assert counts == {"pulled": 23, "counted": 20, "duplicates": 1, "malformed": 2, "published": 1}
    assert [c[0] for c in calls] == ["publish", "ack"], "acknowledged after publishing"
    sample = calls[0][1]
    assert (sample.source, sample.error_count, sample.rollout_id) == ("request-logs", 10, r.id)
    assert set(calls[1][1]) == {m.ack_id for m in batch}
    # The next drain, before the rollout has decided: its failure is on its way, not published again.
    more = [message(100 + i, r, 500, now - timedelta(seconds=2)) for i in range(10)]
    drain.subscription.batches.append(more)
    drain.engine.now = now + timedelta(seconds=5)
    assert drain.run()["published"] == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    refused = [x for x in logged if x["severity"] == "ERROR"]
    assert [x["message_id"] for x in refused] == ["m-bad", "m-other"]
    assert all("Acknowledged; nothing counted" in x["message"] for x in refused)


def test_a_healthy_canary_publishes_nothing_and_an_empty_pull_reads_nothing():
    r = canary()
    now = r.step_started_at + timedelta(seconds=30)
    calls = []
    healthy = [message(i, r, 200, now - timedelta(seconds=3)) for i in range(40)]
    drain = Drain(FakeEngine([r], now, calls), FakeSubscription([healthy], calls), fraction=1.0)
    assert drain.run()["published"] == 0
    assert [c[0] for c in calls] == ["ack"]

    class Untouched(FakeStore):
        def watched(self):
            raise AssertionError("nothing counted: no Firestore read")

    engine = FakeEngine([], now + timedelta(minutes=10), [])
    engine.store = Untouched([])
    assert Drain(engine, FakeSubscription([], []), fraction=1.0).run()["pulled"] == 0


def test_the_chain_names_one_task_per_5_s_slot_past_the_next_tick(monkeypatch):
    chain = DrainChain("projects/p/locations/r/queues/pitstop-drain", "https://drain.run.app/", "inv@p.iam")
    now = datetime(2026, 11, 22, 12, 0, 2, tzinfo=timezone.utc)
    slots = chain.slots(now)
    assert slots[0] == datetime(2026, 11, 22, 12, 0, 5, tzinfo=timezone.utc) and len(slots) == 14
    assert all((b - a) == timedelta(seconds=5) for a, b in zip(slots, slots[1:]))
    task = chain.task(slots[0])["task"]
    assert task["name"] == f"{chain.queue}/tasks/drain-{int(slots[0].timestamp())}"
    assert task["httpRequest"]["oidcToken"] == {"serviceAccountEmail": "inv@p.iam", "audience": chain.url}

    class Session:
        def __init__(self):
            self.names = set()

        def post(self, url, json, timeout):
            taken = json["task"]["name"] in self.names
            self.names.add(json["task"]["name"])
            return type("R", (), {"status_code": 409 if taken else 200, "raise_for_status": lambda self: None})()

    session = Session()
    assert chain.arm(now, session) == 14
    assert chain.arm(now + timedelta(seconds=60), session) == 12, "re-arming: only the new slots are created"
    # No queue configured (the local stack drives its drain): the tick arms nothing.
    monkeypatch.delenv("PITSTOP_DRAIN_QUEUE", raising=False)
    assert DrainChain.from_env() is None
    arm([(canary(), None)], now)

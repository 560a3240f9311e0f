"""Properties of `decide` over arbitrary input sequences (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitstop.core import machine
from pitstop.core.models import TERMINAL, Alert, Applied, ApplyTraffic, HealthSample, Superseded, Tick

# Inputs that name themselves by content; commands and Cloud Run failures rely on the store's dedupe.
REPLAY_SAFE = (HealthSample, Tick, Alert, Applied, Superseded)

from sim import Sim, spec

# Every state a state may lead to, by the machine's own table (decide also checks it per input).
LEGAL = {state: set().union(*row.values()) if row else set() for state, row in machine.TRANSITIONS.items()}

CANARY = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {canary: {steps: [{weight: 5, pause: 1m}, {weight: 30, pause: 2m, approve: true}, {weight: 60}], bake: 1m}}
health: {min_requests: 20, no_data_timeout: 2m}
max_hold: 10m
"""
BLUE_GREEN = """
service: web
regions: [us-central1]
match: {repo: web}
strategy: {blue_green: {verify: 1m, bake: 2m, approve: true}}
health: {min_requests: 20}
"""

# Mostly healthy samples of the new revision, so that runs reach the later states too.
sample = st.tuples(
    st.just("sample"), st.sampled_from([0, 10, 100, 300]), st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.5]),
    st.sampled_from([100.0, 120.0, 900.0, 2500.0]), st.sampled_from(["new", "new", "new", "stable", "other"]),
    st.sampled_from([True, True, True, False]),
)
wait = st.tuples(st.just("wait"), st.integers(1, 400))
step = st.one_of(
    wait, wait, sample, sample, sample,
    st.tuples(st.just("tick")),
    st.tuples(st.just("tick")),
    st.tuples(st.just("command"), st.sampled_from(["promote", "pause", "resume", "abort", "approve"]),
              st.booleans()),
    st.tuples(st.just("alert"), st.sampled_from(["open", "closed"]), st.booleans()),
    st.tuples(st.just("apply_ok")),
    st.tuples(st.just("apply_ok")),
    st.tuples(st.just("apply_fail"), st.booleans()),
    st.tuples(st.just("superseded")),
    st.tuples(st.just("replay")),
)


def run(sim: Sim, program) -> list:
    """Drive the machine; return the decisions taken, checking invariants after each."""
    seen: set[str] = set()
    last_input = None
    rolled_back = False
    for op in program:
        kind = op[0]
        if kind != "replay":
            last_input, replayable = None, last_input
        else:
            replayable = last_input
        if kind == "wait":
            sim.advance(op[1])
            continue
        if kind == "apply_ok":
            if sim.pending:
                e = sim.pending.pop(0)
                inp = machine.Applied(id=f"applied-g{e.generation}", generation=e.generation, observed=e.split)
            else:
                continue
        elif kind == "apply_fail":
            if not sim.pending:
                continue
            e = sim.pending.pop(0)
            inp = machine.ApplyFailed(id=f"f-{sim.next_id()}", generation=e.generation, error="503", permanent=op[1])
        elif kind == "replay":  # a redelivery right after the original, nothing in between
            if replayable is None:
                continue
            inp = replayable
        else:
            inp = make_input(sim, op)
        if inp.id in seen:  # the store finds the audit event and does nothing
            continue
        d = machine.decide(sim.rollout, inp, sim.now)
        assert machine.decide(sim.rollout, inp, sim.now) == d, "decide must be deterministic"
        if isinstance(inp, REPLAY_SAFE):
            # Even without the store's dedupe, these inputs decided again change nothing more: at once for
            # those whose meaning depends on the clock, a minute later for the others.
            later = sim.now if isinstance(inp, (HealthSample, Tick)) else sim.now + timedelta(minutes=1)
            again = machine.decide(d.rollout, inp, later)
            assert again.rollout.model_dump(exclude={"updated_at", "finished_at", "due_at"}) == \
                d.rollout.model_dump(exclude={"updated_at", "finished_at", "due_at"})
            assert not any(isinstance(e, ApplyTraffic) for e in again.effects), again.audit
        sim._take(d)
        if d.audit is not None:
            seen.add(inp.id)
        last_input = inp
        for before, after in sim.history:
            if after.state != before:
                assert after.state in LEGAL.get(before, set()), f"illegal transition {before} -> {after.state}"
            assert sum(t.percent for t in after.desired) == 100
            assert after.observed is None or sum(t.percent for t in after.observed) == 100
            if after.state in ("rolling_back", "rolled_back"):
                rolled_back = True
            if rolled_back:
                assert after.new_percent == 0, "a rolled-back revision got traffic again"
            if after.state in TERMINAL:
                assert after.due_at is None
        sim.history.clear()
    return sim.audit


def make_input(sim: Sim, op):
    r = sim.rollout
    kind = op[0]
    if kind == "tick":
        return machine.Tick(id=f"tick-{sim.next_id()}")
    if kind == "sample":
        _, requests, error_share, p99, which, fresh = op
        revision = {"new": r.revision, "stable": r.stable_revision or "x", "other": "web-zzz"}[which]
        if fresh:  # as the sampler reads: from the end of what is judged so far
            start = r.judged_until or r.step_started_at or sim.now
            end = max(sim.now, start + timedelta(seconds=1))
        else:  # a window from long ago, delivered late
            start = sim.now - timedelta(hours=2)
            end = start + timedelta(minutes=1)
        return machine.HealthSample(id=f"h-{sim.next_id()}", service="web", region="us-central1", revision=revision,
                                    window_start=start, window_end=end, request_count=requests,
                                    error_count=int(requests * error_share), latency_p99_ms=p99, source="prop")
    if kind == "command":
        return machine.Command(id=f"c-{sim.next_id()}", action=op[1], rollout_id=r.id, full=op[2], actor="bob")
    if kind == "alert":
        return Alert(id=f"a-{sim.next_id()}", incident_id="i", state=op[1], test=op[2], service="web",
                     revision=r.revision)
    if kind == "superseded":
        return Superseded(id="sup", by_rollout="web-next", by_version="v9")
    raise AssertionError(kind)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=5, max_size=80), st.sampled_from([CANARY, BLUE_GREEN]), st.booleans())
def test_invariants_hold_for_any_sequence(program, text, auto_apply):
    sim = Sim(spec(text), auto_apply=auto_apply)
    run(sim, program)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=40), st.sampled_from([CANARY, BLUE_GREEN]))
def test_replaying_every_input_twice_through_the_store_dedupe_changes_nothing(program, text):
    once = Sim(spec(text), auto_apply=True)
    run(once, program)
    twice = Sim(spec(text), auto_apply=True)
    doubled = [x for op in program for x in ((op, ("replay",)) if op[0] != "wait" else (op,))]
    run(twice, doubled)
    strip = {"id", "updated_at", "due_at"}
    assert once.rollout.model_dump(exclude=strip) == twice.rollout.model_dump(exclude=strip)
    assert [(a.decision, a.state_after) for a in once.audit] == [(a.decision, a.state_after) for a in twice.audit]

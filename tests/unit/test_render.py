"""What `pitstop status`, `status --watch` and `history` show a person."""

from __future__ import annotations

from rich.console import Console

from pitstop.surfaces import render

from sim import Sim, spec


def text_of(renderable) -> str:
    console = Console(width=220, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_watch_view_shows_state_step_split_verdict_and_decisions():
    s = Sim(spec())
    s.advance(60)
    s.sample(requests=400, errors=2, p99=180)
    out = text_of(render.rollout_detail(s.rollout, s.audit))
    for fragment in ("rollout web-r1", "progressing", "step 1/3 (5%)", "stable 95%, canary 5%",
                     "PASS", "error rate 0.5 % ≤ limit 5.0 % ✓", "latency p99 180 ms", "judged"):
        assert fragment in out, (fragment, out)


def test_status_row_and_table_after_a_rollback():
    s = Sim(spec())
    s.advance(30)
    s.sample(requests=400, errors=200)
    row = render.rollout_row(s.rollout)
    assert (row["state"], row["split"], row["split_applied"]) == ("rolled_back", {"web-v1-aaaa": 100,
                                                                                 s.rollout.revision: 0}, True)
    assert row["verdict"]["outcome"] == "fail" and "Automatically rolled back" in row["message"]
    table = text_of(render.rollouts_table([s.rollout]))
    assert "rolled_back" in table and "stable 100%, canary 0%" in table
    trail = text_of(render.events_table(s.audit))
    assert "progressing → rolling_back" in trail and "error rate 50.0% is above the 5.0% limit" in trail

"""What `pitstop status`, `status --watch` and `history` show a person."""

from __future__ import annotations

from rich.console import Console

from pitstop.surfaces import render

from sim import T0, Sim, spec


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


# ---------------------------------------------------------------- the measurement history

def measured(s: Sim):
    """The Sim's rollout with a measurement history: step 1 (5 %) twice, step 2 (10 %) once, at 100 % once; a
    custom CEL metric, and a dry-run one that failed (recorded, never acted on)."""
    from datetime import timedelta

    from pitstop.core.models import Measurement

    def at(minute: int, step: int, metric: str, value, outcome: str, **extra) -> Measurement:
        return Measurement(at=T0 + timedelta(minutes=minute), step=step, metric=metric, value=value,
                           outcome=outcome, source=extra.pop("source", "cloud-monitoring"), **extra)

    checkout = "canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min"
    history = [
        at(1, 0, "error_rate", 0.005, "pass", threshold=0.05, stable=0.004),
        at(1, 0, "checkouts_per_min", 95.0, "pass", stable=100.0, condition=checkout),
        at(1, 0, "carts", 3.0, "fail", stable=9.0, condition="canary.carts >= stable.carts", dry_run=True),
        at(2, 0, "error_rate", 0.03, "fail", threshold=0.05, stable=0.004, source="request-logs"),
        at(2, 0, "checkouts_per_min", None, "inconclusive", stable=100.0, condition=checkout),
        at(3, 1, "latency_p99_ms", 180.0, "pass", threshold=1000.0),
        at(4, 3, "cpu_utilization", 0.91, "fail", threshold=0.8),
    ]
    return s.rollout.model_copy(update={"measurements": history})


def rows_of(out: str, fragment: str) -> list[str]:
    return [line for line in out.splitlines() if fragment in line]


def test_history_shows_every_measurement_per_step_and_metric() -> None:
    r = measured(Sim(spec()))
    out = text_of(render.measurements_table(r))
    for header in ("at (UTC)", "step", "metric", "value", "stable", "judged by", "outcome", "source"):
        assert header in out, (header, out)
    first = rows_of(out, "12:01:00")
    assert len(first) == 3 and all("1 (5%)" in line for line in first)
    (rate,) = [line for line in rows_of(out, "12:02:00") if "error rate" in line]
    assert "error rate" in rate and "3.0 %" in rate and "0.4 %" in rate and "limit 5.0 %" in rate
    assert "✗ fail" in rate and "request-logs" in rate
    (checkout,) = [line for line in rows_of(out, "12:01:00") if "checkouts_per_min" in line]
    assert "95" in checkout and "100" in checkout and "canary.checkouts_per_min >= 0.9 *" in checkout
    assert "✓ pass" in checkout and "cloud-monitoring" in checkout and "dry run" not in checkout
    (missing,) = [line for line in rows_of(out, "12:02:00") if "checkouts_per_min" in line]
    assert "n/a" in missing and "? inconclusive" in missing
    assert "2 (10%)" in rows_of(out, "latency p99")[0] and "180 ms" in rows_of(out, "latency p99")[0]
    assert "100%" in rows_of(out, "cpu utilization")[0] and "limit" in rows_of(out, "cpu utilization")[0]


def test_a_dry_run_measurement_is_marked_as_recorded_without_action() -> None:
    r = measured(Sim(spec()))
    for out in (text_of(render.measurements_table(r)), text_of(render.measurements_table(r, latest=True))):
        (carts,) = rows_of(out, "carts ")
        assert "✗ fail (dry run: no action)" in carts and "canary.carts >= stable.carts" in carts
        assert all("dry run" not in line for line in out.splitlines() if "carts " not in line)


def test_the_live_view_shows_the_newest_window_per_step_and_metric_with_a_trail() -> None:
    r = measured(Sim(spec()))
    out = text_of(render.rollout_detail(r, []))
    assert "measurements (newest per step and metric)" in out
    (rate,) = rows_of(out, "error rate  ")
    assert "3.0 %" in rate and "✓✗" in rate and "12:02:00" in rate and "request-logs" in rate
    (checkout,) = rows_of(out, "checkouts_per_min")
    assert "? inconclusive" in checkout and "✓?" in checkout
    assert len(rows_of(out, "1 (5%)")) == 3  # error rate, checkouts, carts: one row each
    assert rows_of(out, "latency p99")[0].startswith("│ 2 (10%) ")


def test_no_measurements_no_table() -> None:
    s = Sim(spec())
    assert "measurements" not in text_of(render.rollout_detail(s.rollout.model_copy(update={"measurements": []}),
                                                                s.audit))


def test_a_condition_with_brackets_is_shown_as_written() -> None:
    from pitstop.core.models import Measurement

    s = Sim(spec())
    m = Measurement(at=T0, step=0, metric="carts", value=1.0, outcome="pass", source="cloud-monitoring",
                    condition="canary['carts'] >= [1.0][0]")
    out = text_of(render.measurements_table(s.rollout.model_copy(update={"measurements": [m]})))
    assert "canary['carts'] >= [1.0][0]" in out


def test_the_api_and_history_json_carry_the_measurements_as_the_openapi_document_says() -> None:
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import jsonschema

    from pitstop.surfaces import api
    from pitstop.surfaces.rows import measurement_rows

    r = measured(Sim(spec()))

    class Call:
        engine = SimpleNamespace(store=SimpleNamespace(rollout=lambda rollout_id: r if rollout_id == r.id else None))

        def must(self, *_: object) -> None:
            pass

    status, body = api.get_rollout(Call(), r.id)
    assert status == 200 and body["measurements"] == measurement_rows(r)
    assert [m["step_label"] for m in body["measurements"]] == ["1 (5%)"] * 5 + ["2 (10%)", "100%"]
    carts = body["measurements"][2]
    assert (carts["metric"], carts["outcome"], carts["dry_run"], carts["stable"]) == ("carts", "fail", True, 9.0)
    document = json.loads((Path(api.__file__).parent / "openapi.json").read_text())
    schema = {**document["components"]["schemas"]["Measurement"], "components": document["components"]}
    for row in json.loads(json.dumps(body["measurements"])):
        jsonschema.validate(row, schema)


class Store:
    """What `pitstop history` and `status ID --watch` read, holding one rollout."""

    def __init__(self, r, audit) -> None:
        self.r, self.audit = r, audit

    def rollout(self, rollout_id):
        return self.r if rollout_id == self.r.id else None

    def recent(self, service, limit):
        return [self.r] if service in (None, self.r.service) else []

    def events(self, rollout_id):
        return self.audit

    def refusals(self, rollout_id):
        return []

    def releases(self, service, limit):
        return []


def test_pitstop_history_shows_the_measurements_after_the_audit_trail(monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from pitstop.surfaces import cli

    s = Sim(spec())
    r = measured(s)
    monkeypatch.setattr(cli, "_store", lambda: Store(r, s.audit))
    monkeypatch.setenv("COLUMNS", "220")
    out = CliRunner().invoke(cli.app, ["history", "web"]).output
    assert out.index(f"{r.id}: web v2") < out.index(f"measurements of {r.id}"), out  # after the audit trail
    assert "canary.checkouts_per_min >= 0.9 *" in out and "fail (dry run: no action)" in out
    rows = json.loads(CliRunner().invoke(cli.app, ["history", "web", "--json"]).output)
    assert [m["metric"] for m in rows[0]["measurements"]] == [m.metric for m in r.measurements]
    assert rows[0]["measurements"][2]["dry_run"] is True


def test_pitstop_status_id_watch_follows_that_rollout_with_its_measurements(monkeypatch) -> None:
    from typer.testing import CliRunner

    from pitstop.surfaces import cli

    s = Sim(spec())
    r = measured(s)
    monkeypatch.setattr(cli, "_store", lambda: Store(r, s.audit))
    monkeypatch.setenv("COLUMNS", "220")

    def interrupt(_: float) -> None:  # Ctrl-C after the first frame
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", interrupt)
    result = CliRunner().invoke(cli.app, ["status", r.id, "--watch"])
    assert result.exit_code == 0, result.output
    assert f"rollout {r.id}" in result.output and "measurements (newest per step and metric)" in result.output
    assert "checkouts_per_min" in result.output and "fail (dry run: no action)" in result.output
    # Without --watch the same id still answers with its outcome as an exit code (2: not finished).
    assert CliRunner().invoke(cli.app, ["status", r.id]).exit_code == 2

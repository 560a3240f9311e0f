"""How rollouts, releases and their audit trails look in a terminal (rich). The JSON rows and plain labels live
in rows.py and releases.py (no rich: the `api` function ships them); rows.py's are imported here so every caller
keeps finding them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pitstop.core.explain import check_label, check_line, check_mark, check_value
from pitstop.core.models import AuditEvent, Measurement, Rollout, Verdict
from pitstop.core.release import Release
from pitstop.surfaces.metrics import BAND_STYLE, METRICS, figure
from pitstop.surfaces.rows import (  # noqa: F401 (re-exported)
    event_row, measurement_step_label, rollout_row, split_label, step_label,
)

STATE_STYLE = {
    "succeeded": "green", "rolled_back": "yellow", "rolling_back": "yellow", "failed": "bold red",
    "paused": "magenta", "awaiting_approval": "magenta", "superseded": "dim",
    "cancelled": "dim", "planned": "dim", "pending": "dim", "soaking": "magenta", "waiting": "magenta",
}


def rollouts_table(rollouts: list[Rollout], title: str = "Rollouts") -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("rollout", "service", "region", "version", "state", "step", "split", "updated"):
        table.add_column(col)
    for r in rollouts:
        split = split_label(r) + ("" if r.applied else " (applying)")
        table.add_row(r.id, r.service, r.region, r.version, Text(r.state, style=STATE_STYLE.get(r.state, "cyan")),
                      step_label(r), split, _ago(r.updated_at))
    return table


def releases_table(releases: list[Release], title: str = "Releases") -> Table:
    """One row per release: its route with each environment's state, the current environment's regions, and
    what it waits for."""
    from pitstop.surfaces.releases import check_labels, region_labels

    table = Table(title=title, title_justify="left", expand=False)
    for col in ("release", "version", "route", "regions", "checks", "waiting for", "updated"):
        table.add_column(col)
    for rel in releases:
        version = Text(rel.version)
        if rel.hotfix:
            version.append(" hotfix", style="bold magenta")
        route = Text()
        for i, env in enumerate(e for e in rel.route if e in rel.stages):
            state = rel.stages[env].state
            route.append(" → " if i else "")
            route.append(f"{env} ")
            route.append(state, style=STATE_STYLE.get(state, "cyan"))
        stage = rel.stage
        regions = "\n".join(region_labels(stage)) if stage else ""
        waiting = stage.waiting_for if stage and rel.state in ("running", "waiting") else None
        table.add_row(rel.id, version, route, regions, "\n".join(check_labels(rel)) or "-", waiting or "-",
                      _ago(rel.updated_at))
    return table


def timeline_table(rows: list[dict[str, Any]], title: str = "Release timeline") -> Table:
    """A release's whole story (`releases.timeline` rows): where each decision happened, who, what, why."""
    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("at (UTC)", "where", "actor", "decision", "state", "why"):
        table.add_column(col, overflow="fold")
    for row in rows:
        before, after = row.get("state_before"), row["state_after"]
        state = after if before == after else f"{before or '-'} → {after}"
        where = Text(row["where"], style="bold" if row["where"] == "release" else "")
        at = datetime.fromisoformat(row["at"].replace("Z", "+00:00"))
        table.add_row(f"{at:%Y-%m-%d %H:%M:%S}", where, row["actor"], row["decision"], state,
                      "; ".join(row["reasons"]))
    return table


def verdict_text(v: Verdict) -> Text:
    style = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[v.outcome]
    text = Text(f"{v.outcome.upper()}", style=f"bold {style}")
    text.append(f"  {v.rule}\n")
    for c in v.checks:
        text.append(f"    {check_line(c)}\n", style="red" if c.passed is False else "")
    text.append(f"    window {v.window_start:%H:%M:%S}–{v.window_end:%H:%M:%S} UTC, {v.request_count} requests, "
                f"source {v.source}", style="dim")
    return text


def rollout_detail(r: Rollout, events: list[AuditEvent]) -> Group:
    head = Text()
    head.append(f"{r.service}", style="bold")
    head.append(f"  {r.region}  {r.environment}  rollout {r.id}\n")
    head.append("version   ", style="dim")
    head.append(f"{r.version} ({r.revision}), stable {r.stable_version or '-'} ({r.stable_revision or '-'})\n")
    head.append("state     ", style="dim")
    head.append(r.state, style=STATE_STYLE.get(r.state, "bold cyan"))
    head.append(f"   step {step_label(r)}\n")
    head.append("traffic   ", style="dim")
    head.append(split_label(r) + ("" if r.applied else f"  (generation {r.desired_generation} being applied)") + "\n")
    if r.next_step_at and r.state not in ("succeeded", "rolled_back"):
        head.append("next step ", style="dim")
        judged = f"{r.judged_until:%H:%M:%S} UTC" if r.judged_until else "nothing yet"
        head.append(f"{r.next_step_at:%H:%M:%S} UTC, once judged healthy up to then (judged up to {judged})\n")
    if r.hold_until:
        head.append("hold until ", style="dim")
        head.append(f"{r.hold_until:%Y-%m-%d %H:%M:%S} UTC\n")
    head.append("message   ", style="dim")
    head.append(r.message + "\n")
    parts: list[Any] = [head]
    if r.verdict:
        parts.append(Text("last verdict", style="dim"))
        parts.append(verdict_text(r.verdict))
    if r.measurements:
        parts.append(measurements_table(r, latest=True))
    parts.append(events_table(events[-8:], title="recent decisions", compact=True))
    return Group(*parts)


OUTCOME_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}
TRAIL = 12  # outcomes of earlier windows shown per step and metric in the live view


def measurements_table(r: Rollout, latest: bool = False, title: str | None = None) -> Table:
    """The rollout's measurement history per step and metric: the value, stable's over the same window, the
    condition or limit that judged it, the outcome, and the source. Dry-run metrics are marked: judged and
    recorded, never acted on.

    `latest` (the live view): one row per step and metric, its newest window, with the outcomes of the earlier
    ones as a trail of marks (oldest first). Otherwise (history): every window, each step its own section."""
    table = Table(title=title or ("measurements (newest per step and metric)" if latest else
                                  f"measurements of {r.id}"), title_justify="left")
    columns = ("step", "metric", "value", "stable", "judged by", "outcome", "windows", "source", "at (UTC)") \
        if latest else ("at (UTC)", "step", "metric", "value", "stable", "judged by", "outcome", "source")
    for col in columns:
        table.add_column(col, overflow="fold", justify="right" if col in ("value", "stable") else "left")
    if latest:
        groups: dict[tuple[int, str], list[Measurement]] = {}
        for m in r.measurements:
            groups.setdefault((m.step, m.metric), []).append(m)
        step = None
        for (at_step, _), history in groups.items():
            if step is not None and at_step != step:
                table.add_section()
            step, m = at_step, history[-1]
            trail = Text()
            for earlier in history[-TRAIL:]:
                trail.append(check_mark(_passed(earlier.outcome)), style=OUTCOME_STYLE[earlier.outcome])
            table.add_row(measurement_step_label(r, m.step), *_measurement_cells(m), trail, Text(m.source),
                          f"{m.at:%H:%M:%S}")
        return table
    step = None
    for m in r.measurements:
        if step is not None and m.step != step:
            table.add_section()
        step = m.step
        table.add_row(f"{m.at:%H:%M:%S}", measurement_step_label(r, m.step), *_measurement_cells(m), Text(m.source))
    return table


def _measurement_cells(m: Measurement) -> tuple[Text, ...]:
    """metric, value, stable, judged by, outcome: Text cells, so a condition's brackets are not rich markup."""
    judged_by = m.condition if m.condition else f"limit {check_value(m.metric, m.threshold)}" \
        if m.threshold is not None else "-"
    outcome = Text(f"{check_mark(_passed(m.outcome))} {m.outcome}", style=OUTCOME_STYLE[m.outcome])
    if m.dry_run:  # judged and recorded, never acted on: dimmed, and said in words
        outcome.stylize("dim")
        outcome.append(" (dry run: no action)", style="italic")
    stable = "-" if m.stable is None else check_value(m.metric, m.stable)
    metric = m.metric if m.condition else check_label(m.metric)  # a custom metric keeps the spec's name
    return (Text(metric), Text(check_value(m.metric, m.value)), Text(stable), Text(judged_by),
            outcome)


def _passed(outcome: str) -> bool | None:
    return {"pass": True, "fail": False}.get(outcome)


def events_table(events: list[AuditEvent], title: str = "Audit trail", compact: bool = False) -> Table:
    """The full trail, or (compact) one line per decision for a live view."""
    table = Table(title=title, title_justify="left", show_lines=False)
    columns = ("at (UTC)", "decision", "state", "why") if compact else \
        ("at (UTC)", "input", "actor", "decision", "state", "traffic after", "why")
    for col in columns:
        table.add_column(col, overflow="ellipsis" if compact else "fold", no_wrap=compact and col == "why")
    for e in events:
        state = e.state_after if e.state_before == e.state_after else f"{e.state_before or '-'} → {e.state_after}"
        why = "; ".join(e.reasons)
        if compact:
            table.add_row(f"{e.at:%H:%M:%S}", e.decision, state, why)
        else:
            table.add_row(f"{e.at:%H:%M:%S}", e.input, e.actor, e.decision, state, e.traffic_after or "", why)
    return table


def _ago(t: datetime) -> str:
    seconds = int((datetime.now(timezone.utc) - t).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{t:%Y-%m-%d %H:%M}"


def dora_tables(report: dict[str, Any]) -> list[Table]:
    """A rich table per service and environment: each metric per window, its band coloured."""
    out = []
    for group in report["services"]:
        windows = group["windows"]
        table = Table(title=f"{group['service']} ({group['environment']})", title_justify="left")
        table.add_column("metric")
        for key in windows:
            table.add_column(key, justify="right")
        for name, label in METRICS:
            cells = []
            for window in windows.values():
                metric = window[name]
                style = BAND_STYLE[metric["band"]]
                cells.append(f"{figure(name, metric)} [{style}]{metric['band']}[/{style}]")
            table.add_row(label, *cells)
        out.append(table)
    return out

"""How rollouts, releases and their audit trails look in a terminal (rich). The JSON rows and plain labels live
in rows.py and releases.py (no rich: the `api` function ships them); rows.py's are imported here so every caller
keeps finding them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pitstop.core.explain import check_line
from pitstop.core.models import AuditEvent, Rollout, Verdict
from pitstop.core.release import Release
from pitstop.surfaces.metrics import BAND_STYLE, METRICS, figure
from pitstop.surfaces.rows import event_row, rollout_row, split_label, step_label  # noqa: F401 (re-exported)

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
    parts.append(events_table(events[-8:], title="recent decisions", compact=True))
    return Group(*parts)


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

"""Releases and pipelines as plain values, shared by the API and the CLI: JSON rows, labels, a release's
whole story across environments (its own audit events and each region rollout's, merged), and what a
pipeline file says in a few lines.

No rich here (the `api` function ships this module); the terminal tables are in render.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pitstop.core.models import AuditEvent, Rollout, Strategy, format_duration
from pitstop.core.release import RELEASE_DONE
from pitstop.surfaces.rows import event_row

if TYPE_CHECKING:
    from pitstop.core.audit import Report
    from pitstop.core.pipeline import Pipeline
    from pitstop.core.release import Release, Stage
    from pitstop.gcp.store import Store

# `release.release_id`: the service, a dash, the digest's first 16 hex digits. A rollout id never ends so.
RELEASE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?-[0-9a-f]{16}$")


def looks_like_release(target: str) -> bool:
    return bool(RELEASE_ID.fullmatch(target))


# ---------------------------------------------------------------- labels and rows

def strategy_label(strategy: Strategy) -> str:
    if strategy.canary:
        return "canary " + " → ".join(f"{s.weight}%" + (" (approve)" if s.approve else "")
                                      for s in strategy.canary.steps) + " → 100%"
    bg = strategy.blue_green
    return f"blue-green: verify {format_duration(bg.verify)}, bake {format_duration(bg.bake)}" \
        + (", approve before the switch" if bg.approve else "")


def step_label(stage: Stage) -> str:
    """Where the current wave is cleared to (as the release's audit names steps)."""
    if stage.step < 0:
        return "0% (deployed)"
    if stage.step >= stage.last:
        return "100%"
    if stage.strategy.canary:
        return f"step {stage.step + 1} ({stage.strategy.canary.steps[stage.step].weight}%)"
    return "verify (0%)"


def region_labels(stage: Stage) -> list[str]:
    """`region: state pct%`, wave by wave."""
    return [f"{region}: {g.state} {g.percent}%" for wave in stage.waves for region in wave
            if (g := stage.regions.get(region)) is not None] or \
        [f"{region}: {stage.state}" for wave in stage.waves for region in wave]


def route_label(rel: Release) -> str:
    return " → ".join(f"{env} {rel.stages[env].state}" for env in rel.route if env in rel.stages)


def stage_row(stage: Stage) -> dict[str, Any]:
    return {
        "environment": stage.environment, "project": stage.project, "state": stage.state,
        "waiting_for": stage.waiting_for, "waves": [list(w) for w in stage.waves],
        # Waves count from 1, as the audit names them; steps are indexes (-1: deployed at 0 %), with their label.
        "wave": stage.wave + 1, "step": stage.step, "step_label": step_label(stage),
        "strategy": strategy_label(stage.strategy), "approve": stage.approve, "approved_by": stage.approved_by,
        "promote_from": stage.promote_from, "soak": stage.soak, "not_before": _iso(stage.not_before),
        "hold_until": _iso(stage.hold_until), "frozen_until": _iso(stage.frozen_until),
        "unfrozen_by": stage.unfrozen_by, "entered_at": _iso(stage.entered_at),
        "finished_at": _iso(stage.finished_at), "reason": stage.reason,
        "regions": {region: {"state": g.state, "percent": g.percent, "position": g.position,
                             "rollout_id": g.rollout_id} for region, g in stage.regions.items()},
        "spreads": [{**s.model_dump(mode="json"), "wave": s.wave + 1} for s in stage.spreads],
        "checks": check_rows(stage),
    }


def check_labels(rel: Release) -> list[str]:
    """Each check run of the release, e.g. "staging migrate passed", "production smoke-w1-s-1 running (3 probes)"."""
    out = []
    for env in [e for e in rel.route if e in rel.stages] + [e for e in rel.stages if e not in rel.route]:
        for key, run in rel.stages[env].checks.items():
            extra = f" (attempt {run.attempt})" if run.attempt > 1 else ""
            out.append(f"{env} {key} {run.state.replace('_', ' ')}{extra}")
    return out


def check_rows(stage: Stage) -> dict[str, Any]:
    return {key: {"state": run.state, "on_fail": run.on_fail, "attempt": run.attempt, "reason": run.reason,
                  "execution": run.execution, "started_at": _iso(run.started_at), "deadline": _iso(run.deadline),
                  "finished_at": _iso(run.finished_at), "detail": run.detail}
            for key, run in stage.checks.items()}


def release_row(rel: Release) -> dict[str, Any]:
    """What `pitstop status` and GET /releases show of one release."""
    stage = rel.stage
    return {
        "id": rel.id, "service": rel.service, "version": rel.version, "hotfix": rel.hotfix, "path": rel.path,
        "state": rel.state, "current": rel.current,
        "route": [{"environment": env, "state": rel.stages[env].state} for env in rel.route if env in rel.stages],
        "regions": stage_row(stage)["regions"] if stage else {},
        "waiting_for": stage.waiting_for if stage and rel.state not in RELEASE_DONE else None,
        "checks": check_labels(rel),
        "message": rel.message, "created_at": _iso(rel.created_at), "updated_at": _iso(rel.updated_at),
    }


def release_detail(rel: Release) -> dict[str, Any]:
    """GET /releases/{id}: the row, the artifact, and every stage (route order, then soak-scheduled ones)."""
    order = list(rel.route) + [env for env in rel.stages if env not in rel.route]
    return {
        **release_row(rel),
        "digest": rel.digest, "image": rel.image, "build_id": rel.build_id, "commit": rel.commit,
        "branch": rel.branch, "tag": rel.tag, "started_by": rel.started_by, "finished_at": _iso(rel.finished_at),
        "due_at": _iso(rel.due_at), "stages": [stage_row(rel.stages[env]) for env in order],
    }


# ---------------------------------------------------------------- the whole story

def release_rollouts(store: Store, rel: Release) -> list[Rollout]:
    """Every rollout the release started or reverted: those its stages name, and those carrying its id (a
    region's revert is its own rollout, which the stage does not name)."""
    from google.cloud.firestore_v1 import FieldFilter

    named = [g.rollout_id for stage in rel.stages.values() for g in stage.regions.values() if g.rollout_id]
    found = {r.id: r for r in store.rollouts(named)}
    query = store.db.collection("rollouts").where(filter=FieldFilter("release_id", "==", rel.id))
    for snap in query.stream():
        if snap.id not in found:
            found[snap.id] = Rollout.from_doc(snap.to_dict())
    return list(found.values())


def release_trail(store: Store, release_id: str) -> tuple[list[AuditEvent], Report]:
    """The release's own events, oldest first, and its hash chain checked (one read of the events)."""
    from pitstop.core.audit import verify

    ref = store.db.collection("releases").document(release_id)
    snap = ref.get()
    docs = [{"id": s.id, **s.to_dict()} for s in ref.collection("events").stream()]
    doc = snap.to_dict() if snap.exists else None
    head = {"audit_seq": doc.get("audit_seq"), "audit_head": doc.get("audit_head")} if doc is not None else None
    events = sorted((AuditEvent.model_validate(d) for d in docs), key=lambda e: (e.seq or 0, e.at))
    return events, verify(docs, head)


def timeline(release_events: list[AuditEvent], rollout_events: list[tuple[Rollout, list[AuditEvent]]]
             ) -> list[dict[str, Any]]:
    """The release's events and its region rollouts', merged by time, each saying where it happened:
    "release", or "environment/region" (with the rollout's id)."""
    merged = [(e.at, 0, {**event_row(e), "where": "release", "environment": e.detail.get("environment") or None,
                         "region": None, "rollout_id": None}) for e in release_events]
    for r, events in rollout_events:
        merged += [(e.at, 1, {**event_row(e), "where": f"{r.environment}/{r.region}", "environment": r.environment,
                              "region": r.region, "rollout_id": r.id}) for e in events]
    return [row for _, _, row in sorted(merged, key=lambda item: (item[0], item[1]))]


def release_story(store: Store, rel: Release) -> tuple[list[dict[str, Any]], Report]:
    """`timeline` as read from the store, and the release's own chain report."""
    events, report = release_trail(store, rel.id)
    rollouts = sorted(release_rollouts(store, rel), key=lambda r: r.created_at)
    return timeline(events, [(r, store.events(r.id)) for r in rollouts]), report


# ---------------------------------------------------------------- a pipeline file in a few lines

def pipeline_lines(p: Pipeline) -> list[str]:
    """`pitstop apply --dry-run` of a pipeline: where builds go, in which waves, past which gates."""
    where = f", builds of {p.repo}" if p.repo else ""
    lines = [f"pipeline {p.service}: {len(p.environments)} environment{'s' if len(p.environments) != 1 else ''}"
             f"{where}"]
    for name, env in p.environments.items():
        waves = env.wave_list
        regions = ", ".join(env.regions) if len(waves) == 1 else \
            " → ".join(", ".join(w) for w in waves) + f" ({len(waves)} waves)"
        gates = [f"on {env.on}" if env.on else "only by promotion"]
        if env.promote_from:
            gates.append(f"after {env.promote_from}" + (f", by itself {format_duration(env.soak)} later"
                                                        if env.soak is not None else ""))
        if env.approve:
            gates.append("an approver starts it")
        project = f" ({env.project})" if env.project else ""
        lines.append(f"  {name}{project}: {regions}; {'; '.join(gates)}; {strategy_label(env.strategy)}")
    for name, path in p.paths.items():
        approve = path.approve if path.approve is not None else p.environments[path.to].approve
        lines.append(f"  path {name}: {path.on} → {path.to} directly" + ("; an approver starts it" if approve else "")
                     + (f"; {strategy_label(path.strategy)}" if path.strategy else ""))
    for f in p.freeze:
        lines.append(f"  freeze: {f.cron} ({f.tz}) for {format_duration(f.duration)}"
                     + (f", except {', '.join(f.except_)}" if f.except_ else ""))
    return lines



def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None

"""Rollouts and audit events as plain values: labels and JSON rows, shared by the API and the CLI.

Nothing here imports rich (or anything beyond the core models): the `api` function ships this
module in its bundle, while the terminal rendering in render.py stays with the CLI.
"""

from __future__ import annotations

from typing import Any

from pitstop.core.models import AuditEvent, Rollout


def step_label(r: Rollout) -> str:
    if r.strategy.canary and r.kind == "canary":
        steps = r.strategy.canary.steps
        if r.state in ("progressing", "paused", "awaiting_approval") and r.step < len(steps):
            return f"{r.step + 1}/{len(steps)} ({steps[r.step].weight}%)"
        reached = len(steps) if r.state == "succeeded" else min(r.step + 1, len(steps))
        return f"{reached}/{len(steps)}"
    return r.kind.replace("_", "-")


def split_label(r: Rollout) -> str:
    if r.state == "superseded":  # its last split is history: the successor owns the traffic now
        return f"— (see {r.superseded_by})"
    return ", ".join(f"{t.tag or t.revision} {t.percent}%" for t in r.desired)


def rollout_row(r: Rollout) -> dict[str, Any]:
    return {
        "id": r.id, "service": r.service, "region": r.region, "environment": r.environment, "version": r.version,
        "revision": r.revision, "state": r.state, "step": step_label(r),
        "split": {t.revision: t.percent for t in r.desired},
        "split_applied": r.applied, "stable_version": r.stable_version, "message": r.message,
        "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
        "verdict": r.verdict.model_dump(mode="json") if r.verdict else None,
        # What is judged healthy so far, and what the step needs: a step advances once the first reaches the second.
        "judged_until": r.judged_until.isoformat() if r.judged_until else None,
        "step_deadline": r.next_step_at.isoformat() if r.next_step_at else None,
    }


def measurement_step_label(r: Rollout, step: int) -> str:
    """The step a measurement was taken in: `2 (10%)` for a canary step, `100%` at full traffic (the bake),
    `verify` / `bake` for blue-green."""
    if r.strategy.canary and r.kind == "canary":
        steps = r.strategy.canary.steps
        return f"{step + 1} ({steps[step].weight}%)" if 0 <= step < len(steps) else "100%"
    if r.kind == "blue_green":
        return "verify" if step <= 0 else "bake"
    return "100%"


def measurement_rows(r: Rollout) -> list[dict[str, Any]]:
    """The rollout's measurement history (oldest first) as JSON rows, each with its step's label."""
    return [{**m.model_dump(mode="json"), "step_label": measurement_step_label(r, m.step)} for m in r.measurements]


def event_row(e: AuditEvent) -> dict[str, Any]:
    return e.model_dump(mode="json", exclude_none=True)

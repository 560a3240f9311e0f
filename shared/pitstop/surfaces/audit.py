"""`pitstop audit verify ROLLOUT`: check a rollout's audit chain and say, in sentences, where it breaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pitstop.core.audit import Report, verify

if TYPE_CHECKING:
    from pitstop.gcp.store import Store


def verify_rollout(store: Store, rollout_id: str) -> Report:
    """The rollout's stored trail checked against the head on its document."""
    events, head = store.audit_trail(rollout_id)
    if head is None:
        if not events:
            return Report(checked=0, problems=[f"no rollout {rollout_id!r}: nothing to verify"])
        left = f"{len(events)} event{'s' if len(events) != 1 else ''}"
        problems = [f"no rollout document {rollout_id!r}, yet {left} of its trail remain (the rollout was deleted?)"]
        return Report(checked=len(events), problems=problems + verify(events, None).problems)
    return verify(events, head)


def render(report: Report, rollout_id: str) -> str:
    """Lines a person reads: the verdict, then each problem, the first break first."""
    events = f"{report.checked} event{'s' if report.checked != 1 else ''}"
    if report.ok:
        head = f" (head {report.head[:12]}…)" if report.head else ""
        return f"audit trail of {rollout_id}: {events}, chain intact{head}"
    count = f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"
    return "\n".join([f"audit trail of {rollout_id}: {events}, {count}:"] + [f"  - {p}" for p in report.problems])

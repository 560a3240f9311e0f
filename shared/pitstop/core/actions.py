"""What a person can do to a rollout or a release in a given state: the actions its state accepts (the state
machine refuses the others). The dashboard shows these among what the person's roles grant; notifications
link to them. Pure."""

from __future__ import annotations

from typing import Callable

from pitstop.core.models import TERMINAL

ROLLOUT_ACTIONS = ("promote", "pause", "resume", "abort", "approve", "rollback")
RELEASE_ACTIONS = ("approve", "promote", "pause", "resume", "abort", "rollback")


def _anyone(action: str) -> bool:
    return True


def rollout_actions(state: str, may: Callable[[str], bool] = _anyone) -> list[str]:
    """What a person may do to a rollout in `state`: what its state accepts, among what their roles grant."""
    if state in TERMINAL:
        return []
    fitting = {"pause": state not in ("paused", "rolling_back"), "resume": state == "paused",
               "approve": state == "awaiting_approval", "promote": state != "rolling_back",
               "abort": state != "rolling_back", "rollback": state != "rolling_back"}
    return [a for a in ROLLOUT_ACTIONS if fitting[a] and may(a)]


def release_actions(state: str, stage_state: str | None, may: Callable[[str], bool] = _anyone,
                    paused: bool = False) -> list[str]:
    """The same for a release in flight: its current stage's state decides approve, and whether a region of
    it is paused decides pause or resume."""
    from pitstop.core.release import RELEASE_DONE

    if state in RELEASE_DONE:
        return []
    fitting = {"approve": stage_state == "awaiting_approval" or state == "waiting",
               "pause": state == "running" and not paused, "resume": paused, "promote": True, "abort": True,
               "rollback": True}
    return [a for a in RELEASE_ACTIONS if fitting[a] and may(a)]

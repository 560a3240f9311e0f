"""Cloud Tasks: the drain chain. The tick creates one named task per 5 s slot ahead; a name already taken
(the slot is armed, or ran) answers 409, so re-arming every tick is idempotent and costs nothing twice.

REST through google-auth's session: no client library to load at a function's cold start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

API = "https://cloudtasks.googleapis.com/v2"


@dataclass(frozen=True)
class DrainChain:
    queue: str  # projects/P/locations/L/queues/Q
    url: str  # the drain function's URL
    invoker: str  # the service account whose OIDC token Cloud Tasks sends (run.invoker on the drain)
    every: float = 5.0  # seconds between slots
    ahead: float = 70.0  # a tick arms this far ahead: past the next tick, so the chain never gaps

    @classmethod
    def from_env(cls) -> DrainChain | None:
        """None when no queue is configured (locally, the stack runs the drain on its own cadence)."""
        queue, url = os.environ.get("PITSTOP_DRAIN_QUEUE"), os.environ.get("PITSTOP_DRAIN_URL")
        if not queue or not url:
            return None
        return cls(queue, url, os.environ.get("PITSTOP_DRAIN_INVOKER", ""))

    def slots(self, now: datetime) -> list[datetime]:
        """The slot times to arm: every `every` seconds on the epoch's grid, from now to `ahead`."""
        first = int(now.timestamp() // self.every) + 1
        last = int((now.timestamp() + self.ahead) // self.every)
        return [datetime.fromtimestamp(n * self.every, timezone.utc) for n in range(first, last + 1)]

    def task(self, slot: datetime) -> dict[str, Any]:
        name = f"{self.queue}/tasks/drain-{int(slot.timestamp())}"
        return {"task": {
            "name": name, "scheduleTime": slot.isoformat().replace("+00:00", "Z"),
            "dispatchDeadline": "30s",
            "httpRequest": {"url": self.url, "httpMethod": "POST", "headers": {"Content-Type": "application/json"},
                            "oidcToken": {"serviceAccountEmail": self.invoker, "audience": self.url}}}}

    def arm(self, now: datetime, session: Any = None) -> int:
        """Create the slots' tasks; returns how many were new."""
        if session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            session = AuthorizedSession(credentials)
        created = 0
        for slot in self.slots(now):
            response = session.post(f"{API}/{self.queue}/tasks", json=self.task(slot), timeout=10)
            if response.status_code == 409:  # armed already (or ran): the name is the slot
                continue
            response.raise_for_status()
            created += 1
        return created

"""Pub/Sub pull: the drain reads the request-log subscription in batches (gcp/bus.py only publishes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pulled:
    ack_id: str
    message_id: str
    data: bytes


class Subscription:
    def __init__(self, project: str, name: str, subscriber: Any = None) -> None:
        self.project, self.name = project, name
        self._subscriber = subscriber

    @property
    def subscriber(self) -> Any:
        if self._subscriber is None:
            from google.cloud import pubsub_v1  # late: only the drain pulls

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    @property
    def path(self) -> str:
        return self.subscriber.subscription_path(self.project, self.name)

    def pull(self, max_messages: int = 1000, timeout: float = 2.0) -> list[Pulled]:
        """What is waiting now (not waiting for more: an empty answer means the backlog is drained)."""
        from google.api_core import exceptions

        try:
            # return_immediately is deprecated for push-like latency, which is not what a drain wants: it wants
            # the backlog as it is, now.
            response = self.subscriber.pull(request={"subscription": self.path, "max_messages": max_messages,
                                                     "return_immediately": True}, timeout=timeout)
        except exceptions.DeadlineExceeded:  # the emulator answers an empty pull by waiting it out
            return []
        return [Pulled(m.ack_id, m.message.message_id, m.message.data) for m in response.received_messages]

    def ack(self, ack_ids: list[str]) -> None:
        for i in range(0, len(ack_ids), 1000):  # Acknowledge takes at most a few thousand ids a call
            self.subscriber.acknowledge(request={"subscription": self.path, "ack_ids": ack_ids[i:i + 1000]})

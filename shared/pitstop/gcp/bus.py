"""Pub/Sub publishing: decisions to `pitstop-events`, samples to `pitstop-health`."""

from __future__ import annotations

import json
from typing import Any


class Bus:
    def __init__(self, project: str, publisher: Any = None) -> None:
        self.project = project
        self._publisher = publisher

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1  # late: only functions that publish pay for it

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    def publish(self, topic: str, payload: dict[str, Any], **attributes: str) -> str:
        path = self.publisher.topic_path(self.project, topic)
        data = json.dumps(payload, default=str).encode()
        return self.publisher.publish(path, data, **attributes).result(timeout=30)

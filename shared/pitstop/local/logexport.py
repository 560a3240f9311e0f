"""The local Log Router sink: the local Cloud Run's request log entries to the Pub/Sub emulator.

On GCP, Cloud Run writes a request log entry per request and a sink (terraform/requestlogs.tf) exports
every 5xx and `sample(insertId, F)` of the rest to `pitstop-request-logs`. Here the router hands each request
to `offer`, which applies the same filter (`requestlogs.exported`) and queues the entry, in Cloud
Logging's JSON shape; a background thread publishes in batches. A request never waits for Pub/Sub: when
the queue is full the entry is dropped and counted (`dropped`), as a sink under quota would lose it.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

from pitstop.core import requestlogs

TOPIC = "pitstop-request-logs"
QUEUE_SIZE = 10_000
BATCH = 500


class LogExport:
    def __init__(self, project: str, fraction: float, topic: str = TOPIC, publisher: Any = None) -> None:
        self.project, self.fraction, self.topic = project, fraction, topic
        self.dropped = 0
        self.published = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._publisher = publisher
        self._thread = threading.Thread(target=self._publish_forever, name="request-log export", daemon=True)
        self._thread.start()

    def offer(self, request: requestlogs.Request) -> None:
        """Called on the request's thread: a filter and a queue put, never a wait."""
        if not requestlogs.exported(request.insert_id, request.status, self.fraction):
            return
        try:
            self._queue.put_nowait(requestlogs.entry_json(request))
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=5)

    def _publish_forever(self) -> None:
        from google.cloud import pubsub_v1

        publisher = self._publisher or pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=BATCH, max_latency=0.02))
        path = publisher.topic_path(self.project, self.topic)
        while True:
            entry = self._queue.get()
            batch = [entry]
            while len(batch) < BATCH:  # whatever else is waiting goes out with it
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            futures = [publisher.publish(path, json.dumps(e).encode()) for e in batch if e is not None]
            for future in futures:
                try:
                    future.result(timeout=30)
                    self.published += 1
                except Exception:  # the emulator is going away, or slow: the entry is lost, as under quota
                    self.dropped += 1
            if None in batch:
                return

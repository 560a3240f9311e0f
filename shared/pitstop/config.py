"""Where pitstop runs: read from the environment, the same names on GCP and locally.

Only endpoints and credentials differ between the two worlds:
FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST (read by the Google clients
themselves), PITSTOP_RUN_ENDPOINT and PITSTOP_MONITORING_ENDPOINT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    project: str
    events_topic: str = "pitstop-events"
    health_topic: str = "pitstop-health"
    health_lag: float = 180  # seconds Cloud Monitoring may lag behind (the local stack: 3, scaled)
    run_endpoint: str | None = None  # e.g. http://127.0.0.1:8181 for the local Cloud Run
    monitoring_endpoint: str | None = None  # e.g. 127.0.0.1:8282 for the local Monitoring

    @classmethod
    def from_env(cls) -> Config:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
        if not project:
            raise RuntimeError("GOOGLE_CLOUD_PROJECT is not set: pitstop needs to know its project")
        return cls(
            project=project,
            events_topic=os.environ.get("PITSTOP_EVENTS_TOPIC", "pitstop-events"),
            health_topic=os.environ.get("PITSTOP_HEALTH_TOPIC", "pitstop-health"),
            health_lag=float(os.environ.get("PITSTOP_HEALTH_LAG", "180")),
            run_endpoint=os.environ.get("PITSTOP_RUN_ENDPOINT") or None,
            monitoring_endpoint=os.environ.get("PITSTOP_MONITORING_ENDPOINT") or None,
        )

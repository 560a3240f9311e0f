"""Where pitstop runs: read from the environment, the same names on GCP and locally.

Only endpoints and credentials differ between the two worlds:
FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST (read by the Google clients
themselves), GCE_METADATA_HOST (google-auth's metadata server, which mints the
functions' own ID tokens), PITSTOP_RUN_ENDPOINT, PITSTOP_MONITORING_ENDPOINT,
PITSTOP_BUILD_ENDPOINT, PITSTOP_ANALYSIS_ENDPOINT and PITSTOP_TOKEN_CERTS / PITSTOP_TOKEN_ISSUERS (whose
ID tokens are trusted).
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
    build_endpoint: str | None = None  # e.g. http://127.0.0.1:8383 for the local Cloud Build
    analysis_endpoint: str | None = None  # Artifact Analysis (Grafeas); the local stand-in's URL
    build_project: str = ""  # where Cloud Build runs (builds are confirmed there); default: `project`
    # Who is who (gcp/identity.py): the audiences an ID token may carry (the first is what pitstop's own
    # tokens and the CLI ask for), the bootstrap admins, and the identity of pitstop's own sampler.
    audiences: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    sampler_identity: str = ""

    def __post_init__(self) -> None:
        if not self.build_project:
            object.__setattr__(self, "build_project", self.project)
        if not self.audiences:
            object.__setattr__(self, "audiences", (f"pitstop:{self.project}",))

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
            build_endpoint=os.environ.get("PITSTOP_BUILD_ENDPOINT") or None,
            analysis_endpoint=os.environ.get("PITSTOP_ANALYSIS_ENDPOINT") or None,
            build_project=os.environ.get("PITSTOP_BUILD_PROJECT", ""),
            audiences=_list(os.environ.get("PITSTOP_AUDIENCE")),
            admins=tuple(a.lower() for a in _list(os.environ.get("PITSTOP_ADMINS"))),
            sampler_identity=os.environ.get("PITSTOP_SAMPLER_IDENTITY", "").lower(),
        )


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())

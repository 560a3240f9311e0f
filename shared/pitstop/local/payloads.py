"""Realistic wire payloads, shaped exactly as GCP sends them (GCP-FACTS.md).

Used by the local Cloud Build stand-in, the demo and the tests, so that all of
them exercise the parsers with what production receives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def cloud_build(status: str, *, build_id: str | None = None, project: str = "pitstop-local", repo: str = "web",
                branch: str | None = "main", tag: str | None = None, image: str | None = None,
                digest: str | None = None, commit: str | None = None, trigger: str = "build-web",
                substitutions: dict[str, str] | None = None, with_images: bool = True,
                now: datetime | None = None, trigger_id: str | None = None) -> dict[str, Any]:
    """The Build resource Cloud Build publishes to `cloud-builds` for a status change.

    `trigger_id` defaults to the uuid5 of the trigger's name (as the local Cloud Build names triggers).
    """
    now = now or datetime.now(timezone.utc)
    build_id = build_id or str(uuid.uuid4())
    commit = commit or hashlib.sha1(build_id.encode()).hexdigest()
    image = image or f"us-central1-docker.pkg.dev/{project}/apps/{repo}:{commit[:7]}"
    subs = {"COMMIT_SHA": commit, "SHORT_SHA": commit[:7], "REF_NAME": tag or branch or "",
            "REPO_NAME": repo, "REPO_FULL_NAME": f"acme/{repo}", "TRIGGER_NAME": trigger}
    if branch and not tag:
        subs["BRANCH_NAME"] = branch
    if tag:
        subs["TAG_NAME"] = tag
    subs.update(substitutions or {})
    build: dict[str, Any] = {
        "id": build_id, "projectId": project, "status": status,
        "buildTriggerId": trigger_id or str(uuid.uuid5(uuid.NAMESPACE_URL, trigger)),
        "createTime": _rfc3339(now - timedelta(seconds=150)), "substitutions": subs,
        "logUrl": f"https://console.cloud.google.com/cloud-build/builds;region=us-central1/{build_id}?project=1234",
        "images": [image] if with_images else [],
        "tags": [f"trigger-{trigger}"],
    }
    if status not in ("QUEUED", "PENDING"):
        build["startTime"] = _rfc3339(now - timedelta(seconds=148))
    if status not in ("QUEUED", "PENDING", "WORKING"):
        build["finishTime"] = _rfc3339(now)
    if status == "SUCCESS" and with_images:
        build["results"] = {"images": [{"name": image, "digest": digest or "sha256:" + hashlib.sha256(
            build_id.encode()).hexdigest()}], "buildStepImages": ["gcr.io/cloud-builders/docker"]}
    if status == "FAILURE":
        build["statusDetail"] = 'Build step 1 "pytest" failed: step exited with non-zero status: 1'
        build["failureInfo"] = {"type": "USER_BUILD_STEP", "detail": build["statusDetail"]}
    return build


def health_sample(service: str, revision: str, start: datetime, end: datetime, requests: int, errors: int,
                  p99_ms: float | None, *, region: str = "us-central1", source: str = "probe",
                  rollout_id: str | None = None, p50_ms: float | None = None,
                  p95_ms: float | None = None) -> dict[str, Any]:
    sample = {"service": service, "region": region, "revision": revision, "window_start": _rfc3339(start),
              "window_end": _rfc3339(end), "request_count": requests, "error_count": errors,
              "latency_p99_ms": p99_ms, "source": source}
    if p50_ms is not None:
        sample["latency_p50_ms"] = p50_ms
    if p95_ms is not None:
        sample["latency_p95_ms"] = p95_ms
    if rollout_id:
        sample["rollout_id"] = rollout_id
    return sample


def incident(service: str, revision: str | None, *, state: str = "open", incident_id: str = "0.nrwotmyokd9n",
             project: str = "pitstop-local", region: str = "us-central1", test: bool = False,
             started_at: int = 1746178794) -> dict[str, Any]:
    """A Cloud Monitoring notification (schema 1.2, or a test notification)."""
    labels = {"project_id": project, "service_name": service, "location": region}
    if revision:
        labels["revision_name"] = revision
    body = {
        "incident_id": incident_id, "scoping_project_id": project,
        "url": f"https://console.cloud.google.com/monitoring/alerting/alerts/{incident_id}?project={project}",
        "started_at": started_at, "ended_at": started_at + 300 if state == "closed" else None,
        "state": state.upper() if test else state, "severity": "Error",
        "summary": f"Request count for {revision or service} is above the threshold of 0.05 with a value of 0.31.",
        "policy_name": f"projects/{project}/alertPolicies/129" if test else f"{service} 5xx rate",
        "policy_user_labels": {"service": service},
        "condition_name": "5xx ratio", "condition": {"name": f"projects/{project}/alertPolicies/129/conditions/723"},
        "metric": {"type": "run.googleapis.com/request_count", "labels": {"response_code_class": "5xx"}},
        "resource": {"type": "cloud_run_revision", "labels": labels},
        "observed_value": "0.31", "threshold_value": "0.05",
    }
    return {"version": "test" if test else "1.2", "incident": body}


def push_envelope(payload: Any, *, message_id: str | None = None, attributes: dict[str, str] | None = None,
                  raw: bytes | None = None) -> dict[str, Any]:
    """The CloudEvent `data` a Pub/Sub push turns into (functions-framework, Eventarc)."""
    data = raw if raw is not None else json.dumps(payload).encode()
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {},
                        "messageId": message_id or str(uuid.uuid4().int)[:16],
                        "publishTime": _rfc3339(datetime.now(timezone.utc))},
            "subscription": "projects/pitstop-local/subscriptions/pitstop-push"}

"""The request-log path on the local stack: the local Cloud Run writes each request's log entry to
`pitstop-request-logs` (every 5xx, a sample of the rest), the stack calls on_drain on a short cadence (Cloud
Tasks every 5 s on GCP), and a clearly failing canary is rolled back on that evidence, with Monitoring lagging
30 s so that its sample cannot arrive first. A malformed log message is logged, acknowledged and changes
nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import local_stack

from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.build import ship
from pitstop.local.demo import service_uri
from pitstop.local.load import Load
from pitstop.local.stack import wait_for

pytestmark = pytest.mark.emulators
REGION = "us-central1"
SERVICE = "logs"
LAG = 30.0  # Monitoring's lag here: its first sample of the step cannot be read before this
SPEC = f"""
service: {SERVICE}
regions: [{REGION}]
match: {{repo: {SERVICE}, branch: main}}
strategy: {{canary: {{steps: [{{weight: 50, pause: 60s}}]}}}}
health: {{min_requests: 20, interval: 2s}}
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    with local_stack(emulators, tmp_path_factory.mktemp("requestlogs"), health_lag=LAG) as running:
        yield running


def test_malformed_request_log_messages_are_logged_acknowledged_and_change_nothing(stack):
    store = Store.from_env(stack.project)
    ids = [stack.publish("pitstop-request-logs", b"not json {"),
           stack.publish("pitstop-request-logs", {"logName": "projects/p/logs/other", "insertId": "x"}),
           stack.publish("pitstop-request-logs", {"logName": "projects/p/logs/run.googleapis.com%2Frequests",
                                                  "resource": {"type": "cloud_run_revision", "labels": {}}})]
    log = Path(stack.functions["on_drain"].log_path)

    def refused() -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [x for x in lines if x.get("message_id") in ids and "Acknowledged" in x["message"]]

    lines = wait_for("the drain to refuse the three messages", lambda: len(refused()) >= 3 and refused(), 30)
    assert {x["severity"] for x in lines} == {"ERROR"}
    reasons = " ".join(x["message"] for x in lines)
    assert "resource.labels.project_id is missing" in reasons and "is not a Cloud Run request log" in reasons
    assert {x["message_id"] for x in lines} == set(ids), "each once: acknowledged, so never delivered again"
    assert store.in_flight()[0] == [], "nothing changed"


def test_a_failing_canary_is_rolled_back_on_request_logs_before_monitoring_could_see_it(stack):
    store = Store.from_env(stack.project)
    store.put_spec(load_spec(SPEC), "test", datetime.now(timezone.utc))
    ship(stack.state_dir, stack.project, SERVICE, "v1")
    wait_for("v1 stable", lambda: (store.service(SERVICE, REGION) or {}).get("stable_revision"), 90)
    with Load(service_uri(stack, SERVICE), rps=20, max_duration_s=120):
        ship(stack.state_dir, stack.project, SERVICE, "v2", {"FAIL_RATE": "0.3"})
        r = wait_for("v2's canary", lambda: (x := store.active_rollout(SERVICE, REGION)) and x.version == "v2" and x)
        r = wait_for("v2 serving", lambda: (x := store.rollout(r.id)).step_started_at and x, 90)
        r = wait_for("v2 rolled back", lambda: (x := store.rollout(r.id)).state in (
            "rolling_back", "rolled_back", "failed", "succeeded", "paused") and x, 60)
    assert r.state in ("rolling_back", "rolled_back"), r.message
    docs, _ = store.audit_trail(r.id)
    decision = next(d for d in docs if d.get("decision") == "rolling_back")
    verdict = decision["verdict"]
    assert verdict["outcome"] == "fail" and verdict["source"] == "request-logs", verdict
    # Within Monitoring's lag of the step's start: its own sample could not have been read yet.
    assert verdict["window_end"] - r.step_started_at < timedelta(seconds=LAG)
    rate = next(c for c in verdict["checks"] if c["name"] == "error_rate")
    assert rate["passed"] is False and rate["measured"] > 0.05
    assert stack.log_export.dropped == 0, "the router's export kept up"

"""A spec's custom metric, judged by its CEL condition on the local stack, on what the production path reads:
the tick's sampler queries the local Monitoring with the spec's filter (2xx responses per revision), the judge
evaluates the condition over canary and stable, and either rolls back or, as a dry run, only records.

Both services run at once on one stack; their built-in limits are set out of the way (errors up to 60 %), so
only the custom metric can be the reason for what happens."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.build import ship
from pitstop.local.demo import service_uri
from pitstop.local.emulators import wipe_firestore
from pitstop.local.load import Load
from pitstop.local.stack import Stack, wait_for

pytestmark = pytest.mark.emulators
REGION = "us-central1"
CONDITION = "canary.ok / canary.requests >= 0.9 * (stable.ok / stable.requests)"


def spec(service: str, dry_run: bool) -> str:
    return f"""
service: {service}
regions: [{REGION}]
match: {{repo: {service}, branch: main}}
strategy: {{canary: {{steps: [{{weight: 50, pause: 12s}}]}}}}
health:
  min_requests: 10
  interval: 2s
  max_error_rate: 0.6
  max_p99_ms: 5000
  min_latency_increase_ms: 1000
  metrics:
    - name: ok
      query:
        filter: metric.type = "run.googleapis.com/request_count" AND metric.labels.response_code_class = "2xx"
        aligner: ALIGN_DELTA
        reducer: REDUCE_SUM
      condition: "{CONDITION}"
      dry_run: {str(dry_run).lower()}
"""


@pytest.fixture(scope="module")
def outcome(emulators, tmp_path_factory):
    """shop (the metric acts) and shop-dry (a dry run) each ship v1, then a v2 whose requests fail 30 %."""
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("custom"), emulators=emulators, tick_interval=0.5, health_lag=1.5,
               identity="alice@example.com") as stack:
        store = Store.from_env(stack.project)
        for service, dry in (("shop", False), ("shop-dry", True)):
            store.put_spec(load_spec(spec(service, dry)), "test", datetime.now(timezone.utc))
            ship(stack.state_dir, stack.project, service, "v1")
        for service in ("shop", "shop-dry"):
            wait_for(f"{service} v1 stable", lambda: (store.service(service, REGION) or {}).get("stable_revision"), 90)
        ended = {}
        with Load(service_uri(stack, "shop"), rps=20, max_duration_s=150), \
                Load(service_uri(stack, "shop-dry"), rps=20, max_duration_s=150):
            for service in ("shop", "shop-dry"):
                ship(stack.state_dir, stack.project, service, "v2", {"FAIL_RATE": "0.3"})
            for service in ("shop", "shop-dry"):
                r = wait_for(f"{service} v2", lambda: (x := store.active_rollout(service, REGION)) and
                             x.version == "v2" and x)
                ended[service] = wait_for(f"{service} v2 ended", lambda: (x := store.rollout(r.id)).state in (
                    "rolled_back", "failed", "succeeded", "paused") and x, 120)
        yield store, ended
    for process in stack.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-3000:]}")


def test_a_failing_custom_metric_rolls_the_canary_back_with_its_condition_and_values(outcome):
    store, ended = outcome
    r = ended["shop"]
    assert r.state == "rolled_back", r.message
    docs, _ = store.audit_trail(r.id)  # the raw audit documents, as an auditor reads them in Firestore
    failed = next(d["verdict"] for d in docs if d.get("verdict", {}).get("outcome") == "fail")
    assert failed["source"] == "cloud-monitoring"
    assert f"`{CONDITION}` does not hold" in failed["rule"], failed["rule"]
    ok = next(c for c in failed["checks"] if c["name"] == "ok")
    assert ok["passed"] is False and ok["condition"] == CONDITION and 0 < ok["measured"] and 0 < ok["stable"]
    builtin = {c["name"]: c for c in failed["checks"]}
    assert builtin["error_rate"]["passed"] is not False, "the built-in limit stayed out of the way"


def test_a_dry_run_metric_is_judged_and_recorded_and_never_acts(outcome):
    store, ended = outcome
    r = ended["shop-dry"]
    assert r.state == "succeeded", r.message
    dry = [m for m in r.measurements if m.metric == "ok"]
    assert dry and all(m.dry_run for m in dry) and any(m.outcome == "fail" for m in dry)
    assert all(m.condition == CONDITION for m in dry)
    docs, _ = store.audit_trail(r.id)
    sentences = [s for d in docs for s in d.get("verdict", {}).get("dry_run", [])]
    assert sentences and sentences[0].startswith("[dry run] ok "), sentences
    reasons = [reason for d in docs for reason in d.get("reasons", [])]
    assert any("recorded, no action (dry_run)" in reason for reason in reasons)

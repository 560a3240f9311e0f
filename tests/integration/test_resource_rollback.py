"""What the sampler measures, judged on the local stack through the production path.

A canary that saturates its CPU is rolled back: the local Cloud Run samples its revision processes, the
local Monitoring serves container/cpu/utilizations (lagging like everything it serves), the tick's sampler
reads their p95 per revision, the judge fails the window on the CPU limit. Errors and latency stay healthy:
only CPU can be the reason. And a spec's custom metric, a Monitoring filter over what the router served,
is read per revision and judged by its condition, while a metric whose filter Monitoring refuses is
logged with its name and filter and the rest is still sampled."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from conftest import local_stack

from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.build import ship
from pitstop.local.demo import service_uri
from pitstop.local.load import Load
from pitstop.local.stack import wait_for

pytestmark = [pytest.mark.emulators, pytest.mark.skipif(not os.path.isdir("/proc"), reason="usage is read from /proc")]
SERVICE, REGION = "burner", "us-central1"
# The limit is under the seed's 80 %: on a busy 2-core test machine (emulators, functions, the load and the
# burner share it) the burning thread got only ~60 % of a core; the idle stable revision stays far below 40 %.
SPEC = f"""
service: {SERVICE}
regions: [{REGION}]
match: {{repo: {SERVICE}, branch: main}}
strategy: {{canary: {{steps: [{{weight: 50, pause: 30s}}]}}}}
health:
  min_requests: 10
  interval: 2s
  cpu: {{max: 0.4}}
  max_p99_ms: 5000
  min_latency_increase_ms: 1000
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    with local_stack(emulators, tmp_path_factory.mktemp("resources"), health_lag=1.5) as running:
        yield running


def test_a_canary_saturating_its_cpu_is_rolled_back_naming_cpu(stack):
    store = Store.from_env(stack.project)
    store.put_spec(load_spec(SPEC), "test", datetime.now(timezone.utc))
    ship(stack.state_dir, stack.project, SERVICE, "v1")
    stable = wait_for("v1 stable", lambda: (store.service(SERVICE, REGION) or {}).get("stable_revision"), 90)

    with Load(service_uri(stack, SERVICE), rps=20, max_duration_s=180):
        ship(stack.state_dir, stack.project, SERVICE, "v2", {"CPU_BURN": "1"})
        r = wait_for("v2's canary", lambda: (x := store.active_rollout(SERVICE, REGION)) and x.version == "v2" and x)
        r = wait_for("v2 rolled back", lambda: (x := store.rollout(r.id)).state in ("rolled_back", "failed",
                                                                                   "succeeded", "paused") and x, 120)
    assert r.state == "rolled_back", r.message
    # The raw audit documents (what an auditor reads in Firestore), each decision with its verdict.
    docs, _ = store.audit_trail(r.id)
    failed = next(d["verdict"] for d in docs if d.get("verdict", {}).get("outcome") == "fail")
    assert failed["source"] == "cloud-monitoring" and "CPU utilization" in failed["rule"], failed["rule"]
    checks = {c["name"]: c for c in failed["checks"]}
    cpu = checks["cpu_utilization"]
    assert cpu["passed"] is False and cpu["measured"] > cpu["threshold"] == 0.4
    assert all(checks[name].get("passed") is not False for name in ("error_rate", "latency_p99_ms"))
    assert cpu["stable"] < 0.3, "the idle stable revision, measured over the same window"
    assert store.service(SERVICE, REGION)["stable_revision"] == stable

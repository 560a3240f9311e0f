"""The judge on the local stack, on what the production path reads (the tick's sampler, the local Monitoring):

- shop: a custom metric (2xx responses per revision, the spec's own filter) whose CEL condition fails rolls
  the canary back; shop-dry: the same metric as a dry run is judged and recorded and never acts. Their
  built-in limits are set out of the way (errors up to 60 %), so only the custom metric can be the reason;
- stat: `judge: statistical` rolls back a canary at 3 % errors against stable's 0 %, under the 5 % limit that
  the threshold judge reads, with the beta-binomial test's figures in the verdict.

The three run at once on one stack (one stack's start-up for the file)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
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
CONDITION = "canary.ok / canary.requests >= 0.9 * (stable.ok / stable.requests)"
REFUSED_FILTER = 'metric.type = "run.googleapis.com/request_count" OR metric.labels.response_code = "200"'


STATISTICAL = f"""
service: stat
regions: [{REGION}]
match: {{repo: stat, branch: main}}
strategy: {{canary: {{steps: [{{weight: 50, pause: 60s}}]}}}}
health: {{judge: statistical, min_requests: 50, interval: 2s, max_p99_ms: 5000}}
"""


def spec(service: str, dry_run: bool) -> str:
    return f"""
service: {service}
regions: [{REGION}]
match: {{repo: {service}, branch: main}}
strategy: {{canary: {{steps: [{{weight: 50, pause: 8s}}]}}}}
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
    - name: refused                     # Monitoring refuses this filter (an OR): named in the log, never a value
      query: {{filter: '{REFUSED_FILTER}'}}
      condition: canary.refused >= 0.0
      dry_run: true
"""


@pytest.fixture(scope="module")
def outcome(emulators, tmp_path_factory):
    """shop (the metric acts) and shop-dry (a dry run) ship v1, then a v2 whose requests fail 30 %; stat ships
    v1, then a v2 whose requests fail 3 %."""
    with local_stack(emulators, tmp_path_factory.mktemp("judge")) as stack:
        store = Store.from_env(stack.project)
        specs = {"shop": spec("shop", False), "shop-dry": spec("shop-dry", True), "stat": STATISTICAL}
        failing = {"shop": "0.3", "shop-dry": "0.3", "stat": "0.03"}
        for service, text in specs.items():
            store.put_spec(load_spec(text), "test", datetime.now(timezone.utc))
            ship(stack.state_dir, stack.project, service, "v1")
        for service in specs:
            wait_for(f"{service} v1 stable", lambda: (store.service(service, REGION) or {}).get("stable_revision"), 90)
        ended = {}
        with Load(service_uri(stack, "shop"), rps=20, max_duration_s=150), \
                Load(service_uri(stack, "shop-dry"), rps=20, max_duration_s=150), \
                Load(service_uri(stack, "stat"), rps=40, max_duration_s=150):
            for service in specs:
                ship(stack.state_dir, stack.project, service, "v2", {"FAIL_RATE": failing[service]})
            for service in specs:  # one may have ended before the others are looked at: its last rollout then
                r = wait_for(f"{service} v2", lambda: (x := _latest(store, service)) and x.version == "v2" and x)
                ended[service] = wait_for(f"{service} v2 ended", lambda: (x := store.rollout(r.id)).state in (
                    "rolled_back", "failed", "succeeded", "paused") and x, 120)
        yield store, ended, stack


def _latest(store: Store, service: str):
    record = store.service(service, REGION) or {}
    rollout_id = record.get("active_rollout") or record.get("last_rollout")
    return store.rollout(rollout_id) if rollout_id else None


def test_a_failing_custom_metric_rolls_the_canary_back_with_its_condition_and_values(outcome):
    store, ended, _ = outcome
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
    store, ended, _ = outcome
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


def test_the_statistical_judge_rolls_back_3_percent_errors_against_stables_0_under_the_5_percent_limit(outcome):
    store, ended, _ = outcome
    r = ended["stat"]
    assert r.state == "rolled_back", r.message
    docs, _ = store.audit_trail(r.id)
    failed = next(d["verdict"] for d in docs if d.get("verdict", {}).get("outcome") == "fail")
    assert "beta-binomial" in failed["rule"] and "→ fail" in failed["rule"], failed["rule"]
    test = next(t for t in failed["tests"] if t["test"] == "beta-binomial")
    assert test["decision"] == "fail" and test["p"] >= test["confidence"] == 0.99
    limit = next(t for t in failed["tests"] if t["test"] == "max_error_rate")
    assert limit["decision"] != "fail", "the 5 % hard limit did not fire: the comparison with stable did"
    assert {t["test"] for t in failed["tests"]} == {"max_error_rate", "max_p99_ms", "beta-binomial", "mann-whitney"}


def test_a_custom_metric_monitoring_refuses_is_named_in_the_log_and_never_has_a_value(outcome):
    store, ended, stack = outcome
    docs, _ = store.audit_trail(ended["shop"].id)
    refused = [c for d in docs for c in d.get("verdict", {}).get("checks", []) if c["name"] == "refused"]
    assert refused and all("measured" not in c and c.get("passed") is None for c in refused), "no value: not judged"
    tick_log = Path(stack.functions["on_tick"].log_path).read_text()
    logged = [json.loads(line) for line in tick_log.splitlines() if "refused" in line and '"shop"' in line]
    assert logged and logged[0]["severity"] == "ERROR", tick_log[-2000:]
    assert "custom metric 'refused'" in logged[0]["message"] and " OR " in logged[0]["message"]

"""Rollback reaction time on the local stack: one unhealthy health sample in, how long until
the router sends 100 % of requests to the stable revision again.

    .venv/bin/python bench/rollback_reaction.py [--runs 20] [--warmup 1]

Each run is a fresh canary: ship a new version, wait until its first step (10 %)
is applied and routed, then publish one failing sample (30 % errors, rollout_id
set) to `pitstop-health` and time the reaction. The stable revision stays the
same throughout (every canary is rolled back).

"100 % stable as seen by the router" is read from the router's routing table,
the object every new request is routed by, polled in-process every 1 ms (the
stack runs in this process). Probe requests would measure the same switch
blurred by their own latency and rate.

Where the time goes, from timestamps on one clock:
  publish     publish() called -> the Pub/Sub emulator accepted the message
  delivery    accepted -> on_health starts deciding (the `at` of the rolling_back
              audit event): push delivery, functions-framework, one Firestore read
  decide+write  -> the decision is committed (the `time` of on_health's JSON log
              line for it, written right after the commit)
  cloud run   committed -> the router's table switched: the Cloud Run Admin API
              update (REST client, local Cloud Run, router swap)
  total       publish() called -> router switched
Shown apart, not part of the reaction: the update's operation returning
(`at` of the rolled_back audit event) after the switch; ±1 ms, the polling step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pitstop.local.build import ship
from pitstop.local.demo import RouteWatcher, local_logs_to
from pitstop.local.payloads import health_sample
from pitstop.local.stack import Stack, wait_for
from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store

SERVICE, REGION = "bench", "us-central1"
SPEC = f"""
service: {SERVICE}
regions: [{REGION}]
match: {{repo: {SERVICE}, branch: main}}
strategy: {{canary: {{steps: [{{weight: 10, pause: 1h}}]}}}}   # nothing moves by the clock
health: {{min_requests: 20}}
"""
STAGES = ("publish", "delivery", "decide+write", "cloud run", "total")

@dataclass
class Run:
    version: str
    publish: float
    delivery: float
    decide_write: float
    cloud_run: float
    total: float
    op_returned: float  # after the switch

    def stage(self, name: str) -> float:
        return getattr(self, name.replace("+", "_").replace(" ", "_"))

def commit_time(log_path: Path, rollout_id: str, decision: str) -> float:
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # functions-framework's own lines
        if entry.get("rollout_id") == rollout_id and entry.get("decision") == decision:
            return datetime.fromisoformat(entry["time"]).timestamp()
    raise RuntimeError(f"no {decision} log line for {rollout_id} in {log_path}")

def one_run(stack: Stack, store: Store, publisher, topic: str, routes: RouteWatcher, stable: str,
            version: str) -> Run:
    build_id = ship(stack.state_dir, stack.project, SERVICE, version)
    r = wait_for(f"{version}'s first canary step applied", lambda: (
        (x := store.active_rollout(SERVICE, REGION)) and x.artifact.build_id == build_id
        and x.step_started_at and x.applied and x))
    wait_for("the router to route the canary", lambda: routes.first({stable: 90, r.revision: 10}, 0))
    now = datetime.now(timezone.utc)
    sample = health_sample(SERVICE, r.revision, r.step_started_at, now, 200, 60, 40.0,
                           rollout_id=r.id, source="bench-probe")
    t0 = time.time()
    publisher.publish(topic, json.dumps(sample).encode()).result(timeout=30)
    accepted = time.time()
    switched = wait_for("the router back on stable 100 %", lambda: routes.first({stable: 100}, t0), every=0.01)
    wait_for(f"{version} rolled_back", lambda: store.rollout(r.id).state == "rolled_back")
    events = {e.decision: e for e in store.events(r.id)}
    decided = events["rolling_back"].at.timestamp()
    committed = commit_time(stack.functions["on_health"].log_path, r.id, "rolling_back")
    return Run(version, accepted - t0, decided - accepted, committed - decided, switched - committed,
               switched - t0, events["rolled_back"].at.timestamp() - switched)

def p99(values: list[float]) -> float:
    """Nearest rank: with fewer than 100 runs this is the slowest run."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, -(-99 * len(ranked) // 100) - 1))]

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="fresh canaries to roll back (default 20)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="runs first, shown but not counted: the functions' cold start (default 1)")
    args = parser.parse_args()
    if not 1 <= args.runs + args.warmup <= 200 or args.runs < 1 or args.warmup < 0:
        parser.error("--runs (at least 1) plus --warmup must be at most 200 (each run starts a revision process)")
    from google.cloud import pubsub_v1

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pitstop-bench-") as state_dir, \
            local_logs_to(Path(state_dir) / "local-cloud.log"), Stack(Path(state_dir), tick_interval=1.0) as stack:
        store = Store.from_env(stack.project)
        store.put_spec(load_spec(SPEC), "bench", datetime.now(timezone.utc))
        ship(stack.state_dir, stack.project, SERVICE, "v0")
        stable = wait_for("v0 stable", lambda: (store.service(SERVICE, REGION) or {}).get("stable_revision"))
        # One message per batch: the client's default 10 ms batching delay is not pitstop's.
        publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        topic = publisher.topic_path(stack.project, "pitstop-health")
        name = f"projects/{stack.project}/locations/{REGION}/services/{SERVICE}"
        try:
            with RouteWatcher(stack.cloud_run.router, name, every=0.001) as routes:
                for i in range(1, args.warmup + args.runs + 1):
                    run = one_run(stack, store, publisher, topic, routes, stable, f"v{i}")
                    warm = i > args.warmup
                    if warm:
                        runs.append(run)
                    print(f"{'run' if warm else 'warm-up'} {i:>3} {run.version:>4}: " + "  ".join(
                        f"{s} {run.stage(s) * 1000:6.1f} ms" for s in STAGES), flush=True)
        finally:
            publisher.stop()
    print(f"\nrollback reaction over {len(runs)} runs after {args.warmup} warm-up (ms; p99 = nearest rank)")
    print(f"{'stage':<14}{'median':>9}{'p99':>9}{'min':>9}{'max':>9}")
    for s in STAGES + ("op returned",):
        values = [(r.stage(s) if s != "op returned" else r.op_returned) * 1000 for r in runs]
        print(f"{s:<14}{statistics.median(values):>9.1f}{p99(values):>9.1f}{min(values):>9.1f}{max(values):>9.1f}")
    totals = [r.total * 1000 for r in runs]
    print(f"\nsummary: unhealthy sample published -> router on stable 100 % in {statistics.median(totals):.0f} ms "
          f"median, {p99(totals):.0f} ms p99 over {len(runs)} warm runs")
    return 0

if __name__ == "__main__":
    sys.exit(main())

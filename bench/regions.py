"""Multi-region consistency on the local stack: a 3-region, 2-wave production release under load.

    .venv/bin/python bench/regions.py [--runs 3] [--rps 80] [--lag 1.5] [--tick 0.5]

Each run is `pitstop demo`'s scenario on a fresh stack (local/release_demo.py): v1 everywhere, v2 released
staging → production (us-central1, then europe-west1 + asia-northeast1), v3 failing in wave 2. Figures:

  spread (recorded)  per step of a multi-region wave, the release's own record: the first and the last
                     region's traffic change (the rollouts' step_started_at: when each Cloud Run update returned)
  spread (routed)    the same steps as the local routers served them: when each region's routing table
                     first sent the step's weight to the new revision (polled every 5 ms in this process)
  revert             the failing verdict's decision (its audit event) → every production region's router on
                     v2 at 100 % again, us-central1 included (it had finished wave 1: a revert rollout)

Goals: spread under 1 s locally (the seed's bar is 5 s), revert under 2 s locally (the bar is 30 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from pitstop.local.demo import local_logs_to  # noqa: E402
from pitstop.local.release_demo import run_release_scenario  # noqa: E402
from pitstop.local.stack import Stack  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rps", type=float, default=80.0)
    parser.add_argument("--lag", type=float, default=1.5, help="local Monitoring's lag, seconds (GCP's 180 s "
                        "scaled like the 0.5 s tick to Cloud Scheduler's minute)")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between ticks")
    parser.add_argument("--verbose", action="store_true", help="print the releases' audit as they go")
    parser.add_argument("--checks", action="store_true", help="with the pipeline's checks (scan, migration, smoke, "
                                                              "E2E): slower, same waves")
    args = parser.parse_args()
    recorded, routed, reverts, seconds = [], [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="pitstop-regions-") as state, \
                local_logs_to(Path(state) / "local-cloud.log"), \
                Stack(Path(state), tick_interval=args.tick, health_lag=args.lag) as stack:
            report = run_release_scenario(stack, args.rps, print if args.verbose else lambda _: None,
                                          checks=args.checks)
        if report.problems:
            print(f"run {run + 1}: FAILED: " + "; ".join(report.problems))
            return 1
        recorded += report.spreads_recorded_ms
        routed += report.spreads_routed_ms
        reverts.append(report.revert_s * 1000)
        seconds.append(report.seconds)
        print(f"run {run + 1}: spreads recorded {[round(x) for x in report.spreads_recorded_ms]} ms, routed "
              f"{[round(x) for x in report.spreads_routed_ms]} ms; revert {report.revert_s * 1000:.0f} ms; "
              f"scenario {report.seconds:.0f} s")
    print(f"\n{args.runs} runs, {args.rps:g} req/s over 4 places, Monitoring lag {args.lag:g} s, tick {args.tick:g} s")
    print(f"{'':22}{'n':>5}{'p50 ms':>10}{'max ms':>10}")
    for name, values in (("spread (recorded)", recorded), ("spread (routed)", routed), ("revert", reverts)):
        print(f"{name:22}{len(values):>5}{statistics.median(values):>10.0f}{max(values):>10.0f}")
    print(f"scenario (v1, v2, v3 through both environments): p50 {statistics.median(seconds):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

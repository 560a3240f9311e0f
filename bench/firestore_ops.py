"""What rollouts cost in Firestore reads and writes, Cloud Run calls and Monitoring queries, per input type and
per whole rollout, with N rollouts of other services in flight at once (issue 7, "Cost that grows with work").

    .venv/bin/python bench/firestore_ops.py [--n 10,50,200] [--specs 200]

Real engine and Store on the Firestore emulator (started here, wiped between runs), simulated clock
(tick every 60 s, Monitoring lag 180 s), Cloud Run / Monitoring / Pub/Sub faked in process; counted at
the Firestore client boundary. pitstop.local.costs says exactly what is counted and how it is attributed.

Each run: `--specs` other services registered (spec and stable revision, never built), and N services
whose SUCCESS builds arrive over 5 minutes, each running the default canary (5/10/25 %, 5 m pauses, then
the watch at 100 %) to `succeeded`. Three of the N also get an alert or commands (one is rolled back by
an open incident): they give the per-input figures of alerts and commands, and are left out of the
whole-rollout figures.

Target (issue 7): a whole 4-step canary costs <= 60 Firestore reads and <= 40 writes, whatever N and the
number of services. Exits 1 if a rollout exceeds it, if the mean cost per rollout grows with N, or if a
rollout did not end as planned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))  # without `pip install -e .` too

from pitstop.local import costs  # noqa: E402
from pitstop.local.emulators import start_firestore  # noqa: E402

PROJECT = "pitstop-bench"
GROWTH = 0.05  # mean cost per rollout may differ by this share between N (tick phases), not more


def minutes(td) -> str:
    return f"{td.total_seconds() / 60:.1f} min"


def per_input_table(r: costs.Result) -> list[str]:
    lines = [f"  {'input':<13}{'inputs':>8}{'handles':>9}{'FS reads':>10}{'FS writes':>11}{'Cloud Run':>11}"
             f"{'Monitoring':>12}   (mean per input)"]
    notes = {"tick": "one tick for all rollouts due", "applied": "inside build/health/command",
             "observed": "the reconciler, inside tick", "health": "published by the tick's sampler"}
    for kind, row in r.per_input().items():
        lines.append(f"  {kind:<13}{row['inputs']:>8}{row['handled']:>9}{row['reads']:>10.2f}{row['writes']:>11.2f}"
                     f"{row['cloudrun']:>11.2f}{row['monitoring']:>12.2f}   {notes.get(kind, '')}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10,50,200", help="rollouts in flight, comma-separated")
    parser.add_argument("--specs", type=int, default=200, help="registered specs of other services")
    args = parser.parse_args()
    sizes = [int(x) for x in args.n.split(",") if x.strip()]

    started = time.perf_counter()
    print(f"Starting the Firestore emulator for {PROJECT}...", flush=True)
    emulator = start_firestore(PROJECT)
    results: list[costs.Result] = []
    try:
        harness = costs.Harness(PROJECT, emulator.env["FIRESTORE_EMULATOR_HOST"])
        harness.check()
        print("self-check of the counting: store.rollout(id) of a missing document = 1 read, a commit of 3 "
              "writes = 3 writes, get = 1, get_all of 2 = 2, a query of 3 documents = 3, an empty query = 1: ok")
        for n in sizes:
            print(f"\nN = {n} rollouts in flight, {args.specs} other specs ...", flush=True)
            r = harness.run(n, specs=args.specs)
            results.append(r)
            report_run(r)
    finally:
        emulator.stop()

    failures = summary(results)
    print(f"\nwall time: {time.perf_counter() - started:.1f} s (emulator start included)")
    if failures:
        print("\nFAILED:")
        for line in failures:
            print(f"  {line}")
        return 1
    print("\nall within target")
    return 0


def report_run(r: costs.Result) -> None:
    durations = [r.durations[s].total_seconds() for s in r.clean if s in r.durations]
    print(f"  {r.simulated.total_seconds() / 60:.0f} min simulated in {r.seconds:.1f} s wall; build -> succeeded "
          f"{min(durations) / 60:.1f}-{max(durations) / 60:.1f} min; clean rollouts {len(r.clean)}, "
          f"with alert/commands {len(r.probes)}")
    for line in per_input_table(r):
        print(line)
    full = r.full_ticks()
    if full:
        k, flying = len(full), sum(t.in_flight for t in full)
        reads, writes = sum(t.reads for t in full) / k, sum(t.writes for t in full) / k
        run, mon = sum(t.cloudrun for t in full) / k, sum(t.monitoring for t in full) / k
        wall = sum(t.seconds for t in full) / k
        print(f"  per tick with {flying / k:.1f} rollouts in flight (mean of {k} ticks; the tick and the observed "
              f"inputs it makes): {reads:.1f} reads, {writes:.1f} writes, {run:.1f} Cloud Run, {mon:.1f} Monitoring "
              f"queries, {wall * 1000:.0f} ms wall; per rollout in flight: {reads * k / flying:.2f} reads, "
              f"{run * k / flying:.2f} Cloud Run, {mon * k / flying:.2f} Monitoring")
    print(f"  shared (no rollout's): {r.shared_reads()} reads in {len(r.ticks)} ticks (empty queries, billed 1 each)")
    if r.probes:
        p = r.per_rollout(r.probes)
        print(f"  rollouts with an alert or commands: reads mean {p['reads'][0]:.1f} (max {p['reads'][1]}), writes "
              f"mean {p['writes'][0]:.1f} (max {p['writes'][1]})")


def summary(results: list[costs.Result]) -> list[str]:
    failures: list[str] = []
    if not results:
        return failures
    print("\n== a whole rollout (default 4-step canary, build to succeeded, clean rollouts), by N in flight ==")
    print(f"  {'N':>4}{'specs':>7}{'rollouts':>10}   {'FS reads mean/max':>18}  {'target':>7}   "
          f"{'FS writes mean/max':>19}  {'target':>7}   {'Cloud Run':>9}   {'Monitoring (ListTimeSeries)':>27}"
          f"   {'wall':>7}")
    for r in results:
        b = r.per_rollout()
        reads_ok = b["reads"][1] <= costs.TARGET_READS
        writes_ok = b["writes"][1] <= costs.TARGET_WRITES
        mon = b["monitoring"][0]
        print(f"  {r.n:>4}{r.specs:>7}{len(r.clean):>10}   {b['reads'][0]:>11.1f} / {b['reads'][1]:<4}  "
              f"{'<= ' + str(costs.TARGET_READS):>7} {'ok' if reads_ok else 'OVER':<4}"
              f"{b['writes'][0]:>11.1f} / {b['writes'][1]:<4}  {'<= ' + str(costs.TARGET_WRITES):>7} "
              f"{'ok' if writes_ok else 'OVER':<4}{b['cloudrun'][0]:>9.1f}   "
              f"{mon:>12.1f} ({mon * costs.LIST_CALLS_PER_QUERY:>6.0f})        {r.seconds:>6.1f}s")
        failures += [f"N={r.n}: {line}" for line in r.over_target()[:5]]
        failures += [f"N={r.n}: {line}" for line in r.unexpected()[:5]]

    base = results[0].per_rollout()
    for r in results[1:]:
        b = r.per_rollout()
        for metric in ("reads", "writes", "cloudrun", "monitoring"):
            if b[metric][0] > base[metric][0] * (1 + GROWTH) + 1:
                failures.append(f"{metric} per rollout grow with N: {base[metric][0]:.1f} at N={results[0].n}, "
                                f"{b[metric][0]:.1f} at N={r.n}")

    kinds = [k for k in costs.KINDS if any(r.by_kind(costs.READS + costs.WRITES).get(k) for r in results)]
    print("\n== where a whole rollout's Firestore operations go (mean per rollout, by input type) ==")
    print("  " + f"{'input':<13}" + "".join(f"{'N=' + str(r.n) + ' reads/writes':>24}" for r in results))
    for kind in kinds:
        cells = "".join(f"{r.by_kind(costs.READS).get(kind, 0):>17.1f} / {r.by_kind(costs.WRITES).get(kind, 0):<4.1f}"
                        for r in results)
        print(f"  {kind:<13}{cells}")
    last = results[-1]
    print(f"\n== by call, at N={last.n} (mean per whole rollout; get_missing: a get of an absent document) ==")
    print(f"  {'input':<13}{'operation':<19}{'collection':<17}{'count':>7}")
    for kind, op, collection, count in last.by_call():
        if count >= 0.05:
            print(f"  {kind:<13}{op:<19}{collection or '-':<17}{count:>7.1f}")
    return failures


if __name__ == "__main__":
    sys.exit(main())

"""Never promote what was not measured, under GCP's timing: a sweep over the GCP timing model.

    .venv/bin/python bench/gcp_timing.py [--seeds 5] [--rps 50] [--lag 180] [--healthy 200] [--every 15]
                                         [--old-rule] [--points-offset SECONDS|random]
                                         [--log-fraction 0.1] [--no-logs]

The default spec (5 %, 10 %, 25 % for 5 minutes each, then a 60 s watch at 100 %) under
`pitstop.local.timing`: Cloud Scheduler ticks every 60 s, Cloud Monitoring's points per minute shown
`--lag` seconds late, Pub/Sub delays and duplicates, Cloud Run updates taking 1-8 s; `--rps` requests a
second. Every figure is simulated time from the model, deterministic for the seeds; nothing is run on GCP.

- **Failing canaries**: for each of `--seeds` seeds, the new revision starts failing every `--every`
  seconds from the moment it first serves users to the end of its final watch (when a healthy twin of
  the same seed would have ended it), once with 30 % errors and once with its p99 at 2.5 s (limit 1 s).
  *Promoted* counts those that end `succeeded` although the failure started at least one health window
  (60 s) before the end of the final watch (must be 0); failures that start later are counted apart
  (one that starts in the watch's last seconds makes a minute that is healthy by the thresholds).
  *Bad requests* are the errors above
  the new revision's healthy rate it served to users after the onset (with a latency failure: every
  request it served after the onset). *Onset to stable* ends when Cloud Run serves 100 % on stable again.
- **Healthy canaries**: `--healthy` seeds with noise inside the thresholds (a true error rate of 0-2 %
  a minute, counted request by request; p99 100-400 ms, drifting): rolled back (must be 0), and the wall
  time of the whole rollout, build to success; then the same with 20 % of Cloud Run calls answering 503
  and updates taking 3-10 s, longer than the engine waits for one (must be 0: issue 7's retry budget).
- **The request-log path** (a column of its own, `--no-logs` leaves it out): the same sweeps with the drain
  reading Cloud Run's request logs (every 5xx, `--log-fraction` of the rest, delivered 2-8 s late, a drain
  every 5 s). First, the canaries that start failing with 30 % errors in their first (5 %) step: onset to
  100 % on stable and bad requests served, Monitoring alone and with the logs side by side.
- The same with lag 0 for comparison. `--old-rule` runs everything with the advance rule from before
  issue 7 (`now >= next_step_at` and the latest verdict is a pass). `--points-offset` shifts Monitoring's
  60 s points off the wall clock's minutes (the sampler ends its windows on whole minutes).

Exits 1 when a must-be-0 figure is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field

from pitstop.local import timing as tm

INTERVAL = 60  # Health.interval of the default spec
FAILURES = {"errors": "30 % errors", "latency": "p99 2.5 s"}


def p99(values: list[float]) -> float:
    """Nearest rank."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, -(-99 * len(ranked) // 100) - 1))]


def p50(values: list[float]) -> float:
    ranked = sorted(values)
    return ranked[(len(ranked) - 1) // 2]


@dataclass
class Sweep:
    failing: dict[str, list[tm.Result]] = field(default_factory=lambda: {k: [] for k in FAILURES})
    promoted: dict[str, list[tm.Result]] = field(default_factory=lambda: {k: [] for k in FAILURES})
    late: dict[str, list[tm.Result]] = field(default_factory=lambda: {k: [] for k in FAILURES})  # last minute
    healthy: list[tm.Result] = field(default_factory=list)
    faults: list[tm.Result] = field(default_factory=list)
    skipped: int = 0  # seeds whose healthy twin did not succeed
    first_step: list[tm.Result] = field(default_factory=list)  # 30 % errors from within the first (5 %) step


def run(lag: float, args: argparse.Namespace, logs: bool = False) -> Sweep:
    out = Sweep()
    timing = dict(lag=lag, rps=args.rps, minute_offset=args.points_offset, request_logs=logs,
                  log_fraction=args.log_fraction)
    for seed in range(args.seeds):
        twin = tm.simulate(seed=seed, **timing)
        if not twin.succeeded:
            out.skipped += 1
            continue
        deadline = twin.final_deadline
        onset = twin.first_served_at
        first_step_ends = next(t for t in twin.when("advanced") if t > onset)  # the 10 % step decided
        while onset <= deadline:
            for failure in FAILURES:
                r = tm.simulate(seed=seed, onset=onset, failure=failure, **timing)
                end = r.final_deadline or deadline  # the same timeline up to the onset
                if r.violations:
                    raise SystemExit(f"invariant violated (seed {seed}, onset {onset:.0f}s): {r.violations}")
                if failure == "errors" and onset < first_step_ends:
                    out.first_step.append(r)
                if onset <= end - INTERVAL:
                    out.failing[failure].append(r)
                    if r.succeeded:
                        out.promoted[failure].append(r)
                else:
                    out.late[failure].append(r)
            onset += args.every
    for seed in range(args.healthy):
        out.healthy.append(tm.simulate(seed=seed, **timing))
        out.faults.append(tm.simulate(seed=seed, p_fault=0.2, apply_latency=(3.0, 10.0), **timing))
    return out


def cell(values: list[float], fmt: str = "{:.0f}") -> str:
    """p50 / p99 / max; with the "min" format, p50 / max."""
    if not values:
        return "-"
    picks = (p50(values), max(values)) if "min" in fmt else (p50(values), p99(values), max(values))
    return " / ".join(fmt.format(v) for v in picks)


def share(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100 * part / whole:.1f} %)" if whole else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per onset in the failure sweep (default 5)")
    parser.add_argument("--rps", type=float, default=50.0, help="requests per second on the service (default 50)")
    parser.add_argument("--lag", type=float, default=180.0, help="Monitoring lag in seconds (default 180)")
    parser.add_argument("--healthy", type=int, default=200, help="healthy canaries (seeds), default 200")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between onsets (default 15)")
    parser.add_argument("--old-rule", action="store_true",
                        help="advance at the deadline on the latest pass verdict (the rule before issue 7)")
    parser.add_argument("--log-fraction", type=float, default=0.1,
                        help="share of non-5xx request log entries the sink exports (default 0.1; every 5xx is)")
    parser.add_argument("--no-logs", action="store_true", help="leave out the request-log column (faster)")
    parser.add_argument("--points-offset", default="0", metavar="SECONDS|random",
                        help="Monitoring's points start this far past the wall clock's minutes (default 0)")
    args = parser.parse_args()
    try:
        args.points_offset = None if args.points_offset == "random" else float(args.points_offset) % 60
    except ValueError:
        parser.error("--points-offset takes seconds or 'random'")
    if args.seeds < 1 or args.healthy < 1 or args.every <= 0 or args.rps <= 0 or args.lag < 0:
        parser.error("--seeds and --healthy at least 1, --every and --rps above 0, --lag at least 0")
    if not 0 < args.log_fraction <= 1:
        parser.error("--log-fraction is a share in (0, 1]")

    # Columns: Monitoring alone at --lag, the same with the request-log path, and Monitoring with lag 0.
    columns = [(args.lag, False)] + ([] if args.no_logs else [(args.lag, True)]) + ([(0.0, False)] if args.lag else [])
    started = time.monotonic()
    with tm.old_rule() if args.old_rule else contextlib.nullcontext():
        sweeps = {(lag, logs): run(lag, args, logs) for lag, logs in columns}
    took = time.monotonic() - started

    rule = "OLD advance rule (deadline passed + latest verdict pass)" if args.old_rule else \
        "advance only when judged healthy up to the deadline"
    offset = "" if args.points_offset == 0 else \
        f"; Monitoring's points {args.points_offset or 'randomly'} s off the minute"
    print(f"GCP timing model: default spec (5/10/25 % for 5 m, 60 s watch at 100 %), {args.rps:g} req/s, "
          f"ticks every 60 s; {rule}{offset}")
    print(f"onset every {args.every:g} s from the first step to the end of the final watch, {args.seeds} seeds, "
          f"each with {' and '.join(FAILURES.values())}; {args.healthy} healthy seeds; "
          f"{took:.0f} s to simulate\n")
    width = 54
    print(f"{'':<{width}}" + "".join(f"{f'lag {lag:g} s' + (' + request logs' if logs else ''):>28}"
                                     for lag, logs in columns))

    def row(label: str, cells) -> None:
        print(f"{label:<{width}}" + "".join(f"{c:>28}" for c in cells))

    def failed(rs: list[tm.Result]) -> int:
        return sum(not r.succeeded for r in rs)

    must_be_zero: list[str] = []
    print(f"canary failing in its first (5 %) step with 30 % errors (request logs: every 5xx, "
          f"{args.log_fraction:g} of the rest)")
    first = [[r for r in s.first_step if not r.succeeded] for s in sweeps.values()]
    row("  caught", (share(len(c), len(s.first_step)) for c, s in zip(first, sweeps.values())))
    row("  onset -> 100 % on stable (s)  p50 / p99 / max", (cell([r.onset_to_stable for r in c
                                                                 if r.onset_to_stable is not None]) for c in first))
    row("  bad requests served  p50 / p99 / max", (cell([r.bad_requests for r in c]) for c in first))
    row("  bad requests served  mean", (f"{sum(r.bad_requests for r in c) / len(c):.1f}" if c else "-"
                                        for c in first))
    row("  rolled back by request logs", (share(sum(r.rolled_back_by == "health" and r.rollback_source == "request-logs"
                                                    for r in c), len(c)) for c in first))
    for failure, what in FAILURES.items():
        print(f"failing canaries ({what}), onset >= {INTERVAL} s before the watch ends")
        row("  promoted (must be 0)", (share(len(s.promoted[failure]), len(s.failing[failure]))
                                       for s in sweeps.values()))
        caught = [[r for r in s.failing[failure] if not r.succeeded] for s in sweeps.values()]
        row("  bad requests served  p50 / p99 / max", (cell([r.bad_requests for r in c]) for c in caught))
        row("  onset -> rollback decided (s)", (cell([r.rollback_decided_at - r.onset for r in c
                                                      if r.rollback_decided_at is not None]) for c in caught))
        row("  onset -> 100 % on stable (s)", (cell([r.onset_to_stable for r in c if r.onset_to_stable is not None])
                                               for c in caught))
        row(f"  onset in the watch's last {INTERVAL} s: promoted",
            (share(sum(r.succeeded for r in s.late[failure]), len(s.late[failure])) for s in sweeps.values()))
        must_be_zero += [f"lag {lag:g}: {len(s.promoted[failure])} canaries failing with {what} promoted"
                         for (lag, _), s in sweeps.items() if s.promoted[failure]]
    print(f"healthy canaries ({args.healthy} seeds: errors 0-2 %/min, p99 100-400 ms drifting)")
    row("  rolled back (must be 0)", (share(failed(s.healthy), len(s.healthy)) for s in sweeps.values()))
    walls = [[r.finished_at / 60 for r in s.healthy if r.succeeded] for s in sweeps.values()]
    row("  wall time build -> succeeded  p50 / max", (cell(w, "{:.1f} min") if w else "-" for w in walls))
    row("  20 % 503s, 3-10 s updates: not succeeded (must be 0)",
        (share(failed(s.faults), len(s.faults)) for s in sweeps.values()))
    for (lag, logs), s in sweeps.items():
        lag = f"{lag:g}" + (" + request logs" if logs else "")
        if failed(s.healthy):
            must_be_zero.append(f"lag {lag}: {failed(s.healthy)} healthy canaries not succeeded")
        if failed(s.faults):
            bad = next(r for r in s.faults if not r.succeeded)
            must_be_zero.append(f"lag {lag}: {failed(s.faults)} healthy canaries with Cloud Run 503s not "
                                f"succeeded (e.g. seed {bad.seed}: {bad.state})")
        if s.skipped:
            print(f"  (lag {lag}: {s.skipped} sweep seeds skipped: their healthy twin did not succeed)")
    if must_be_zero:
        print("\nMUST-BE-0 FIGURES ARE NOT 0: " + "; ".join(must_be_zero))
        example = next((r for s in sweeps.values() for rs in s.promoted.values() for r in rs), None)
        if example is not None:
            print(f"e.g. seed {example.seed}: failing from {example.onset:.0f} s, the watch ended at "
                  f"{example.final_deadline:.0f} s, succeeded at {example.finished_at:.0f} s "
                  f"(timing.simulate(seed={example.seed}, onset={example.onset:.1f}, ...))")
        return 1
    print("\nall must-be-0 figures are 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())

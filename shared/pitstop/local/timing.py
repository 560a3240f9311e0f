"""A GCP timing model: one rollout driven through `machine.decide` with GCP's clock, lags and faults.

Pure and deterministic: no I/O, no wall clock; a discrete-event simulation whose every random draw
comes from generators seeded by `seed`. The tests (tests/unit/test_gcp_timing.py) run properties over
it and `bench/gcp_timing.py` sweeps it. What it models, each the way the engine meets it on GCP:

- **Cloud Scheduler** publishes a tick every `tick` seconds (random phase). As the engine's
  `on_tick`: a due rollout (`Rollout.due_at`) gets the tick, then, still live, the reconciler and the
  sampler; one that finished one to two minutes ago is reconciled once more.
- **Traffic**: `rps` requests a second (Poisson counts per stretch of time, never one object per
  request), split by what Cloud Run *serves* (the last split an API call made real, which lags the
  decision by the apply latency), plus `tag_rps` on the new revision's tagged URL while it is at 0 %.
  Healthy noise per revision and minute: a true error rate in `error_rate` (errors counted request by
  request, binomially), a p99 within `p99_jitter` of the service's, which drifts by `p99_drift` a
  minute inside `p99_ms`. From `onset` on (seconds after the build) the new revision fails:
  `fail_error_rate` of its requests fail (`failure="errors"`) or its p99 jumps to `fail_p99_ms`
  (`failure="latency"`). Latency is a lognormal per revision and minute; a window's p99 is the p99
  of their mixture.
- **Cloud Monitoring** keeps one point per revision and minute (60 s sampling, on the wall clock's
  minutes, or `minute_offset` seconds past them; the build lands at a random second); a point is
  visible once its minute is whole and `ingest_lag` (default: `lag`) has passed.
  A query for [a, b] sums the visible points whose minute ends in (a, b].
- **The sampler** asks `sampling.windows(rollout, now, lag)`, reads both windows for the new and the
  stable revision, builds the samples with `sampling.sample_of` (the stable one as its `Baseline`) and
  publishes `sampling.to_publish(...)`, as the engine does.
- **Request logs** (`request_logs`, off by default; core/requestlogs.py, pitstop/drain.py): every 5xx and a
  `log_fraction` sample of the other requests reach the drain's subscription `log_delay` after each second
  of traffic; while a tick has armed it (`drain_armed_for` s ahead) the drain runs every `drain_every` s on
  a fixed grid (Cloud Tasks named per slot, `drain_jitter` late) and publishes `requestlogs.failing_sample`
  as a health sample, as the engine's `publish_sample` does.
- **Alert incidents** (`alerts`, off by default): an incident on the new revision opens `alert_delay`
  after it starts failing while serving users.
- **Pub/Sub**: every message (tick, sample, alert, Cloud Run result) is delivered after
  `pubsub_delay`, a copy again with `p_duplicate` (same id), so order is not kept.
- **The store** dedupes by input id: an id whose decision (or "ignored" line) was stored changes
  nothing; the shell then re-applies the desired split of a live rollout whose split is not observed
  (`desired_generation != observed_generation`; `reapply_on_duplicate`, the engine's rule), and a late
  `Applied` of an older split re-applies the current one. A decision with no audit line stores nothing.
- **Crashes between commit and effect** (`p_crash`, or `crash_on` for the first decision of a kind):
  the decision is stored, its `ApplyTraffic` is lost, the message is redelivered after Pub/Sub's
  backoff (`redelivery_backoff`, doubling per attempt). With `p_lost_result` Cloud Run applies the
  split but its result never comes back. (The build's own start is never lost: its redelivery would
  find the rollout and do nothing; the reconciler covers that case.)
- **The reconciler** (the engine's `_reconcile`): reads what Cloud Run serves (`settled` False while an
  update is in flight) once a split is `RECONCILE_AFTER` old, and stores an `Observed` (id from the
  generation and the reading) only when `decide` would change something.
- **Cloud Run**, as the engine's adapter meets it: a split already asked for is watched, not asked
  again; an update takes `apply_latency` (`create_latency` when it creates the revision) and completes
  in the order it was made; the engine waits `apply_wait` for it, then leaves it to the reconciler.
  Each call answers 503 with `p_fault` (or once for the generations in `fail_once`):
  `ApplyFailed(permanent=False)`. Traffic changes when an update completes, not before.

Recorded (`Result`): the event log, the bad requests the new revision served to users after the
onset (errors above its healthy rate; with a latency failure every request it served), when traffic
was back 100 % on stable, the final state, when the final watch ended and when the rollout finished,
and every invariant violation seen on the way (splits not summing to 100, a rolled-back revision
given traffic again).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Literal

from pitstop.core import machine, sampling
from pitstop.core.models import (
    RECONCILE_AFTER, TERMINAL, Alert, Applied, ApplyFailed, ApplyTraffic, Artifact, Baseline, HealthSample,
    Observed, Rollout, RolloutSpec, Target, Tick,
)
from pitstop.core.spec import load_spec

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)  # the build finishes in the minute after T0
SERVICE, REGION, PROJECT = "web", "us-central1", "p"
STABLE = "web-v1-aaaa"
ROLLOUT_ID = "web--production--us-central1--b2"

DEFAULT_SPEC = """
service: web
regions: [us-central1]
match: {repo: web, branch: main}
strategy:
  canary:
    steps: [{weight: 5, pause: 5m}, {weight: 10, pause: 5m}, {weight: 25, pause: 5m}]
"""
BLUE_GREEN_SPEC = """
service: web
regions: [us-central1]
match: {repo: web, branch: main}
strategy: {blue_green: {verify: 2m, bake: 5m}}
"""
ONE_STEP_SPEC = """
service: web
regions: [us-central1]
match: {repo: web, branch: main}
strategy: {canary: {steps: [{weight: 20, pause: 3m}], bake: 4m}}
"""

Z99 = 2.3263478740408408  # standard normal quantile at 0.99
EPS = 1e-4  # seconds: datetimes keep microseconds
SIGMA = 0.5  # lognormal shape of one revision's latency in one minute: p99 is ~3.2x the median


@dataclass(frozen=True)
class Timing:
    """GCP's clock and faults. Times in seconds."""

    lag: float = 180.0  # the sampler's Monitoring lag (PITSTOP_HEALTH_LAG)
    ingest_lag: float | None = None  # how late Monitoring really shows a minute; None: `lag`
    tick: float = 60.0
    rps: float = 50.0
    tag_rps: float = 2.0  # on the new revision's tagged URL while it serves 0 % (blue-green verify)
    error_rate: tuple[float, float] = (0.0, 0.02)  # healthy, per revision and minute (limit: 5 %)
    p99_ms: tuple[float, float] = (100.0, 400.0)  # healthy p99 wanders inside this
    p99_drift: float = 0.05  # the service's p99 wanders by this much a minute (a random walk)
    p99_jitter: float = 0.05  # each revision's p99 around the service's, per minute
    failure: Literal["errors", "latency"] = "errors"
    fail_error_rate: float = 0.30
    fail_p99_ms: float = 2500.0
    pubsub_delay: tuple[float, float] = (0.1, 2.0)
    p_duplicate: float = 0.05
    duplicate_spread: float = 30.0  # a duplicate comes up to this much later than the delivery
    redelivery_backoff: float = 10.0  # Pub/Sub's minimum backoff after a failed push (terraform: 10s)
    p_crash: float = 0.0  # a decision with an ApplyTraffic: stored, the effect lost, the input redelivered
    crash_on: tuple[str, ...] = ()  # decisions (audit `decision`, e.g. "rolling_back") whose first effect is lost
    p_lost_result: float = 0.0  # Cloud Run applied the split, its result is never handled
    p_fault: float = 0.0  # each Cloud Run update answers 503
    fail_once: tuple[int, ...] = ()  # split generations whose first Cloud Run update answers 503
    apply_latency: tuple[float, float] = (1.0, 8.0)  # beyond `apply_wait` the reconciler confirms it
    create_latency: tuple[float, float] = (10.0, 30.0)  # an update that creates the revision
    alerts: bool = False
    alert_delay: tuple[float, float] = (90.0, 180.0)  # condition duration + evaluation + delivery
    # Monitoring's 60 s points start this many seconds past the wall clock's minutes (the sampler ends its
    # windows on whole minutes: it assumes 0); None: a random offset per seed.
    minute_offset: float | None = 0.0
    reapply_on_duplicate: bool = True  # the engine: a duplicate of a stored decision re-applies its split
    reconcile: bool = True
    apply_wait: float = 5.0  # the engine waits this long for an update (gcp/cloudrun.APPLY_WAIT), then reconciles
    # The request-log path (core/requestlogs.py): Cloud Run's request log entries reach the drain's pull
    # subscription `log_delay` after the request (Logging ingestion, the sink, Pub/Sub); the sink keeps every 5xx
    # and `log_fraction` of the rest; a drain runs every `drain_every` s (Cloud Tasks: `drain_jitter` late) while
    # the last tick that saw the rollout watched armed it (`drain_armed_for` s of slots ahead).
    request_logs: bool = False
    log_fraction: float = 0.1
    log_delay: tuple[float, float] = (2.0, 8.0)
    drain_every: float = 5.0
    drain_jitter: tuple[float, float] = (0.0, 1.0)
    drain_armed_for: float = 70.0
    max_time: float = 4 * 3600.0
    tail: float = 300.0  # keep going this long after the rollout finished: late duplicates, drift


@dataclass(frozen=True)
class Line:
    t: float  # seconds after the build
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.t:9.2f}s  {self.what:<10} {self.detail}"


@dataclass
class Result:
    seed: int
    state: str
    rollout: Rollout
    log: list[Line]
    onset: float | None
    first_served_at: float | None  # the new revision first served users (seconds after the build)
    final_deadline: float | None  # end of the final watch at 100 % (`next_step_at` in baking)
    finished_at: float | None
    bad_requests: int
    new_requests_after_onset: int
    back_on_stable_at: float | None  # traffic 100 % on stable again, for good (None: never)
    violations: list[str]
    rolled_back_by: str | None = None  # the input kind whose decision rolled back
    rollback_source: str | None = None  # for a health sample: its source (cloud-monitoring, request-logs)
    rollback_decided_at: float | None = None
    serving_at_rollback: int = 0  # % of users the new revision served when the rollback was decided
    decisions: list[tuple[float, str, str]] = field(default_factory=list)  # (t, audit decision, state after)
    applies: int = 0
    crashes: int = 0
    faults: int = 0

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def rolled_back(self) -> bool:
        return self.state in ("rolling_back", "rolled_back")

    @property
    def onset_to_stable(self) -> float | None:
        """Seconds from the onset until users were all on the stable revision again, for good (0: the new
        revision never served users after the onset; None: it still does)."""
        if self.onset is None:
            return None
        if self.first_served_at is None:
            return 0.0
        if self.back_on_stable_at is None:
            return None
        return max(0.0, self.back_on_stable_at - self.onset)

    def when(self, decision: str) -> list[float]:
        """When decisions of this kind were stored (e.g. "step_started", "baking")."""
        return [t for t, d, _ in self.decisions if d == decision]

    def text(self) -> str:
        return "\n".join(str(line) for line in self.log)


# ---------------------------------------------------------------- random counts (no numpy)

def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1 - p)
    mean = n * p
    if mean < 25:  # inversion
        q = 1 - p
        s, a = p / q, (n + 1) * p / q
        r, u, x = q ** n, rng.random(), 0
        while u > r and x < n:
            u -= r
            x += 1
            r *= a / x - s
        return x
    return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))


def mixture_p99(components: dict[float, float]) -> float | None:
    """p99 of a mixture of lognormals {p99 of the component: requests in it}."""
    total = sum(components.values())
    if total <= 0:
        return None
    if len(components) == 1:
        return next(iter(components))
    scale = 1 / (SIGMA * math.sqrt(2))
    mus = [((math.log(p) - Z99 * SIGMA) * scale, 0.5 * w / total) for p, w in components.items()]
    lo, hi = math.log(min(components)), math.log(max(components))
    for _ in range(24):  # on log x: the answer lies between the smallest and the largest component p99
        mid = (lo + hi) / 2
        x = mid * scale
        if sum(w * math.erfc(x - mu) for mu, w in mus) > 0.01:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


# ---------------------------------------------------------------- the old advance rule (for contrast)

def old_step_done(r: Rollout, now: datetime) -> bool:
    """The rule before issue 7: advance at the deadline when the latest verdict is a pass, however
    little of the step it covered."""
    return (r.state in ("progressing", "verifying", "baking") and r.applied and r.next_step_at is not None
            and now >= r.next_step_at and r.verdict is not None and r.verdict.outcome == "pass")


@contextmanager
def old_rule() -> Iterator[None]:
    real = machine._step_done
    machine._step_done = old_step_done
    try:
        yield
    finally:
        machine._step_done = real


# ---------------------------------------------------------------- the model

@dataclass
class _Message:
    id: str
    kind: str  # tick, health, alert, result
    payload: Any
    attempt: int = 0


@dataclass
class _Minute:
    requests: int = 0
    errors: int = 0
    latency: dict[float, float] = field(default_factory=dict)  # component p99 -> requests


@dataclass(frozen=True)
class _Read:
    request_count: int
    error_count: int
    latency_p99_ms: float | None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


def _served_key(split: list[Target]) -> set[tuple[str, int, str | None]]:
    return {(t.revision, t.percent, t.tag or None) for t in split if t.percent or t.tag}


class Model:
    """One rollout of `spec` from its build (simulated second 0) to its end, under `timing`, seeded."""

    def __init__(self, spec: RolloutSpec, timing: Timing = Timing(), seed: int = 0, onset: float | None = None,
                 stable: str = STABLE) -> None:
        self.spec, self.cfg, self.seed, self.onset = spec, timing, seed, onset
        self.ingest_lag = timing.lag if timing.ingest_lag is None else timing.ingest_lag
        # Separate streams: a failing run follows its healthy twin exactly until the onset.
        self.rng = random.Random(f"infra/{seed}")
        self.traffic_rng = random.Random(f"traffic/{seed}")
        self.level_rng = random.Random(f"levels/{seed}")
        build = self.rng.uniform(0, 60)  # the build's second within its minute
        points = self.rng.uniform(0, 60) if timing.minute_offset is None else timing.minute_offset
        self.origin = T0 + timedelta(seconds=build)  # simulated second 0
        self.minute_phase = (points - build) % 60  # where Monitoring's minutes start, in simulated seconds
        self.tick_phase = self.rng.uniform(0, timing.tick)
        self.stable = stable
        self.now = 0.0
        self.queue: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.log: list[Line] = []
        self.violations: list[str] = []
        # store
        self.rollout: Rollout | None = None
        self.stored: set[str] = set()
        # Cloud Run
        self.served: list[Target] = [Target(revision=stable, percent=100, tag="stable")]
        self.asked: list[Target] = self.served  # the service's traffic spec: the last split asked for
        self.new_exists = False
        self.inflight = 0
        self.last_done = 0.0
        self.applies = self.faults = self.crashes = 0
        # traffic and Monitoring
        self.traffic_t = 0.0
        self.minutes: dict[int, dict[str, _Minute]] = {}
        self.levels: list[tuple[float, float, float, float]] = []  # per minute index >= 0
        self.base_p99 = self.level_rng.uniform(*timing.p99_ms)
        self.bad = 0
        self.new_after_onset = 0
        # what happened
        self.n = 0
        self.first_served_at: float | None = None
        self.final_deadline: float | None = None
        self.finished_at: float | None = None
        self.back_on_stable_at: float | None = None
        self.rolled_back_by: str | None = None
        self.rollback_decided_at: float | None = None
        self.serving_at_rollback = 0
        self.decisions: list[tuple[float, str, str]] = []
        self.crashed_on: set[str] = set()
        self.failed_once: set[int] = set()
        self.rollback_served = False  # the new revision at 0 % after the rollback was decided
        self.alert_scheduled = False
        # the request-log path: what reached the drain's subscription, and until when the drain chain is armed
        self.log_rng = random.Random(f"logs/{seed}")
        self.log_entries: list[tuple[float, float, str, int, int]] = []  # (delivered, at, revision, 5xx, ok seen)
        self.drain_until = -1.0
        self.drain_slot = 0.0
        self.drain_scheduled = False
        self.last_input: Any = None
        self.rollback_source: str | None = None

    # ------------------------------------------------------------ plumbing

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, payload))

    def note(self, what: str, detail: str = "") -> None:
        self.log.append(Line(self.now, what, detail))

    def dt(self, t: float) -> datetime:
        return self.origin + timedelta(seconds=t)

    def sec(self, d: datetime) -> float:
        return (d - self.origin).total_seconds()

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def publish(self, msg: _Message, after: float = 0.0) -> None:
        delay = after + self.rng.uniform(*self.cfg.pubsub_delay)
        self.at(self.now + delay, "deliver", msg)
        if self.rng.random() < self.cfg.p_duplicate:
            self.at(self.now + delay + self.rng.uniform(0, self.cfg.duplicate_spread), "deliver", msg)

    # ------------------------------------------------------------ running

    def run(self) -> Result:
        cfg = self.cfg
        artifact = Artifact(image="us-docker.pkg.dev/p/r/web:v2", digest="sha256:" + "ab" * 32,
                            build_id="b2" + "0" * 30, version="v2", repo="web", branch="main", commit="c2")
        d = machine.start(self.spec, REGION, PROJECT, artifact, ROLLOUT_ID, self.stable, "v1", self.dt(0), "build-b2")
        self.new = d.rollout.revision
        self.stored.add("build-b2")
        self._take(d, None)
        if self.onset is not None:
            self.at(self.onset, "onset")
        self.at(self.tick_phase, "schedule")
        end = cfg.max_time
        while self.queue:
            t, _, kind, payload = heapq.heappop(self.queue)
            if t > end:
                break
            self.now = t
            getattr(self, f"_on_{kind}")(payload)
            if self.finished_at is None and self.rollout.state in TERMINAL:
                self.finished_at = self.now
                end = min(end, self.now + cfg.tail)
        self.now = min(end, max(self.now, self.traffic_t))
        self._accrue(self.now)
        r = self.rollout
        return Result(
            seed=self.seed, state=r.state, rollout=r, log=self.log, onset=self.onset,
            first_served_at=self.first_served_at, final_deadline=self.final_deadline, finished_at=self.finished_at,
            bad_requests=self.bad, new_requests_after_onset=self.new_after_onset,
            back_on_stable_at=self.back_on_stable_at, violations=self.violations,
            rolled_back_by=self.rolled_back_by, rollback_source=self.rollback_source,
            rollback_decided_at=self.rollback_decided_at,
            serving_at_rollback=self.serving_at_rollback, decisions=self.decisions, applies=self.applies,
            crashes=self.crashes, faults=self.faults)

    # ------------------------------------------------------------ events

    def _on_schedule(self, _: Any) -> None:
        """Cloud Scheduler: a tick published every minute."""
        self.publish(_Message(id=self.next_id("tick"), kind="tick", payload=None))
        self.at(self.now + self.cfg.tick, "schedule")

    def _on_onset(self, _: Any) -> None:
        self._accrue(self.now)
        self.note("onset", f"{self.new} starts failing ({self.cfg.failure})")
        self._maybe_alert()

    def _on_alert(self, incident: str) -> None:
        self.publish(_Message(id=f"alert-{incident}", kind="alert", payload=Alert(
            id=f"alert-{incident}", incident_id=incident, state="open", started_at=self.dt(self.now),
            service=SERVICE, revision=self.new, location=REGION, project=PROJECT, policy="web errors",
            observed_value="0.3", threshold_value="0.05")))

    def _on_deliver(self, msg: _Message) -> None:
        if msg.kind == "tick":
            self._on_tick(msg)
        else:
            self.handle(msg.payload, msg)

    def _on_tick(self, msg: _Message) -> None:
        """The engine's `on_tick`: a due rollout gets the tick, then (if still live) the reconciler and the
        sampler; a rollout that finished one to two minutes ago is reconciled once more."""
        r = self.rollout
        now = self.dt(self.now)
        if r.due_at is not None and r.due_at <= now:
            self.handle(Tick(id=msg.id), msg)
            if self.rollout.state in TERMINAL:
                return
            if self.cfg.reconcile:
                self._reconcile(msg)
            self._sample(msg)
            self._arm_drain()
        elif (self.cfg.reconcile and r.finished_at is not None
              and timedelta(seconds=60) < now - r.finished_at <= timedelta(seconds=120)):
            self._reconcile(msg)

    def _on_done(self, op: tuple[ApplyTraffic, bool]) -> None:
        """A Cloud Run update completes: its split is served from now on."""
        e, reported = op
        self.inflight -= 1
        self._accrue(self.now)
        if e.create_revision:
            self.new_exists = True
        self._serve(e.split)
        self.note("cloudrun", f"g{e.generation} served: {self._describe(e.split)}"
                              + ("" if reported else " (after the engine stopped waiting)"))
        if reported:
            self._on_answer(Applied(id=f"applied-g{e.generation}", generation=e.generation, observed=e.split))

    def _on_answer(self, result: Applied | ApplyFailed) -> None:
        """What the engine's `apply` returns reaches the machine (or is lost with its process)."""
        if self.rng.random() < self.cfg.p_lost_result:
            self.crashes += 1
            self.note("crash", f"the result of g{result.generation} is never handled")
            return
        self.publish(_Message(id=result.id, kind="result", payload=result))

    # ------------------------------------------------------------ the shell

    def handle(self, inp: Any, msg: _Message | None) -> None:
        """The engine's `handle`: the store's dedupe, `decide`, commit, effects."""
        r = self.rollout
        if inp.id in self.stored:
            self.note("duplicate", f"{inp.kind} {inp.id}")
            if self.cfg.reapply_on_duplicate and not r.applied and r.state not in TERMINAL:
                self._reapply("redelivered, its split not observed", msg)
            self._reassert(inp, stored=False, msg=msg)
            return
        d = machine.decide(r, inp, self.dt(self.now))
        self.last_input = inp
        if d.audit is None:
            return  # nothing stored: a redelivery decides again
        self.stored.add(inp.id)
        self._take(d, msg)
        self._reassert(inp, stored=d.audit.decision != "ignored", msg=msg)

    def _reapply(self, why: str, msg: _Message | None) -> None:
        r = self.rollout
        e = ApplyTraffic(generation=r.desired_generation, split=r.desired, create_revision=r.state == "deploying")
        self.note("reapply", f"g{e.generation} ({why}): {self._describe(e.split)}")
        self._effects([e], msg)

    def _reassert(self, inp: Any, stored: bool, msg: _Message | None) -> None:
        """The engine's `_reassert`: a split that landed after a newer decision is replaced by the newer one."""
        if isinstance(inp, Applied) and not stored and self.rollout.desired_generation != inp.generation:
            self._reapply(f"g{inp.generation} landed late", msg)

    def _take(self, d: machine.Decision, msg: _Message | None) -> None:
        before = self.rollout
        r = self.rollout = d.rollout
        a = d.audit
        self.decisions.append((self.now, a.decision, a.state_after))
        self.note("decide", f"{a.input} {a.id}: {a.state_before or '-'} -> {a.state_after} ({a.decision}); "
                            + " ".join(a.reasons)[:300])
        self._check_desired(before, r, a.input)
        crash = a.decision in self.cfg.crash_on and a.decision not in self.crashed_on
        if crash:
            self.crashed_on.add(a.decision)
        self._effects([e for e in d.effects if isinstance(e, ApplyTraffic)], msg, crash)

    def _effects(self, effects: list[ApplyTraffic], msg: _Message | None, crash: bool = False) -> None:
        if not effects:
            return
        if msg is not None and (crash or self.rng.random() < self.cfg.p_crash):
            self.crashes += 1
            backoff = min(self.cfg.redelivery_backoff * 2 ** msg.attempt, 600.0)
            self.note("crash", f"after commit, before Cloud Run: g{effects[0].generation} lost; {msg.id} "
                               f"redelivered in {backoff:.0f}s+")
            self.publish(replace(msg, attempt=msg.attempt + 1), after=backoff)
            return
        for e in effects:
            self._call(e)

    def _call(self, e: ApplyTraffic) -> None:
        """The engine's Cloud Run adapter (`gcp/cloudrun.apply`): read the service; a split already asked for is
        watched, not asked again; otherwise one update. It answers within `apply_wait` or says "pending"."""
        r = self.rollout
        self.applies += 1
        failed_id = f"apply-failed-g{e.generation}-a{r.apply_attempts}"
        answer_at = self.now + self.rng.uniform(0.1, 1.0)
        fault = self.rng.random() < self.cfg.p_fault
        if e.generation in self.cfg.fail_once and e.generation not in self.failed_once:
            self.failed_once.add(e.generation)
            fault = True
        if fault:
            self.faults += 1
            self.note("cloudrun", f"g{e.generation}: 503")
            self.at(answer_at, "answer", ApplyFailed(id=failed_id, generation=e.generation,
                                                     error="503 Service Unavailable"))
            return
        deploy = e.create_revision and not self.new_exists
        if not deploy and self.new in {t.revision for t in e.split} and not self.new_exists:
            self.note("cloudrun", f"g{e.generation}: revision {self.new} not found")
            self.at(answer_at, "answer", ApplyFailed(id=failed_id, generation=e.generation, permanent=True,
                                                     error=f"revision {self.new} not found"))
            return
        wait_until = self.now + self.cfg.apply_wait
        if not deploy and _served_key(self.asked) == _served_key(e.split):
            if self.inflight:  # asked already and still at it: watch it
                if self.last_done <= wait_until:
                    self.at(self.last_done, "answer", Applied(id=f"applied-g{e.generation}",
                                                              generation=e.generation, observed=e.split))
                return  # pending: the reconciler reads it back
            if _served_key(self.served) == _served_key(e.split):  # served already
                self.at(answer_at, "answer", Applied(id=f"applied-g{e.generation}", generation=e.generation,
                                                     observed=self.served))
                return
        latency = self.rng.uniform(*(self.cfg.create_latency if deploy else self.cfg.apply_latency))
        done = max(self.now + latency, self.last_done + 0.001)  # Cloud Run completes updates in order
        self.last_done = done
        self.inflight += 1
        self.asked = e.split
        self.at(done, "done", (e, done <= wait_until))

    def _reconcile(self, msg: _Message) -> None:
        """The engine's `_reconcile`: read Cloud Run's traffic; store an `Observed` only if it changes something."""
        r = self.rollout
        now = self.dt(self.now)
        if r.state in ("failed", "superseded"):
            return
        if not r.applied and now < r.desired_at + timedelta(seconds=RECONCILE_AFTER):
            return  # its applier may still be at work
        seen = "|".join(f"{t.revision}:{t.percent}:{t.tag}" for t in self.served)
        obs = Observed(id=f"observed-g{r.desired_generation}-{hashlib.sha256(seen.encode()).hexdigest()[:12]}",
                       split=self.served, settled=self.inflight == 0)
        if machine.decide(r, obs, now).audit is not None:
            self.handle(obs, msg)

    def _sample(self, msg: _Message) -> None:
        r = self.rollout
        w = sampling.windows(r, self.dt(self.now), self.cfg.lag)
        if w is None:
            return
        whole, recent = (self._health(x) if x else None for x in w)
        for s in sampling.to_publish(r, whole, recent):
            sid = self.next_id("h")
            s = s.model_copy(update={"id": sid})
            self.note("sample", f"{sid} [{self.sec(s.window_start):.0f}, {self.sec(s.window_end):.0f}] "
                                f"{s.request_count} req {s.error_count} err p99 {s.latency_p99_ms or 0:.0f} ms")
            self.publish(_Message(id=sid, kind="health", payload=s))

    def _health(self, w: sampling.Window) -> HealthSample | None:
        """The new revision's sample over a window, as the engine builds it (`sampling.sample_of`; a sampler
        without one, like the first one the tests keep for contrast, gets the stable revision always)."""
        a, b = self.sec(w.start), self.sec(w.end)
        new, old = self._read(self.new, a, b), self._read(self.stable, a, b)
        sample_of = getattr(sampling, "sample_of", None)
        if sample_of is not None:  # the engine's own builder
            return sample_of(self.rollout, w, new, old)
        if new is None:
            return None
        stable = None
        if old is not None:
            stable = Baseline(revision=self.stable, request_count=old.request_count, error_count=old.error_count,
                              latency_p99_ms=old.latency_p99_ms)
        return HealthSample(
            id="", service=SERVICE, region=REGION, revision=self.new, window_start=w.start, window_end=w.end,
            request_count=new.request_count, error_count=new.error_count, latency_p99_ms=new.latency_p99_ms,
            source="cloud-monitoring", rollout_id=ROLLOUT_ID, stable=stable)

    def _read(self, revision: str, a: float, b: float) -> _Read | None:
        """What the Monitoring adapter answers for one revision over [a, b]; None: no traffic, no data."""
        m = self._query(revision, a, b)
        if not m.requests:
            return None
        return _Read(request_count=m.requests, error_count=m.errors, latency_p99_ms=mixture_p99(m.latency))

    # ------------------------------------------------------------ Cloud Monitoring

    def _query(self, revision: str, a: float, b: float) -> _Minute:
        """The points of whole minutes ending in (a, b] that Monitoring shows by now."""
        self._accrue(self.now)
        last = min(b, self.now - self.ingest_lag)
        # Minute m ends at phase + 60 (m + 1); EPS absorbs float and microsecond rounding at a minute's edge.
        first_m = math.floor((a - self.minute_phase + EPS) / 60)
        last_m = math.floor((last - self.minute_phase + EPS) / 60) - 1
        out = _Minute()
        for m in range(first_m, last_m + 1):
            point = self.minutes.get(m, {}).get(revision)
            if point is None:
                continue
            out.requests += point.requests
            out.errors += point.errors
            for p99, n in point.latency.items():
                out.latency[p99] = out.latency.get(p99, 0) + n
        return out

    # ------------------------------------------------------------ traffic

    def _level(self, m: int) -> tuple[float, float, float, float]:
        """Healthy noise of minute m: (stable error rate, new error rate, stable p99, new p99)."""
        cfg = self.cfg
        while len(self.levels) <= m:
            lo, hi = cfg.p99_ms
            self.base_p99 = min(hi, max(lo, self.base_p99 * math.exp(self.level_rng.gauss(0, cfg.p99_drift))))
            j = cfg.p99_jitter
            p_s = min(hi, max(lo, self.base_p99 * self.level_rng.uniform(1 - j, 1 + j)))
            p_n = min(hi, max(lo, self.base_p99 * self.level_rng.uniform(1 - j, 1 + j)))
            self.levels.append((self.level_rng.uniform(*cfg.error_rate), self.level_rng.uniform(*cfg.error_rate),
                                float(round(p_s)), float(round(p_n))))
        return self.levels[m]

    def _accrue(self, until: float) -> None:
        t = self.traffic_t
        while t < until:
            m = math.floor((t - self.minute_phase) / 60)
            if self.minute_phase + 60 * (m + 1) <= t:  # float rounding at a minute's edge
                m += 1
            end = min(until, self.minute_phase + 60 * (m + 1))
            if self.onset is not None and t < self.onset < end:
                end = self.onset
            self._segment(m, t, end)
            t = end
        self.traffic_t = max(self.traffic_t, until)

    def _segment(self, m: int, a: float, b: float) -> None:
        cfg, rng = self.cfg, self.traffic_rng
        err_s, err_n, p99_s, p99_n = self._level(max(m, 0))
        pct = {t.revision: t.percent for t in self.served}
        new_pct = pct.get(self.new, 0) if self.new_exists else 0
        total = poisson(rng, cfg.rps * (b - a))
        n_new = binomial(rng, total, new_pct / 100)
        n_stable = total - n_new
        tagged = self.new_exists and new_pct == 0 and any(t.revision == self.new and t.tag for t in self.served)
        n_tag = poisson(rng, cfg.tag_rps * (b - a)) if tagged else 0
        point = self.minutes.setdefault(m, {})
        if n_stable:
            e_s = self._healthy_errors(n_stable, err_s)
            self._add(point, self.stable, n_stable, e_s, p99_s)
            self._logged(a, b, self.stable, n_stable, e_s)
        if not n_new and not n_tag:
            return
        failing = self.onset is not None and a >= self.onset
        errors = self._healthy_errors(n_new, err_n) + self._healthy_errors(n_tag, err_n)
        p99 = p99_n
        if failing:
            self.new_after_onset += n_new
            if cfg.failure == "errors":
                extra_p = max(0.0, (cfg.fail_error_rate - err_n) / (1 - err_n))
                extra_user = binomial(rng, n_new, extra_p)  # of the requests that would have succeeded
                errors = min(n_new + n_tag, errors + extra_user + binomial(rng, n_tag, extra_p))
                self.bad += extra_user
            else:
                p99 = cfg.fail_p99_ms
                self.bad += n_new
        self._add(point, self.new, n_new + n_tag, errors, p99)
        self._logged(a, b, self.new, n_new + n_tag, min(errors, n_new + n_tag))

    def _healthy_errors(self, n: int, rate: float) -> int:
        return binomial(self.traffic_rng, n, rate)

    @staticmethod
    def _add(point: dict[str, _Minute], revision: str, n: int, errors: int, p99: float) -> None:
        bucket = point.setdefault(revision, _Minute())
        bucket.requests += n
        bucket.errors += min(errors, n)
        bucket.latency[p99] = bucket.latency.get(p99, 0) + n

    def _serve(self, split: list[Target]) -> None:
        """Cloud Run serves `split` from now on."""
        before = {t.revision: t.percent for t in self.served}.get(self.new, 0)
        self.served = split
        pct = {t.revision: t.percent for t in split}
        now_pct = pct.get(self.new, 0)
        total = sum(pct.values())
        if total != 100:
            self.violations.append(f"{self.now:.1f}s: Cloud Run serves a split of {total} %: {self._describe(split)}")
        if now_pct and self.first_served_at is None:
            self.first_served_at = self.now
        if before and not now_pct:
            self.back_on_stable_at = self.now
        elif now_pct:
            self.back_on_stable_at = None
        if self.rollout.state in ("rolling_back", "rolled_back") and self.rollout.kind != "direct":
            if now_pct and self.rollback_served:
                self.violations.append(f"{self.now:.1f}s: rolled-back revision {self.new} serves {now_pct} % again")
            if not now_pct:
                self.rollback_served = True
        if now_pct:
            self._maybe_alert()

    def _maybe_alert(self) -> None:
        if not self.cfg.alerts or self.alert_scheduled or self.onset is None or self.now < self.onset:
            return
        if not {t.revision: t.percent for t in self.served}.get(self.new, 0):
            return
        self.alert_scheduled = True
        self.at(self.now + self.rng.uniform(*self.cfg.alert_delay), "alert", f"inc-{self.seed}")

    # ------------------------------------------------------------ the request-log path

    def _logged(self, a: float, b: float, revision: str, n: int, errors: int) -> None:
        """A stretch of requests as the sink exports them: every 5xx, a sampled share of the rest, spread over
        the stretch second by second, each second reaching the subscription `log_delay` after it."""
        if not self.cfg.request_logs or not n:
            return
        rng, ok = self.log_rng, n - errors
        t = a
        while t < b and (errors or ok):
            end = min(b, t + 1.0)
            share = (end - t) / (b - t)
            e, o = binomial(rng, errors, share), binomial(rng, ok, share)
            errors, ok = errors - e, ok - o
            seen = binomial(rng, o, self.cfg.log_fraction)
            if e or seen:
                self.log_entries.append((end + rng.uniform(*self.cfg.log_delay), (t + end) / 2, revision, e, seen))
            t = end

    def _arm_drain(self) -> None:
        """The tick arms the next slots of the drain chain while the rollout is watched (Cloud Tasks)."""
        if not self.cfg.request_logs:
            return
        self.drain_until = self.now + self.cfg.drain_armed_for
        if not self.drain_scheduled:
            self.drain_scheduled = True
            self.drain_slot = math.ceil(self.now / self.cfg.drain_every) * self.cfg.drain_every
            self.at(self.drain_slot + self.log_rng.uniform(*self.cfg.drain_jitter), "drain")

    def _on_drain(self, _: Any) -> None:
        """The drain (`pitstop.drain`): what has reached the subscription, judged over the recent windows; a
        clearly failing one is published as a health sample, as the engine's helper publishes it."""
        from pitstop.core import requestlogs

        self._accrue(self.now)
        now = self.dt(self.now)
        seen = [e for e in self.log_entries if e[0] <= self.now]
        self.log_entries = [e for e in self.log_entries if e[0] > self.now or e[1] > self.now - 120]

        def counts(revision: str | None, start: datetime, end: datetime) -> requestlogs.Count:
            a, b = self.sec(start), self.sec(end)
            picked = [e for e in seen if revision in (None, e[2]) and a <= e[1] < b]
            return requestlogs.Count(sum(e[3] for e in picked), sum(e[4] for e in picked))

        s = requestlogs.failing_sample(self.rollout, counts, self.cfg.log_fraction, now)
        if s is not None:
            sid = self.next_id("h")
            self.note("logs", f"{sid} [{self.sec(s.window_start):.0f}, {self.sec(s.window_end):.0f}] "
                              f"~{s.request_count} req {s.error_count} err: clearly failing")
            self.publish(_Message(id=sid, kind="health", payload=s.model_copy(update={"id": sid})))
        self.drain_slot += self.cfg.drain_every  # tasks are named per slot: the chain keeps its grid
        if self.drain_slot <= self.drain_until and self.rollout.state not in TERMINAL:
            self.at(self.drain_slot + self.log_rng.uniform(*self.cfg.drain_jitter), "drain")
        else:
            self.drain_scheduled = False

    # ------------------------------------------------------------ invariants

    def _check_desired(self, before: Rollout | None, r: Rollout, kind: str) -> None:
        total = sum(t.percent for t in r.desired)
        if total != 100:
            self.violations.append(f"{self.now:.1f}s: desired split sums to {total} %: {self._describe(r.desired)}")
        new_pct = sum(t.percent for t in r.desired if t.revision == r.revision)
        if r.state in ("rolling_back", "rolled_back") and r.kind != "direct":
            if self.rolled_back_by is None:
                self.rolled_back_by, self.rollback_decided_at = kind, self.now
                self.rollback_source = getattr(self.last_input, "source", None)
                self.serving_at_rollback = {t.revision: t.percent for t in self.served}.get(r.revision, 0)
            if new_pct:
                self.violations.append(f"{self.now:.1f}s: {r.state} rollout desires {new_pct} % on {r.revision}")
        elif self.rolled_back_by is not None and r.state != "failed":  # failed: the way back kept failing
            self.violations.append(f"{self.now:.1f}s: a rolled-back rollout went on to {r.state}")
        if r.state == "baking" and r.next_step_at is not None:
            self.final_deadline = self.sec(r.next_step_at)

    def _describe(self, split: list[Target]) -> str:
        return ", ".join(f"{t.revision} {t.percent}%" for t in split)


_SPECS: dict[str, RolloutSpec] = {}


def spec(text: str = DEFAULT_SPEC) -> RolloutSpec:
    if text not in _SPECS:
        _SPECS[text] = load_spec(text)
    return _SPECS[text]


def simulate(spec_: RolloutSpec | str | None = None, seed: int = 0, onset: float | None = None,
             **timing: Any) -> Result:
    """One rollout under GCP timing; `spec_` a spec or its YAML (default: `DEFAULT_SPEC`), `timing`
    overrides `Timing`'s fields."""
    if not isinstance(spec_, RolloutSpec):
        spec_ = spec(spec_ or DEFAULT_SPEC)
    return Model(spec_, Timing(**timing), seed=seed, onset=onset).run()

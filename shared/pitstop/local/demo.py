"""`pitstop demo`: a real rollout on this machine, under steady load.

The whole local stack runs (emulators, functions, local Cloud Run and
Monitoring, ticker); a load generator plays the users. v1 is deployed, v2 goes
through the canary steps of examples/web/rollout.yaml to 100 %, then v3 (30 %
of its requests fail) is caught by the health judge on data from the local
Cloud Monitoring and rolled back. Nothing is simulated past the stand-ins: the
verdicts come from what the router really served.

Time runs as on GCP, scaled: a tick a second for Cloud Scheduler's minute and a
Monitoring that shows a request `health_lag` seconds (3 by default) after it was
served, for GCP's up to 180 s. So every step waits for its pause, then the lag,
then up to a tick, before a verdict covers its end; the summary says how long
that took and how fast v3 was caught.

`run_scenario` is the part the end-to-end test drives on its own stack;
`run_demo` wraps it with the stack's lifetime, the console and an exit code.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pitstop.local.load import APP_5XX, OK, Load, Result
from pitstop.core.explain import check_line
from pitstop.core.models import TERMINAL, AuditEvent, Rollout
from pitstop.surfaces.render import split_label, step_label

if TYPE_CHECKING:
    from pitstop.core.models import RolloutSpec
    from pitstop.local.router import Router
    from pitstop.local.stack import Stack
    from pitstop.gcp.metrics import Metrics
    from pitstop.gcp.store import Store

T = TypeVar("T")

SERVICE = "web"
REGION = "us-central1"
SPEC = Path(__file__).resolve().parents[3] / "examples" / "web" / "rollout.yaml"
# Every version answers in about 40 ms, like a small real service: the jitter of
# a busy laptop (a few ms) then stays far inside the +50 % p99 rule.
HEALTHY = {"LATENCY_MS": "40"}
BAD = {**HEALTHY, "FAIL_RATE": "0.3"}  # v3: 30 % of its requests answer 500
MIN_RPS, MAX_RPS = 10.0, 500.0  # the 10 % step needs 20 requests before its hold runs out
TICK_S = 1.0  # Cloud Scheduler's minute, scaled
FIRST_DEPLOY_TIMEOUT_S = 90.0
ROLLOUT_TIMEOUT_S = 180.0  # at least; more when the spec's steps need it (rollout_timeout)
SETTLE_S = 2.0  # load kept on after the rollback, so the summary shows stable serving alone
ROUTE_POLL_S = 0.005


class DemoFailed(Exception):
    """The scenario could not go on; the message says where it stopped."""


# ---------------------------------------------------------------- watching the router


class RouteWatcher:
    """Records every change of one service's routing table, polled every `every` seconds.

    This is "as seen by the router": the table a new request is routed by.
    Changes are (epoch seconds first seen, {revision: percent}).
    """

    def __init__(self, router: Router, service_name: str, every: float = ROUTE_POLL_S) -> None:
        self._router, self._name, self.every = router, service_name, every
        self.changes: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="route-watcher", daemon=True)

    def __enter__(self) -> RouteWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def first(self, split: dict[str, int], after: float) -> float | None:
        """When the router first routed by exactly `split` at or after `after`."""
        return next((t for t, s in list(self.changes) if s == split and t >= after), None)

    def first_serving(self, revision: str) -> float | None:
        """When the router first sent a share of the requests to `revision`."""
        return next((t for t, s in list(self.changes) if s.get(revision, 0) > 0), None)

    def _poll(self) -> None:
        last = None
        while not self._stop.wait(self.every):
            routes = self._router.routes(self._name)
            if routes is not last:  # tables are replaced whole, never changed in place
                last = routes
                self.changes.append((time.time(), {b.revision: p for b, p in routes.split}))


def cloud_run_split(stack: Stack, service: str = SERVICE) -> dict[str, int]:
    """Revision -> percent as the Cloud Run Admin API reports it (traffic_statuses)."""
    svc = _run_client(stack).get_service(name=_service_name(stack, service))
    return {t.revision: t.percent for t in svc.traffic_statuses}


def service_uri(stack: Stack, service: str = SERVICE) -> str:
    return _run_client(stack).get_service(name=_service_name(stack, service)).uri


def _run_client(stack: Stack):
    from pitstop.gcp.cloudrun import CloudRun

    return CloudRun.from_endpoint(stack.run_endpoint).client


def _service_name(stack: Stack, service: str) -> str:
    return f"projects/{stack.project}/locations/{REGION}/services/{service}"


# ---------------------------------------------------------------- what the demo shows while it runs


class View:
    """Live panel on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, console: Console, rps: float) -> None:
        self.console, self.rps = console, rps
        self.live: Live | None = None
        self.lag = 0.0  # Monitoring's, so the traffic table says how far behind it is
        self.rollout: Rollout | None = None
        self.traffic: dict[str, tuple[int, int]] = {}  # revision -> (requests, 5xx) from Monitoring
        self.versions: dict[str, str] = {}  # revision -> version
        self.url = ""
        self._last_status: tuple | None = None
        self._last_traffic_line = 0.0

    @contextmanager
    def running(self) -> Iterator[View]:
        if not self.console.is_terminal:
            yield self
            return
        with Live(self._panel(), console=self.console, refresh_per_second=4, transient=True) as live:
            self.live = live
            try:
                yield self
            finally:
                self.live = None

    def say(self, text: str | Text) -> None:
        self.console.print(text)

    def update(self, rollout: Rollout | None = None, traffic: dict[str, tuple[int, int]] | None = None) -> None:
        self.rollout = rollout or self.rollout
        self.traffic = traffic if traffic is not None else self.traffic
        if self.live is not None:
            self.live.update(self._panel())
            return
        r = self.rollout
        status = r and (r.id, r.state, r.step, split_label(r), r.applied)
        if status and status != self._last_status:
            self._last_status = status
            self.say(f"{_clock()} rollout {r.id} {r.version}: {r.state}, step {step_label(r)}, "
                     f"split {split_label(r)}{'' if r.applied else ' (applying)'}")
        if self.traffic and time.monotonic() - self._last_traffic_line > 10:
            self._last_traffic_line = time.monotonic()
            self.say(f"{_clock()} traffic since the load began: " + "; ".join(
                f"{self.versions.get(rev, rev)} {n} requests, {e} 5xx" for rev, (n, e) in self.traffic.items()))

    def event(self, r: Rollout, e: AuditEvent) -> None:
        if e.decision == "baseline":  # the stable revision's samples: the comparison point, not a verdict
            return
        line = Text(f"{e.at.astimezone():%H:%M:%S} {r.version} ")
        if e.verdict:
            v = e.verdict
            style = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}[v.outcome]
            line.append(f"verdict {v.outcome.upper()}", style=style)
            seconds = (v.window_end - v.window_start).total_seconds()
            line.append(f" ({v.request_count} requests in {seconds:.1f}s, {v.source}): ")
            line.append(" · ".join(check_line(c) for c in v.checks))
            line.append(f" — {v.rule}", style=style)
            if e.decision != "judged":
                line.append(f" ⇒ {e.decision}", style="bold")
        else:
            line.append(e.decision, style="bold" if e.decision in ("succeeded", "rolled_back") else "cyan")
            line.append(f" ({e.state_after}) " + " ".join(e.reasons), style="dim" if e.decision == "ignored" else "")
        self.say(line)

    def _panel(self) -> Group:
        head = Text(f"pitstop demo — {SERVICE} in {REGION}, {self.rps:g} req/s on {self.url or '…'}\n", style="bold")
        r = self.rollout
        if r:
            head.append(f"rollout {r.id}  version {r.version}  state ")
            head.append(r.state, style="bold cyan")
            head.append(f"  step {step_label(r)}\nsplit   {split_label(r)}{'' if r.applied else '  (applying)'}")
        table = Table(title=f"served, from Cloud Monitoring (local, {self.lag:g} s behind)", title_justify="left")
        for col in ("revision", "version", "requests", "5xx"):
            table.add_column(col, justify="right" if col in ("requests", "5xx") else "left")
        for rev, (n, e) in self.traffic.items():
            table.add_row(rev, self.versions.get(rev, "?"), str(n), Text(str(e), style="red" if e else ""))
        return Group(head, table)


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]


def _timing(lag: float, tick: float) -> str:
    return (f"a tick every {tick:g} s and Monitoring {lag:g} s behind "
            f"(GCP: a tick a minute, Monitoring up to 180 s behind)")


# ---------------------------------------------------------------- the scenario


@dataclass
class Report:
    health_lag: float = 0.0  # Monitoring's ingestion lag the stack ran with, seconds
    tick_s: float = 0.0
    expected_s: float = 0.0  # how long a healthy canary of the spec should take (expected_rollout_s)
    v1_revision: str = ""
    v2: Rollout | None = None
    v3: Rollout | None = None
    results: list[Result] = field(default_factory=list)
    monitoring: dict[str, tuple[int, int]] = field(default_factory=dict)  # revision -> (requests, 5xx)
    first_failing_event: AuditEvent | None = None
    v3_routed_at: float | None = None  # router first sends v3 a share (epoch s)
    stable_routed_at: float | None = None  # router routes 100 % to v2 again (epoch s)
    first_v3_error_at: float | None = None  # first 500 of v3 as the load saw it
    last_v3_served_at: float | None = None  # last v3 answer in the router's RequestLog
    split_after_v2: dict[str, int] = field(default_factory=dict)
    split_after_v3: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def foreign_failures(self) -> list[Result]:
        """Every failed request except v3's own 500s: must be none."""
        bad = self.v3.revision if self.v3 else None
        return [r for r in self.results if r.kind != OK and not (r.kind == APP_5XX and r.revision == bad)]

    @property
    def reaction_s(self) -> float | None:
        """Failing sample's window end (the newest data it judged) -> router on stable 100 %."""
        if self.first_failing_event is None or self.stable_routed_at is None:
            return None
        return self.stable_routed_at - self.first_failing_event.verdict.window_end.timestamp()

    @property
    def exposure_s(self) -> float | None:
        """Router first sends v3 a share -> router on stable 100 %: how long users met v3 at all."""
        if self.v3_routed_at is None or self.stable_routed_at is None:
            return None
        return self.stable_routed_at - self.v3_routed_at


def expected_rollout_s(spec: RolloutSpec, lag: float, tick: float) -> float:
    """How long a healthy canary of `spec` should take on the stack, from its first step applied.

    Each step, and the final watch at 100 %, lasts its pause, then waits for a healthy verdict whose
    window reaches its end: Monitoring's lag, plus up to one tick for the sampler to run. The final
    watch at 100 % is the bake, and at least one health interval.
    """
    canary = spec.strategy.canary
    watch = max(canary.bake, spec.health.interval)
    return sum(step.pause + lag + tick for step in canary.steps) + watch + lag + tick


def rollout_timeout(expected_s: float) -> float:
    """Generous: a busy laptop (emulators, functions, revisions, the load) may run slow."""
    return max(ROLLOUT_TIMEOUT_S, 60 + 3 * expected_s)


def run_scenario(stack: Stack, rps: float, view: View) -> Report:
    """v1, then v2 promoted, then v3 rolled back, under load; the Report lists what went wrong."""
    from pitstop.gcp.metrics import Metrics
    from pitstop.core.spec import load_spec_file
    from pitstop.gcp.store import Store

    store = Store.from_env(stack.project)
    metrics = Metrics(stack.monitoring_endpoint)
    lag, tick = stack.health_lag, stack.tick_interval
    report = Report(health_lag=lag, tick_s=tick)
    view.lag = lag
    try:
        spec = load_spec_file(SPEC)
        store.put_spec(spec, "pitstop demo", datetime.now(timezone.utc))
        canary = spec.strategy.canary
        steps = " → ".join(f"{s.weight} % ({s.pause}s)" for s in canary.steps)
        view.say(f"{_clock()} registered {SPEC.name}: canary {steps} → 100 % "
                 f"(watched {max(canary.bake, spec.health.interval)}s)")
        report.expected_s = expected_rollout_s(spec, lag, tick)
        timeout = rollout_timeout(report.expected_s)
        view.say(f"{_clock()} timing: {_timing(lag, tick)}; each step lasts its pause + the {lag:g} s lag + up to "
                 f"a {tick:g} s tick, so a healthy canary takes about {report.expected_s:.0f} s")
        v1 = _ship_and_wait(stack, store, None, view, "v1", HEALTHY, "succeeded", FIRST_DEPLOY_TIMEOUT_S)
        report.v1_revision = v1.revision
        view.versions[v1.revision] = "v1"
        view.url = service_uri(stack)
        with RouteWatcher(stack.cloud_run.router, _service_name(stack, SERVICE)) as routes, \
                Load(view.url, rps, max_duration_s=2 * timeout + 60) as load:  # stops by itself, whatever happens
            view.say(f"{_clock()} load: {rps:g} requests/s on {view.url}")
            watch = (metrics, load.started_at)
            report.v2 = _ship_and_wait(stack, store, watch, view, "v2", HEALTHY, "succeeded", timeout)
            report.split_after_v2 = cloud_run_split(stack)
            report.v3 = _ship_and_wait(stack, store, watch, view, "v3", BAD, "rolled_back", timeout)
            report.split_after_v3 = cloud_run_split(stack)
            time.sleep(SETTLE_S)
        report.results = load.results()
        load_ended = time.time()
        view.say(f"{_clock()} load stopped; waiting {lag:g} s for Monitoring to show its last requests")
        time.sleep(lag)  # the local Monitoring shows a request `lag` s after it was served, not earlier
        _measure(report, stack, store, metrics, routes, load.started_at, load_ended)
    except DemoFailed as err:
        report.problems.append(str(err))
    finally:
        metrics.close()
    _check_outcome(report)
    return report


def _ship_and_wait(stack: Stack, store: Store, watch: tuple[Metrics, float] | None, view: View, version: str,
                   env: dict[str, str], want: str, timeout_s: float) -> Rollout:
    """Ship `version` through the Cloud Build stand-in; follow its rollout until it ends."""
    from pitstop.local.build import ship

    behaviour = ", ".join(f"{k}={v}" for k, v in env.items()) or "healthy"
    view.say(Text(f"{_clock()} ship {version} ({behaviour}): Cloud Build publishes QUEUED, WORKING, SUCCESS",
                  style="bold"))
    build_id = ship(stack.state_dir, stack.project, SERVICE, version, env=env)
    deadline = time.monotonic() + timeout_s
    rollout_id, seen = None, set()
    while time.monotonic() < deadline:
        if rollout_id is None:
            found = [r for r in store.recent(SERVICE, limit=5) if r.artifact and r.artifact.build_id == build_id]
            rollout_id = found[0].id if found else None
        r = store.rollout(rollout_id) if rollout_id else None
        if r is not None:
            view.versions[r.revision] = version
            for e in store.events(r.id):
                if e.id not in seen:
                    seen.add(e.id)
                    view.event(r, e)
            view.update(r, _traffic(stack, watch, view) if watch else None)
            if r.state in TERMINAL or r.state == "paused":
                if r.state != want:
                    rule = f" (verdict: {r.verdict.rule})" if r.verdict and r.verdict.outcome == "fail" else ""
                    raise DemoFailed(f"{version} ended {r.state}, expected {want}: {r.message}{rule}")
                return r
        time.sleep(0.5)
    where = f"rollout {rollout_id} is {r.state}: {r.message}" if r else f"build {build_id} started no rollout"
    raise DemoFailed(f"{version} did not reach {want} within {timeout_s:.0f}s; {where}")


def _traffic(stack: Stack, watch: tuple[Metrics, float], view: View) -> dict[str, tuple[int, int]] | None:
    """Requests and 5xx per revision since the load began; None (keep the last figures) if unavailable."""
    from pitstop.gcp.metrics import MetricsUnavailable

    metrics, since = watch
    start = datetime.fromtimestamp(since, timezone.utc)
    try:
        health = metrics.revision_health(stack.project, REGION, SERVICE, list(view.versions), start,
                                         datetime.now(timezone.utc))
    except MetricsUnavailable:
        return None
    return {rev: (h.request_count, h.error_count) for rev, h in health.items() if h.request_count}


def _measure(report: Report, stack: Stack, store: Store, metrics: Metrics, routes: RouteWatcher,
             load_started: float, load_ended: float) -> None:
    v2, v3 = report.v2, report.v3
    revisions = [report.v1_revision, v2.revision, v3.revision]
    end = datetime.fromtimestamp(load_ended, timezone.utc)
    health = metrics.revision_health(stack.project, REGION, SERVICE, revisions,
                                     datetime.fromtimestamp(load_started, timezone.utc), end)
    report.monitoring = {rev: (h.request_count, h.error_count) for rev, h in health.items()}
    events = store.events(v3.id)
    report.first_failing_event = next((e for e in events if e.verdict and e.verdict.outcome == "fail"), None)
    if report.first_failing_event:
        report.stable_routed_at = routes.first({v2.revision: 100}, report.first_failing_event.at.timestamp())
    report.v3_routed_at = routes.first_serving(v3.revision)
    report.first_v3_error_at = min((r.finished for r in report.results
                                    if r.revision == v3.revision and r.kind == APP_5XX), default=None)
    served = [s for s in stack.request_log.between(load_started, end.timestamp()) if s.revision == v3.revision]
    report.last_v3_served_at = max((s.at for s in served), default=None)


def _check_outcome(report: Report) -> None:
    p = report.problems
    if p:  # the scenario stopped early; the rest would only repeat it
        return
    v2, v3 = report.v2, report.v3
    if report.split_after_v2 != {v2.revision: 100, report.v1_revision: 0}:
        p.append(f"after v2 succeeded Cloud Run served {report.split_after_v2}, not 100 % {v2.revision}")
    if report.split_after_v3 != {v2.revision: 100, v3.revision: 0}:
        p.append(f"after v3 rolled back Cloud Run served {report.split_after_v3}, not 100 % {v2.revision}")
    if report.first_failing_event is None:
        p.append(f"v3 was rolled back but its audit trail holds no failing verdict: {v3.message}")
    elif report.stable_routed_at is None:
        p.append("the router never went back to 100 % v2 after the failing verdict")
    else:
        late = [r for r in report.results if r.revision == v3.revision and r.sent > report.stable_routed_at]
        if late:
            p.append(f"{len(late)} requests sent after the router went back to v2 were still answered by v3")
    foreign = report.foreign_failures
    if foreign:
        kinds = Counter(f"{r.kind} ({r.revision or 'no revision'})" for r in foreign)
        p.append(f"{len(foreign)} requests failed for another reason than v3's own 500s: {dict(kinds)}")
    if not any(r.revision == v3.revision for r in report.results):
        p.append("the load never reached v3, so its rollback proves nothing")


# ---------------------------------------------------------------- the end


def summary(report: Report) -> Group:
    v2, v3 = report.v2, report.v3
    names = {report.v1_revision: "v1", v2.revision if v2 else "": "v2", v3.revision if v3 else "": "v3"}
    table = Table(title="requests served under load", title_justify="left")
    for col in ("revision", "version", "answered", "5xx (load)", "other failures", "requests (Monitoring)",
                "5xx (Monitoring)"):
        table.add_column(col, justify="left" if col in ("revision", "version") else "right")
    by_rev = Counter((r.revision, r.kind) for r in report.results)
    for rev, version in names.items():
        if not rev:
            continue
        answered = sum(n for (r, _), n in by_rev.items() if r == rev)
        other = sum(n for (r, k), n in by_rev.items() if r == rev and k not in (OK, APP_5XX))
        mon = report.monitoring.get(rev, (0, 0))
        table.add_row(rev, version, str(answered), str(by_rev[(rev, APP_5XX)]), str(other), str(mon[0]), str(mon[1]))
    unanswered = sum(n for (r, _), n in by_rev.items() if r is None)
    lines = Text()
    lines.append(f"timing: {_timing(report.health_lag, report.tick_s)}\n")
    for version, r in (("v2", v2), ("v3", v3)):
        if r and r.finished_at:
            lines.append(f"{version} {r.state} {(r.finished_at - r.created_at).total_seconds():.1f} s after its build"
                         + (f" (expected: its deploy, then about {report.expected_s:.0f} s of steps)"
                            if version == "v2" else "") + "\n")
    lines.append(f"requests sent {len(report.results)}, not answered by any revision {unanswered}\n")
    foreign = len(report.foreign_failures)
    lines.append(f"failures other than v3's own 500s: {foreign}\n", style="green" if not foreign else "bold red")
    if report.reaction_s is not None:
        e = report.first_failing_event
        lines.append(f"reaction: {report.reaction_s:.2f} s from the end of the first failing sample's window "
                     f"({e.verdict.window_end.astimezone():%H:%M:%S.%f}"[:-3] + ") to the router's table routing "
                     f"100 % to v2 (polled every {ROUTE_POLL_S * 1000:g} ms)\n")
        lines.append(f"          {report.stable_routed_at - e.at.timestamp():.2f} s of it from the rollback "
                     f"decision to the router; the window had ended {report.health_lag:g} s (the lag) before "
                     f"the tick that sampled it\n")
    if report.exposure_s is not None:
        lines.append(f"exposure: {report.exposure_s:.2f} s from v3 starting to serve (the router's first share "
                     f"for it, {_at(report.v3_routed_at)}) to 100 % on v2: enough requests for a failing verdict, "
                     f"the {report.health_lag:g} s lag and up to a {report.tick_s:g} s tick\n")
    if report.first_v3_error_at and report.stable_routed_at:
        lines.append(f"          {report.stable_routed_at - report.first_v3_error_at:.2f} s of it from v3's "
                     f"first 500 seen by the load\n")
    if report.last_v3_served_at and report.stable_routed_at:
        gap = report.last_v3_served_at - report.stable_routed_at
        lines.append(f"last v3 answer in the router's request log: {abs(gap):.3f} s "
                     f"{'after (it was in flight)' if gap > 0 else 'before'} the switch\n")
    if v3 and v3.message:
        lines.append(f"v3: {v3.message}\n", style="yellow")
    return Group(table, lines)


def run_demo(rps: float = 50.0, state_dir: Path | None = None, console: Console | None = None,
             health_lag: float | None = None) -> int:
    """Run the demo from start to finish; 0 if every outcome was right.

    `health_lag`: Monitoring's ingestion lag in seconds; the stack's default (3) if None.
    """
    from pitstop.local.stack import DEFAULT_HEALTH_LAG

    console = console or Console()
    if not MIN_RPS <= rps <= MAX_RPS:
        console.print(f"[red]--rps must be between {MIN_RPS:g} and {MAX_RPS:g} (the 10 % canary step needs "
                      f"{20} requests to be judged); got {rps:g}. Nothing was started.[/red]")
        return 2
    temporary = state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="pitstop-demo-")) if temporary else state_dir
    view = View(console, rps)
    started = time.monotonic()

    def scenario(stack: Stack) -> Report:
        with view.running():
            return run_scenario(stack, rps, view)

    lag = DEFAULT_HEALTH_LAG if health_lag is None else health_lag
    report = on_local_stack(console, state_dir, "emulators, functions, Cloud Run, Monitoring", scenario,
                            tick_interval=TICK_S, health_lag=lag)
    if isinstance(report, int):
        return report
    if report.v2 and report.v3 and report.results:
        console.print(summary(report))
    for problem in report.problems:
        console.print(f"[bold red]FAILED:[/bold red] {problem}")
    if report.problems:
        console.print(f"everything is stopped; logs of the functions and revisions are in {state_dir}")
        return 1
    console.print(f"[green]demo passed in {time.monotonic() - started:.0f} s: v2 promoted under load, v3 rolled "
                  f"back automatically, no other request failed. Everything is stopped.[/green]")
    if temporary:
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def on_local_stack(console: Console, state_dir: Path, what: str, scenario: Callable[[Stack], T],
                   **stack_options: Any) -> T | int:
    """Start the local stack in `state_dir`, run `scenario` on it, stop everything; what it returned, or the exit
    code if it could not finish (130 interrupted, 1 a missing tool or a failure, said on the console)."""
    from pitstop.local.emulators import MissingTool
    from pitstop.local.stack import Stack

    try:
        with ExitStack() as cleanup:
            cleanup.enter_context(_sigterm_as_interrupt())
            cleanup.enter_context(local_logs_to(state_dir / "local-cloud.log"))
            console.print(f"starting the local stack ({what}) in {state_dir} …")
            stack = cleanup.enter_context(Stack(state_dir, **stack_options))
            console.print(f"dashboard: [bold]{stack.dashboard_url}/[/bold] (open it while the demo runs)")
            result = scenario(stack)
            for line in notification_lines(stack):
                console.print(line, highlight=False)
            console.print("stopping the local stack …")
            return result
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; the local stack is stopped. Logs kept in {state_dir}[/yellow]")
        return 130
    except MissingTool as err:
        console.print(f"[red]{err}[/red]")
        return 1
    except Exception as err:  # a bug or a broken emulator: say what, after everything is stopped
        console.print_exception(max_frames=8)
        console.print(f"[bold red]FAILED:[/bold red] the demo stopped on {type(err).__name__}: {err}. "
                      f"Everything is stopped; logs are in {state_dir}")
        return 1


SINK_KINDS = (("/slack/", "Slack"), ("/slack-api/", "Slack (bot, threaded)"), ("/chat/", "Google Chat"),
              ("/webhook/", "webhook (signed)"))


def notification_lines(stack: Stack) -> list[str]:
    """What the demo's sinks (examples/web/pipeline.yaml `notify:`) received: a count per sink, the headlines of
    what went wrong, and the emails."""
    from pitstop.core.notify import headline

    # The last decisions' events are still on their way (Pub/Sub, on_event, retries): let them land first.
    seen, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline and seen != len(stack.sinks.received) + len(stack.smtp.messages):
        seen = len(stack.sinks.received) + len(stack.smtp.messages)
        time.sleep(1.5)

    received = list(stack.sinks.received)
    counts = {label: sum(1 for r in received if r.path.startswith(prefix)) for prefix, label in SINK_KINDS}
    lines = ["notifications sent: " + ", ".join(f"{label} {n}" for label, n in counts.items() if n)
             + f", email {len(stack.smtp.messages)} (the local sinks pitstop posted to, as to the real ones)"]
    for r in received:  # the webhook's body is the event itself: its severity says what went wrong
        if r.path.startswith("/webhook/") and r.json.get("severity") in ("WARNING", "ERROR", "CRITICAL"):
            lines.append(f"  {r.json['severity'].lower()}: {headline(r.json)}")
    for mail in stack.smtp.messages:
        lines.append(f"  email to {mail['To']}: {mail['Subject']}")
    return lines


@contextmanager
def local_logs_to(path: Path) -> Iterator[None]:
    """The local cloud logs with `logging`; keep it off the demo's screen, in a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("pitstop.local")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A `kill` stops the stack as Ctrl-C does (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

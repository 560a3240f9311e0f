"""`pitstop demo`: a release under load, staging → production in three regions and two waves.

The whole local stack runs; one load generator per place plays the users (staging us-central1, production
us-central1, europe-west1, asia-northeast1). examples/web/pipeline.yaml is applied, then:

- v1: main → staging, its tag → production (an approver starts it), first versions everywhere;
- v2: main → staging (a canary judged on the local Cloud Monitoring), its tag → production, approved,
  wave 1 (us-central1), then wave 2 (europe-west1 and asia-northeast1 moving together), to 100 %;
- v3 (30 % of its requests fail in europe-west1 and asia-northeast1 only): staging is fine, wave 1 is fine,
  wave 2 fails, and every production region, us-central1 included, goes back to v2 in one decision;
- v4, whose image scan finds a CRITICAL vulnerability: refused before anything is deployed.

Each environment runs its checks (examples/web/pipeline.yaml): the scan, the migration job once before any
traffic, smoke probes of every region's tag URL at 0 %, and the E2E job in staging, which production waits for.

What it measures (also `bench/regions.py`): for each step of a wave, the spread between the first and the
last region's traffic change, as the release recorded it and as the local routers served it; and the time
from the failing verdict to every production region's router on v2 again.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pitstop.core.pipeline import load_pipeline
from pitstop.core.release import Release, release_id
from pitstop.local.demo import RouteWatcher
from pitstop.local.load import APP_5XX, OK, MultiLoad, Result

if TYPE_CHECKING:
    from pitstop.gcp.store import Store
    from pitstop.local.stack import Stack

SERVICE = "web"
PIPELINE = Path(__file__).resolve().parents[3] / "examples" / "web" / "pipeline.yaml"
APPROVER = "approver@example.com"
HEALTHY = {"LATENCY_MS": "40"}
BAD = {**HEALTHY, "FAIL_RATE": "0.3", "FAIL_REGIONS": "europe-west1,asia-northeast1"}  # v3 fails in wave 2 only
STEP_TIMEOUT_S = 60.0  # one environment of one release, on a busy laptop


class DemoFailed(Exception):
    """The scenario could not go on; the message says where it stopped."""


@dataclass
class ReleaseReport:
    v2: Release | None = None
    v3: Release | None = None
    v4: Release | None = None  # refused by the scan
    spreads_recorded_ms: list[float] = field(default_factory=list)  # the release's own record (wave 2 steps)
    spreads_routed_ms: list[float] = field(default_factory=list)  # the same steps, as the routers served them
    failing_at: float | None = None  # epoch: the failing verdict's decision
    all_stable_at: float | None = None  # epoch: every production router routes 100 % to v2 again
    results: dict[str, list[Result]] = field(default_factory=dict)  # per place, from the load
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def revert_s(self) -> float | None:
        if self.failing_at is None or self.all_stable_at is None:
            return None
        return self.all_stable_at - self.failing_at


def places(pipeline_text: str) -> list[tuple[str, str, str]]:
    """(environment, project, region) of every place the pipeline deploys to."""
    pipeline = load_pipeline(pipeline_text)
    return [(name, env.project, region) for name, env in pipeline.environments.items() for region in env.regions]


def demo_pipeline(checks: bool = True):
    """examples/web/pipeline.yaml, without its checks if asked (the shortest release demo)."""
    from pitstop.core.checks import Checks

    pipeline = load_pipeline(PIPELINE.read_text())
    if checks:
        return pipeline
    return pipeline.model_copy(update={"environments": {
        name: env.model_copy(update={"checks": Checks()}) for name, env in pipeline.environments.items()}})


def run_release_scenario(stack: Stack, rps: float, say: Callable[[str], None], checks: bool = True) -> ReleaseReport:
    """v1 everywhere, v2 released to every region, v3 caught in wave 2 and rolled back everywhere, and (with
    checks) v4 refused by its scan."""
    from pitstop.gcp.store import Store

    store = Store.from_env(stack.project)
    report = ReleaseReport()
    started = time.monotonic()
    text = PIPELINE.read_text()
    store.put_pipeline(demo_pipeline(checks), "pitstop demo", datetime.now(timezone.utc))
    where = places(text)
    say(f"applied {PIPELINE.name}: staging in us-central1; production in us-central1, then europe-west1 + "
        f"asia-northeast1 (two waves), on a tag, after staging, with an approver"
        + ("; checks: scan, migration, smoke at 0 %, E2E in staging" if checks else "; without its checks"))
    try:
        _release(stack, store, "v1", HEALTHY, say)
        names = {f"{env}/{region}": f"projects/{project}/locations/{region}/services/{SERVICE}"
                 for env, project, region in where}
        urls = {place: _uri(stack, name) for place, name in names.items()}
        watchers = {place: RouteWatcher(stack.cloud_run.router, name) for place, name in names.items()}
        for watcher in watchers.values():
            watcher.__enter__()
        try:
            with MultiLoad(urls, rps, max_duration_s=600) as load:
                say(f"load: {rps:g} requests/s over {len(urls)} places")
                report.v2 = _release(stack, store, "v2", HEALTHY, say)
                report.v3 = _release(stack, store, "v3", BAD, say, want="rolled_back")
                time.sleep(1.0)
            if checks:
                report.v4 = _refused(stack, store, "v4", say)
            report.results = load.results()
        finally:
            for watcher in watchers.values():
                watcher.__exit__(None, None, None)
        _measure(report, store, watchers)
    except DemoFailed as err:
        report.problems.append(str(err))
    report.seconds = time.monotonic() - started
    _check(report)
    return report


def _release(stack: Stack, store: Store, version: str, env: dict[str, str], say: Callable[[str], None],
             want: str = "succeeded") -> Release:
    """Ship `version` on main, then its tag; approve production; follow the release until it ends."""
    from pitstop.local.build import ship

    behaviour = ", ".join(f"{k}={v}" for k, v in env.items())
    say(f"ship {version} on main ({behaviour})")
    ship(stack.state_dir, stack.project, SERVICE, version, env=env)
    rid = _release_id(stack, version, env)
    seen: set[str] = set()
    rel = _follow(store, rid, seen, say, lambda r: r.stages["staging"].state == "succeeded", f"{version} in staging")
    say(f"tag {version}: the release goes on to production")
    ship(stack.state_dir, stack.project, SERVICE, version, env=env, tag=version)
    _follow(store, rid, seen, say, lambda r: "production" in r.stages
            and r.stages["production"].state == "awaiting_approval", f"{version} waiting for approval")
    say(f"{APPROVER} approves production")
    stack.command({"action": "approve", "release_id": rid, "environment": "production",
                   "reason": "demo: staging looked good"}, email=APPROVER)
    rel = _follow(store, rid, seen, say, lambda r: r.state in ("succeeded", "rolled_back", "failed", "cancelled"),
                  f"{version} in production", timeout=3 * STEP_TIMEOUT_S)
    if rel.state != want:
        raise DemoFailed(f"release {rid} of {version} ended {rel.state}, expected {want}: {rel.message}")
    return rel


def _refused(stack: Stack, store: Store, version: str, say: Callable[[str], None]) -> Release:
    """A version whose scan finds a CRITICAL vulnerability: the release stops before anything is deployed."""
    from pitstop.local.build import ship

    say(f"ship {version} on main: its image has a CRITICAL vulnerability (dev ship --vuln CRITICAL)")
    ship(stack.state_dir, stack.project, SERVICE, version, env=HEALTHY, vulns=["CRITICAL:CVE-2099-0001"])
    rid = _release_id(stack, version, HEALTHY, vulns=["CRITICAL:CVE-2099-0001"])
    rel = _follow(store, rid, set(), say, lambda r: r.state in ("failed", "succeeded", "rolled_back"),
                  f"{version} refused by the scan")
    if rel.state != "failed" or rel.stages["staging"].regions:
        raise DemoFailed(f"release {rid} of {version} ended {rel.state}, expected refused by the scan: {rel.message}")
    return rel


def _release_id(stack: Stack, version: str, env: dict[str, str], vulns: list[str] = ()) -> str:
    from pitstop.local.build import build_image

    _, digest = build_image(stack.state_dir, stack.project, SERVICE, version, env=env, vulns=vulns)  # the same again
    return release_id(SERVICE, digest)


def _follow(store: Store, rid: str, seen: set[str], say: Callable[[str], None], done: Callable[[Release], bool],
            what: str, timeout: float = STEP_TIMEOUT_S) -> Release:
    deadline = time.monotonic() + timeout
    rel = None
    while time.monotonic() < deadline:
        rel = store.release(rid)
        if rel is not None:
            for e in store.release_events(rid):
                if e.id not in seen and e.decision not in ("ignored", "region_update", "check_running", "progressed"):
                    seen.add(e.id)
                    say(f"{e.at.astimezone():%H:%M:%S} {rel.version} {e.decision}: " + "; ".join(e.reasons))
            if done(rel):
                return rel
        time.sleep(0.3)
    raise DemoFailed(f"{what}: not reached within {timeout:.0f}s; release {rid} is "
                     f"{rel.state if rel else 'missing'}: {rel.message if rel else ''}")


def _uri(stack: Stack, name: str) -> str:
    from pitstop.gcp.cloudrun import CloudRun

    return CloudRun.from_endpoint(stack.run_endpoint).client.get_service(name=name).uri


def _measure(report: ReleaseReport, store: Store, watchers: dict[str, RouteWatcher]) -> None:
    for rel in (report.v2, report.v3):
        prod = store.release(rel.id).stages["production"]
        report.spreads_recorded_ms += [s.spread_ms for s in prod.spreads]
        # As served: when each wave-2 router first routed the new revision at each step's weight.
        revision = {x: store.rollout(g.rollout_id).revision for x, g in prod.regions.items() if g.rollout_id}
        wave2 = [x for x in prod.waves[1] if x in revision]
        weights = [s.weight for s in prod.strategy.canary.steps] + [100]
        for weight in weights:
            times = [next((t for t, split in watchers[f"production/{x}"].changes
                           if split.get(revision[x]) == weight), None) for x in wave2]
            if len(times) > 1 and all(times):
                report.spreads_routed_ms.append((max(times) - min(times)) * 1000)
    v3 = store.release(report.v3.id)
    prod = v3.stages["production"]
    failing = []
    for region, g in prod.regions.items():
        if g.rollout_id:
            failing += [e.at.timestamp() for e in store.events(g.rollout_id) if e.verdict and e.verdict.outcome == "fail"]
    report.failing_at = min(failing, default=None)
    v2_revisions = {x: store.rollout(g.rollout_id).revision
                    for x, g in store.release(report.v2.id).stages["production"].regions.items()}
    if report.failing_at is not None:
        back = [watchers[f"production/{x}"].first({v2_revisions[x]: 100}, report.failing_at) for x in v2_revisions]
        report.all_stable_at = max(back) if all(back) else None


def _check(report: ReleaseReport) -> None:
    p = report.problems
    if p:
        return
    if report.failing_at is None:
        p.append("v3 was rolled back but no region's audit holds a failing verdict")
    elif report.all_stable_at is None:
        p.append("not every production router went back to 100 % v2 after the failing verdict")
    bad_regions = {"production/europe-west1", "production/asia-northeast1"}
    for place, results in report.results.items():
        foreign = [r for r in results if r.kind != OK and not (r.kind == APP_5XX and place in bad_regions)]
        if foreign:
            p.append(f"{place}: {len(foreign)} requests failed for another reason than v3's own 500s")
    if not report.spreads_routed_ms:
        p.append("no wave-2 step was seen by the routers in both regions")


def summary_lines(report: ReleaseReport) -> list[str]:
    lines = []
    for name, values in (("spread per step, as recorded by the release", report.spreads_recorded_ms),
                         ("spread per step, as the routers served it", report.spreads_routed_ms)):
        if values:
            lines.append(f"{name}: p50 {statistics.median(values):.0f} ms, max {max(values):.0f} ms "
                         f"over {len(values)} steps (goal < 1 s locally; the bar is 5 s)")
    if report.revert_s is not None:
        lines.append(f"failing verdict in wave 2 → every production region back on v2: {report.revert_s:.2f} s "
                     f"(goal < 2 s locally; the bar is 30 s)")
    for rel in (report.v2, report.v4):
        if rel is None:
            continue
        for env in rel.route:
            for key, run in rel.stages[env].checks.items():
                lines.append(f"{rel.version} {env} check {key}: {run.state.replace('_', ' ')}: {run.reason}")
    sent = sum(len(r) for r in report.results.values())
    lines.append(f"requests sent {sent}; " + ", ".join(
        f"{place} {sum(1 for r in results if r.kind == APP_5XX)} 5xx" for place, results in report.results.items()))
    return lines


def run_release_demo(rps: float = 80.0, console=None, health_lag: float = 1.5, tick: float = 0.5,
                     checks: bool = True) -> int:
    """`pitstop demo`: the scenario on a fresh local stack; 0 if every outcome was right."""
    import shutil
    import tempfile

    from rich.console import Console

    from pitstop.local.demo import on_local_stack

    console = console or Console()
    state_dir = Path(tempfile.mkdtemp(prefix="pitstop-demo-"))
    started = time.monotonic()

    def scenario(stack: Stack) -> ReleaseReport:
        console.print(f"timing: a tick every {tick:g} s, Monitoring {health_lag:g} s behind (GCP: a minute, "
                      f"up to 180 s)")
        return run_release_scenario(stack, rps, lambda line: console.print(line, highlight=False), checks)

    report = on_local_stack(console, state_dir, "emulators, functions, Cloud Run in 4 places, Monitoring",
                            scenario, tick_interval=tick, health_lag=health_lag)
    if isinstance(report, int):
        return report
    for line in summary_lines(report):
        console.print(line, highlight=False)
    for problem in report.problems:
        console.print(f"[bold red]FAILED:[/bold red] {problem}")
    if report.problems:
        console.print(f"everything is stopped; logs of the functions and revisions are in {state_dir}")
        return 1
    console.print(f"[green]demo passed in {time.monotonic() - started:.0f} s (the release scenario "
                  f"{report.seconds:.0f} s): v2 released to staging and three production regions in two waves, v3 "
                  f"caught in wave 2 and every production region rolled back"
                  + (", v4 refused by its scan" if checks else "") + ". Everything is stopped.[/green]")
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0

"""Carrying out a release's checks (core/checks.py), one short step per call, for the engine.

Each call does what can be done now and says how far it got, as a `CheckUpdate` for the release: a scan is
read once (not finished yet: look again at the next poll); a job is started once (at most once per name:
`Jobs.run_once`) or its execution is read; smoke probes run for at most SMOKE_BUDGET seconds per call, and
their results also go to each region's rollout as a health sample of source `smoke`, through the judge and
its audit. Nothing here decides what a result means for the release: core/release.py does.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pitstop.core import checks as checking
from pitstop.core.models import HealthSample

if TYPE_CHECKING:
    from pitstop.core.release import Release, RunCheck, Stage

SMOKE_BUDGET = float(checking.SMOKE_BUDGET)  # seconds of probing per call: a function returns well within its timeout
LINE = 500  # characters kept of a job's output line (the release document stays far below Firestore's 1 MiB)
MAX_PROBES_KEPT = 20  # per region, in the release document (the audit keeps the counts)


def run(engine: Any, rel: Release, effect: RunCheck) -> dict[str, Any]:
    """The fields of the CheckUpdate for this step of the check."""
    stage = rel.stages[effect.environment]
    name = effect.run.name
    if name == "scan":
        return _scan(engine, rel, stage, effect)
    if name == "smoke":
        return _smoke(engine, rel, stage, effect)
    return _job(engine, rel, stage, effect)


def _later(engine: Any, **fields: Any) -> dict[str, Any]:
    return {"state": "running", "next_at": engine.clock() + timedelta(seconds=checking.POLL), **fields}


# ---------------------------------------------------------------- scan

def _scan(engine: Any, rel: Release, stage: Stage, effect: RunCheck) -> dict[str, Any]:
    from pitstop.core.scanpolicy import verdict

    spec = stage.check_spec.scan
    scan = engine._adapter("scanner").scan(None, rel.image, attestation=spec.attestation)  # the registry's project
    if scan.pending:
        return _later(engine, reason=f"scan: Artifact Analysis has not finished scanning {rel.image} yet "
                                     f"({scan.status or 'no discovery occurrence yet'})")
    ok, reason, blocking, allowed, expired = verdict(
        scan, today=engine.clock().date(), severity=spec.severity, allow=[(a.cve, a.until) for a in spec.allow],
        require_attestation=spec.attestation)
    detail = {"findings": len(scan.findings), "blocking": [f"{f.cve} ({f.severity})" for f in blocking][:20],
              "allowed": [_allowance(a) for a in allowed][:20], "expired": [_allowance(e) for e in expired][:20],
              "limit": spec.severity}
    return {"state": "passed" if ok else "failed", "reason": f"scan: {reason}", "detail": detail}


def _allowance(entry: Any) -> str:
    """"CVE-… (until 2027-01-31)" of an allowlist entry, or of a finding it covered."""
    cve = getattr(entry, "cve", None) or (entry[0] if isinstance(entry, tuple) else str(entry))
    until = getattr(entry, "until", None) or (entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None)
    return f"{cve} (until {until})" if until else str(cve)


# ---------------------------------------------------------------- jobs: migrate, verify, e2e

def _job(engine: Any, rel: Release, stage: Stage, effect: RunCheck) -> dict[str, Any]:
    run, spec = effect.run, getattr(stage.check_spec, effect.run.name)
    jobs = engine._adapter("jobs")
    project, region = stage.project or engine.config.project, stage.waves[run.wave or 0][0]
    job = checking.job_name(rel.service, rel.id, stage.environment, effect.key, run.attempt)
    if run.execution is None:
        env = {**spec.env, "PITSTOP_RELEASE": rel.id, "PITSTOP_ENVIRONMENT": stage.environment,
               "PITSTOP_VERSION": rel.version}
        target = _target_url(engine, rel, stage, run.name, project, region)
        if target:
            env["TARGET_URL"] = target
        account = engine.cloudrun.runtime_account(project, region, rel.service)
        if not jobs.ensure(project, region, job, spec.image or rel.image, spec.command, spec.args, env, spec.timeout,
                           0, service_account=account):
            return _later(engine, reason=f"{effect.key}: Cloud Run is still setting up job {job}")
        execution = jobs.run_once(project, region, job)
        return _later(engine, execution=execution, reason=f"{effect.key}: job {job} runs (execution "
                                                            f"{execution.rsplit('/', 1)[-1]})")
    result = jobs.execution(run.execution)
    short = run.execution.rsplit("/", 1)[-1]
    detail = {"job": job, "execution": short, "summary": result.summary or {}, "log": result.log_uri or "",
              "output": [line[:LINE] for line in result.output[-5:]]}
    # A test job's summary is read from its output, which Cloud Logging shows a little after the end.
    finished = result.settled(engine.clock()) if run.name in ("verify", "e2e") else result.state != "running"
    if not finished:
        return _later(engine, execution=run.execution, detail=detail)
    summary = _summary(result.summary)
    if result.state == "succeeded":
        return {"state": "passed", "detail": detail, "execution": run.execution,
                "reason": f"{effect.key}: job execution {short} succeeded{summary}"}
    return {"state": "failed", "detail": detail, "execution": run.execution,
            "reason": f"{effect.key}: job execution {short} {result.state}: {result.exit_message}{summary}"}


def _summary(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in summary.items()) + ")"


def _target_url(engine: Any, rel: Release, stage: Stage, name: str, project: str, region: str) -> str | None:
    """verify: the new revision's tag URL (at 0 %); e2e: the environment's service URL; migrate: none."""
    if name == "migrate":
        return None
    urls = engine.cloudrun.urls(project, region, rel.service)
    if name == "verify":  # the new revision, never the service URL (that would test the old one)
        tagged = urls.get("canary" if stage.strategy.canary else "green")
        if not tagged:
            raise RuntimeError(f"the new revision has no tag URL in {region} yet")  # transient: next poll
        return tagged
    return urls.get("")


# ---------------------------------------------------------------- smoke

def _smoke(engine: Any, rel: Release, stage: Stage, effect: RunCheck) -> dict[str, Any]:
    """Probe every region of the wave at once until each reaches a threshold, the budget or the deadline."""
    spec = stage.check_spec.smoke
    project = stage.project or engine.config.project
    tag = "canary" if stage.strategy.canary else "green"
    regions = sorted(effect.rollouts)
    started = engine.clock()
    budget = min(SMOKE_BUDGET, max(1.0, (effect.run.deadline - started).total_seconds()))
    with ThreadPoolExecutor(max(1, len(regions))) as pool:
        outcomes = dict(zip(regions, pool.map(
            lambda region: _probe_region(spec, engine.cloudrun.urls(project, region, rel.service).get(tag), budget),
            regions)))
    if spec.on_fail == "block":  # an informing check must not roll back through the judge
        for region, (_, _, probes) in outcomes.items():
            _as_sample(engine, rel, region, effect.rollouts[region], probes, started)
    detail = {region: {"state": state, "probes": len(probes), "failed": sum(not p["ok"] for p in probes),
                       "last": probes[-1]["why"] if probes else "no probe", "recent": probes[-MAX_PROBES_KEPT:]}
              for region, (state, _, probes) in outcomes.items()}
    failed = [(r, why) for r, (state, why, _) in outcomes.items() if state == "failed"]
    if failed:
        return {"state": "failed", "detail": detail, "reason": "; ".join(f"{r}: {why}" for r, why in failed)}
    if all(state == "passed" for state, _, _ in outcomes.values()):
        return {"state": "passed", "detail": detail,
                "reason": "; ".join(f"{r}: {why}" for r, (_, why, _) in outcomes.items())}
    return _later(engine, detail=detail, reason="smoke: no threshold reached in every region yet")


def _probe_region(spec: checking.SmokeCheck, url: str | None, budget: float) -> tuple[str, str, list[dict]]:
    if not url:
        return "failed", "the new revision has no tag URL (is it deployed?)", []
    probes: list[dict[str, Any]] = []
    end = time.monotonic() + budget
    while True:
        began = time.monotonic()
        status, body, error = _get(url.rstrip("/") + spec.path, spec.timeout + 1)
        ms = (time.monotonic() - began) * 1000
        ok, why = checking.probe_ok(spec, status, body, ms, error)
        probes.append({"status": status, "ms": round(ms, 1), "ok": ok, "why": why})
        state, sentence = checking.smoke_verdict(spec, probes)
        if state != "running":
            return state, sentence, probes
        if time.monotonic() + spec.interval > end:
            return "running", sentence, probes
        time.sleep(max(0.0, spec.interval - (time.monotonic() - began)))


def _get(url: str, timeout: float) -> tuple[int | None, str, str | None]:
    """(status, body, error) of one GET; the standard library keeps the functions' bundle small."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            return response.status, response.read(65536).decode(errors="replace"), None
    except urllib.error.HTTPError as err:  # an answer, just not a 2xx
        return err.code, err.read(65536).decode(errors="replace"), None
    except (urllib.error.URLError, OSError) as err:
        return None, "", f"{type(err).__name__}: {getattr(err, 'reason', err)}"[:200]


def _as_sample(engine: Any, rel: Release, region: str, rollout_id: str, probes: list[dict], started: datetime) -> None:
    """The probes as a health sample of the new revision (source `smoke`): judged and audited like any other."""
    if not probes:
        return
    rollout = engine.store.rollout(rollout_id)
    if rollout is None:
        return
    end = max(engine.clock(), started + timedelta(milliseconds=10))
    sample = HealthSample(id=f"smoke-{int(end.timestamp() * 1000)}", service=rel.service, region=region,
                          revision=rollout.revision, window_start=started, window_end=end,
                          request_count=len(probes), error_count=sum(not p["ok"] for p in probes),
                          latency_p99_ms=max(p["ms"] for p in probes), source="smoke", rollout_id=rollout_id)
    engine.handle(rollout_id, sample)

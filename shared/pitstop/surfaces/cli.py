"""The `pitstop` command: register specs and pipelines, watch rollouts and releases, steer them, run the
local stack.

Operator commands travel the same road as on GCP: they are published to
`pitstop-commands`, the `on_command` function decides, and the CLI waits for
the audit event to say what was decided and why.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="pitstop: progressive delivery for Cloud Run.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
dev = typer.Typer(help="The whole system on this machine: emulators, functions, local Cloud Run.",
                  no_args_is_help=True)
app.add_typer(dev, name="dev")
# Piped output (CI, less) gets wide lines instead of an 80-column wrap.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

DEV_DIR = Path(".pitstop")
DEV_ENV = DEV_DIR / "dev.env"
DEV_PID = DEV_DIR / "dev.pid"


# ---------------------------------------------------------------- environment

def _load_dev_env() -> None:
    """While a local stack started here runs (its .pitstop/dev.env exists), talk to it, and say so."""
    if not DEV_ENV.exists() or os.environ.get("PITSTOP_USE_GCP"):
        return
    for line in DEV_ENV.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ[key] = value.strip("'\"")
    err.print(f"[dim](local stack: {DEV_ENV.resolve()}; PITSTOP_USE_GCP=1 to use your project instead)[/dim]")


@functools.cache
def _config():
    from pitstop.config import Config

    _load_dev_env()
    try:
        return Config.from_env()
    except RuntimeError as e:
        _fail(f"{e}. Export it, or start the local stack with `pitstop dev up`.")


def _store():
    from pitstop.gcp.store import Store

    return Store.from_env(_config().project)


def _fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _caller():
    from pitstop.surfaces.client import Caller

    return Caller.from_env(_config().project)


def _api(method: str, path: str, body=None, **kwargs):
    """Call the HTTP API as the verified person; its refusals are shown with their code and sentence."""
    from pitstop.surfaces.client import ApiError
    from pitstop.surfaces.credentials import NoCredentials

    try:
        return _caller().call(method, path, body, **kwargs)
    except ApiError as e:
        _fail(f"{e.code}: {e.message}", 3 if e.status in (401, 403) else 1)
    except NoCredentials as e:
        _fail(str(e))


def _require_api(what: str) -> None:
    if not _caller().api:
        _fail(f"{what} goes through the pitstop HTTP API: set PITSTOP_API to its URL (terraform output api_url; "
              f"the local stack exports it)")


# ---------------------------------------------------------------- specs

@app.command()
def apply(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                      help="rollout spec, a pipeline (top-level `environments:`), or project-wide "
                                           "sinks (only `notify:`) (YAML)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="validate only")) -> None:
    """Register (or replace) a rollout spec or a service's pipeline."""
    from pitstop.core.spec import SpecError, load_spec_file, load_yaml

    try:
        doc = load_yaml(file.read_text(), str(file))
    except SpecError as e:
        _fail(str(e))
    if isinstance(doc, dict) and "environments" in doc:
        _apply_pipeline(file, dry_run)
        return
    if isinstance(doc, dict) and "notify" in doc and "service" not in doc:
        _apply_notifications(file, doc, dry_run)
        return
    try:
        spec = load_spec_file(file)
    except SpecError as e:
        _fail(str(e))
    kind = spec.strategy.kind.replace("_", "-")
    steps = " → ".join(f"{s.weight}%" for s in spec.strategy.canary.steps) + " → 100%" if spec.strategy.canary \
        else f"verify {spec.strategy.blue_green.verify}s, bake {spec.strategy.blue_green.bake}s"
    summary = f"{spec.service} ({spec.environment}) in {', '.join(spec.regions)}: {kind} {steps}"
    if dry_run:
        console.print(f"valid: {summary}")
        return
    _require_api("pitstop apply")
    # The API validates again, checks collisions and the caller's admin role, and records who applied it.
    reply = _api("PUT", f"/api/v1/specs/{spec.key}", content=file.read_text(), content_type="application/yaml")
    console.print(f"applied spec [bold]{spec.key}[/bold] as {reply['applied_by']}: {summary}")


def _apply_pipeline(file: Path, dry_run: bool) -> None:
    from rich.markup import escape

    from pitstop.core.pipeline import load_pipeline
    from pitstop.core.spec import SpecError
    from pitstop.surfaces.releases import pipeline_lines

    try:
        pipeline = load_pipeline(file.read_text(), str(file))
    except SpecError as e:
        _fail(str(e))
    summary = escape("\n".join(pipeline_lines(pipeline)))  # globs and cron fields are not rich markup
    if dry_run:
        console.print(f"valid: {summary}", highlight=False)
        return
    _require_api("pitstop apply")
    # The API validates again, checks collisions and spec:write on each environment, and records who applied it.
    reply = _api("PUT", f"/api/v1/pipelines/{pipeline.service}", content=file.read_text(),
                 content_type="application/yaml")
    console.print(f"applied the pipeline of [bold]{pipeline.service}[/bold] as {reply['applied_by']}: {summary}",
                  highlight=False)


def _apply_notifications(file: Path, doc: dict, dry_run: bool) -> None:
    """A file whose only key is `notify:`: the project-wide sinks, for every service's events."""
    from pydantic import ValidationError

    from pitstop.core.sinks import ProjectNotify
    from pitstop.core.spec import validation_lines

    try:
        sinks = ProjectNotify.model_validate(doc).notify
    except ValidationError as err:
        _fail(f"{file}: invalid project notifications\n" + "\n".join(validation_lines(err)))
    summary = ", ".join(f"{s.name} ({s.type})" for s in sinks) or "none"
    if dry_run:
        console.print(f"valid: project-wide sinks: {summary}", highlight=False)
        return
    _require_api("pitstop apply")
    reply = _api("PUT", "/api/v1/notifications", content=file.read_text(), content_type="application/yaml")
    console.print(f"project-wide sinks applied by {reply['applied_by']}: {summary}", highlight=False)


access_app = typer.Typer(help="The project-wide access document: roles granted in every service.",
                         no_args_is_help=True)
app.add_typer(access_app, name="access")


@access_app.command("apply")
def access_apply(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                             help="YAML: viewer/operator/approver/deployer/admin lists, four_eyes")) -> None:
    """Replace the project access document (needs the admin role project-wide)."""
    _require_api("pitstop access apply")
    reply = _api("PUT", "/api/v1/access", content=file.read_text(), content_type="application/yaml")
    console.print(f"access document applied by {reply['applied_by']}: "
                  + ", ".join(f"{role} {len(reply['access'].get(role) or [])}" for role in
                              ("viewer", "operator", "approver", "deployer", "admin")))


@app.command()
def whoami() -> None:
    """The identity your ID token proves, and the roles pitstop grants it."""
    from pitstop.surfaces.credentials import NoCredentials, id_token

    caller = _caller()
    if caller.api:
        me = _api("GET", "/api/v1/whoami")
        console.print(f"[bold]{me['email']}[/bold] (token from {id_token(caller.audience)[1]}, audience "
                      f"{me['audience']})")
        console.print(f"project-wide roles: {', '.join(me['roles']['project']) or 'none'}")
        for key, roles in sorted(me["roles"]["specs"].items()):
            console.print(f"  {key}: {', '.join(roles) or 'none'}")
        return
    from pitstop.gcp.identity import claimed_email

    try:
        token, source = id_token(caller.audience)
    except NoCredentials as e:
        _fail(str(e))
    console.print(f"{claimed_email(token)} (token from {source}, audience {caller.audience}); set PITSTOP_API to "
                  f"see the roles the API grants")


@app.command()
def deploy(service: str = typer.Argument(..., help="service name"),
           env: str = typer.Option(..., "--env", "-e", help="environment (the spec's)"),
           ref: str = typer.Option(..., "--ref", help="branch, tag or commit to build and roll out"),
           wait: float = typer.Option(0.0, help="seconds to wait for the rollout to start (0: don't wait)")) -> None:
    """Build REF with the service's Cloud Build trigger; its successful build then rolls out as usual."""
    payload = {"service": service, "environment": env, "ref": ref}
    caller = _caller()
    if caller.api:
        reply = _api("POST", "/api/v1/deploy", payload)
        console.print(f"build {reply['build_id']} started by {reply['actor']} for {service} ({env}) at {ref}"
                      + (f"\n  log: {reply['log_url']}" if reply.get("log_url") else ""))
        build_id = reply["build_id"]
    else:
        command_id = f"cmd-{uuid.uuid4().hex[:16]}"
        _publish(caller, {"id": command_id, "action": "deploy", **payload})
        console.print(f"sent deploy ({command_id}) for {service} ({env}) at {ref}")
        build_id = None
    if wait > 0 and build_id:
        store = _store()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            started = [r for r in store.recent(service, 5) if r.artifact and r.artifact.build_id == build_id]
            if started:
                console.print(f"[green]rollout {started[0].id} started[/green] ({started[0].state})")
                return
            time.sleep(0.5)
        _fail(f"no rollout started from build {build_id} within {wait:.0f}s; see `pitstop history {service}`", 2)


def _publish(caller, payload: dict) -> None:
    from pitstop.surfaces.credentials import NoCredentials

    try:
        caller.publish(_config().project, payload)
    except NoCredentials as e:
        _fail(str(e))


# ---------------------------------------------------------------- reading

@app.command()
def status(service: Optional[str] = typer.Argument(None, help="only this service; or a rollout or release id: "
                                                             "its outcome, as an exit code"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
           watch: bool = typer.Option(False, "--watch", "-w", help="live view until Ctrl-C; with a rollout id, "
                                                                   "that rollout: its verdict and measurements"),
           limit: int = typer.Option(10, help="how many recent rollouts (and releases)"),
           wait: bool = typer.Option(False, "--wait", help="with a rollout or release id: wait until it finishes"),
           timeout: float = typer.Option(0.0, "--timeout", min=0.0, metavar="SECONDS",
                                         help="with --wait: stop waiting after this long (exit 2); 0: no limit")) \
        -> None:
    """Recent releases (route, regions, what they wait for) and rollouts: service, version, state, step, split.

    Given a rollout or release id, its state and reason, and an exit code a CI job can act on (like `kubectl
    argo rollouts status`): 0 succeeded, 1 rolled back or failed, 2 not finished (still in progress, or --timeout
    passed while waiting), 3 superseded or cancelled (a newer build took over, or nobody approved in time)."""
    from pitstop.surfaces import render

    store = _store()
    if service and watch and not wait and store.rollout(service) is not None:  # watch this one rollout
        _watch(store, None, limit, focus=service)
        return
    if service and (wait or store.rollout(service) is not None or _release(store, service) is not None):
        _outcome(store, service, wait, timeout, as_json)
        return
    if as_json:  # rollouts only, as ever: GET /api/v1/releases lists releases
        print(json.dumps([render.rollout_row(r) for r in store.recent(service, limit)], indent=2))
        return
    if not watch:
        rollouts, releases = store.recent(service, limit), store.releases(service, limit)
        if not rollouts and not releases:
            console.print("no rollouts yet" + (f" for {service}" if service else ""))
            return
        if releases:
            console.print(render.releases_table(releases))
        if rollouts:
            console.print(render.rollouts_table(rollouts))
        return
    _watch(store, service, limit)


# `pitstop status ID`'s exit codes, by how the rollout or release ended (documented in `status`'s help).
OUTCOME_CODES = {"succeeded": 0, "rolled_back": 1, "failed": 1, "superseded": 3, "cancelled": 3}
NOT_FINISHED = 2


def _outcome(store, target: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Where a rollout or release stands, waiting for its end if asked; the exit code says how it ended."""
    from rich.markup import escape

    from pitstop.surfaces.releases import release_row
    from pitstop.surfaces.rows import rollout_row

    def read():
        rollout = store.rollout(target)
        if rollout is not None:
            return "rollout", rollout, rollout_row(rollout)
        rel = _release(store, target)
        return ("release", rel, release_row(rel)) if rel is not None else (None, None, None)

    from pitstop.surfaces.releases import looks_like_release

    deadline = time.monotonic() + timeout if timeout else None
    kind, thing, row = read()
    if thing is None and wait and looks_like_release(target):  # CI asks right after its build: not started yet
        err.print(f"{target}: no such release yet; waiting for its build to start it")
        while thing is None and not (deadline and time.monotonic() >= deadline):
            time.sleep(1.0)
            kind, thing, row = read()
        if thing is None:
            _fail(f"release {target} did not start within {timeout:g}s; nothing was changed", NOT_FINISHED)
    if thing is None:
        _fail(f"{target} is neither a rollout nor a release id" + (" (--wait follows one rollout or release: "
              "`pitstop status SERVICE` lists their ids)" if wait else ""))
    seen = None
    while thing.state not in OUTCOME_CODES:
        where = f"{row.get('step') or row.get('current') or ''}"
        if (thing.state, where) != seen:  # one line per change, so a CI log tells the story
            seen = (thing.state, where)
            if not as_json:
                err.print(f"{target}: {thing.state.replace('_', ' ')} {where} {escape(thing.message)}".rstrip())
        if not wait or (deadline and time.monotonic() >= deadline):
            break
        time.sleep(1.0)
        kind, thing, row = read()
    code = OUTCOME_CODES.get(thing.state, NOT_FINISHED)
    if as_json:
        print(json.dumps({**row, "kind": kind, "finished": thing.state in OUTCOME_CODES, "exit_code": code},
                         indent=2))
    elif thing.state in OUTCOME_CODES:
        style = "green" if code == 0 else "red" if code == 1 else "yellow"
        console.print(f"[{style}]{kind} {target} {thing.state.replace('_', ' ')}[/{style}]"
                      f"{' — ' + escape(thing.message) if thing.message else ''}")
    else:
        console.print(f"[yellow]{kind} {target} is not finished[/yellow] ({thing.state.replace('_', ' ')}"
                      + (f"; still so after {timeout:g}s" if wait else "; --wait waits for its end") + ")")
    raise typer.Exit(code)


def _watch(store, service: Optional[str], limit: int, focus: Optional[str] = None) -> None:
    """A live view: the focused rollout (the one given, else the newest unfinished) in detail, with its latest
    verdict and measurements, above the releases and recent rollouts."""
    from rich.console import Group
    from rich.live import Live

    from pitstop.surfaces import render

    def frame():
        chosen = store.rollout(focus) if focus else None
        within = chosen.service if chosen else service  # a rollout given: its service's recent ones below it
        rollouts = store.recent(within, limit)
        shown = chosen or next((r for r in rollouts if r.state not in ("succeeded", "rolled_back", "failed",
                                                                        "superseded")),
                               rollouts[0] if rollouts else None)
        if shown is None:
            return render.rollouts_table([], "no rollouts yet")
        releases = store.releases(within, limit)
        return Group(render.rollout_detail(shown, store.events(shown.id)),
                     *([render.releases_table(releases)] if releases else []), render.rollouts_table(rollouts))

    try:
        with Live(frame(), console=console, refresh_per_second=2, screen=False) as live:
            while True:
                time.sleep(1)
                live.update(frame())
    except KeyboardInterrupt:
        pass


@app.command()
def history(service: str = typer.Argument(..., help="service name, or a release id for its whole story"),
            rollout: Optional[str] = typer.Option(None, help="one rollout id (default: the latest)"),
            as_json: bool = typer.Option(False, "--json"),
            all_rollouts: bool = typer.Option(False, "--all", help="every recent rollout of the service")) -> None:
    """The audit trail: every input, decision, reason and traffic change (of a release: across environments),
    and each rollout's measurements per step and metric (value, stable's, condition or limit, outcome)."""
    from pitstop.surfaces import render
    from pitstop.surfaces.rows import measurement_rows

    store = _store()
    release = _release(store, service) if rollout is None else None
    if release is not None:
        _release_history(store, release, as_json)
        return
    rollouts = [store.rollout(rollout)] if rollout else store.recent(service, 10 if all_rollouts else 1)
    rollouts = [r for r in rollouts if r is not None]
    if not rollouts:
        _fail(f"no rollout of {service} found")
    out = []
    for r in rollouts:
        events, refused = store.events(r.id), store.refusals(r.id)
        if as_json:
            out.append({"rollout": render.rollout_row(r), "events": [render.event_row(e) for e in events],
                        "refused": [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in c.items()}
                                    for c in refused],
                        "measurements": measurement_rows(r)})
        else:
            console.print(render.events_table(events, title=f"{r.id}: {r.service} {r.version} — {r.state}"))
            for c in refused:  # changed nothing, but who tried what is part of the trail
                console.print(f"[red]refused[/red] {c['at']:%H:%M:%S} {c['action']} by {c['actor']}: {c['reason']}")
            if r.measurements:  # what the judge measured, per step and metric, window by window
                console.print(render.measurements_table(r))
            console.print(f"[dim]{r.message}[/dim]\n")
    if as_json:
        print(json.dumps(out, indent=2))


def _release_history(store, rel, as_json: bool) -> None:
    """The release's events and every region rollout's, merged by time (as GET /releases/{id}/audit)."""
    from rich.text import Text

    from pitstop.surfaces import render
    from pitstop.surfaces.releases import release_row, release_story

    events, chain = release_story(store, rel)
    if as_json:
        print(json.dumps({"release": release_row(rel), "events": events, "chain_intact": chain.ok}, indent=2,
                         default=str))
        return
    console.print(render.timeline_table(events, title=f"{rel.id}: {rel.service} {rel.version}"
                                                      f"{' (hotfix)' if rel.hotfix else ''} — {rel.state}"))
    if not chain.ok:
        console.print("[bold red]the release's audit chain is broken:[/bold red] " + "; ".join(chain.problems))
    if rel.message:
        console.print(Text(rel.message + "\n", style="dim"))


audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(rollouts: list[str] = typer.Argument(..., help="rollout id(s)")) -> None:
    """Check each rollout's hash chain; say where it breaks (an edited, reordered or deleted event)."""
    from pitstop.surfaces.audit import render as render_report, verify_rollout

    store = _store()
    broken = 0
    for rollout_id in rollouts:
        report = verify_rollout(store, rollout_id)
        text = render_report(report, rollout_id)
        console.print(("[green]" if report.ok else "[bold red]") + text.splitlines()[0]
                      + ("[/green]" if report.ok else "[/bold red]"))
        for line in text.splitlines()[1:]:
            console.print(line)
        broken += not report.ok
    if broken:
        raise typer.Exit(4)


@app.command()
def metrics(service: Optional[str] = typer.Argument(None, help="only this service"),
            environment: Optional[str] = typer.Option(None, "--environment", "--env", "-e",
                                                      help="only this environment"),
            hotfix_days: int = typer.Option(7, "--hotfix-days", min=1, max=90,
                                            help="a hotfix (or rollback --to) within this many days marks the "
                                                 "change before it failed"),
            as_json: bool = typer.Option(False, "--json", help="the report as the API returns it")) -> None:
    """DORA metrics per service and environment over 7, 30 and 90 days, each with its performance band."""
    from urllib.parse import urlencode

    from pitstop.surfaces.metrics import dora_report
    from pitstop.surfaces.render import dora_tables

    if _caller().api:  # as the verified person: only what they may read
        query = urlencode({k: v for k, v in (("service", service), ("environment", environment),
                                             ("hotfix_days", hotfix_days)) if v})
        report = _api("GET", f"/api/v1/metrics/dora?{query}")
    else:
        report = dora_report(_store(), service, environment, hotfix_days=hotfix_days)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if not report["services"]:
        console.print("no changes recorded in the last 90 days" + (f" for {service}" if service else "")
                      + (f" in {environment}" if environment else ""))
        return
    for table in dora_tables(report):
        console.print(table)
    console.print(f"[dim]lead time starts at {report['lead_time_from']} (Cloud Build's createTime: it does not report "
                  f"the commit's time).\nA hotfix or `rollback --to` within {report['hotfix_days']} days marks a "
                  f"change failed. Bands: the 2023 State of DevOps report.[/dim]")
    if report.get("truncated"):
        console.print("[yellow]the history read was capped: the oldest part of the 90 days is missing[/yellow]")


# ---------------------------------------------------------------- operator commands

def _command(action: str, target: str, wait: float, environment: Optional[str] = None,
             region: Optional[str] = None, **fields) -> None:
    from pitstop.core import routing
    from pitstop.core.models import Command
    from pitstop.engine import rollout_key

    store = _store()
    command = {"id": f"cmd-{uuid.uuid4().hex[:16]}", "action": action, **fields}
    rollout = store.rollout(target)
    release = None if rollout else _release(store, target)
    if release is not None:
        _release_command(store, action, release, wait, environment, region, **fields)
        return
    if rollout:
        command["rollout_id"] = rollout.id
        records = [store.service(rollout.service, rollout.region, rollout.environment) or {}]
    else:
        records = [s for s in store.services_of(target, region) if environment in (None, s.get("environment"))]
        if not records:
            where = "".join(f" {k} {v}" for k, v in (("in environment", environment), ("in region", region)) if v)
            _fail(f"{target} is neither a rollout id nor a service pitstop has deployed{where}")
        command.update(service=target, environment=environment, region=region)
    if action == "rollback" and fields.get("to_version"):
        version = fields["to_version"]
        environments = sorted({s.get("environment") for s in records})
        if len(environments) > 1:
            _fail(f"{target} runs in {len(environments)} environments ({', '.join(environments)}); name one with "
                  f"--environment; nothing sent")
        good = [s for s in records if store.find_version(s["service"], s["region"], s["environment"], version)]
        if not good:
            _fail(f"no successful rollout of {target} at version {version} is recorded; nothing sent")
        watch = [rollout_key(s["service"], s["environment"], s["region"], command["id"][-12:]) for s in good]
    elif rollout:
        watch = [rollout.id]
    else:
        chosen = routing.command_targets(Command(**{k: v for k, v in command.items() if v is not None}), records)
        if isinstance(chosen, routing.Refusal):
            _fail(chosen.reason + "".join(f"\n  {c}" for c in chosen.candidates))
        watch = chosen
    caller = _caller()
    if caller.api:
        _command_by_api(action, command, watch, fields)
        return
    _publish(caller, {k: v for k, v in command.items() if v is not None})
    console.print(f"sent {action} ({command['id']}) for {target}")
    if wait <= 0:
        return
    deadline = time.monotonic() + wait
    pending = set(watch)
    while pending and time.monotonic() < deadline:
        refused = store.command(command["id"])
        if refused and refused.get("outcome") == "refused":  # unverified, not allowed, or no target: it says why
            _fail(f"refused ({refused.get('code')}): {refused.get('reason')}"
                  + "".join(f"\n  {c}" for c in refused.get("candidates") or []), 3)
        for rollout_id in list(pending):
            event = next((e for e in store.events(rollout_id) if e.id == command["id"]), None)
            if event:
                pending.discard(rollout_id)
                style = "yellow" if event.decision == "ignored" else "green"
                console.print(f"[{style}]{rollout_id}: {event.decision}[/{style}] (now {event.state_after}). "
                              + "; ".join(event.reasons))
        time.sleep(0.3)
    if pending:
        _fail(f"no decision recorded within {wait:.0f}s for {', '.join(sorted(pending))}; the command is queued "
              f"on pitstop-commands and will be handled when on_command runs. Check `pitstop history {target}`.", 2)


def _release(store, target: str):
    """The release `target` names, if it is a release id (SERVICE-DIGEST16) that exists."""
    from pitstop.surfaces.releases import looks_like_release

    return store.release(target) if looks_like_release(target) else None


def _release_command(store, action: str, rel, wait: float, environment: Optional[str] = None,
                     region: Optional[str] = None, reason: Optional[str] = None, to_environment: Optional[str] = None,
                     full: bool = False, to_version: Optional[str] = None) -> None:
    """A command to a release: through the API when configured, else a signed pitstop-commands message whose
    decision the CLI reads back from the release's audit trail (its event id is the command id)."""
    if full or to_version:
        _fail(f"{rel.id} is a release: {'--full' if full else '--to'} is for a rollout or a service (a release "
              f"moves a wave one step at a time, and rolls back to what each region served before); nothing sent")
    command = {"id": f"cmd-{uuid.uuid4().hex[:16]}", "action": action, "release_id": rel.id,
               "environment": environment, "region": region, "reason": reason, "to_environment": to_environment}
    command = {k: v for k, v in command.items() if v is not None}
    caller = _caller()
    if caller.api:
        body = {k: command[k] for k in ("environment", "region", "reason", "to_environment") if k in command}
        _print_results(_api("POST", f"/api/v1/releases/{rel.id}:{action}", body))
        return
    _publish(caller, command)
    console.print(f"sent {action} ({command['id']}) for release {rel.id}")
    if wait <= 0:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        refused = store.command(command["id"])
        if refused and refused.get("outcome") == "refused":
            _fail(f"refused ({refused.get('code')}): {refused.get('reason')}", 3)
        event = next((e for e in store.release_events(rel.id) if e.id == command["id"]), None)
        if event:
            style = "yellow" if event.decision == "ignored" else "green"
            console.print(f"[{style}]{rel.id}: {event.decision}[/{style}] (now {event.state_after}). "
                          + "; ".join(event.reasons))
            return
        time.sleep(0.3)
    _fail(f"no decision recorded within {wait:.0f}s for release {rel.id}; the command is queued on pitstop-commands "
          f"and will be handled when on_command runs. Check `pitstop history {rel.id}`.", 2)


def _print_results(reply: dict) -> None:
    for result in reply["results"]:
        style = "yellow" if result["decision"] == "ignored" else "green"
        console.print(f"[{style}]{result.get('release_id') or result['rollout_id']}: {result['decision']}[/{style}] "
                      f"(now {result['state']}) by {reply['actor']}. " + "; ".join(result["reasons"]))


def _command_by_api(action: str, command: dict, rollouts: list[str], fields: dict) -> None:
    body = {k: v for k, v in fields.items() if v is not None}
    if action == "rollback" and fields.get("to_version"):
        where = {k: command.get(k) for k in ("rollout_id", "service", "environment", "region") if command.get(k)}
        replies = [_api("POST", "/api/v1/rollback", {**body, **where})]
    else:
        replies = [_api("POST", f"/api/v1/rollouts/{rollout_id}:{action}", body) for rollout_id in rollouts]
    for reply in replies:
        _print_results(reply)


TARGET = typer.Argument(..., help="rollout id, release id, or a service name for its rollout in progress (with "
                                   "--environment and --region when it has several)")
ENVIRONMENT = typer.Option(None, "--environment", "--env", "-e",
                           help="with a service name: the environment of the rollout; with a release: the "
                                "environment to act on (default: the one it is in or waits for)")
REGION = typer.Option(None, "--region", help="with a service name: the region of the rollout (with a release: "
                                             "recorded; the whole environment acts)")
WAIT = typer.Option(30.0, help="seconds to wait for the decision (0: don't wait)")
REASON = typer.Option(None, "--reason", "-m", help="recorded in the audit trail")


@app.command()
def promote(target: str = TARGET, environment: Optional[str] = ENVIRONMENT,
            region: Optional[str] = REGION, full: bool = typer.Option(False, "--full", help="straight to 100 %"),
            reason: Optional[str] = REASON, wait: float = WAIT) -> None:
    """Go to the next step now (or to 100 % with --full)."""
    _command("promote", target, wait, environment, region, full=full, reason=reason)


@app.command("promote-release")
def promote_release(release: str = typer.Argument(..., help="release id (`pitstop status` lists them)"),
                    to: str = typer.Option(..., "--to", help="the environment to send it on to"),
                    reason: Optional[str] = REASON, wait: float = WAIT) -> None:
    """Send a release on to another environment; its gates there still apply (promote_from, approval, freeze)."""
    store = _store()
    rel = _release(store, release)
    if rel is None:
        _fail(f"there is no release {release}; `pitstop status` lists releases")
    _release_command(store, "promote", rel, wait, reason=reason, to_environment=to)


@app.command()
def unfreeze(release: str = typer.Argument(..., help="release id"),
             environment: str = typer.Option(..., "--env", "--environment", "-e", help="the environment to let go "
                                                                                       "ahead"),
             reason: str = typer.Option(..., "--reason", "-m", help="why (recorded in the audit trail)"),
             wait: float = WAIT) -> None:
    """Let a release go ahead in one environment inside a freeze window (admin; audited with your reason)."""
    store = _store()
    rel = _release(store, release)
    if rel is None:
        _fail(f"there is no release {release}; `pitstop status` lists releases")
    _release_command(store, "unfreeze", rel, wait, environment, reason=reason)


def _simple(action: str, doc: str) -> None:
    """pause, resume, abort, approve: the same options, one action each."""
    def command(target: str = TARGET, environment: Optional[str] = ENVIRONMENT, region: Optional[str] = REGION,
                reason: Optional[str] = REASON, wait: float = WAIT) -> None:
        _command(action, target, wait, environment, region, reason=reason)
    command.__doc__ = doc
    app.command(action)(command)


for _action, _doc in (("pause", "Hold at the current step (rolls back if left paused past the spec's max_hold)."),
                      ("resume", "Continue a paused rollout."),
                      ("abort", "Roll back now: all traffic to the stable revision."),
                      ("approve", "Let a rollout (or a release) waiting at an approval gate continue.")):
    _simple(_action, _doc)


@app.command()
def rollback(target: str = TARGET, environment: Optional[str] = ENVIRONMENT, region: Optional[str] = REGION,
             to: Optional[str] = typer.Option(None, "--to", help="an earlier good version"),
             reason: Optional[str] = REASON, wait: float = WAIT) -> None:
    """Roll back the rollout in progress, or with --to VERSION switch straight to an earlier good version."""
    _command("rollback", target, wait, environment, region, to_version=to, reason=reason)


# ---------------------------------------------------------------- local stack and demo

# 3.0 is pitstop.local.stack.DEFAULT_HEALTH_LAG, not imported here so that every command starts fast.
HEALTH_LAG = typer.Option(3.0, "--health-lag", min=0.0, metavar="SECONDS",
                          help="Monitoring's ingestion lag: the local Monitoring shows a request this long after "
                               "it was served, and the sampler allows for it (GCP: up to 180 s for 60 s ticks)")


@dev.command("up")
def dev_up(tick: float = typer.Option(1.0, help="seconds between ticks (Cloud Scheduler stand-in)"),
           health_lag: float = HEALTH_LAG,
           detach: bool = typer.Option(False, "--detach", "-d", help="run in the background; stop with `dev down`"),
           state_dir: Path = typer.Option(DEV_DIR / "state", help="local images, revision logs")) -> None:
    """Start the local stack and print the environment to export."""
    if DEV_PID.exists() and _alive(int(DEV_PID.read_text())):
        _fail(f"the local stack is already running (pid {DEV_PID.read_text().strip()}); `pitstop dev down` first")
    if detach:
        DEV_DIR.mkdir(exist_ok=True)
        DEV_ENV.unlink(missing_ok=True)
        with open(DEV_DIR / "dev.log", "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pitstop.surfaces.cli", "dev", "up", "--tick", str(tick),
                                     "--health-lag", str(health_lag), "--state-dir", str(state_dir)],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while not DEV_ENV.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    _stop_background(proc)
                    _fail(f"the local stack did not start; nothing is left running. {DEV_DIR / 'dev.log'} says:\n"
                          + "\n".join((DEV_DIR / "dev.log").read_text().splitlines()[-15:]))
                time.sleep(0.3)
        except KeyboardInterrupt:
            _stop_background(proc)
            _fail("interrupted while the local stack was starting; it was stopped again", 130)
        console.print(DEV_ENV.read_text().rstrip())
        console.print("\n".join(line for line in (DEV_DIR / "dev.log").read_text().splitlines()
                                if line.startswith(("functions:", "timing:", "logs:"))))
        console.print(f"[green]local stack running in the background (pid {proc.pid}); "
                      f"`pitstop dev down` stops it[/green]")
        return
    _run_stack(tick, health_lag, state_dir)


def _stop_background(proc: subprocess.Popen) -> None:
    """SIGTERM lets the stack stop its emulators and functions (their own sessions); kill only as a last resort."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _run_stack(tick: float, health_lag: float, state_dir: Path) -> None:
    from pitstop.local.emulators import MissingTool
    from pitstop.local.stack import Stack

    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(state_dir.resolve(), tick_interval=tick, health_lag=health_lag)
    try:
        stack.start()
    except MissingTool as e:
        _fail(str(e))
    try:
        DEV_DIR.mkdir(exist_ok=True)
        env = {**stack.env, "GOOGLE_CLOUD_PROJECT": stack.project, "PITSTOP_LOCAL_STATE": str(stack.state_dir)}
        lines = "\n".join(f"export {k}={v}" for k, v in sorted(env.items()))
        DEV_PID.write_text(str(os.getpid()))
        DEV_ENV.write_text(lines + "\n")
        console.print(lines)
        console.print("functions: " + ", ".join(f"{t} {p.url}" for t, p in stack.functions.items()))
        console.print(f"timing: a tick every {tick:g} s (Cloud Scheduler: 60 s); Monitoring shows requests "
                      f"{health_lag:g} s after they are served (GCP: up to 180 s)")
        console.print(f"logs: {state_dir / 'logs'}  •  Ctrl-C or `pitstop dev down` stops everything")
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        DEV_ENV.unlink(missing_ok=True)
        DEV_PID.unlink(missing_ok=True)
        stack.stop()
        console.print("local stack stopped")


@dev.command("ship")
def dev_ship(version: str = typer.Argument(..., help="version to build, e.g. v2"),
             repo: str = typer.Option("web", help="the repo name the build reports (a spec matches on it)"),
             env: list[str] = typer.Option([], "--env", "-e", help="behaviour of the example app, e.g. FAIL_RATE=0.3 "
                                                                    "or CPU_BURN=1 (see examples/web/app.py)"),
             branch: Optional[str] = typer.Option(None, "--branch", help="the branch built (BRANCH_NAME); default main"),
             tag: Optional[str] = typer.Option(None, "--tag", help="build a tag instead (TAG_NAME, no BRANCH_NAME), "
                                                                "as a tag trigger does"),
             fail: bool = typer.Option(False, "--fail", help="the build itself fails"),
             vuln: list[str] = typer.Option([], "--vuln", metavar="SEVERITY[:CVE-ID[:PACKAGE]]",
                                            help="the image's scan finds this vulnerability (repeatable), e.g. "
                                                 "CRITICAL or HIGH:CVE-2024-1234; without it the image scans clean"),
             attest: bool = typer.Option(False, "--attest", help="the image gets a Binary Authorization "
                                                                  "attestation"),
             migrate_fail: bool = typer.Option(False, "--migrate-fail", help="its migration job fails "
                                                                             "(MIGRATE_FAIL=1)"),
             smoke_fail: bool = typer.Option(False, "--smoke-fail", help="its /healthz answers 503, so smoke "
                                                                         "checks fail (SMOKE_FAIL=1)"),
             e2e_fail: bool = typer.Option(False, "--e2e-fail", help="its E2E job fails (E2E_FAIL=1)")) -> None:
    """Build a version of the example app locally and publish its Cloud Build messages."""
    from pitstop.local.analysis import vulnerability
    from pitstop.local.build import ship

    if branch is not None and tag is not None:
        _fail("give --branch or --tag, not both: a build runs for one ref")
    if branch == "" or tag == "":
        _fail("--branch and --tag need a name")
    config = _config()
    state = os.environ.get("PITSTOP_LOCAL_STATE")
    if not state or not os.environ.get("PUBSUB_EMULATOR_HOST"):
        _fail("no local stack: start it with `pitstop dev up --detach`")
    malformed = [item for item in env if "=" not in item or not item.split("=", 1)[0]]
    if malformed:
        _fail(f"--env takes NAME=VALUE, got {malformed[0]!r}")
    behaviour = dict(item.split("=", 1) for item in env)
    behaviour.update({name: "1" for name, on in (("MIGRATE_FAIL", migrate_fail), ("SMOKE_FAIL", smoke_fail),
                                                 ("E2E_FAIL", e2e_fail)) if on})
    try:
        findings = [vulnerability(spec, i) for i, spec in enumerate(vuln)]
    except ValueError as e:
        _fail(f"--vuln: {e}")
    build_id = ship(Path(state), config.project, repo, version, behaviour, branch=branch or "main", tag=tag, fail=fail,
                    vulns=vuln, attest=attest)
    ref = f"tag {tag}" if tag else f"branch {branch or 'main'}"
    console.print(f"build {build_id}: {repo} {version} ({ref}) published QUEUED, WORKING, "
                  f"{'FAILURE' if fail else 'SUCCESS'}")
    scanned = ", ".join(f"{f['cve']} ({f['severity']}, {f['package']})" for f in findings) or "clean"
    console.print(f"its scan finds: {scanned}{'; attested' if attest else ''}")


@dev.command("load")
def dev_load(service: str = typer.Argument("web", help="service to send requests to"),
             rps: float = typer.Option(20.0, help="requests per second"),
             seconds: float = typer.Option(60.0, help="how long (Ctrl-C stops earlier)"),
             region: str = typer.Option("us-central1")) -> None:
    """Send steady traffic to a local service, so its canary gets judged; prints what answered."""
    from collections import Counter

    from google.api_core import exceptions

    from pitstop.gcp.cloudrun import CloudRun, service_path
    from pitstop.local.load import Load

    config = _config()
    if not config.run_endpoint:
        _fail("no local stack: start it with `pitstop dev up --detach`")
    try:
        url = CloudRun.from_endpoint(config.run_endpoint).client.get_service(
            name=service_path(config.project, region, service)).uri
    except exceptions.NotFound:
        _fail(f"service {service} does not exist yet: ship a first version with `pitstop dev ship v1`")
    console.print(f"sending {rps:g} requests/s to {service} at {url} for {seconds:g}s …")
    load = Load(url, rps=rps, max_duration_s=seconds).start()
    try:
        while load.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        load.stop()
    answered = Counter((r.version or "-", r.status or 0) for r in load.results())
    for (version, status), count in sorted(answered.items()):
        console.print(f"  {version:<10} HTTP {status or 'none':<5} {count}")


@dev.command("down")
def dev_down() -> None:
    """Stop a local stack started with `pitstop dev up --detach` (or in another terminal)."""
    if not DEV_PID.exists():
        console.print("no local stack is running")
        return
    pid = int(DEV_PID.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _alive(pid):
            _fail(f"the local stack (pid {pid}) did not stop within 60 s; it is still running")
    DEV_PID.unlink(missing_ok=True)
    DEV_ENV.unlink(missing_ok=True)
    console.print("local stack stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie has exited; it only waits to be reaped
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return True


@app.command()
def demo(rps: Optional[float] = typer.Option(None, help="steady load, requests per second (default: 80 over the "
                                                         "release's four places; 50 with --single)"),
         health_lag: Optional[float] = typer.Option(None, "--health-lag", min=0.0, metavar="SECONDS",
                                                    help="Monitoring's ingestion lag (default 1.5 s for the release, "
                                                         "3 s with --single; GCP: up to 180 s)"),
         single: bool = typer.Option(False, "--single", help="one service in one region: v1, v2 promoted through "
                                                             "every canary step, v3 rolled back"),
         checks: bool = typer.Option(True, "--checks/--no-checks", help="the release's checks (scan, migration, "
                                                                        "smoke, E2E) and v4 refused by its scan; "
                                                                        "--no-checks: the waves alone, about a "
                                                                        "minute")) -> None:
    """Run a real release on this machine: staging → three production regions in two waves, then a v3 that
    fails in the second wave rolled back in every region."""
    if single:
        from pitstop.local.demo import run_demo

        raise typer.Exit(run_demo(rps=rps or 50.0, health_lag=3.0 if health_lag is None else health_lag,
                                  console=console))
    from pitstop.local.release_demo import run_release_demo

    raise typer.Exit(run_release_demo(rps=rps or 80.0, console=console,
                                      health_lag=1.5 if health_lag is None else health_lag, checks=checks))


@app.command()
def dashboard(port: int = typer.Option(8765, help="local port (127.0.0.1) to serve the dashboard on"),
              open_browser: bool = typer.Option(False, "--open", help="open it in the browser too")) -> None:
    """Serve the dashboard on 127.0.0.1, as you: a local proxy that adds your ID token to every request to the
    API (like `gcloud run services proxy`). Ctrl-C stops it."""
    from pitstop.surfaces.proxy import start_proxy

    _require_api("the dashboard")
    caller = _caller()
    try:
        server, url = start_proxy(caller.api, port, headers=caller.headers)
    except OSError as e:
        _fail(f"could not listen on 127.0.0.1:{port} ({e.strerror or e}); choose another port with --port")
    console.print(f"the dashboard of {caller.api} is on [bold]{url}[/bold] (as you; Ctrl-C stops it)")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


@app.command()
def package(out_dir: Path = typer.Argument(Path("build/functions"), help="where to write the bundle")) -> None:
    """Build the Cloud Functions source bundle (main.py, pitstop/, requirements.txt)."""
    from pitstop.package import build_bundle

    path = build_bundle(out_dir)
    console.print(f"functions bundle written to {path}")


if __name__ == "__main__":
    app()

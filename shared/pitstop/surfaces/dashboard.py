"""The dashboard: HTML pages the `api` function serves under /dashboard, for the same verified people.

    /dashboard/                        services, releases and rollouts in flight, recent rollouts, DORA summary
    /dashboard/releases/{id}           a release: route, stages, waves, regions, verdicts, charts, audit trail
    /dashboard/rollouts/{id}           a rollout on its own: the same parts, and its measurements per step and metric
    /dashboard/metrics                 DORA metrics per service and environment, 7/30/90 days
    ?action=promote|approve|abort|pause|resume|rollback[&environment=E&region=R]
                                       a confirmation panel; its button POSTs JSON to the API's command route

Every page verifies the caller's token exactly as the API does (`api.Call`): a page is read with
`rollout:read`, and an action shows only to whom its permission is granted (the API decides anyway when
the button is pressed). The pages are server-rendered (Jinja2, templates/); a little JS in them fetches the
page again every few seconds and swaps its live parts. Charts are inline SVG drawn here: no browser
library, nothing fetched from elsewhere.

Reading goes through the engine's store; the sentences, rows and the release story are the API's own
(rows.py, releases.py), so the dashboard and the API never disagree.
"""

from __future__ import annotations

import re
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import flask
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from pitstop.core.actions import release_actions, rollout_actions  # noqa: F401 (the pages' own names)
from pitstop.core.models import DOC_ID, TERMINAL, AuditEvent, Rollout
from pitstop.surfaces.api import ACTIONS, ApiError, Call, _Segment, _unexpected, _where

if TYPE_CHECKING:
    from markupsafe import Markup

    from pitstop.core.release import Release

TEMPLATES = Path(__file__).with_name("templates")
REFRESH_S = 3  # how often the live parts of a page are fetched again
RECENT = 20  # rollouts on the overview
SCAN = 60  # recent rollouts read to find the RECENT the person may read (a refresh reads them again)

PAGES = Map([
    Rule("/dashboard", endpoint="overview"),
    Rule("/dashboard/", endpoint="overview"),
    Rule("/dashboard/releases/<segment:release_id>", endpoint="release"),
    Rule("/dashboard/rollouts/<segment:rollout_id>", endpoint="rollout"),
    Rule("/dashboard/metrics", endpoint="metrics"),
], converters={"segment": _Segment}, strict_slashes=False, merge_slashes=False)


def respond(call: Call) -> flask.Response:
    """One page, or an HTML page saying what failed (never a stack trace)."""
    request = call.request
    try:
        endpoint, args = PAGES.bind_to_environ(request.environ).match(method=request.method)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(valid_methods=["GET"])
        call.who()
        return _html(200, PAGE_HANDLERS[endpoint](call, **args))
    except ApiError as err:
        return _html(err.status, _error_page(err))
    except NotFound:
        return _html(404, _error_page(ApiError("not_found", f"there is no dashboard page {request.path}")))
    except MethodNotAllowed:
        return _html(405, _error_page(ApiError("method_not_allowed", f"dashboard pages are only read (GET); "
                                                                     f"{request.method} changed nothing")))
    except Exception as err:  # noqa: BLE001 - as in the API: every other failure becomes a sentence
        return _html(500, _error_page(_unexpected(request, err)))


# ---------------------------------------------------------------- pages

def overview(call: Call) -> str:
    from pitstop.surfaces.releases import release_row
    from pitstop.surfaces.rows import rollout_row

    store = call.engine.store
    services = sorted((s for s in store.services() if _may_read(call, s["service"], s["environment"])),
                      key=lambda s: (s["service"], s["environment"], s["region"]))
    moving, releases = store.in_flight()
    releases = sorted((r for r in releases if _may_read_release(call, r)), key=lambda r: r.created_at, reverse=True)
    moving = sorted((r for r in moving if not r.release_id and _may_read(call, r.service, r.environment)),
                    key=lambda r: r.created_at, reverse=True)
    recent = [r for r in store.recent(limit=SCAN) if _may_read(call, r.service, r.environment)][:RECENT]
    return render("overview.html", services=services,
                  releases=[{**release_row(r), "stage": _stage_view(r.stage)} for r in releases],
                  live=[_rollout_view(r) for r in moving],
                  recent=[rollout_row(r) for r in recent],
                  # DORA reads 90 days of history, and changes by the day: not again for each refresh.
                  dora=[] if call.request.args.get("live") else _dora(call, window="30d"))


def release(call: Call, release_id: str) -> str:
    from pitstop.core.release import RELEASE_DONE
    from pitstop.surfaces.releases import release_detail, release_rollouts, release_story

    store = call.engine.store
    rel = store.release(release_id) if re.fullmatch(DOC_ID, release_id) else None
    if rel is None or not _may_read_release(call, rel):
        raise ApiError("not_found", f"there is no release {release_id} you may read")
    detail = release_detail(rel)
    rollouts = {r.id: r for r in release_rollouts(store, rel)}
    stages = []
    for row in detail["stages"]:
        if not _may_read(call, rel.service, row["environment"]):
            continue  # a release crosses environments: each is shown to those who may read it
        regions = []
        for region, g in row["regions"].items():
            r = rollouts.get(g["rollout_id"] or "")
            regions.append({"region": region, **g, "rollout": _rollout_view(r, store.events(r.id)) if r else None})
        stages.append({**row, "region_views": regions})
    events, chain = release_story(store, rel)
    events = [e for e in events if e["region"] is None or _may_read(call, rel.service, e["environment"])]
    asked = call.request.args.get("environment")  # an action link's environment, if the release has it
    environment = asked if asked in rel.stages else _where(rel)
    live = rel.state not in RELEASE_DONE
    may = _permissions(call, rel.service, environment)
    return render("release.html", rel=detail, stages=stages, events=events, chain=chain,
                  actions=release_actions(rel.state, rel.stage.state if rel.stage else None, may,
                                          paused=any(g.state == "paused" for g in rel.stage.regions.values())
                                          if rel.stage else False),
                  confirm=_confirmation(call, f"/api/v1/releases/{rel.id}", may, live, release=True))


def rollout(call: Call, rollout_id: str) -> str:
    from pitstop.surfaces.rows import measurement_rows

    store = call.engine.store
    r = store.rollout(rollout_id) if re.fullmatch(DOC_ID, rollout_id) else None
    if r is None or not _may_read(call, r.service, r.environment):
        raise ApiError("not_found", f"there is no rollout {rollout_id} you may read")
    events = store.events(r.id)
    may = _permissions(call, r.service, r.environment)
    live = r.state not in TERMINAL
    windows = measurement_rows(r)
    return render("rollout.html", r=_rollout_view(r, events), events=[_event(e, r) for e in events],
                  measurements=measurement_groups(windows), windows=windows,
                  actions=rollout_actions(r.state, may) if live else [],
                  confirm=_confirmation(call, f"/api/v1/rollouts/{r.id}", may, live, release=False))


def metrics(call: Call) -> str:
    return render("metrics.html", dora=_dora(call))


PAGE_HANDLERS: dict[str, Callable[..., str]] = {
    "overview": overview, "release": release, "rollout": rollout, "metrics": metrics}


# ---------------------------------------------------------------- who may do what (the API's own checks)

def _may_read(call: Call, service: str, environment: str) -> bool:
    return call.may("rollout:read", service, environment) is None


def _may_read_release(call: Call, rel: Release) -> bool:
    return _may_read(call, rel.service, _where(rel))


def _permissions(call: Call, service: str, environment: str) -> Callable[[str], bool]:
    """action -> whether the caller holds its permission here (release promotion is a deployment)."""
    from pitstop.core import access

    return lambda action: call.may(access.PERMISSION_OF_ACTION[action], service, environment) is None


@dataclass
class Confirmation:
    """The panel `?action=` opens: what will be sent where, or why the caller may not."""

    action: str
    url: str
    body: dict[str, str]
    refusal: str | None = None


def _confirmation(call: Call, target: str, may: Callable[[str], bool], live: bool,
                  release: bool) -> Confirmation | None:
    from pitstop.surfaces.api import RELEASE_ACTIONS

    args = call.request.args
    action = args.get("action")
    if not action:
        return None
    body = {k: args[k] for k in ("environment", "region") if release and args.get(k)}
    done = Confirmation(action, f"{target}:{action}", body)
    if action not in (RELEASE_ACTIONS if release else ACTIONS):
        done.refusal = f"there is no action {action!r} here; nothing was sent"
    elif not may(action):
        done.refusal = f"you ({call.who().email}) may not {action} it here; ask someone with the role"
    elif not live:
        done.refusal = f"it has finished; there is nothing to {action}"
    return done


# ---------------------------------------------------------------- views of rollouts and events

def _rollout_view(r: Rollout, events: list[AuditEvent] | None = None) -> dict[str, Any]:
    from pitstop.surfaces.rows import rollout_row

    return {**rollout_row(r), "percent": r.new_percent, "stable_revision": r.stable_revision,
            "release_id": r.release_id, "kind": r.kind,
            "charts": rollout_charts(r, events) if events is not None else None}


def _stage_view(stage: Any) -> dict[str, Any] | None:
    from pitstop.surfaces.releases import step_label

    return {"environment": stage.environment, "state": stage.state, "step": step_label(stage),
            "waiting_for": stage.waiting_for} if stage else None


def _event(e: AuditEvent, r: Rollout) -> dict[str, Any]:
    from pitstop.surfaces.rows import event_row

    return {**event_row(e), "where": f"{r.environment}/{r.region}"}


TRAIL = 12  # outcomes of the latest windows shown per step and metric (as `pitstop status --watch`)


def measurement_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A rollout's measurement history (`rows.measurement_rows`, the API's rows, oldest first) per step and
    metric, in the order first measured: each group's newest window, and its last TRAIL windows (oldest first)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["step"], row["metric"]), []).append(row)
    out, step = [], None
    for (at_step, _), history in groups.items():
        out.append({"latest": history[-1], "trail": history[-TRAIL:], "count": len(history),
                    "first_of_step": at_step != step})
        step = at_step
    return out


def rollout_charts(r: Rollout, events: list[AuditEvent]) -> dict[str, Markup]:
    """Error rate and p99 over the rollout, new revision vs stable, from its audit trail: each health sample's
    event records the revision, requests, errors and p99 it measured, and the stable revision's over the same
    window when the sampler measured it; a `baseline` event is a sample of the stable revision alone.

    Not from `Rollout.measurements`: those keep only the newest windows, have no stable-only baseline samples,
    and the threshold judge records no stable p99 there, so the stable line would thin out or vanish."""
    new: list[tuple[float, float, float | None]] = []
    stable: list[tuple[float, float, float | None]] = []
    for e in events:
        if e.input != "health":
            continue
        when = (e.verdict.window_end if e.verdict else e.at).timestamp()
        for measured in (e.detail, e.detail.get("stable") or {}):
            if not measured.get("requests"):
                continue
            point = (when, measured.get("errors", 0) / measured["requests"] * 100, measured.get("p99_ms"))
            if measured.get("revision") == r.revision:
                new.append(point)
            elif measured.get("revision") and measured.get("revision") == r.stable_revision:
                stable.append(point)
    lines = (("new", new), ("stable", stable))
    return {
        "error_rate": chart_svg([(name, [(t, e) for t, e, _ in pts]) for name, pts in lines],
                                limit=r.health.max_error_rate * 100, unit="%", title="error rate"),
        "p99": chart_svg([(name, [(t, p) for t, _, p in pts if p is not None]) for name, pts in lines],
                         limit=r.health.max_p99_ms, unit=" ms", title="p99 latency"),
    }


def chart_svg(series: list[tuple[str, list[tuple[float, float]]]], limit: float | None = None, unit: str = "",
              title: str = "", width: int = 260, height: int = 70) -> Markup:
    """A small line chart as inline SVG: one polyline per named series (CSS class `line-NAME`), the limit as a
    dashed line, the y axis from 0 to the larger of the highest point and the limit."""
    from markupsafe import Markup, escape

    pad = 4
    points = [p for _, pts in series for p in pts]
    if not points:
        return Markup(f'<svg class="chart empty" width="{width}" height="{height}" role="img" '
                      f'aria-label="{escape(title)}: no samples yet"><text x="{pad}" y="{height // 2}">'
                      f'{escape(title)}: no samples yet</text></svg>')
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    highest = max(v for _, v in points)
    # A limit far above every point would flatten them into the floor: then it is named, not drawn.
    drawn = limit is not None and (limit <= 2 * highest or not highest)
    top = max(highest, limit if drawn else 0) * 1.15 or 1.0

    def x(t: float) -> float:
        return pad + (t - t0) / ((t1 - t0) or 1) * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad - v / top * (height - 2 * pad)

    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', f"<title>{escape(title)}</title>"]
    if drawn:
        parts.append(f'<line class="limit" x1="{pad}" x2="{width - pad}" y1="{y(limit):.1f}" y2="{y(limit):.1f}">'
                     f"<title>limit {_figure(limit)}{unit}</title></line>")
    for name, pts in series:
        if not pts:
            continue
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(pts))
        last = sorted(pts)[-1][1]
        parts.append(f'<polyline class="line-{escape(name)}" data-points="{len(pts)}" points="{coords}">'
                     f"<title>{escape(name)}: latest {_figure(last)}{unit}</title></polyline>")
        parts += [f'<circle class="dot-{escape(name)}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5"/>' for t, v in pts]
    off = "" if drawn or limit is None else f" (limit {_figure(limit)}{unit})"
    parts.append(f'<text x="{pad + 2}" y="{pad + 8}">{escape(title)}</text><text x="{width - pad}" y="{pad + 8}" '
                 f'text-anchor="end">{_figure(top / 1.15)}{unit}{escape(off)}</text></svg>')
    return Markup("".join(parts))


def weeks_svg(weeks: list[dict[str, Any]], title: str = "changes per week", width: int = 260,
              height: int = 70) -> Markup:
    """DORA's weekly series as inline SVG bars: each week's successful changes, its failed ones stacked on top."""
    from markupsafe import Markup, escape

    pad, top = 4, max((w["succeeded"] + w["failed"] for w in weeks), default=0) or 1
    step = (width - 2 * pad) / max(len(weeks), 1)
    parts = [f'<svg class="chart bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, w in enumerate(weeks):
        x, base = pad + i * step, height - pad
        for kind, count in (("succeeded", w["succeeded"]), ("failed", w["failed"])):
            if count:
                tall = count / top * (height - 2 * pad - 10)
                base -= tall
                parts.append(f'<rect class="bar-{kind}" data-week="{escape(w["start"][:10])}" data-{kind}="{count}" '
                             f'x="{x + 1:.1f}" y="{base:.1f}" width="{max(step - 2, 1):.1f}" height="{tall:.1f}">'
                             f'<title>week of {escape(w["start"][:10])}: {count} {kind}</title></rect>')
    parts.append(f'<text x="{pad + 2}" y="{pad + 8}">{escape(title)}</text><text x="{width - pad}" y="{pad + 8}" '
                 f'text-anchor="end">max {top}</text></svg>')
    return Markup("".join(parts))


def _figure(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


# ---------------------------------------------------------------- DORA (surfaces/metrics.py)

DORA_TTL_S = 300  # a report reads up to 90 days of history; it changes by the day, not by the page view
_dora_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, Any]]] = weakref.WeakKeyDictionary()  # per store


def _dora(call: Call, window: str | None = None) -> list[dict[str, Any]]:
    """The DORA report the API serves (kept for DORA_TTL_S per function instance), cut to what the caller may
    read."""
    from pitstop.surfaces.metrics import dora_report

    store, now = call.engine.store, time.monotonic()
    until, report = _dora_cache.get(store, (0.0, {}))
    if until <= now:
        report = dora_report(store)
        _dora_cache[store] = (now + DORA_TTL_S, report)
    return readable_dora(report, lambda s, e: _may_read(call, s, e), window)


def readable_dora(report: dict[str, Any], may_read: Callable[[str, str], bool],
                  window: str | None = None) -> list[dict[str, Any]]:
    """The report's groups (service, environment, windows) that `may_read`, each metric with its figure in
    words; only `window` if given."""
    from pitstop.surfaces.metrics import METRICS, figure

    out = []
    for group in report["services"]:
        if not may_read(group["service"], group["environment"]):
            continue
        windows = {w: {name: {**m, "figure": figure(name, m)} for name, m in metrics.items() if name in dict(METRICS)}
                   for w, metrics in group["windows"].items() if window is None or w == window}
        out.append({**group, "windows": windows, "chart": weeks_svg(group.get("weeks", []))})
    return out


# ---------------------------------------------------------------- rendering

@cache
def _templates() -> Any:
    import jinja2

    from pitstop.core.explain import check_line

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.globals.update(refresh_s=REFRESH_S)
    env.filters.update(when=_when, pct=_pct, check=check_line, metric=_metric, measure=_measure,
                       judged_by=_judged_by, mark=_mark, test_value=_test_value, test_p=_test_p,
                       effect=_effect)
    env.globals.update(dora_metrics=_dora_metrics())
    return env


def _dora_metrics() -> tuple[tuple[str, str], ...]:
    from pitstop.surfaces.metrics import METRICS

    return METRICS


def render(template: str, **context: Any) -> str:
    return _templates().get_template(template).render(**context)


def _when(value: str | datetime | None) -> str:
    if not value:
        return ""
    from datetime import timezone

    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _metric(m: dict[str, Any]) -> str:
    """A measurement's metric: a custom one keeps the spec's name, a built-in one is worded (`error rate`)."""
    from pitstop.core.explain import check_label

    return m["metric"] if m.get("condition") else check_label(m["metric"])


def _measure(m: dict[str, Any], key: str = "value") -> str:
    """A measurement's value (or stable's, `key`) in its metric's unit: `2.0 %`, `450 ms`."""
    from pitstop.core.explain import check_value

    return check_value(m["metric"], m.get(key))


def _judged_by(m: dict[str, Any]) -> str:
    """What judged a measurement: a custom metric's CEL condition, or the limit it was held to."""
    if m.get("condition"):
        return m["condition"]
    return f"limit {_measure(m, 'threshold')}" if m.get("threshold") is not None else "no limit"


def _mark(outcome: str) -> str:
    from pitstop.core.explain import check_mark

    return check_mark({"pass": True, "fail": False}.get(outcome))


def _test_value(t: dict[str, Any]) -> str:
    """A statistical test's statistic in its own terms (core/stats.py `Result.statistic`)."""
    from pitstop.core.explain import check_value

    value, statistic = t.get("value"), t.get("statistic")
    if value is None:
        return "n/a"
    if statistic == "error rate":
        return check_value("error_rate", value)
    if statistic == "p99 ms":
        return check_value("latency_p99_ms", value)
    return f"{value:.4f}" if statistic == "P(worse)" else f"{value:.2f}"  # a probability, or z


def _test_p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _effect(t: dict[str, Any]) -> str:
    """The effect size: the canary's error rate as a multiple of stable's (beta-binomial), the share of request
    pairs in which the canary is slower (Mann–Whitney); hard limits have none."""
    effect = t.get("effect")
    if effect is None:
        return "—"
    if t.get("test") == "beta-binomial":
        return f"×{effect:.2g}"
    if t.get("test") == "mann-whitney":
        return f"slower in {effect:.1%} of pairs"
    return f"{effect:.3g}"


def _error_page(err: ApiError) -> str:
    how = None
    if err.code == "unauthenticated":
        how = ("The dashboard is read as a verified person, like the API. Open it through `pitstop dashboard`, "
               "which serves it on http://127.0.0.1:8765/dashboard/ and adds your ID token to every request "
               "(locally: after `pitstop dev up`; on GCP: signed in with gcloud).")
    return render("error.html", code=err.code, message=err.message, how=how)


def _html(status: int, body: str) -> flask.Response:
    response = flask.Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    # Nothing is loaded from elsewhere, and the page is never framed by another site.
    response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                   "script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' "
                                                   "data:; frame-ancestors 'none'; form-action 'none'")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="pitstop"'
    return response

"""The dashboard's pure parts: charts from a rollout's audit trail, which actions a role sees, and the pages
rendered from fake data through the API's own entry (`api.respond`), with a fake engine (store, tokens,
grants). The browser test (tests/e2e/test_dashboard.py) runs them on the local stack."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import flask
import pytest

from pitstop.core.models import AuditEvent, Rollout, Verdict
from pitstop.gcp.identity import Identity, Unverified
from pitstop.surfaces import api, dashboard

# A day ago: the DORA windows (7, 30, 90 days) count back from the real clock the page reads.
T0 = (datetime.now(timezone.utc) - timedelta(days=1)).replace(microsecond=0)
ADMIN, VIEWER, STRANGER = "admin@example.com", "vera@example.com", "eve@elsewhere.org"


def rollout(state: str = "progressing", percent: int = 25, revision: str = "web-v3", **extra) -> Rollout:
    return Rollout.model_validate({
        "id": "web-production-us-central1-v3", "service": "web", "environment": "production",
        "region": "us-central1", "project": "p", "kind": "canary", "version": "v3", "revision": revision,
        "image": "us-docker.pkg.dev/p/apps/web@sha256:" + "0" * 64, "max_hold": 3600, "state": state,
        "strategy": {"canary": {"steps": [{"weight": 10, "pause": 60}, {"weight": 25, "pause": 60}]}},
        "health": {"max_error_rate": 0.05, "max_p99_ms": 1000}, "step": 1,
        "stable_revision": "web-v2", "stable_version": "v2",
        "desired": [{"revision": "web-v2", "percent": 100 - percent}, {"revision": revision, "percent": percent}],
        "desired_at": T0, "created_at": T0, "updated_at": T0, **extra})


def sample_event(n: int, revision: str, requests: int, errors: int, p99: float, decision: str = "judged") -> AuditEvent:
    return AuditEvent(id=f"e{n}-{revision}", at=T0 + timedelta(seconds=10 * n), input="health", actor="sampler",
                      decision=decision, reasons=[], state_after="progressing",
                      detail={"revision": revision, "requests": requests, "errors": errors, "p99_ms": p99})


FAILING = Verdict(outcome="fail", rule="error rate 30.0% is above the 5.0% limit", revision="web-v3",
                  window_start=T0, window_end=T0 + timedelta(seconds=30), request_count=40, source="monitoring",
                  checks=[{"name": "error_rate", "measured": 0.3, "threshold": 0.05, "passed": False},
                          {"name": "latency_p99_ms", "measured": 45.0, "threshold": 1000, "passed": True}])


# ---------------------------------------------------------------- charts

def test_a_chart_draws_each_series_scaled_under_its_limit():
    svg = str(dashboard.chart_svg([("new", [(0, 1.0), (10, 4.0), (20, 2.0)]), ("stable", [(0, 1.0)])],
                                  limit=5.0, unit="%", title="error rate"))
    assert "error rate" in svg
    new = re.search(r'class="line-new" data-points="3" points="([^"]+)"', svg).group(1)
    ys = [float(p.split(",")[1]) for p in new.split()]
    assert ys[1] < ys[2] < ys[0]  # SVG's y grows downwards: 4 % is drawn highest
    assert 'class="line-stable" data-points="1"' in svg
    limit_y = float(re.search(r'class="limit" x1="[^"]+" x2="[^"]+" y1="([^"]+)"', svg).group(1))
    assert limit_y < min(ys)  # the limit is the highest value here, so its line is above every point


def test_a_chart_without_samples_says_so():
    svg = str(dashboard.chart_svg([("new", []), ("stable", [])], title="p99 latency"))
    assert "no samples yet" in svg and "polyline" not in svg


def test_the_charts_come_from_the_health_events_new_vs_stable():
    events = [sample_event(1, "web-v3", 100, 2, 40), sample_event(2, "web-v2", 200, 0, 35, "baseline"),
              sample_event(3, "web-v3", 100, 30, 60), sample_event(4, "web-other", 50, 50, 10),
              AuditEvent(id="tick", at=T0, input="tick", actor="scheduler", decision="held", reasons=[],
                         state_after="progressing")]
    charts = dashboard.rollout_charts(rollout(), events)
    assert 'class="line-new" data-points="2"' in str(charts["error_rate"])
    assert 'class="line-stable" data-points="1"' in str(charts["error_rate"])
    assert "latest 30%" in str(charts["error_rate"])  # 30 errors in 100 requests, in percent
    assert "latest 60 ms" in str(charts["p99"])


# ---------------------------------------------------------------- who sees which actions

def test_a_viewer_sees_no_action_and_an_operator_only_what_the_state_accepts():
    assert dashboard.rollout_actions("progressing", lambda action: False) == []
    operator = lambda action: action != "approve"  # noqa: E731
    assert dashboard.rollout_actions("progressing", operator) == ["promote", "pause", "abort", "rollback"]
    assert dashboard.rollout_actions("paused", operator) == ["promote", "resume", "abort", "rollback"]
    assert "approve" not in dashboard.rollout_actions("awaiting_approval", operator)
    assert "approve" in dashboard.rollout_actions("awaiting_approval", lambda action: True)
    assert dashboard.rollout_actions("rolled_back", lambda action: True) == []
    assert dashboard.release_actions("succeeded", None, lambda action: True) == []
    assert dashboard.release_actions("waiting", "awaiting_approval", lambda a: a == "approve") == ["approve"]
    assert dashboard.release_actions("running", "running", lambda a: True) == ["promote", "pause", "abort", "rollback"]
    assert "resume" in dashboard.release_actions("running", "running", lambda a: True, paused=True)


# ---------------------------------------------------------------- pages, through the API's entry

class FakeStore:
    def __init__(self, rollouts: list[Rollout], events: dict[str, list[AuditEvent]]) -> None:
        self._rollouts, self._events = {r.id: r for r in rollouts}, events

    def rollout(self, rollout_id):
        return self._rollouts.get(rollout_id)

    def events(self, rollout_id):
        return self._events.get(rollout_id, [])

    def recent(self, service=None, limit=20):
        return list(self._rollouts.values())[:limit]

    def releases(self, service=None, limit=20):
        return []

    def in_flight(self):
        from pitstop.core.models import TERMINAL

        return [r for r in self._rollouts.values() if r.state not in TERMINAL], []

    def history_since(self, since, service=None):  # what DORA reads: rollouts, releases, truncated
        return list(self._rollouts.values()), [], False

    def services(self):
        return [{"service": "web", "environment": "production", "region": "us-central1", "stable_version": "v2",
                 "stable_revision": "web-v2", "last_rollout": r.id, "last_version": r.version,
                 "last_state": r.state} for r in self._rollouts.values()]


class FakeEngine:
    """Tokens are the email itself; admin holds every role, vera@example.com reads, anyone else nothing."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def identify(self, token):
        if not token:
            raise Unverified("the request carries no ID token")
        return Identity(email=token, subject="1", issuer="test", audience="pitstop", expires_at=T0)

    def authorize(self, email, permission, service, environment, hosted_domain=None):
        from pitstop.core.access import Denial

        if email == ADMIN or (email == VIEWER and permission == "rollout:read"):
            return None
        return Denial(permission, f"{email} lacks permission {permission}")


def serve(store: FakeStore):
    """GET a path as someone (a token) through the API's entry; the response."""
    app = flask.Flask(__name__)

    def get(path: str, who: str | None) -> flask.Response:
        with app.test_request_context(path, headers={"X-Pitstop-Token": who} if who else {}):
            return api.respond(flask.request, lambda: FakeEngine(store))

    return get


@pytest.fixture
def page():
    failed = rollout("rolled_back", 0, verdict=FAILING.model_dump(), message="rolled back: " + FAILING.rule)
    live = rollout(id="web-production-us-central1-v4", version="v4", revision="web-v4")
    return serve(FakeStore([live, failed], {failed.id: [sample_event(1, "web-v3", 100, 30, 60)]}))


def test_the_overview_shows_the_live_split_and_the_services(page):
    response = page("/dashboard/", VIEWER)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert 'data-split="us-central1" data-percent="25"' in html  # v4 in flight at 25 %
    assert "/dashboard/rollouts/web-production-us-central1-v4" in html
    assert "v2" in html and "DORA" in html


def test_a_rolled_back_rollout_shows_its_reason_and_the_verdict_values(page):
    html = page("/dashboard/rollouts/web-production-us-central1-v3", VIEWER).get_data(as_text=True)
    reason = re.search(r"<div class=\"reason\" data-reason>(.*?)</div>", html, re.S).group(1)
    assert "error rate 30.0% is above the 5.0% limit" in reason
    assert "30.0 % &gt; limit 5.0 %" in html and "✗" in html  # measured vs threshold, failed
    assert 'class="line-new" data-points="1"' in html


def test_actions_show_only_to_roles_that_may_take_them(page):
    path = "/dashboard/rollouts/web-production-us-central1-v4"
    assert "data-action=" not in page(path, VIEWER).get_data(as_text=True)
    admin = page(path, ADMIN).get_data(as_text=True)
    assert {"promote", "pause", "abort", "rollback"} <= set(re.findall(r'data-action="(\w+)"', admin))


def test_an_action_opens_a_confirmation_that_posts_json_to_the_api(page):
    html = page("/dashboard/rollouts/web-production-us-central1-v4?action=promote", ADMIN).get_data(as_text=True)
    assert 'id="confirm-send" data-url="/api/v1/rollouts/web-production-us-central1-v4:promote"' in html
    refused = page("/dashboard/rollouts/web-production-us-central1-v4?action=promote", VIEWER).get_data(as_text=True)
    assert 'id="confirm-send"' not in refused and "may not promote" in refused


def test_without_a_token_the_page_says_how_to_open_the_dashboard(page):
    response = page("/dashboard/", None)
    assert response.status_code == 401 and response.mimetype == "text/html"
    assert "pitstop dashboard" in response.get_data(as_text=True)


def test_a_rollout_one_may_not_read_looks_like_one_that_does_not_exist(page):
    hidden = page("/dashboard/rollouts/web-production-us-central1-v4", STRANGER)
    missing = page("/dashboard/rollouts/nothing-here", STRANGER)
    assert hidden.status_code == missing.status_code == 404
    assert "web-production-us-central1-v4" in hidden.get_data(as_text=True)  # only the id the person typed
    assert "v4" not in hidden.get_data(as_text=True).replace("web-production-us-central1-v4", "")


def test_the_metrics_page_shows_each_dora_metric_per_window_with_its_band(page):
    html = page("/dashboard/metrics", VIEWER).get_data(as_text=True)
    assert 'data-dora="web/production"' in html
    for window in ("7d", "30d", "90d"):
        cell = re.search(rf'data-metric="change_failure_rate" data-window="{window}">(.*?)</td>', html, re.S).group(1)
        assert 'class="band band-' in cell and "%" in cell  # v3 rolled back: a failure rate, with its band
    # The weekly chart's bars add up to the 90-day window's failures (13 weeks hold those 90 days).
    chart = html[html.index('data-dora-chart="web/production"'):html.index('data-dora="web/production"')]
    failed = sum(map(int, re.findall(r'data-failed="(\d+)"', chart)))
    assert failed >= 1 and f"({failed} of " in cell  # `cell` is the 90-day one, the loop's last
    assert "/dashboard/metrics" in page("/dashboard/", ADMIN).get_data(as_text=True)


def test_dora_shows_only_what_the_caller_may_read():
    report = {"services": [{"service": s, "environment": "production", "windows": {"30d": {
        "deployment_frequency": {"value": 2.0, "per_week": 14.0, "samples": 60, "unit": "per day", "band": "elite"}}}}
        for s in ("web", "secret")]}
    shown = dashboard.readable_dora(report, lambda service, environment: service == "web")
    assert [g["service"] for g in shown] == ["web"]
    assert shown[0]["windows"]["30d"]["deployment_frequency"]["figure"].startswith("2.00/day")


def test_a_limit_far_above_the_points_is_named_rather_than_drawn():
    svg = str(dashboard.chart_svg([("new", [(0, 100.0), (10, 130.0)])], limit=2000, unit=" ms", title="p99"))
    assert 'class="limit"' not in svg and "(limit 2000 ms)" in svg


def test_the_stable_revision_measured_beside_a_sample_is_charted_too():
    event = sample_event(1, "web-v3", 100, 0, 50)
    event.detail["stable"] = {"revision": "web-v2", "requests": 300, "errors": 3, "p99_ms": 45}
    charts = dashboard.rollout_charts(rollout(), [event])
    assert 'class="line-stable" data-points="1"' in str(charts["p99"]) and "latest 1%" in str(charts["error_rate"])


def test_a_release_page_shows_each_stage_its_waves_and_a_split_per_region(monkeypatch):
    from types import SimpleNamespace

    from release_world import World

    from pitstop.surfaces import releases

    w = World()  # v2 through staging, then production's first wave (us-central1) at 5 %
    w.build("v2", branch="main")
    w.wait(120)
    w.build("v2", branch=None, tag="v2")
    w.command("approve", actor="ana@example.com")
    w.wait(20)
    rel = w.release
    store = FakeStore(list(w.rollouts.values()), {})
    store.release = lambda release_id: rel if release_id == rel.id else None
    store.releases = lambda service=None, limit=20: [rel]
    store.in_flight = lambda: ([], [rel])
    monkeypatch.setattr(releases, "release_rollouts", lambda store, r: list(w.rollouts.values()))
    monkeypatch.setattr(releases, "release_story", lambda store, r: (
        releases.timeline(w.audit, []), SimpleNamespace(ok=True, problems=[])))
    app = flask.Flask(__name__)
    with app.test_request_context(f"/dashboard/releases/{rel.id}?action=approve&environment=production",
                                  headers={"X-Pitstop-Token": ADMIN}):
        html = api.respond(flask.request, lambda: FakeEngine(store)).get_data(as_text=True)
    production = html[html.index('data-stage="production"'):]
    assert 'data-split="us-central1" data-percent="5"' in production
    assert 'data-split="europe-west1" data-percent="0"' in production  # wave 2, not started
    assert 'data-stage="staging"' in html and "release" in html
    assert f'data-url="/api/v1/releases/{rel.id}:approve"' in html
    assert "&#34;environment&#34;: &#34;production&#34;" in html  # what the button sends, as JSON
    with app.test_request_context("/dashboard/", headers={"X-Pitstop-Token": VIEWER}):
        overview = api.respond(flask.request, lambda: FakeEngine(store)).get_data(as_text=True)
    assert f"/dashboard/releases/{rel.id}" in overview and 'data-percent="5"' in overview


def test_an_action_on_a_finished_rollout_says_there_is_nothing_to_do(page):
    html = page("/dashboard/rollouts/web-production-us-central1-v3?action=abort", ADMIN).get_data(as_text=True)
    assert 'id="confirm-send"' not in html and "it has finished; there is nothing to abort" in html


def test_a_refresh_of_the_overview_skips_dora(page):
    assert 'data-dora="web/production"' in page("/dashboard/", VIEWER).get_data(as_text=True)
    refreshed = page("/dashboard/?live=1", VIEWER).get_data(as_text=True)
    assert 'data-dora=' not in refreshed and 'data-percent="25"' in refreshed


# ---------------------------------------------------------------- measurements and the statistical tests

CONDITION = "canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min"
STATISTICAL = Verdict(
    outcome="fail", rule="error rate 9.0% vs stable 1.0% (×9): P(worse) = 0.9991 ≥ 0.99 → fail", revision="web-v3",
    window_start=T0 + timedelta(seconds=60), window_end=T0 + timedelta(seconds=120), request_count=400,
    source="monitoring", on_fail="rollback",
    checks=[{"name": "error_rate", "measured": 0.09, "threshold": 0.05, "passed": False, "stable": 0.01},
            {"name": "checkouts_per_min", "measured": 12.0, "threshold": None, "passed": False, "stable": 40.0,
             "condition": CONDITION, "dry_run": True}],
    tests=[{"test": "max_error_rate", "statistic": "error rate", "value": 0.09, "p": 0.8123, "confidence": 0.99,
            "effect": None, "decision": "inconclusive", "sentence": "error rate 9.0%: P(above the hard limit) < 0.99"},
           {"test": "beta-binomial", "statistic": "P(worse)", "value": 0.99913, "p": 0.99913, "confidence": 0.99,
            "effect": 9.0, "decision": "fail", "sentence": "P(canary worse by > 40% + 0.05 pt) = 0.9991 ≥ 0.99"},
           {"test": "mann-whitney", "statistic": "z", "value": 1.234, "p": 0.1086, "confidence": 0.99,
            "effect": 0.537, "decision": "inconclusive", "sentence": "latency: allowed 60%"}],
    dry_run=[f"checkouts_per_min 12 vs stable 40: `{CONDITION}` does not hold"])


def measurement(seconds: int, step: int, metric: str, value: float, outcome: str, **extra) -> dict:
    return {"at": T0 + timedelta(seconds=seconds), "step": step, "metric": metric, "value": value,
            "outcome": outcome, "source": "monitoring", **extra}


MEASUREMENTS = [
    measurement(30, 0, "error_rate", 0.012, "pass", stable=0.01, threshold=0.05),
    measurement(30, 0, "latency_p99_ms", 310.0, "pass", stable=290.0, threshold=1000),
    measurement(60, 1, "error_rate", 0.02, "pass", stable=0.01, threshold=0.05),
    measurement(90, 1, "error_rate", 0.03, "inconclusive", stable=0.01, threshold=0.05),
    measurement(120, 1, "error_rate", 0.09, "fail", stable=0.01, threshold=0.05),
    measurement(120, 1, "checkouts_per_min", 12.0, "fail", stable=40.0, condition=CONDITION, dry_run=True),
]


@pytest.fixture
def judged():
    r = rollout("rolled_back", 0, verdict=STATISTICAL.model_dump(), measurements=MEASUREMENTS,
                message="rolled back: " + STATISTICAL.rule)
    html = serve(FakeStore([r], {}))(f"/dashboard/rollouts/{r.id}", VIEWER).get_data(as_text=True)
    return html


def cells(html: str, marker: str) -> list[str]:
    """The text of each cell of the table row marked `marker` (an attribute), tags stripped."""
    row = re.search(rf"<tr {marker}[^>]*>(.*?)</tr>", html, re.S).group(1)
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_the_measurements_show_each_step_and_metric_newest_with_its_limit(judged):
    section = judged[judged.index("<section data-measurements>"):judged.index("Audit trail")]
    step1 = cells(section, 'data-measurement="1/error_rate"')
    # step, metric, value, stable, judged by, outcome, marks of the latest windows, source, at
    assert step1[:6] == ["2 (25%)", "error rate", "9.0 %", "1.0 %", "limit 5.0 %", "✗ fail"]
    assert re.sub(r"\s+", "", step1[6]) == "✓?✗"  # its three windows, oldest first
    assert step1[7:] == ["monitoring", dashboard._when(T0 + timedelta(seconds=120))]
    step0 = cells(section, 'data-measurement="0/latency_p99_ms"')
    assert step0[:6] == ["1 (10%)", "latency p99", "310 ms", "290 ms", "limit 1000 ms", "✓ pass"]
    # In the order measured: step 1's rows after step 0's, the first of each step set apart.
    order = re.findall(r'data-measurement="([^"]+)" class="([^"]*)"', section)
    assert [o for o, _ in order] == ["0/error_rate", "0/latency_p99_ms", "1/error_rate", "1/checkouts_per_min"]
    assert [o for o, c in order if "step-start" in c] == ["0/error_rate", "1/error_rate"]
    # Every window, folded underneath: all six, the passing 2.0 % one too.
    windows = section[section.index('<details id="measurement-windows">'):]
    assert "every window (6)" in windows and windows.count("<tr") == 7 and "2.0 %" in windows


def test_a_dry_run_measurement_shows_its_condition_and_that_it_did_not_act(judged):
    custom = cells(judged, 'data-measurement="1/checkouts_per_min"')
    assert custom[1:4] == ["checkouts_per_min", "12", "40"]  # a custom metric keeps the spec's name
    assert custom[4] == CONDITION.replace(">", "&gt;")
    assert custom[5] == "✗ fail (dry run: no action)"
    row = re.search(r'<tr data-measurement="1/checkouts_per_min" class="([^"]*)"', judged).group(1)
    assert "dry-run" in row.split()
    assert "dry-run" not in re.search(r'<tr data-measurement="1/error_rate" class="([^"]*)"', judged).group(1)


def test_the_latest_verdict_shows_its_statistical_tests_and_dry_run_sentences(judged):
    assert cells(judged, 'data-test="beta-binomial"')[:7] == [
        "beta-binomial", "P(worse)", "0.9991", "0.9991", "0.99", "×9", "fail"]
    assert cells(judged, 'data-test="mann-whitney"')[:7] == [
        "mann-whitney", "z", "1.23", "0.1086", "0.99", "slower in 53.7% of pairs", "inconclusive"]
    limit = cells(judged, 'data-test="max_error_rate"')
    assert limit[2] == "9.0 %" and limit[5] == "—" and "P(above the hard limit) &lt; 0.99" in limit[7]
    dry = re.findall(r"<div class=\"dry-run\" data-dry-run>(.*?)</div>", judged, re.S)
    assert len(dry) == 1 and "no action" in dry[0] and "does not hold" in dry[0] and "checkouts_per_min 12" in dry[0]
    # The verdict's checks: a limit's value against it, a condition's value vs stable's and the condition.
    assert cells(judged, 'data-check="error_rate"') == ["error rate 9.0 % &gt; limit 5.0 % ✗"]
    assert cells(judged, 'data-check="checkouts_per_min"') == [
        f"checkouts per min 12 vs stable 40: {CONDITION.replace('>', '&gt;')} ✗ (dry run)"]


def test_a_rollout_without_measurements_or_tests_says_so(page):
    html = page("/dashboard/rollouts/web-production-us-central1-v3", VIEWER).get_data(as_text=True)
    assert "no measurements yet" in html and "data-measurement=" not in html
    assert " data-tests>" not in html and " data-dry-run>" not in html  # FAILING is a threshold verdict

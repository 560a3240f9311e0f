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


@pytest.fixture
def page():
    failed = rollout("rolled_back", 0, verdict=FAILING.model_dump(), message="rolled back: " + FAILING.rule)
    live = rollout(id="web-production-us-central1-v4", version="v4", revision="web-v4")
    store = FakeStore([live, failed], {failed.id: [sample_event(1, "web-v3", 100, 30, 60)]})
    app = flask.Flask(__name__)

    def get(path: str, who: str | None) -> flask.Response:
        with app.test_request_context(path, headers={"X-Pitstop-Token": who} if who else {}):
            return api.respond(flask.request, lambda: FakeEngine(store))

    return get


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

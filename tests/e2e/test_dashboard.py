"""The dashboard in a real browser (headless Chromium) on the whole local stack, through `pitstop dashboard`'s
proxy (`start_proxy`), as two people: the admin at this laptop and a viewer.

Under load, v2's canary advances and the split on its page follows by itself (the page's live refresh,
read from the DOM's data-percent); then v3 (30 % of its requests fail) is rolled back and its page shows
why. The viewer sees the same pages without a single action. A screenshot of v2's page mid-rollout is
kept as docs/images/dashboard.png (the README shows it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser import chromium

from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.build import ship
from pitstop.local.demo import BAD, HEALTHY, service_uri
from pitstop.local.load import Load
from pitstop.local.stack import Stack, wait_for
from pitstop.surfaces.proxy import start_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.emulators]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
VIEWER = "vera@example.com"  # a viewer by the spec's `domain:example.com` (her token's hd says example.com)
# Short steps, so the whole file stays well under a minute and a half.
SPEC = """\
service: web
regions: [us-central1]
environment: production
match: {repo: web, branch: main}
strategy:
  canary:
    steps: [{weight: 20, pause: 3s}, {weight: 50, pause: 3s}]
health: {min_requests: 10, max_error_rate: 0.05, max_p99_ms: 2000, max_latency_increase: 0.5,
         min_latency_increase_ms: 200, interval: 2s, no_data_timeout: 30s}
triggers: [build-web]
access:
  viewer: ["domain:example.com"]
"""
SPLITS = "return Array.from(document.querySelectorAll('#live-rollout [data-split]')).map(e => +e.dataset.percent)"


@pytest.fixture(scope="module")
def world(emulators, tmp_path_factory):
    from datetime import datetime, timezone

    from pitstop.local.emulators import wipe_firestore

    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("dashboard"), emulators=emulators, tick_interval=0.5,
               health_lag=1.5) as stack:
        store = Store.from_env(stack.project)
        store.put_spec(load_spec(SPEC), "test", datetime.now(timezone.utc))
        admin, admin_url = start_proxy(stack.api_url, headers=lambda: {"X-Pitstop-Token": stack.token()})
        viewer, viewer_url = start_proxy(stack.api_url, headers=lambda: {"X-Pitstop-Token": stack.token(VIEWER)})
        try:
            wait_for_rollout(stack, store, ship(stack.state_dir, stack.project, "web", "v1", env=HEALTHY),
                             "succeeded")
            with chromium() as browser, Load(service_uri(stack), 40, max_duration_s=240):
                yield stack, store, browser, admin_url, viewer_url
        finally:
            admin.shutdown()
            viewer.shutdown()
    wipe_firestore(emulators.firestore.host, emulators.project)


def wait_for_rollout(stack, store, build_id, state=None, timeout=90):
    def found():
        r = next((r for r in store.recent("web", 5) if r.artifact and r.artifact.build_id == build_id), None)
        return r if r and (state is None or r.state == state) else None

    return wait_for(f"the rollout of build {build_id}" + (f" to reach {state}" if state else ""), found, timeout)


def test_the_split_on_the_page_follows_the_canary_and_only_the_admin_sees_actions(world):
    stack, store, browser, admin_url, viewer_url = world
    r = wait_for_rollout(stack, store, ship(stack.state_dir, stack.project, "web", "v2", env=HEALTHY))
    page = admin_url + f"rollouts/{r.id}"
    browser.get(page)
    actions = {e.get_attribute("data-action") for e in browser.find_elements("css selector", "[data-action]")}
    assert {"pause", "promote", "abort", "rollback"} <= actions, actions  # the admin, while it runs
    wait_for("v2 to progress", lambda: store.rollout(r.id).state == "progressing", 30)
    for action, state in (("pause", "paused"), ("resume", "progressing")):  # the buttons go through the API
        press(browser, page, action)
        assert store.rollout(r.id).state == state
    browser.get(page)

    seen: list[int] = []  # the new revision's share as the page shows it, each change once
    taken = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not seen or seen[-1] != 100):
        shown = browser.execute_script(SPLITS)  # the live part is swapped in place: never reloaded here
        if shown and (not seen or shown[0] != seen[-1]):
            seen.append(shown[0])
            if 0 < shown[0] < 100 and not taken or shown[0] == 50:  # mid-rollout, at 50 % if the page shows it
                screenshot(browser)
                taken = True
        time.sleep(0.2)
    assert seen and seen[-1] == 100, f"the page showed {seen}; the rollout is {store.rollout(r.id).state}"
    assert len({p for p in seen if 0 < p < 100}) >= 1 and seen == sorted(seen), seen  # it advanced, never back
    assert len(set(seen)) >= 2, seen
    assert taken

    browser.get(viewer_url + f"rollouts/{r.id}")  # the same page for a viewer: read-only
    assert browser.find_elements("css selector", "[data-split]")
    assert browser.find_elements("css selector", "[data-action]") == []
    browser.get(viewer_url + f"rollouts/{r.id}?action=rollback")  # even by hand: no button, a sentence
    assert browser.find_elements("id", "confirm-send") == []
    assert "may not rollback" in browser.find_element("id", "confirm").text


def test_a_rollback_shows_its_reason_on_the_page(world):
    stack, store, browser, _, viewer_url = world
    wait_for("v2 to succeed", lambda: store.recent("web", 1)[0].state == "succeeded", 60)
    r = wait_for_rollout(stack, store, ship(stack.state_dir, stack.project, "web", "v3", env=BAD))
    browser.get(viewer_url + f"rollouts/{r.id}")
    # The live refresh brings the reason in when the judge rolls v3 back.
    reason = wait_for("the page to show why v3 was rolled back",
                      lambda: next((e.text for e in browser.find_elements("css selector", "[data-reason]")), None),
                      timeout=60)
    rolled_back = store.rollout(r.id)
    assert rolled_back.state == "rolled_back"
    assert rolled_back.verdict.rule in reason and "5.0% limit" in reason, reason  # the judge's sentence
    assert browser.execute_script(SPLITS) == [0]
    browser.get(viewer_url)  # the overview: v2 stable, v3 rolled back in the recent rollouts
    text = browser.find_element("tag name", "main").text
    assert "v2" in text and "rolled back" in text


def press(browser, page: str, action: str) -> None:
    """Open the action's confirmation panel and press its button; wait for the API's answer on the page."""
    browser.get(f"{page}?action={action}")
    browser.find_element("id", "confirm-send").click()

    def answered():
        text = browser.find_element("id", "confirm-result").text
        return text if text and "…" not in text else None

    result = wait_for(f"the answer to {action}", answered, 20)
    assert result.startswith("done:"), result


def screenshot(browser) -> None:
    """The whole page, not only the window."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 700), 2400))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

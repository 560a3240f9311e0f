"""Notifications end to end on the local stack: a release's events reach Slack-, Chat- and webhook-shaped
receivers (the local HTTP sink) and an SMTP relay (the local SMTP sink) through the real `on_event` function
behind a Pub/Sub push, with secrets from the stack's secrets file. One release that succeeds, one whose canary
fails its health check and rolls back; a redelivered event, a flaky and a broken sink, a bad event."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

import blockkit

from pitstop.core import notify

from pitstop.core.pipeline import load_pipeline
from pitstop.core.release import release_id
from pitstop.gcp.store import Store
from pitstop.local.build import build_image, ship
from pitstop.local.emulators import wipe_firestore
from pitstop.local.payloads import health_sample
from pitstop.local.stack import Stack, wait_for
from pitstop.surfaces.notifications import ATTEMPTS, delivery_id

pytestmark = pytest.mark.emulators
SERVICE = "bell"
PROBE = "probe@pitstop-test.iam.gserviceaccount.com"
KEY = "local-signing-key"  # the stack's demo-webhook secret
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PIPELINE = f"""
service: {SERVICE}
environments:
  staging:
    project: pitstop-staging
    regions: [us-central1]
    on: {{branch: main}}
    strategy: {{canary: {{steps: [{{weight: 50, pause: 1s}}]}}}}
    health: {{min_requests: 20, interval: 1s, sources: ['serviceAccount:{PROBE}']}}
notify:
  - {{name: slack, type: slack, secret: demo-slack-hook}}
  - {{name: chat, type: chat, secret: demo-chat-hook}}
  - {{name: hook, type: webhook, secret: demo-webhook}}
  - {{name: mail, type: email, secret: demo-smtp, to: [oncall@example.com], from: pitstop@example.com,
     events: [rolled_back]}}
  - {{name: bot, type: slack, secret: slack-bot, channel: "#deploys"}}
  - {{name: flaky, type: webhook, secret: flaky-webhook, events: [rolled_back]}}
  - {{name: broken, type: webhook, secret: broken-webhook, events: [rolled_back]}}
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("stack"), emulators=emulators, tick_interval=0.5) as running:
        # Two more sinks in Secret Manager's stand-in: one fails twice, one always.
        secrets = yaml.safe_load(running.secrets_file.read_text())
        secrets["flaky-webhook"] = {"url": f"{running.sinks.url}/flaky?fail=2", "key": KEY}
        secrets["broken-webhook"] = {"url": f"{running.sinks.url}/fail/broken", "key": KEY}
        secrets["slack-bot"] = "xoxb-local-token"  # a bot token: chat.postMessage, threads per release
        running.secrets_file.write_text(yaml.safe_dump(secrets))
        Store.from_env(running.project).put_pipeline(load_pipeline(PIPELINE), "test", datetime.now(timezone.utc))
        yield running
    print(f"--- on_event\n{Path(running.functions['on_event'].log_path).read_text()[-4000:]}")


@pytest.fixture(scope="module")
def store(stack) -> Store:
    return Store.from_env(stack.project)


def release_to(stack: Stack, store: Store, version: str, healthy: bool, state: str):
    """Build `version` of main and probe its canary (healthy or failing) until the release is `state`."""
    ship(stack.state_dir, stack.project, SERVICE, version, branch="main")
    _, digest = build_image(stack.state_dir, stack.project, SERVICE, version)
    rid = release_id(SERVICE, digest)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rel = store.release(rid)
        if rel is not None and rel.state == state:
            return rel
        for g in (rel.stage.regions.values() if rel and rel.stage else []):
            r = store.rollout(g.rollout_id) if g.rollout_id else None
            if r is None or r.state not in ("progressing", "baking", "verifying") or not r.step_started_at:
                continue
            start, now = r.judged_until or r.step_started_at, datetime.now(timezone.utc)
            sample = health_sample(SERVICE, r.revision, start, max(now, start + timedelta(milliseconds=10)), 100,
                                   0 if healthy else 60, 80.0, source="probe", region=r.region)
            stack.publish("pitstop-health", {**sample, "rollout_id": r.id, "id_token": stack.token(PROBE)})
        time.sleep(0.4)
    raise AssertionError(f"release {rid} of {version} is {rel.state if rel else None}, not {state}")


def bodies(stack: Stack, path: str) -> list[dict]:
    return [r.json for r in stack.sinks.at(path) if r.status == 200]


def about(event: dict):
    """Is this Slack or Chat message about `event` (its headline: what, which version, where)?"""
    title = notify.headline(event)
    return lambda body: body.get("text") == title or str(body.get("text", "")).startswith(title + ":")


def event_of(stack: Stack, reason: str) -> dict:
    """The event with this reason code as the webhook received it (the event itself, plus `type` and `links`)."""
    return wait_for(f"a {reason} event at the webhook", lambda: next(
        (b for b in bodies(stack, "/webhook/demo") if b.get("reason") == reason), None), timeout=30)


@pytest.fixture(scope="module")
def rolled_back(stack, store):
    """v1 goes live (the first version), then v2's canary fails with 60 % errors and rolls back."""
    release_to(stack, store, "v1", healthy=True, state="succeeded")
    return release_to(stack, store, "v2", healthy=False, state="rolled_back")


def test_slack_chat_and_webhook_get_the_verdict_traffic_and_links(stack, store, rolled_back):
    event = event_of(stack, "note_rolled_back")
    assert event["kind"] == "rollout" and event["release_id"] == rolled_back.id and event["version"] == "v2"
    rate = next(c for c in event["verdict"]["checks"] if c["name"] == "error_rate")
    assert (rate["measured"], rate["threshold"], rate["passed"]) == (0.6, 0.05, False)
    assert event["stable_version"] == "v1" and {t["revision"]: t["percent"] for t in event["traffic"]} == \
        {event["stable_revision"]: 100, event["revision"]: 0}
    dash = stack.dashboard_url  # the local dashboard proxy: the functions link to it (PITSTOP_DASHBOARD_URL)
    assert event["links"]["dashboard"] == f"{dash}/releases/{rolled_back.id}" and event["links"]["build_log"]
    assert event["type"] == "rolled_back"

    slack = wait_for("the Slack message", lambda: next(filter(about(event), bodies(stack, "/slack/demo")), None))
    text = json.dumps(slack, ensure_ascii=False)
    assert "error rate 60.0 % &gt; limit 5.0 % ✗" in text and event["verdict"]["rule"] in text  # escaped mrkdwn
    assert f"v1 ({event['stable_revision']}) 100 %" in text
    assert f"{dash}/releases/{rolled_back.id}" in text and event["log_url"] in text
    IMAGES.mkdir(parents=True, exist_ok=True)
    (IMAGES / "slack-message.json").write_text(json.dumps(slack, indent=2, ensure_ascii=False) + "\n")
    blockkit.screenshot(slack, IMAGES / "slack-message.png")  # the README's picture of it

    chat = wait_for("the Chat card", lambda: [r for r in stack.sinks.at("/chat/demo") if about(event)(r.json)])
    assert chat[0].json["thread"]["threadKey"] == rolled_back.id  # one Chat thread per release
    assert chat[0].query == {"messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"}  # no deprecated threadKey
    assert "error rate 60.0 % &gt; limit 5.0 % ✗" in json.dumps(chat[0].json, ensure_ascii=False)
    # The release's own events went out too (succeeded for v1, rolled back for v2).
    assert event_of(stack, "note_release_succeeded")["release_id"] != rolled_back.id
    assert event_of(stack, "note_release_rolled_back")["release_id"] == rolled_back.id


def test_webhook_signature_verifies(stack, rolled_back):
    import hashlib
    import hmac

    event_of(stack, "note_rolled_back")
    for received in stack.sinks.at("/webhook/demo"):
        signed = received.headers["x-pitstop-timestamp"].encode() + b"." + received.body
        expected = "sha256=" + hmac.new(KEY.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, received.headers["x-pitstop-signature"])
        assert received.headers["x-pitstop-event-id"] == received.json["event_id"]


def test_email_reaches_the_smtp_sink_threaded_by_release(stack, rolled_back):
    event = event_of(stack, "note_rolled_back")
    mail = wait_for("the rollback email", lambda: [m for m in stack.smtp.messages
                                                   if m["Subject"] == notify.headline(event)])
    assert mail[0]["To"] == "oncall@example.com" and mail[0]["In-Reply-To"] == f"<{rolled_back.id}@example.com>"
    assert "error rate 60.0 % > limit 5.0 % ✗" in mail[0].get_body(("plain",)).get_content()
    assert all(m["Subject"] and "succeeded" not in m["Subject"] for m in stack.smtp.messages)  # its filter


def test_a_failing_sink_is_retried_then_reported_and_the_others_still_deliver(stack, store, rolled_back):
    event = event_of(stack, "note_rolled_back")
    flaky = wait_for("the flaky sink's third attempt", lambda: [r for r in stack.sinks.at("/flaky")
                                                               if r.json["event_id"] == event["event_id"]][2:])
    assert [r.status for r in stack.sinks.at("/flaky") if r.json["event_id"] == event["event_id"]] == [500, 500, 200]
    assert flaky
    broken = store.db.collection("deliveries").document(delivery_id(event["event_id"], "broken"))
    doc = wait_for("the broken sink given up", lambda: (broken.get().to_dict() or {}).get("state") == "failed"
                   and broken.get().to_dict())
    assert doc["attempts"] == ATTEMPTS and "500" in doc["last_error"]
    assert len([r for r in stack.sinks.at("/fail/broken") if r.json["event_id"] == event["event_id"]]) == ATTEMPTS
    audit = wait_for("the failure in the rollout's audit trail", lambda: [
        e for e in store.events(event["rollout_id"]) if e.decision == "notification_failed"])
    assert "sink broken (webhook) failed 4 times" in audit[0].reasons[0]
    # every other sink got the same event
    assert wait_for("the Slack message", lambda: [b for b in bodies(stack, "/slack/demo") if about(event)(b)])
    delivered = store.db.collection("deliveries").document(delivery_id(event["event_id"], "hook")).get().to_dict()
    assert delivered["state"] == "delivered" and delivered["attempts"] == 1


def test_a_redelivered_event_is_delivered_once_per_sink_and_bad_events_are_acknowledged(stack, rolled_back):
    event = event_of(stack, "note_rolled_back")
    wait_for("every sink's first delivery", lambda: all(
        [r for r in stack.sinks.at(path) if about(event)(r.json)] for path in ("/slack/demo", "/chat/demo")))
    original = {k: v for k, v in event.items() if k not in ("type", "links")}
    log = Path(stack.functions["on_event"].log_path)
    stack.publish("pitstop-events", original, event_id=event["event_id"])  # Pub/Sub delivering it again
    stack.publish("pitstop-events", b"not json at all")
    sinks = [s.name for s in load_pipeline(PIPELINE).notify if s.wants(original)]
    assert {"slack", "chat", "hook"} <= set(sinks)
    for name in sinks:  # every sink has seen the redelivery (not just the first to answer) before counting
        wait_for(f"sink {name}'s duplicate seen",
                 lambda name=name: f"{event['event_id']} to sink {name} was already" in log.read_text(), timeout=30)
    wait_for("the bad event logged", lambda: "rejected pitstop event message" in log.read_text())
    for path in ("/webhook/demo", "/slack/demo", "/chat/demo"):
        same = [r for r in stack.sinks.at(path) if r.json.get("event_id") == event["event_id"] or about(event)(r.json)]
        assert len(same) == 1, f"{path} got event {event['event_id']} {len(same)} times"


def test_project_wide_sinks_hear_every_service(stack, store):
    from pitstop.core.spec import SpecError
    from pitstop.surfaces.notifications import apply_project_sinks

    now = datetime.now(timezone.utc)
    with pytest.raises(SpecError, match="notify.0.type"):  # refused whole: nothing stored
        apply_project_sinks(store.db, {"notify": [{"name": "x", "type": "sms"}]}, "test", now)
    assert not store.db.collection("settings").document("notifications").get().exists
    secrets = yaml.safe_load(stack.secrets_file.read_text())
    stack.secrets_file.write_text(yaml.safe_dump({**secrets, "project-key": KEY}))  # a plain signing key
    apply_project_sinks(store.db, {"notify": [
        {"name": "everyone", "type": "webhook", "secret": "project-key", "url": f"{stack.sinks.url}/project",
         "min_severity": "WARNING"},
        {"name": "witness", "type": "webhook", "secret": "project-key", "url": f"{stack.sinks.url}/witness"}]},
        "test", now)
    base = {"kind": "rollout", "service": "elsewhere", "environment": "qa", "message": "m", "reason": "note_failed",
            "state": "failed"}
    stack.publish("pitstop-events", {**base, "event_id": "quiet", "severity": "INFO"})
    stack.publish("pitstop-events", {**base, "event_id": "loud", "severity": "CRITICAL"})
    got = wait_for("the project sink's message", lambda: [r.json for r in stack.sinks.at("/project")])
    assert got[0]["event_id"] == "loud" and got[0]["type"] == "failed"
    # `quiet` has been handled once the witness (no minimum) has it delivered; had `everyone` wanted it, its
    # delivery would have been claimed alongside, before the witness's was sent and recorded.
    deliveries = store.db.collection("deliveries")
    wait_for("quiet delivered to the witness", lambda: (deliveries.document(delivery_id("quiet", "witness")).get()
                                                        .to_dict() or {}).get("state") == "delivered")
    assert not deliveries.document(delivery_id("quiet", "everyone")).get().exists  # below its min_severity
    assert all(r.json["event_id"] != "quiet" for r in stack.sinks.at("/project"))


def test_a_slack_bot_threads_the_events_of_a_release(stack, store, rolled_back):
    from pitstop.surfaces.notifications import delivery_id as doc_id

    event_of(stack, "note_release_rolled_back")
    thread = store.db.collection("notify_threads").document(doc_id(rolled_back.id, "bot"))
    ts = wait_for("the release's thread", lambda: (thread.get().to_dict() or {}).get("ts"))

    def posts():
        return [r for r in stack.sinks.at("/slack-api/chat.postMessage")
                if rolled_back.id in r.body.decode() or "v2" in r.body.decode()]
    got = wait_for("both events of the release", lambda: len(posts()) >= 2 and posts())
    assert all(r.headers["authorization"] == "Bearer xoxb-local-token" for r in got)
    bodies_ = [json.loads(r.body) for r in got]
    assert all(b["channel"] == "#deploys" for b in bodies_)
    assert sorted(b.get("thread_ts") is None for b in bodies_) == [False] * (len(bodies_) - 1) + [True]
    assert {b.get("thread_ts") for b in bodies_} - {None} == {ts}  # later events reply under the first

"""Notifications, pure parts: the event the engine publishes, its type, sink filters and config errors, and
the message each sink type gets (values, thresholds, rule, traffic, links), and the webhook signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest

from pitstop.config import Config
from pitstop.core import notify
from pitstop.core.models import Notify
from pitstop.core.pipeline import load_pipeline
from pitstop.core.sinks import EVENT_TYPES, ProjectNotify, Sink, event_type
from pitstop.core.spec import SpecError, load_spec
from pitstop.engine import Engine

from sim import Sim, spec

DASH = "https://pitstop.example/dashboard"


class Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[dict, dict]] = []

    def publish(self, topic: str, payload: dict, **attributes: str) -> str:
        self.sent.append((json.loads(json.dumps(payload, default=str)), attributes))  # as on the wire
        return "1"


def _engine(bus: Bus) -> Engine:
    return Engine(Config(project="p"), store=None, cloudrun=lambda: None, bus=bus, verifier=lambda: None,
                  cloudbuild=lambda: None, clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


def rolled_back_event() -> dict:
    """The event the engine publishes when the canary fails its health check at 5 % (the real code path)."""
    s = Sim(spec(), auto_apply=False)
    s.apply_pending()
    s.apply_pending()
    s.advance(60)
    d = s.sample(requests=400, errors=120, p99=150)
    bus = Bus()
    note = next(e for e in d.effects if isinstance(e, Notify))
    _engine(bus)._notify(d.rollout, note, d.audit.id)
    event, attributes = bus.sent[0]
    assert attributes["event_id"] == event["event_id"] and attributes["kind"] == "rollout"
    return event


def gate_event() -> dict:
    return {"event_id": "r1:in:note_gate", "kind": "rollout", "rollout_id": "web-production-us-central1-b2",
            "service": "web", "environment": "production", "region": "us-central1", "version": "v2",
            "state": "awaiting_approval", "severity": "NOTICE", "reason": "note_gate",
            "message": "Rollout of web version v2 is healthy at 25 % and waits for approval."}


def test_the_event_holds_what_a_message_needs_and_a_stable_id():
    event = rolled_back_event()
    assert event_type(event) == "rolled_back" and event["kind"] == "rollout"
    assert event["event_id"] == rolled_back_event()["event_id"]  # the same decision, the same id
    assert event["event_id"].endswith(":note_rolled_back")
    assert (event["service"], event["version"], event["stable_version"], event["region"]) == \
        ("web", "v2", "v1", "us-central1")
    assert event["message"].startswith("New version failed health checks")  # explain.py's sentence, as is
    assert {t["revision"]: t["percent"] for t in event["traffic"]} == {"web-v1-aaaa": 100, event["revision"]: 0}
    rate = next(c for c in event["verdict"]["checks"] if c["name"] == "error_rate")
    assert (rate["measured"], rate["threshold"], rate["passed"]) == (0.3, 0.05, False)
    assert event["verdict"]["outcome"] == "fail" and event["verdict"]["rule"]
    assert event["step"] == 0 and event["steps"] == len(spec().strategy.canary.steps)
    assert event["log_url"] and event["build_id"]


@pytest.mark.parametrize("event, kind", [
    ({"kind": "rollout", "reason": "note_succeeded", "state": "succeeded"}, "succeeded"),
    ({"kind": "rollout", "reason": "note_failed", "state": "failed"}, "failed"),
    ({"kind": "rollout", "reason": "note_paused_no_data", "state": "paused"}, "paused"),
    ({"kind": "release", "reason": "note_release_step_gate", "state": "running"}, "awaiting_approval"),
    ({"kind": "release", "reason": "note_check_failed", "state": "running"}, "check_failed"),
    ({"kind": "release", "reason": "note_release_expired", "state": "running"}, "expired"),
    ({"kind": "build", "outcome": "refused", "build_id": "b"}, "build_refused"),
    ({"kind": "build", "outcome": "rejected", "build_id": "b"}, "build_failed"),
    ({"kind": "build", "outcome": "released", "build_id": "b"}, "started"),
    ({"kind": "rollout", "reason": "something_new", "state": "rolled_back"}, "rolled_back"),
])
def test_event_type_from_reason_outcome_or_state(event, kind):
    assert event_type(event) == kind and kind in EVENT_TYPES


def test_filters_by_type_severity_and_environment():
    event = rolled_back_event()  # ERROR, production
    assert Sink(name="a", type="webhook", secret="k").wants(event)
    assert not Sink(name="a", type="webhook", secret="k", events=["succeeded"]).wants(event)
    assert Sink(name="a", type="webhook", secret="k", events=["rolled_back"], min_severity="error").wants(event)
    assert not Sink(name="a", type="webhook", secret="k", min_severity="CRITICAL").wants(event)
    assert not Sink(name="a", type="webhook", secret="k", environments=["staging"]).wants(event)


@pytest.mark.parametrize("sink, problem", [
    ({"name": "x", "type": "sms", "secret": "s"}, "'slack', 'chat', 'webhook', 'email' or 'pubsub'"),
    ({"name": "x", "type": "slack"}, "needs `secret`"),
    ({"name": "x", "type": "webhook", "secret": "k", "min_severity": "LOUD"}, "min_severity must be one of"),
    ({"name": "x", "type": "chat", "secret": "c", "events": ["rolledback"]}, "unknown event type(s) 'rolledback'"),
    ({"name": "x", "type": "email", "to": ["a@b.c"]}, "needs `to` (a list of addresses) and `from`"),
    ({"name": "x", "type": "pubsub"}, "needs `topic`"),
    ({"name": "x", "type": "slack", "secret": "projects/p/oops"}, "neither a secret name"),
    ({"name": "x", "type": "slack", "secret": "s", "colour": "red"}, "unknown field"),
])
def test_bad_sink_config_is_refused_with_a_clear_error(sink, problem):
    text = json.dumps({"service": "web", "regions": ["us-central1"], "match": {"branch": "main"}, "notify": [sink]})
    with pytest.raises(SpecError) as err:
        load_spec(text)
    assert problem in str(err.value) and "notify.0" in str(err.value)


def test_pipeline_sinks_reach_each_environment_and_names_must_be_unique():
    base = ("service: web\nenvironments:\n  staging: {regions: [r1], on: {branch: main}}\n"
            "  production: {regions: [r1], on: {tag: 'v*'}, notify: [{name: pager, type: webhook, secret: k}]}\n")
    pipeline = load_pipeline(base + "notify: [{name: all, type: slack, secret: s},"
                                    " {name: prod, type: chat, secret: c, environments: [production]}]\n")
    sinks = {spec.environment: [s.name for s in spec.notify] for spec in pipeline.specs()}
    assert sinks == {"staging": ["all"], "production": ["all", "prod", "pager"]}
    with pytest.raises(SpecError, match="names qa, which are not environments"):
        load_pipeline(base + "notify: [{name: q, type: slack, secret: s, environments: [qa]}]\n")
    with pytest.raises(SpecError, match="two sinks are named 'pager'"):
        load_pipeline(base + "notify: [{name: pager, type: slack, secret: s}]\n")
    with pytest.raises(ValueError, match="two sinks are named"):
        ProjectNotify.model_validate({"notify": [{"name": "a", "type": "slack", "secret": "s"}] * 2})


def test_slack_message_says_what_happened_with_values_thresholds_rule_traffic_and_links():
    event = rolled_back_event()
    message = notify.slack_message(event, DASH)
    blocks = message["blocks"] + message["attachments"][0]["blocks"]
    text = json.dumps(blocks, ensure_ascii=False)
    assert blocks[0]["type"] == "header" and blocks[0]["text"]["text"] == "⏪ web v2 rolled back in " \
                                                                           "production/us-central1"
    assert event["message"] in text  # the sentence explain.py rendered, unchanged
    assert "error rate 30.0 % &gt; limit 5.0 % ✗" in text and "requests 400 ≥ minimum" in text  # escaped mrkdwn
    assert event["verdict"]["rule"][:40] in text
    assert "v1 (web-v1-aaaa) 100 %" in text and "Traffic now" in text
    buttons = {b["action_id"]: b["url"] for b in blocks[-1]["elements"]} if blocks[-1]["type"] == "actions" else {}
    assert buttons["pitstop-dashboard"] == f"{DASH}/rollouts/{event['rollout_id']}"
    assert buttons["pitstop-build_log"] == event["log_url"]
    assert message["attachments"][0]["color"] == notify.COLOURS["ERROR"]


def test_action_links_fit_the_event_and_need_a_dashboard():
    gate = gate_event()
    found = notify.links(gate, DASH + "/")
    assert found["approve"] == f"{DASH}/rollouts/{gate['rollout_id']}?action=approve"
    assert found["abort"] == f"{DASH}/rollouts/{gate['rollout_id']}?action=abort"
    release = {**gate, "kind": "release", "rollout_id": None, "release_id": "web-abc",
               "reason": "note_release_gate"}
    assert notify.links(release, DASH)["approve"] == f"{DASH}/releases/web-abc?action=approve&environment=production"
    assert notify.links(gate, None) == {}  # no dashboard configured: no links to it
    # Only what the state accepts (core/actions.py), and only while the event waits for a person.
    paused = {**gate, "reason": "note_paused_no_data", "state": "paused"}
    assert [k for k in notify.links(paused, DASH) if k in notify.ACTIONS] == ["promote", "abort"]
    assert not set(notify.links(rolled_back_event(), DASH)) & set(notify.ACTIONS)
    slack = json.dumps(notify.slack_message(gate, DASH))
    assert notify.ROLE_NOTE in slack
    assert notify.ROLE_NOTE not in json.dumps(notify.slack_message(rolled_back_event(), DASH))


def test_chat_card_and_email_carry_the_same_content():
    event = rolled_back_event()
    card = notify.chat_message(event, DASH)["cardsV2"][0]["card"]
    text = json.dumps(card, ensure_ascii=False)
    assert card["header"]["title"] == notify.headline(event)
    assert "error rate 30.0 % &gt; limit 5.0 % ✗" in text and f"{DASH}/rollouts/{event['rollout_id']}" in text
    mail = notify.email_message({**event, "release_id": "web-rel1"}, "pitstop@acme.test", ["ops@acme.test"], DASH)
    assert mail["Subject"] == notify.headline(event) and mail["To"] == "ops@acme.test"
    assert mail["In-Reply-To"] == mail["References"] == "<web-rel1@acme.test>"  # one thread per release
    plain = mail.get_body(("plain",)).get_content()
    assert event["message"] in plain and "error rate 30.0 % > limit 5.0 % ✗" in plain
    assert "error rate 30.0 % &gt; limit 5.0 % ✗" in mail.get_body(("html",)).get_content()


def test_webhook_signature_verifies_with_the_documented_snippet():
    body = json.dumps(notify.webhook_body(rolled_back_event(), DASH)).encode()
    timestamp = "1767323045"
    header = notify.signature("s3cret", timestamp, body)

    # README, "Verifying a webhook": what a receiver runs.
    def verify(secret: str, headers: dict, raw: bytes) -> bool:
        signed = headers["X-Pitstop-Timestamp"].encode() + b"." + raw
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers["X-Pitstop-Signature"])

    headers = {"X-Pitstop-Timestamp": timestamp, "X-Pitstop-Signature": header}
    assert verify("s3cret", headers, body) and notify.verify("s3cret", timestamp, body, header)
    assert not verify("other", headers, body)
    assert not verify("s3cret", {**headers, "X-Pitstop-Timestamp": "1767323046"}, body)  # replayed later
    assert json.loads(body)["links"]["dashboard"].startswith(DASH) and json.loads(body)["type"] == "rolled_back"


def test_local_secrets_come_from_the_environment_then_the_file(tmp_path, monkeypatch):
    from pitstop.gcp.secrets import SecretMissing, Secrets

    path = tmp_path / "secrets.yaml"
    path.write_text("slack-hook: https://hooks.slack.test/T/B/x\nsmtp: {smtp_host: 127.0.0.1, smtp_port: 2525}\n")
    monkeypatch.setenv("PITSTOP_SECRETS_FILE", str(path))
    secrets = Secrets.from_env("p")
    assert secrets.get("slack-hook") == "https://hooks.slack.test/T/B/x"
    assert json.loads(secrets.get("projects/p/secrets/smtp/versions/3")) == {"smtp_host": "127.0.0.1",
                                                                            "smtp_port": 2525}
    monkeypatch.setenv("PITSTOP_SECRET_CHAT_HOOK", "https://chat.test/hook")
    assert secrets.get("chat-hook") == "https://chat.test/hook"
    with pytest.raises(SecretMissing, match=r"secret nope is not in the local secrets file .* \$PITSTOP_SECRET_NOPE"):
        secrets.get("nope")
    assert Secrets("acme").resource("slack-hook") == "projects/acme/secrets/slack-hook/versions/latest"


@pytest.mark.parametrize("event, problem", [
    ([1, 2], "not a JSON object"),
    ({"event_id": "e1", "kind": "rollout", "severity": "INFO"}, "event e1 lacks message"),
])
def test_an_event_that_can_never_be_delivered_is_refused_with_its_reason(event, problem):
    from pitstop.core.messages import BadMessage
    from pitstop.surfaces.notifications import Notifier

    with pytest.raises(BadMessage, match=problem):  # functions/main.py logs it and acknowledges
        Notifier(db=None, secrets=None).on_event(event)


def test_a_direct_rollback_names_the_version_it_went_back_to() -> None:
    event = {"kind": "rollout", "reason": "note_direct_done", "service": "web", "version": "v2", "state": "succeeded",
             "environment": "production", "region": "us-central1", "severity": "WARNING", "message": "…"}
    assert notify.headline(event) == "⏪ web rolled back to v2 in production/us-central1"

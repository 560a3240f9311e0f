"""The notifier's pure parts: TLS that verifies, which sink wins a shared name, what a secret may hold, Slack's
text limits, and the one line a verdict's check reads as everywhere."""

from __future__ import annotations

import json
import smtplib
import ssl
from types import SimpleNamespace

import pytest

from pitstop.core import notify
from pitstop.core.explain import check_line
from pitstop.core.sinks import Sink
from pitstop.surfaces.notifications import Notifier

EVENT = {"event_id": "e1", "kind": "rollout", "service": "web", "environment": "production", "severity": "ERROR",
         "reason": "note_failed", "state": "failed", "message": "m", "release_id": "web-r1"}


# ---------------------------------------------------------------- SMTP over TLS verifies the server

class FakeSMTP:
    """Stands in for smtplib's classes: records the TLS context it is given."""
    contexts: list[ssl.SSLContext] = []

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext | None = None) -> None:
        if context is not None:
            self.contexts.append(context)

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def starttls(self, context: ssl.SSLContext | None = None) -> None:
        self.contexts.append(context)

    def login(self, user: str, password: str) -> None:
        pass

    def send_message(self, message: object) -> None:
        pass


@pytest.mark.parametrize("fields", [{"ssl": True, "starttls": False}, {"starttls": True}],
                         ids=["implicit TLS", "STARTTLS"])
def test_email_over_tls_verifies_the_certificate_and_host_name(monkeypatch, fields):
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    monkeypatch.setattr(smtplib, "SMTP_SSL", FakeSMTP)
    FakeSMTP.contexts = []
    sink = Sink.model_validate({"name": "mail", "type": "email", "to": ["a@example.com"], "from": "p@example.com",
                                "smtp_host": "smtp.example.com", **fields})
    Notifier(db=None, secrets=None)._send_email(sink, "password", EVENT)
    [context] = FakeSMTP.contexts
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# ---------------------------------------------------------------- the nearest sink of a name wins

class FakeDb:
    """settings/notifications holding the project's sinks (the one document sinks_for reads)."""

    def __init__(self, sinks: list[dict]) -> None:
        self.doc = SimpleNamespace(exists=True, to_dict=lambda: {"notify": sinks})

    def collection(self, name: str) -> FakeDb:
        return self

    def document(self, name: str) -> FakeDb:
        return self

    def get(self) -> SimpleNamespace:
        return self.doc


def test_a_service_sink_overrides_the_project_sink_of_the_same_name():
    project = [{"name": "team", "type": "webhook", "secret": "project-key", "url": "https://project.example"},
               {"name": "audit", "type": "webhook", "secret": "audit-key", "url": "https://audit.example"}]
    # A pipeline's spec lists its own sinks, then its environment's (the nearest last).
    spec_sinks = [Sink.model_validate(s) for s in (
        {"name": "team", "type": "webhook", "secret": "pipeline-key", "url": "https://pipeline.example"},
        {"name": "team", "type": "webhook", "secret": "env-key", "url": "https://production.example"})]
    store = SimpleNamespace(spec=lambda service, environment: SimpleNamespace(notify=spec_sinks))
    sinks = Notifier(db=FakeDb(project), secrets=None, store=store).sinks_for(EVENT)
    assert [(s.name, s.url) for s in sinks] == [("team", "https://production.example"),
                                                ("audit", "https://audit.example")]


# ---------------------------------------------------------------- what a secret holds

class FakeSecrets:
    def __init__(self, value: str) -> None:
        self.value = value

    def get(self, name: str) -> str:
        return self.value


WEBHOOK = Sink.model_validate({"name": "hook", "type": "webhook", "secret": "s"})


@pytest.mark.parametrize("raw", [
    '{"url": "https://hooks.example.com/p", "key": "k3y"}',
    "url: https://hooks.example.com/p\nkey: k3y\n",
    "{url: 'https://hooks.example.com/p', key: k3y}",
], ids=["JSON", "YAML block", "YAML flow"])
def test_a_secret_holding_a_mapping_gives_fields_and_the_credential(raw):
    sink, credential = Notifier(db=None, secrets=FakeSecrets(raw))._resolve(WEBHOOK)
    assert (sink.url, credential) == ("https://hooks.example.com/p", "k3y")


@pytest.mark.parametrize("raw", ["https://hooks.slack.com/services/T/B/x\n", "xoxb-1-2-abc", "s3cr3t: [not yaml",
                                 "- a list\n", "12345"])
def test_a_secret_holding_anything_else_is_the_credential_itself(raw):
    sink, credential = Notifier(db=None, secrets=FakeSecrets(raw))._resolve(WEBHOOK)
    assert sink == WEBHOOK and credential == raw.strip()


# ---------------------------------------------------------------- Slack's limits

def test_a_huge_message_is_cut_before_escaping_and_keeps_code_spans_closed():
    body = "a & b < c > d `code " + "x&y" * 2000  # a code span left open where the cut falls
    event = {**EVENT, "message": body, "service": "w&b" * 1000}
    message = notify.slack_message(event)
    section = message["blocks"][1]["text"]["text"]
    assert len(section) <= 3000 and len(message["text"]) <= 3000
    assert section.startswith("a &amp; b &lt; c &gt; d `code x&amp;y")
    assert section.endswith("…`") and section.count("`") % 2 == 0  # the span closed after the mark
    assert not section[:-2].endswith(("&", "&a", "&am", "&amp"))  # no entity cut in half
    for field in message["attachments"][0]["blocks"][0]["fields"]:
        assert len(field["text"]) <= 2000
        assert field["text"].count("&") == field["text"].count("&amp;")  # every & escaped whole
    # A code block is closed as a block.
    block = notify.slack_message({**EVENT, "message": "```\n" + "<&>" * 3000})["blocks"][1]["text"]["text"]
    assert len(block) <= 3000 and block.endswith("…\n```") and block.count("```") == 2


def test_a_short_message_is_only_escaped():
    text = notify.slack_message({**EVENT, "message": "5 < 6 & `ok`"})["blocks"][1]["text"]["text"]
    assert text == "5 &lt; 6 &amp; `ok`"


# ---------------------------------------------------------------- one line per check

@pytest.mark.parametrize("check, line", [
    ({"name": "error_rate", "measured": 0.6, "threshold": 0.05, "passed": False},
     "error rate 60.0 % > limit 5.0 % ✗"),
    ({"name": "error_rate", "measured": 0.0005, "threshold": 0.001, "passed": True},
     "error rate 0.05 % ≤ limit 0.1 % ✓"),
    ({"name": "requests", "measured": 37, "threshold": 10, "passed": True}, "requests 37 ≥ minimum 10 ✓"),
    ({"name": "requests", "measured": 3, "threshold": 10, "passed": False}, "requests 3 < minimum 10 ✗"),
    ({"name": "latency_p99_ms", "measured": 412.5, "threshold": 2000, "passed": True},
     "latency p99 412.5 ms ≤ limit 2000 ms ✓"),
    ({"name": "latency_p99_vs_stable_ms", "measured": None, "threshold": 300, "passed": None},
     "latency p99 vs stable n/a vs limit 300 ms ?"),
])
def test_a_check_reads_the_same_everywhere_with_its_unit(check, line):
    from pitstop.core.models import Check

    assert check_line(check) == line
    assert check_line(Check(**check)) == line  # the model reads the same as its dict
    event = {**EVENT, "verdict": {"outcome": "fail", "rule": "r", "checks": [check]}}
    assert notify.check_lines(event) == [line]
    assert line.replace(">", "&gt;").replace("<", "&lt;") in json.dumps(notify.slack_message(event),
                                                                          ensure_ascii=False)

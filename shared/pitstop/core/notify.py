"""A notification per sink type, built from one event on `pitstop-events`. Pure: no I/O.

The words are the event's `message`, rendered by core/explain.py when the decision was made; this module
only lays them out (Slack Block Kit, a Google Chat card, an email, a signed webhook body) beside the facts a
person acts on: version, where, traffic now, the verdict's values against their thresholds, and links.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Any
from urllib.parse import quote

from pitstop.core.explain import check_line
from pitstop.core.sinks import event_type

COLOURS = {"INFO": "#1f6feb", "NOTICE": "#2eb886", "WARNING": "#daa038", "ERROR": "#e01e5a", "CRITICAL": "#8b0000"}
EMOJI = {"started": "🚀", "succeeded": "✅", "rolled_back": "⏪", "failed": "🚨", "check_failed": "❌",
         "awaiting_approval": "✋", "paused": "⏸️", "expired": "⌛", "superseded": "⏭️", "build_failed": "🧱",
         "build_refused": "⛔"}
WHAT = {"started": "release started", "succeeded": "succeeded", "rolled_back": "rolled back", "failed": "FAILED",
        "check_failed": "check failed", "awaiting_approval": "waits for approval", "paused": "paused",
        "expired": "approval expired", "superseded": "superseded", "build_failed": "build failed",
        "build_refused": "build refused"}
ROLE_NOTE = "Actions open the dashboard; they need the approver or operator role there."


# ---------------------------------------------------------------- facts

def headline(event: dict[str, Any]) -> str:
    """`⏪ web 1.4.2 rolled back in production/us-central1`: what happened, to which version, where."""
    kind = event_type(event)
    subject = " ".join(str(p) for p in (event.get("service") or f"build {event.get('build_id', '')}",
                                         event.get("version")) if p)
    where = "/".join(str(p) for p in (event.get("environment"), event.get("region")) if p)
    what = WHAT.get(kind, kind.replace("_", " "))
    if event.get("reason") == "note_direct_done":  # a direct rollback's version is where it went back to
        subject, what = str(event.get("service")), f"rolled back to {event.get('version')}"
    return f"{EMOJI.get(kind, 'ℹ️')} {subject} {what}" + (f" in {where}" if where else "")


def traffic_line(event: dict[str, Any]) -> str | None:
    """`1.4.2 (web-00042) 25 % · stable 1.4.1 (web-00041) 75 %` from the desired split."""
    split = event.get("traffic") or []
    if not split:
        return None
    names = {event.get("revision"): event.get("version"), event.get("stable_revision"): event.get("stable_version")}
    parts = [" ".join(p for p in (names.get(t.get("revision")), f"({t.get('revision')})", f"{t.get('percent')} %")
                      if p) for t in split]
    return " · ".join(parts)


def check_lines(event: dict[str, Any]) -> list[str]:
    """Each check of the verdict, as everywhere else: `error rate 12.0 % > limit 5.0 % ✗`."""
    return [check_line(check) for check in (event.get("verdict") or {}).get("checks") or []]


def links(event: dict[str, Any], dashboard: str | None) -> dict[str, str]:
    """Dashboard page, Cloud Build log and, when the event waits for a person, the one-click actions its state
    accepts (label -> URL). Actions open the dashboard page with `?action=…`; the dashboard checks the person's
    role before acting."""
    from pitstop.core.actions import release_actions, rollout_actions

    out: dict[str, str] = {}
    base = (dashboard or "").rstrip("/")
    kind, state = event_type(event), str(event.get("state"))
    release, rollout = event.get("release_id"), event.get("rollout_id")
    if base and (release or rollout):
        if rollout:
            page, query = f"{base}/rollouts/{quote(rollout)}", ""
            offered = rollout_actions(state)
        else:
            page = f"{base}/releases/{quote(release)}"
            query = f"&environment={quote(str(event.get('environment') or ''))}"
            offered = release_actions(state, "awaiting_approval" if kind == "awaiting_approval" else None)
        out["dashboard"] = f"{base}/releases/{quote(release)}" if release else page
        if kind in WAITS_FOR_A_PERSON:
            out.update({a: f"{page}?action={a}{query}" for a in ACTIONS if a in offered})
    if event.get("log_url"):
        out["build_log"] = str(event["log_url"])
    return out


LINK_LABELS = {"dashboard": "Open in dashboard", "build_log": "Cloud Build log", "approve": "Approve",
               "promote": "Promote", "abort": "Abort"}
ACTIONS = ("approve", "promote", "abort")  # the one-click links a message offers, among what the state accepts
WAITS_FOR_A_PERSON = ("awaiting_approval", "paused")


def facts(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields every message shows, in order (label, value); empty ones left out."""
    where = "/".join(str(p) for p in (event.get("environment"), event.get("region")) if p)
    version = event.get("version")
    if version and event.get("stable_version"):
        version = f"{version} (stable {event['stable_version']})"
    step = event.get("step")
    steps = event.get("steps")
    rows = [("Service", event.get("service")), ("Version", version), ("Where", where),
            ("Traffic now", traffic_line(event)), ("State", event.get("state")),
            ("Step", f"{step + 1} of {steps}" if isinstance(step, int) and steps and step < steps else None),
            ("Build", event.get("build_id"))]
    return [(k, str(v)) for k, v in rows if v not in (None, "")]


# ---------------------------------------------------------------- Slack

def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    """`text` as Slack mrkdwn in at most `limit` characters (Slack refuses longer ones). Cut before escaping,
    so no `&amp;` is cut in half; the cut is marked with … and an open code span or block is closed again."""
    out = _mrkdwn(text)
    if len(out) <= limit:
        return out
    kept, size = [], 0
    for char in text:
        piece = _mrkdwn(char)
        if size + len(piece) > limit - 5:  # room for "…" and at most "\n```"
            break
        kept.append(piece)
        size += len(piece)
    cut = "".join(kept) + "…"
    if cut.count("```") % 2:
        return cut + "\n```"
    return cut + "`" if cut.replace("```", "").count("`") % 2 else cut


def slack_message(event: dict[str, Any], dashboard: str | None = None) -> dict[str, Any]:
    """Block Kit: header and the sentence, then fields, the verdict, context and buttons by the severity's colour bar."""
    title = headline(event)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(str(event.get("message", "")), 3000)}},
    ]
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{_clip(v, 2000 - len(k) - 3)}"} for k, v in facts(event)]
    if fields:
        blocks.append({"type": "section", "fields": fields[:10]})
    verdict = event.get("verdict")
    if verdict:
        lines = "\n".join(f"• `{_mrkdwn(line)}`" for line in check_lines(event))
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (  # a few short check lines
            f"*Verdict: {_mrkdwn(str(verdict.get('outcome')))}* — {_clip(str(verdict.get('rule', '')), 1500)}\n"
            f"{lines}")}})
    context = [f"{event.get('severity', 'INFO')} · {event.get('at', '')}"]
    if verdict and verdict.get("request_count") is not None:
        context.append(f"window {verdict.get('window_start', '')} – {verdict.get('window_end', '')}, "
                       f"{verdict['request_count']} requests ({verdict.get('source', '')})")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(c, 3000)} for c in context]})
    found = links(event, dashboard)
    if found:
        buttons = []
        for key, url in found.items():
            button = {"type": "button", "text": {"type": "plain_text", "text": LINK_LABELS[key]}, "url": url,
                      "action_id": f"pitstop-{key}"}
            if key in ("approve", "promote"):
                button["style"] = "primary"
            elif key == "abort":
                button["style"] = "danger"
            buttons.append(button)
        blocks.append({"type": "actions", "elements": buttons})
        if any(k in found for k in ACTIONS):
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": ROLE_NOTE}]})
    colour = COLOURS.get(str(event.get("severity")), COLOURS["INFO"])
    # What happened leads the message; the details sit beside the severity's colour bar. `text` is then only
    # the fallback Slack shows in notifications.
    return {"text": _clip(f"{title}: {event.get('message', '')}", 3000), "blocks": blocks[:2],
            "attachments": [{"color": colour, "blocks": blocks[2:]}]}


# ---------------------------------------------------------------- Google Chat

def chat_message(event: dict[str, Any], dashboard: str | None = None) -> dict[str, Any]:
    """A cardsV2 card with the same content (Chat renders a small HTML subset in textParagraph)."""
    esc = html.escape
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": esc(str(event.get("message", "")))}}]
    widgets += [{"decoratedText": {"topLabel": k, "text": esc(v)}} for k, v in facts(event)]
    sections = [{"widgets": widgets}]
    verdict = event.get("verdict")
    if verdict:
        checks = "<br>".join(esc(line) for line in check_lines(event))
        sections.append({"header": f"Verdict: {esc(str(verdict.get('outcome')))}", "widgets": [
            {"textParagraph": {"text": f"<b>{esc(str(verdict.get('rule', '')))}</b><br>{checks}"}}]})
    found = links(event, dashboard)
    if found:
        buttons = [{"text": LINK_LABELS[k], "onClick": {"openLink": {"url": url}}} for k, url in found.items()]
        action_widgets: list[dict[str, Any]] = [{"buttonList": {"buttons": buttons}}]
        if any(k in found for k in ACTIONS):
            action_widgets.append({"textParagraph": {"text": f"<i>{esc(ROLE_NOTE)}</i>"}})
        sections.append({"widgets": action_widgets})
    card_id = f"pitstop-{event.get('event_id', 'event')}"[:64]
    return {"text": f"{headline(event)}", "cardsV2": [{"cardId": card_id, "card": {
        "header": {"title": headline(event)[:200], "subtitle": f"{event.get('severity', 'INFO')} · {event.get('at', '')}"},
        "sections": sections}}]}


# ---------------------------------------------------------------- webhook, pubsub

def webhook_body(event: dict[str, Any], dashboard: str | None = None) -> dict[str, Any]:
    """The event itself, with its type and the links."""
    return {**event, "type": event_type(event), "links": links(event, dashboard)}


def signature(key: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over `{timestamp}.{raw body}` with the sink's signing key."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(key: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (README has the same few lines to copy)."""
    return hmac.compare_digest(signature(key, timestamp, body), header)


# ---------------------------------------------------------------- email

def thread_id(event: dict[str, Any], domain: str = "pitstop") -> str:
    """The Message-ID the events of one release (or rollout, or build) hang under."""
    root = event.get("release_id") or event.get("rollout_id") or f"build-{event.get('build_id')}"
    return f"<{root}@{domain}>"


def email_message(event: dict[str, Any], sender: str, to: list[str], dashboard: str | None = None) -> Any:
    """Subject, a plain-text body and a simple HTML alternative, threaded by release (In-Reply-To/References)."""
    from email.message import EmailMessage
    from email.utils import formatdate

    found = links(event, dashboard)
    title = headline(event)
    text = [str(event.get("message", "")), ""] + [f"{k}: {v}" for k, v in facts(event)]
    verdict = event.get("verdict")
    if verdict:
        text += ["", f"Verdict: {verdict.get('outcome')} — {verdict.get('rule', '')}"] + \
                [f"  {line}" for line in check_lines(event)]
    if found:
        text += [""] + [f"{LINK_LABELS[k]}: {url}" for k, url in found.items()]
        if any(k in found for k in ACTIONS):
            text.append(ROLE_NOTE)
    text += ["", f"{event.get('severity', 'INFO')} · {event.get('at', '')} · event {event.get('event_id', '')}"]

    esc = html.escape
    rows = "".join(f"<tr><th align=left>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts(event))
    checks = "".join(f"<li><code>{esc(line)}</code></li>" for line in check_lines(event))
    verdict_html = (f"<p><b>Verdict: {esc(str(verdict.get('outcome')))}</b> — {esc(str(verdict.get('rule', '')))}"
                    f"</p><ul>{checks}</ul>") if verdict else ""
    link_html = " · ".join(f'<a href="{esc(url)}">{esc(LINK_LABELS[k])}</a>' for k, url in found.items())
    colour = COLOURS.get(str(event.get("severity")), COLOURS["INFO"])
    body = (f'<div style="border-left:4px solid {colour};padding-left:12px;font-family:sans-serif">'
            f"<h3>{esc(title)}</h3><p>{esc(str(event.get('message', '')))}</p><table>{rows}</table>{verdict_html}"
            f"<p>{link_html}</p></div>")

    msg = EmailMessage()
    msg["Subject"] = title
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "pitstop"
    root = thread_id(event, domain)
    digest = hashlib.sha256(str(event.get("event_id", "")).encode()).hexdigest()[:24]
    msg["Message-ID"] = f"<{digest}.{root[1:]}"
    msg["In-Reply-To"] = root
    msg["References"] = root
    msg["X-Pitstop-Event-Id"] = str(event.get("event_id", ""))
    msg.set_content("\n".join(text))
    msg.add_alternative(body, subtype="html")
    return msg

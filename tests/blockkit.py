"""Render a Slack Block Kit message as Slack shows it, near enough for a README picture.

The picture is taken in headless Chromium from the payload pitstop itself builds, so what the README
shows is what a channel receives. Covers the blocks pitstop uses: header, section (text, fields,
button accessory), divider, context, actions; `attachments[].color` as the coloured bar.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"<([^|>]+)(?:\|([^>]+))?>")
_STYLES = [(re.compile(r"\*([^*\n]+)\*"), r"<b>\1</b>"), (re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)"), r"<i>\1</i>"),
           (re.compile(r"~([^~\n]+)~"), r"<s>\1</s>"), (re.compile(r"`([^`\n]+)`"), r"<code>\1</code>")]


def mrkdwn(text: str) -> str:
    """Slack's mrkdwn (its text arrives with &, <, > escaped, links as <url|label>) as HTML."""
    out, last = [], 0
    for match in _LINK.finditer(text):
        out.append(_styled(text[last:match.start()]))
        url, label = match.group(1), match.group(2) or match.group(1)
        out.append(f'<a href="{html.escape(url)}">{_styled(label)}</a>')
        last = match.end()
    out.append(_styled(text[last:]))
    return "".join(out).replace("\n", "<br>")


def _styled(text: str) -> str:
    text = html.escape(html.unescape(text), quote=False)
    for pattern, replacement in _STYLES:
        text = pattern.sub(replacement, text)
    return text


def _text(obj: dict[str, Any] | None) -> str:
    if not obj:
        return ""
    return mrkdwn(obj["text"]) if obj.get("type") == "mrkdwn" else _styled(obj.get("text", ""))


def _button(el: dict[str, Any]) -> str:
    style = el.get("style", "")
    return f'<a class="button {style}" href="{html.escape(el.get("url", "#"))}">{_text(el.get("text"))}</a>'


def _block(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "header":
        return f'<div class="header">{_text(block.get("text"))}</div>'
    if kind == "divider":
        return "<hr>"
    if kind == "section":
        fields = "".join(f'<div class="field">{_text(f)}</div>' for f in block.get("fields", []))
        accessory = block.get("accessory")
        button = _button(accessory) if accessory and accessory.get("type") == "button" else ""
        return (f'<div class="section"><div class="body"><div>{_text(block.get("text"))}</div>'
                f'<div class="fields">{fields}</div></div>{button}</div>')
    if kind == "context":
        return '<div class="context">' + " ".join(_text(e) for e in block.get("elements", [])
                                                   if e.get("type") != "image") + "</div>"
    if kind == "actions":
        return '<div class="actions">' + "".join(_button(e) for e in block.get("elements", [])
                                                 if e.get("type") == "button") + "</div>"
    return ""


CSS = """
body { font: 15px/1.46 -apple-system, 'Segoe UI', Lato, 'DejaVu Sans', sans-serif; color: #1d1c1d; margin: 0;
       background: #fff; }
.message { display: flex; gap: 10px; padding: 14px 20px; width: 760px; }
.avatar { width: 36px; height: 36px; border-radius: 4px; background: #1f6feb; color: #fff; font-weight: 700;
          display: flex; align-items: center; justify-content: center; flex: none; }
.who b { font-weight: 900; } .who span { color: #616061; font-size: 12px; margin-left: 6px; }
.app { background: #e8e8e8; color: #616061; font-size: 10px; padding: 1px 3px; border-radius: 2px; }
.text { margin: 2px 0 6px; }
.attachment { border-left: 4px solid #ddd; padding: 2px 0 2px 12px; margin-top: 4px; }
.header { font-size: 18px; font-weight: 900; margin: 4px 0 8px; }
.section { display: flex; justify-content: space-between; gap: 12px; margin: 6px 0; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 24px; margin-top: 4px; }
.context { color: #616061; font-size: 12px; margin: 6px 0; }
.actions { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 4px; }
.button { border: 1px solid #bbb; border-radius: 4px; padding: 3px 12px; color: #1d1c1d; text-decoration: none;
          font-weight: 700; font-size: 13px; white-space: nowrap; align-self: flex-start; }
.button.primary { background: #007a5a; border-color: #007a5a; color: #fff; }
.button.danger { background: #e01e5a; border-color: #e01e5a; color: #fff; }
code { font: 12px monospace; background: #f6f6f6; border: 1px solid #ddd; border-radius: 3px; padding: 0 3px;
       color: #e01e5a; }
a { color: #1264a3; text-decoration: none; }
hr { border: 0; border-top: 1px solid #ddd; margin: 8px 0; }
"""


def page(payload: dict[str, Any], app: str = "pitstop", at: str = "") -> str:
    """One Slack message (top-level blocks and attachments) as a standalone HTML page."""
    blocks = "".join(_block(b) for b in payload.get("blocks", []))
    attachments = "".join(
        f'<div class="attachment" style="border-left-color: {html.escape(a.get("color", "#ddd"))}">'
        + "".join(_block(b) for b in a.get("blocks", [])) + "</div>"
        for a in payload.get("attachments", []))
    text = "" if blocks else f'<div class="text">{mrkdwn(payload.get("text", ""))}</div>'
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
            f"<div class='message'><div class='avatar'>P</div><div class='content'>"
            f"<div class='who'><b>{html.escape(app)}</b> <span class='app'>APP</span><span>{html.escape(at)}</span>"
            f"</div>{text}{blocks}{attachments}</div></div></body></html>")


def screenshot(payload: dict[str, Any], path: Path, at: str = "10:42 AM") -> None:
    """The message as a PNG (headless Chromium), cropped to the message."""
    from selenium.webdriver.common.by import By

    from browser import chromium

    page_file = path.with_suffix(".html")
    page_file.write_text(page(payload, at=at))
    try:
        with chromium(820, 1400) as browser:
            browser.get(page_file.resolve().as_uri())
            browser.find_element(By.CSS_SELECTOR, ".message").screenshot(str(path))
    finally:
        page_file.unlink()

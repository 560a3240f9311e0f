"""A stand-in for an SMTP relay: aiosmtpd on 127.0.0.1 that keeps every message it receives.

pitstop's email sink talks to it with the standard library's smtplib, exactly as to a real relay (without
STARTTLS: the local secrets file says `starttls: false`). Messages are kept in memory for tests and written to
`mail/` in the state directory (one .eml file each) for `pitstop dev` users.
"""

from __future__ import annotations

import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pitstop.local.emulators import free_port


class SmtpSink:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._dir = state_dir / "mail" if state_dir else None
        self._controller: Any = None
        self.port = 0

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller  # late: only the local stack runs it

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
                sink._keep(envelope.content)
                return "250 Message accepted for delivery"

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _keep(self, raw: bytes) -> None:
        message = message_from_bytes(raw, policy=policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
                (self._dir / f"{len(self.messages):04d}.eml").write_bytes(raw)


def start_smtp(state_dir: Path | None = None) -> SmtpSink:
    return SmtpSink(state_dir).start()

"""``flowmill demo mail``: a local SMTP server that keeps every mail as a file.

The samples send mail (the order status report) through the connection ``mail``, which
``flowmill demo init`` points at 127.0.0.1:8025. This server accepts every mail there
and writes it unchanged to ``DATA/demo/outbox/<time>-<n>.eml``, so a new user can open
what a flow sent without a real mail server. It accepts mail from this machine only and
never relays it anywhere.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["Outbox", "start_mail"]


class Outbox:
    """The aiosmtpd handler: one ``.eml`` file per accepted mail."""

    def __init__(self, folder: Path, echo: Any = print) -> None:
        self.folder = folder
        self.echo = echo
        self.count = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        with self.lock:
            name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{next(self.count)}.eml"
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{name}.part"
            tmp.write_bytes(data)
            tmp.replace(self.folder / name)
        subject = message_from_bytes(data, policy=default).get("Subject", "")
        self.echo(f"demo mail: {', '.join(envelope.rcpt_tos)}: {subject} → {name}")
        return "250 kept in the demo outbox"


def start_mail(host: str, port: int, folder: Path, echo: Any = print) -> Controller:
    """Start the server in a background thread; ``.stop()`` the result to end it."""
    controller = Controller(Outbox(folder, echo), hostname=host, port=port)
    controller.start()
    return controller

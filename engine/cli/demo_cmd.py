"""`liveprism sink`: a local mailbox for the demo — an SMTP server that writes every message to Maildir.

It stands in for a tenant's own mail server on loopback. Each message is written with
`mailbox.Maildir` (tmp/ then rename to new/), once per transaction, with the envelope in
`X-Sink-Mail-From` / `X-Sink-Rcpt-To` header lines prepended, and answered 250 afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import signal
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from engine.smtp.protocol import MAX_LINE_LENGTH

log = logging.getLogger("liveprism.sink")


class MaildirHandler:
    """Writes each received message into one Maildir."""

    def __init__(self, maildir: Path) -> None:
        maildir.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        sender = (envelope.mail_from or "").strip("<>")  # aiosmtpd gives the null sender as "<>"
        head = f"X-Sink-Mail-From: <{sender}>\r\nX-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
        key = await asyncio.to_thread(self.maildir.add, head.encode("utf-8", "replace") + raw)
        log.info("stored %s from=<%s> to=%s size=%d", key, envelope.mail_from, envelope.rcpt_tos, len(raw))
        return f"250 2.0.0 stored as {key}"


class SinkSMTP(SMTP):
    """Accepts long lines like the gateway does (a mailbox should not bounce what the MX took)."""

    line_length_limit = MAX_LINE_LENGTH


async def serve_sink(address: str, port: int, maildir: Path) -> None:
    """Run until SIGTERM/SIGINT."""
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SinkSMTP(handler, hostname="sink.liveprism.local", enable_SMTPUTF8=True), address, port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("sink listening on %s:%d, writing %s", address, port, maildir)
    await stop.wait()
    server.close()
    await server.wait_closed()


def run_sink(listen: str, maildir: Path) -> int:
    address, _, port = listen.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    asyncio.run(serve_sink(address or "127.0.0.1", int(port), maildir))
    return 0

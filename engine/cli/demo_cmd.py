"""`liveprism demo`: `serve` on the example policy beside `liveprism sink`, a local mailbox — an
SMTP server that writes every message to Maildir.

The sink stands in for a tenant's own mail server on loopback. Each message is written with
`mailbox.Maildir` (tmp/ then rename to new/), once per transaction, with the envelope in
`X-Sink-Mail-From` / `X-Sink-Rcpt-To` header lines prepended, and answered 250 afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import signal
import subprocess
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from engine.cli.dkim_cmd import run_keygen
from engine.cli.serve_cmd import run_serve_cmd
from engine.policy.loader import load_policy
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


def run_demo(directory: Path, state: Path, maildir: Path) -> int:
    """Create the DKIM keys the policy names but that do not exist yet, start the sink as a child
    process, serve until stopped, then stop the sink. Returns serve's exit code."""
    for tenant in load_policy(directory).tenants:
        dkim = tenant.model.outbound.dkim
        if dkim is not None and not dkim.private_key.startswith("env:") and not (directory / dkim.private_key).exists():
            run_keygen(directory, tenant.model.name, None, "rsa")

    child = subprocess.Popen([sys.executable, "-m", "engine", "sink", "--maildir", str(maildir)])
    try:
        return run_serve_cmd(directory, state, "1", None, "main", "policies", 30.0)
    finally:
        child.terminate()
        child.wait(timeout=10)

"""The aiosmtpd speed-ups must not change what aiosmtpd computes (guards against an aiosmtpd upgrade)."""

from __future__ import annotations

import asyncio
import inspect

import aiosmtpd.smtp
import pytest

from engine.smtp.inbound import InboundHandler
from engine.smtp.protocol import ConnectionLimits, GatewaySMTP, install_aiosmtpd_speedups


def _protocol(handler: InboundHandler) -> GatewaySMTP:
    loop = asyncio.new_event_loop()
    try:
        return GatewaySMTP(handler, ConnectionLimits(lambda: (10, 10)), hostname="mx.test", loop=loop)
    finally:
        loop.close()


def _shape(smtp: GatewaySMTP, handler: InboundHandler) -> tuple[object, ...]:
    """What SMTP.__init__ derived, with each bound method as (function, bound to the right object)."""
    return (
        {name: (method.__func__, method.__self__ is smtp) for name, method in smtp._smtp_methods.items()},
        {name: (hook.__func__, hook.__self__ is handler) for name, hook in smtp._handle_hooks.items()},
        {name: (attr.method.__func__, attr.method.__self__ is smtp, attr.is_builtin)
         for name, attr in smtp._auth_methods.items()},
        smtp._ehlo_hook_ver,
    )


def test_member_cache_gives_what_aiosmtpd_computes() -> None:
    handler = InboundHandler(current_graph=lambda: None, store=None, relay=None, log_format=lambda: "text")  # type: ignore[arg-type,return-value]
    module = vars(aiosmtpd.smtp)
    saved = {name: module[name] for name in ("inspect", "dir") if name in module}
    module["inspect"] = inspect  # pristine: the real inspect module and the builtin dir
    module.pop("dir", None)
    try:
        plain = _protocol(handler)
        install_aiosmtpd_speedups()
        fast = _protocol(handler)
        assert _shape(fast, handler) == _shape(plain, handler)
        assert all(bound for _, bound in _shape(fast, handler)[0].values())  # type: ignore[attr-defined]
        assert "AUTH" in fast._smtp_methods and "DATA" in fast._handle_hooks
    finally:
        module.update(saved)
        if "dir" not in saved:
            module.pop("dir", None)


@pytest.mark.parametrize(
    "arg",
    [
        "<alice@example.com>",
        "<alice@example.com> SIZE=1000 BODY=8BITMIME",
        " <a.b+tag@sub.example.com>",
        "<>",
        "<@route.example:user@example.com>",
        '<"quoted local"@example.com>',
        "<user%other@example.com>",
        "alice@example.com",
        "<alice@[127.0.0.1]>",
        "<broken",
        "<a..b@example.com>",
    ],
)
def test_fast_getaddr_agrees_with_aiosmtpd(arg: str) -> None:
    handler = InboundHandler(current_graph=lambda: None, store=None, relay=None, log_format=lambda: "text")  # type: ignore[arg-type,return-value]
    smtp = _protocol(handler)
    assert smtp._getaddr(arg) == aiosmtpd.smtp.SMTP._getaddr(smtp, arg)


def test_every_transaction_gets_a_gateway_envelope_from_aiosmtpds_factory() -> None:
    """The per-transaction state rides on aiosmtpd's envelope factory (`_create_envelope`, aiosmtpd
    1.4.6): aiosmtpd must still create each transaction's envelope through it, at connect, RSET
    and after DATA; our SMTP must return a GatewayEnvelope."""
    from engine.smtp.envelope import GatewayEnvelope

    assert "self.envelope = self._create_envelope()" in inspect.getsource(aiosmtpd.smtp.SMTP._set_post_data_state)
    assert "self._set_post_data_state()" in inspect.getsource(aiosmtpd.smtp.SMTP._set_rset_state)
    envelope = GatewaySMTP._create_envelope(object.__new__(GatewaySMTP))
    assert isinstance(envelope, GatewayEnvelope) and envelope.evaluation is None and envelope.rcpt_tos == []

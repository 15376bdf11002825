"""Benchmark of the sender-authentication checks: cost per call of SPF, DKIM, ARC and DMARC.

Usage (from the repository root):  python bench/auth_checks.py [--repeats N]

Two resolvers: an in-memory one (the CPU cost of the check alone) and the real `Resolver`
against an nsd this script starts on 127.0.0.1 with the test zones of tests/support/keys.py
(first call = real round trips, later calls = the resolver's TTL cache). Each figure is the
median of N calls in ms, and its ratio to a baseline measured in the same run: parsing the
same 2 KB message with `email.message_from_bytes` (a cost every message already pays).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checks.arc import verify_arc
from engine.checks.dkim import verify_dkim
from engine.checks.dmarc import check_dmarc
from engine.checks.spf import check_spf
from engine.dns.resolver import Resolver
from engine.policy.models import DnsSettings
from tests.support.keys import Keys, arc_seal, auth_message, auth_zones, make_keys, sign
from tests.support.nsd import Nsd
from tests.support.resolvers import FakeResolver


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def amedian_ms(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def fake_for(keys: Keys) -> FakeResolver:
    return FakeResolver({
        "sender.test": [("TXT", "v=spf1 include:_spf.sender.test -all")],
        "_spf.sender.test": [("TXT", "v=spf1 include:_net.sender.test ~all")],
        "_net.sender.test": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "_dmarc.sender.test": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.sender.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.rsa_dns)],
        "ed._domainkey.sender.test": [("TXT", "v=DKIM1; k=ed25519; p=" + keys.ed_dns)],
        "arc._domainkey.list.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.list_dns)],
    })


async def run(repeats: int, port: int, keys: Keys) -> list[tuple[str, float]]:
    small = auth_message(body_size=2048)
    rsa_msg = sign(small, "rsa", "sender.test", keys.rsa_pem)
    ed_msg = sign(small, "ed", "sender.test", keys.ed_seed, b"ed25519-sha256")
    big = sign(auth_message(body_size=1024 * 1024), "rsa", "sender.test", keys.rsa_pem)
    sealed = arc_seal(rsa_msg.replace(b"Subject: Quarterly", b"Subject: [team] Quarterly"),
                      "dkim=pass header.d=sender.test", "arc", "list.test", keys.list_pem)
    fake = fake_for(keys)
    spf_kw = {"client_ip": "192.0.2.10", "helo": "mta.example", "mail_from": "a@sender.test"}
    spf_result = await check_spf(fake, **spf_kw)  # type: ignore[arg-type]
    dkim_results = await verify_dkim(fake, rsa_msg)
    rows = [("baseline: email.message_from_bytes(2 KB)", median_ms(lambda: email.message_from_bytes(rsa_msg),
                                                                 repeats))]
    rows.append(("asyncio.to_thread(no-op) hop", await amedian_ms(lambda: asyncio.to_thread(lambda: None),
                                                                    repeats)))
    rows.append(("SPF include chain, 3 TXT (in-memory DNS)", await amedian_ms(
        lambda: check_spf(fake, **spf_kw), repeats)))  # type: ignore[arg-type]
    rows.append(("DKIM RSA-2048, 2 KB (in-memory DNS)", await amedian_ms(lambda: verify_dkim(fake, rsa_msg), repeats)))
    rows.append(("DKIM Ed25519, 2 KB (in-memory DNS)", await amedian_ms(lambda: verify_dkim(fake, ed_msg), repeats)))
    rows.append(("DKIM RSA-2048, 1 MB (in-memory DNS, worker thread)", await amedian_ms(
        lambda: verify_dkim(fake, big), max(3, repeats // 10))))
    rows.append(("ARC 1 set + DKIM key, 2 KB (in-memory DNS)", await amedian_ms(lambda: verify_arc(fake, sealed),
                                                                                 repeats)))
    rows.append(("DMARC from SPF+DKIM results (in-memory DNS)", await amedian_ms(
        lambda: check_dmarc(fake, header_from_domain="sender.test", spf=spf_result, dkim=dkim_results), repeats)))
    settings = DnsSettings(nameservers=["127.0.0.1"], port=port, timeout=2.0)  # type: ignore[list-item]

    async def spf_uncached() -> object:
        return await check_spf(Resolver(settings), **spf_kw)  # type: ignore[arg-type]

    async def dkim_uncached() -> object:
        return await verify_dkim(Resolver(settings), rsa_msg)

    rows.append(("SPF include chain, nsd, uncached", await amedian_ms(spf_uncached, repeats)))
    cached = Resolver(settings)
    await check_spf(cached, **spf_kw)  # type: ignore[arg-type]
    rows.append(("SPF include chain, nsd, TTL cache", await amedian_ms(lambda: check_spf(cached, **spf_kw),
                                                                        repeats)))  # type: ignore[arg-type]
    rows.append(("DKIM RSA-2048, 2 KB, nsd, uncached", await amedian_ms(dkim_uncached, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    keys = make_keys()
    server = Nsd(Path(tempfile.mkdtemp(prefix="lp-bench-nsd-")))
    try:
        port = server.start(auth_zones(keys))
        rows = asyncio.run(run(args.repeats, port, keys))
    finally:
        server.stop()
    baseline = rows[0][1]
    print(f"{'call':58} {'median ms':>10} {'x baseline':>11}")
    for name, ms in rows:
        print(f"{name:58} {ms:10.3f} {ms / baseline:11.1f}")


if __name__ == "__main__":
    main()

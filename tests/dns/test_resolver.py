"""engine/dns/resolver.py against a real UDP DNS server on 127.0.0.1 (the relay harness's) and one
that never answers: answers are values, positive answers are cached for their TTL, failures are not."""

from __future__ import annotations

import socket

from engine.dns.resolver import Resolver
from engine.policy.models import DnsSettings
from tests.support.relay_lab import RelayLab

RECORDS = {
    ("example.org.", "MX"): ["10 mx.example.org."],
    ("example.org.", "TXT"): ['"v=spf1 " "ip4:192.0.2.0/24 -all"'],
    ("mx.example.org.", "A"): ["192.0.2.1"],
}


def test_answers_are_values_and_positive_ones_are_cached(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        resolver = Resolver(await relay_lab.dns(RECORDS))
        mx = await resolver.query("Example.ORG.", "MX")
        assert (mx.status, mx.records, mx.cached, mx.ttl) == ("ok", ("10 mx.example.org.",), False, 60)
        again = await resolver.query("example.org", "mx")
        assert again.cached and again.records == mx.records and again.elapsed == 0.0
        txt = await resolver.query("example.org", "TXT")
        assert txt.records == ("v=spf1 ip4:192.0.2.0/24 -all",)  # character-strings joined (RFC 7208 §3.3)
        missing = await resolver.query("nowhere.example", "A")
        assert missing.status == "nxdomain" and missing.missing and not missing.temporary
        nodata = await resolver.query("mx.example.org", "AAAA")
        assert nodata.status == "nodata" and nodata.records == ()

    relay_lab.run(scenario())


def test_a_server_that_never_answers_gives_a_timeout_value_in_bounded_time(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, reads nothing, answers nothing
        silent.bind(("127.0.0.1", 0))
        try:
            settings = DnsSettings.model_validate(
                {"nameservers": ["127.0.0.1"], "port": silent.getsockname()[1], "timeout": 0.3})
            resolver = Resolver(settings)
            answer = await resolver.query("example.org", "MX")
            assert answer.status == "timeout" and answer.temporary and answer.elapsed < 5
            assert not (await resolver.query("example.org", "MX")).cached  # failures are not cached
        finally:
            silent.close()

    relay_lab.run(scenario())


def test_configure_with_other_servers_drops_the_cache(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        first = await relay_lab.dns(RECORDS)
        second = await relay_lab.dns({("example.org.", "MX"): ["20 other.example.org."]})
        resolver = Resolver(first)
        assert (await resolver.query("example.org", "MX")).records == ("10 mx.example.org.",)
        resolver.configure(second)
        assert (await resolver.query("example.org", "MX")).records == ("20 other.example.org.",)

    relay_lab.run(scenario())

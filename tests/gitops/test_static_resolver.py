"""The scenarios' static DNS resolver answers like `engine.dns.resolver.Resolver`."""

from __future__ import annotations

import asyncio

from engine.gitops.bdd.resolver import StaticResolver


def test_answers_nodata_nxdomain_and_failures() -> None:
    resolver = StaticResolver()
    resolver.add("X.example.", "txt", "v=spf1 -all")
    resolver.add("x.example", "TXT", "google-site-verification=" + "a" * 300)
    resolver.add("x.example", "MX", "10 mx.x.example.")
    resolver.fail("slow.example", "A", "timeout")

    async def ask() -> list[object]:
        return [await resolver.query(*q) for q in
                (("x.example", "TXT"), ("x.example", "A"), ("y.example", "TXT"), ("slow.example", "A"),
                 ("x.example", "MX"))]

    txt, a, missing, slow, mx = asyncio.run(ask())
    assert txt.status == "ok" and txt.records == ("v=spf1 -all", "google-site-verification=" + "a" * 300)
    assert [b"".join(r.strings).decode() for r in txt.rdata] == list(txt.records)  # 255-octet strings joined
    assert a.status == "nodata" and a.missing and missing.status == "nxdomain"
    assert slow.status == "timeout" and slow.temporary
    assert mx.rdata[0].preference == 10 and str(mx.rdata[0].exchange) == "mx.x.example."
    assert resolver.asked[0] == ("x.example", "TXT")

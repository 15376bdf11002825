"""`liveprism dns --check` against a real nsd serving the zones `liveprism dns` generated.

The example policy (acme's DKIM key created by `liveprism dkim keygen`) is published as is:
no drift, exit 0. Then the served zones are edited the way the world drifts — one record
changed, a forgotten backup MX, a record deleted — and the check must name exactly that.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from engine.dns.resolver import Resolver
from engine.dns_as_code.drift import drift_metric_values, policy_drift
from engine.policy.loader import load_policy
from tests.support.gateway import AdminGateway, admin_settings
from tests.support.nsd import Nsd, zone_file
from tests.support.policies import example_with_new_key
from tests.support.processes import free_port, run_liveprism, wait_for


def publish(tmp_path: Path, nsd: Nsd) -> tuple[Path, dict[str, str]]:
    """A copy of the example policy whose resolver is `nsd`, and its zones as nsd will serve them."""
    root = tmp_path / "policies"
    example_with_new_key(root)
    gateway = root / "gateway.yaml"
    text = gateway.read_text()
    line = re.search(r"^dns: .*$", text, re.M)
    assert line is not None
    gateway.write_text(text.replace(line.group(0), nsd.gateway_settings(timeout=2)))
    out = tmp_path / "zones"
    done = run_liveprism("dns", str(root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    zones = {p.name.removesuffix(".zone"): zone_file(p.name.removesuffix(".zone"), p.read_text())
             for p in sorted(out.glob("*.zone"))}
    assert set(zones) == {"acme.example", "globex.example", "globex-corp.example", "initech.example",
                          "liveprism.example"}
    return root, zones


def check(root: Path) -> tuple[int, dict[str, object]]:
    done = run_liveprism("dns", str(root), "--check", "--format", "json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def drifted(report: dict[str, object]) -> list[tuple[str, str, str]]:
    records = report["records"]
    assert isinstance(records, list)
    return [(r["status"], r["domain"], r["record"]) for r in records if r["status"] != "ok"]


def test_check_reports_no_drift_then_exactly_what_changed(tmp_path: Path, nsd: Nsd) -> None:
    root, zones = publish(tmp_path, nsd)
    zones["acme.example"] += "mta-sts IN A 192.0.2.80\n"  # the web host serving acme's MTA-STS policy
    nsd.start(zones)

    code, report = check(root)
    assert (code, drifted(report)) == (0, []), report
    records = report["records"]
    assert isinstance(records, list) and len(records) == 22  # every planned RRset was looked up
    text = run_liveprism("dns", str(root), "--check")
    assert text.returncode == 0 and text.stdout.endswith("DNS agrees with the policy (22 records)\n")
    assert "warning: globex.example: mta-sts.globex.example has no address: senders cannot fetch" in text.stderr
    assert "mta-sts.acme.example has no address" not in text.stderr
    assert report["warnings"] == [  # nsd serves no _spf.mailprovider.example: it answers REFUSED
        "acme.example: SPF include:_spf.mailprovider.example: lookup failed (servfail)",
        *(f"{d}: mta-sts.{d} has no address: senders cannot fetch https://mta-sts.{d}/.well-known/mta-sts.txt"
          for d in ("globex-corp.example", "globex.example")),
    ]

    # one record altered in the served zone: exactly that record, expected vs found
    changed = dict(zones)
    changed["globex.example"] = zones["globex.example"].replace("p=reject; sp=reject", "p=none; sp=reject")
    assert changed["globex.example"] != zones["globex.example"]
    nsd.reload(changed)
    code, report = check(root)
    assert code == 1 and drifted(report) == [("different", "globex.example", "dmarc")]
    (item,) = [r for r in report["records"] if r["status"] != "ok"]  # type: ignore[union-attr]
    assert item["expected"] == ["v=DMARC1; p=reject; sp=reject; rua=mailto:dmarc@globex.example"]
    assert item["found"] == ["v=DMARC1; p=none; sp=reject; rua=mailto:dmarc@globex.example"]

    # a forgotten backup MX straight at the tenant's server: a bypass, named, exit 1
    bypass = dict(zones)
    bypass["acme.example"] = zones["acme.example"] + "@ IN MX 20 backup.acme.example.\nbackup IN A 192.0.2.99\n"
    nsd.reload(bypass)
    code, report = check(root)
    assert code == 1 and drifted(report) == [("bypass", "acme.example", "mx")]
    assert report["bypass"] is True
    text = run_liveprism("dns", str(root), "--check")
    assert text.returncode == 1
    assert re.search(r"^bypass +acme\.example +mx +acme\.example\. MX .*backup\.acme\.example", text.stdout, re.M)
    assert "MX to backup.acme.example: mail can reach the tenant around the gateway" in text.stdout
    assert text.stdout.endswith("1 of 22 records drifted, 1 MX bypass of the gateway\n")

    # a deleted record, an extra SPF record and a changed gateway address, with the metric values
    edited = dict(zones)
    edited["initech.example"] = re.sub(r"^_dmarc .*\n", "", zones["initech.example"], flags=re.M)
    edited["globex-corp.example"] = zones["globex-corp.example"] + '@ IN TXT "v=spf1 include:old.example -all"\n'
    edited["globex-corp.example"] += '@ IN TXT "google-site-verification=abc"\n'  # not SPF: not drift
    edited["liveprism.example"] = zones["liveprism.example"].replace("192.0.2.10", "192.0.2.11")
    nsd.reload(edited)
    code, report = check(root)
    assert code == 1
    assert sorted(drifted(report)) == [
        ("different", "mxpath.liveprism.example", "a"),
        ("extra", "globex-corp.example", "spf"),
        ("missing", "initech.example", "dmarc"),
    ]
    source = load_policy(root)
    assert source.gateway is not None
    resolver = Resolver(source.gateway.model.dns)
    report = asyncio.run(policy_drift(source.gateway.model, [t.model for t in source.tenants], root, resolver))
    values = drift_metric_values(report)
    assert {k for k, v in values.items() if v == 1.0} == {
        ("mxpath.liveprism.example", "a"), ("globex-corp.example", "spf"), ("initech.example", "dmarc")
    }
    assert values[("acme.example", "dkim")] == 0.0 and len(values) == 22


def test_check_on_a_silent_nameserver_is_drift(tmp_path: Path, nsd: Nsd) -> None:
    root, _ = publish(tmp_path, nsd)  # nsd never started: every lookup times out
    gateway = root / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("timeout: 2}", "timeout: 0.3}"))
    code, report = check(root)
    assert code == 1
    statuses = {r["status"] for r in report["records"]}  # type: ignore[union-attr]
    assert statuses == {"error"}


def test_drift_is_exported_as_a_metric_by_a_running_gateway(tmp_path: Path, nsd: Nsd, procs: list[object]) -> None:
    """`serve` with the admin listener checks DNS every `admin.dns_check_interval` seconds and
    exports `liveprism_dns_drift{domain,record}`: 0 while DNS agrees, 1 for the record that drifts."""
    from prometheus_client.parser import text_string_to_metric_families

    root, zones = publish(tmp_path, nsd)
    nsd.start(zones)
    port, admin_port = free_port(), free_port()
    gateway_yaml = root / "gateway.yaml"
    text = re.sub(r"inbound: \{address: [^,]+, port: \d+\}", f"inbound: {{address: 127.0.0.1, port: {port}}}",
                  gateway_yaml.read_text())
    gateway_yaml.write_text(text + admin_settings(admin_port, ", dns_check_interval: 1") + "\n")
    gateway = AdminGateway(root, tmp_path / "state", port, admin_port=admin_port).start()
    procs.append(gateway)

    def drift() -> dict[tuple[str, str], float]:
        status, body = gateway.http("GET", "/metrics")
        assert status == 200
        return {(s.labels["domain"], s.labels["record"]): s.value
                for family in text_string_to_metric_families(body) if family.name == "liveprism_dns_drift"
                for s in family.samples}

    assert wait_for(lambda: len(drift()) == 22, timeout=60)
    assert set(drift().values()) == {0.0}, drift()
    zones["acme.example"] = zones["acme.example"].replace("p=quarantine", "p=none")
    nsd.reload(zones)
    assert wait_for(lambda: drift().get(("acme.example", "dmarc")) == 1.0, timeout=60), drift()
    assert [key for key, value in drift().items() if value] == [("acme.example", "dmarc")]

"""`liveprism dns` output and `liveprism dkim keygen`: zone syntax checked by BIND's own
named-checkzone and by dnspython, octoDNS output by `octodns-validate`, DKIM keys by dkimpy."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import dkim
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from engine.cli.main import app
from engine.dkim.keys import dkimpy_private_key, generate_key, load_key, public_record
from engine.dns_as_code.records import KIND_ORDER, DnsPlan, Record, Zone, plan_dns
from engine.dns_as_code.render import bind_txt, render, render_bind, txt_strings
from engine.policy.loader import load_policy
from engine.policy.models import DkimKey
from tests.support.nsd import zone_file
from tests.support.policies import copy_example, example_with_new_key, write_policy


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`liveprism ARGS` run in this process (the CLI's own code path, without paying for an
    interpreter start per call)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def plan_of(root: Path) -> DnsPlan:
    source = load_policy(root)
    assert source.gateway is not None and not source.problems
    return plan_dns(source.gateway.model, [t.model for t in source.tenants], root)


def parse(origin: str, text: str) -> dns.zone.Zone:
    return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)


# ---------------------------------------------------------------- the example policy


def test_example_policy_publishes_every_record_kind(tmp_path: Path) -> None:
    plan = plan_of(example_with_new_key(tmp_path / "policies"))
    assert {r.kind for r in plan.records} == set(KIND_ORDER)
    assert not plan.warnings and not plan.skipped


def test_every_bind_snippet_passes_named_checkzone_and_dnspython(tmp_path: Path) -> None:
    root = example_with_new_key(tmp_path / "policies")
    out = tmp_path / "zones"
    done = cli("dns", str(root), "--format", "bind", "--out", str(out))
    assert done.returncode == 0, done.stderr
    plan = plan_of(root)
    assert sorted(p.name for p in out.glob("*.zone")) == sorted(f"{z.origin}.zone" for z in plan.zones)
    for zone in plan.zones:
        snippet = (out / f"{zone.origin}.zone").read_text()
        assert snippet.splitlines()[1:3] == [f"$ORIGIN {zone.origin}.", f"$TTL {plan.ttl}"]
        wrapped = tmp_path / f"{zone.origin}.db"
        wrapped.write_text(zone_file(zone.origin, snippet))
        check = subprocess.run(["named-checkzone", "-k", "fail", "-n", "fail", zone.origin, str(wrapped)],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        parsed = parse(zone.origin, wrapped.read_text())
        for record in zone.records:
            rdataset = parsed.find_rdataset(record.name + ".", record.rtype)
            assert rdataset.ttl == plan.ttl
            assert sorted(_text(r) for r in rdataset) == sorted(record.values), record


def _text(rdata: dns.rdata.Rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
    return str(rdata.to_text())


def test_mx_targets_are_absolute_and_point_at_the_gateway(tmp_path: Path) -> None:
    plan = plan_of(example_with_new_key(tmp_path / "policies"))
    text = render(plan, "bind")
    assert "IN MX   10 mxpath.liveprism.example.\n" in text
    mx = [r for r in plan.records if r.kind == "mx"]
    assert {r.domain for r in mx} == {"acme.example", "globex.example", "globex-corp.example", "initech.example"}
    assert all(r.values == ("10 mxpath.liveprism.example.",) for r in mx)
    spf = next(r for r in plan.records if r.kind == "spf" and r.domain == "acme.example")
    assert spf.values == ("v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 include:_spf.mailprovider.example -all",)
    hosts = [r for r in plan.records if r.kind in ("a", "aaaa")]
    assert [(r.zone, r.relative, r.values) for r in hosts] == [
        ("liveprism.example", "mxpath", ("192.0.2.10",)), ("liveprism.example", "mxpath", ("2001:db8::10",))
    ]


def test_output_is_stable(tmp_path: Path) -> None:
    root = example_with_new_key(tmp_path / "policies")
    for fmt in ("bind", "json", "octodns"):
        first = cli("dns", str(root), "--format", fmt)
        second = cli("dns", str(root), "--format", fmt)
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout and first.stdout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert cli("dns", str(copy)).stdout == cli("dns", str(root)).stdout


def test_octodns_output_passes_octodns_validate(tmp_path: Path) -> None:
    root = example_with_new_key(tmp_path / "policies")
    out = tmp_path / "octodns"
    done = cli("dns", str(root), "--format", "octodns", "--out", str(out))
    assert done.returncode == 0, done.stderr
    origins = [z.origin for z in plan_of(root).zones]
    zones = "".join(f"  {o}.:\n    sources: [config]\n    targets: []\n" for o in origins)
    config = tmp_path / "octodns.yaml"
    config.write_text("providers:\n  config:\n    class: octodns.provider.yaml.YamlProvider\n"
                      f"    directory: {out}\nzones:\n{zones}")
    validate = shutil.which("octodns-validate", path=str(Path(sys.executable).parent))
    assert validate is not None, "octodns-validate is installed by the test extra"
    done = subprocess.run([validate, "--config-file", str(config)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    # The validator really looks at the records: an unescaped ';' (octoDNS's own rule) fails it.
    acme = out / "acme.example.yaml"
    text = acme.read_text()
    assert "v=DKIM1\\\\; k=rsa" in text
    acme.write_text(text.replace("v=DMARC1\\\\;", "v=DMARC1;"))
    bad = subprocess.run([validate, "--config-file", str(config)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "unescaped ;" in bad.stderr


def test_json_output_lists_records_and_the_mta_sts_policy(tmp_path: Path) -> None:
    done = cli("dns", str(example_with_new_key(tmp_path / "policies")), "--format", "json", "--domain", "acme.example")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    (zone,) = doc["zones"]
    assert zone["origin"] == "acme.example" and zone["tenant"] == "acme"
    kinds = [r["kind"] for r in zone["records"]]
    assert kinds == ["mx", "spf", "dmarc", "dkim", "mta-sts", "tls-rpt"]
    (policy,) = zone["mta_sts_policies"]
    assert policy["url"] == "https://mta-sts.acme.example/.well-known/mta-sts.txt"
    assert policy["content"] == "version: STSv1\r\nmode: enforce\r\nmx: mxpath.liveprism.example\r\nmax_age: 604800\r\n"


def test_unknown_domain_and_bad_format_are_usage_errors(tmp_path: Path) -> None:
    root = example_with_new_key(tmp_path / "policies")
    done = cli("dns", str(root), "--domain", "nobody.example")
    assert done.returncode == 2 and "no zone 'nobody.example'" in done.stderr
    done = cli("dns", str(root), "--format", "text")
    assert done.returncode == 2 and "bind, json, octodns" in done.stderr


# ---------------------------------------------------------------- TXT syntax


def test_2048_bit_dkim_record_splits_into_255_octet_strings_and_round_trips() -> None:
    key = generate_key("rsa")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    data = public_record(key)
    assert len(data) > 255
    strings = txt_strings(data)
    assert [len(s) for s in strings[:-1]] == [255] * (len(strings) - 1) and 0 < len(strings[-1]) <= 255
    text = bind_txt(data)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    assert list(rdata.strings) == strings  # type: ignore[attr-defined]
    assert b"".join(rdata.strings).decode() == data  # type: ignore[attr-defined]
    # and the joined record is a key dkimpy verifies a signature with
    message = b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    signature = dkim.sign(message, b"lp1", b"acme.example", dkimpy_private_key(key), include_headers=[b"from"])
    assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: data.encode())


def test_quotes_backslashes_and_non_ascii_are_escaped() -> None:
    data = 'say "hi" \\ back ü' + "x" * 300
    text = bind_txt(data)
    assert '\\"hi\\"' in text and " \\\\ " in text and "\\195\\188" in text
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    assert b"".join(rdata.strings) == data.encode()  # type: ignore[attr-defined]
    zone = Zone("quote.example", None, (Record("quote.example", "t.quote.example", "TXT", "spf", "quote.example",
                                               (data,)),))
    parsed = parse("quote.example", zone_file("quote.example", render_bind(zone, 300)))
    (found,) = parsed.find_rdataset("t.quote.example.", "TXT")
    assert b"".join(found.strings) == data.encode()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- policy to records


def test_idn_domains_are_published_in_punycode(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.gateway.example\nmx_hosts: [{name: mx1.gateway.example, ipv4: [192.0.2.1]}]\n",
        "tenants/acme.yaml": "name: acme\ndomains: [bücher.example]\nroutes: [{host: 127.0.0.1}]\n",
    })
    plan = plan_of(root)
    assert [z.origin for z in plan.zones] == ["gateway.example", "xn--bcher-kva.example"]
    text = render(plan, "bind")
    assert "$ORIGIN xn--bcher-kva.example.\n" in text and "ü" not in text


def test_mta_sts_id_changes_exactly_when_the_policy_changes(tmp_path: Path) -> None:
    def sts_id(tenant_dns: str, gateway_extra: str = "") -> str:
        root = write_policy(tmp_path / str(abs(hash((tenant_dns, gateway_extra)))), {
            "gateway.yaml": "hostname: mx.gateway.example\nmx_hosts: [{name: mx1.gateway.example}]\n" + gateway_extra,
            "tenants/acme.yaml": f"name: acme\ndomains: [acme.example]\nroutes: [{{host: 127.0.0.1}}]\n{tenant_dns}",
        })
        (record,) = [r for r in plan_of(root).records if r.kind == "mta-sts"]
        return record.values[0]

    base = sts_id("dns: {mta_sts: {mode: testing}}\n")
    assert base.startswith("v=STSv1; id=")
    assert sts_id("dns: {mta_sts: {mode: testing}, dmarc: {policy: reject}}\n") == base
    assert sts_id("dns: {mta_sts: {mode: enforce}}\n") != base
    assert sts_id("dns: {mta_sts: {mode: testing, max_age: 86400}}\n") != base
    assert sts_id("dns: {mta_sts: {mode: testing}}\n", "dns_ttl: 600\n") == base


def test_dmarc_tls_rpt_and_spf_records_follow_the_tenant(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.gateway.example\nmx_hosts: [{name: mx1.gateway.example, ipv4: [192.0.2.1]},"
                        " {name: mx2.gateway.example, ipv4: [192.0.2.2], priority: 20}]\ndns_ttl: 600\n",
        "tenants/acme.yaml": (
            "name: acme\ndomains: [acme.example]\nroutes: [{host: 127.0.0.1}]\n"
            "dns:\n  dmarc: {policy: reject, sp: quarantine, pct: 50, adkim: s, aspf: r,"
            " rua: [mailto:a@acme.example, mailto:b@reports.example], ruf: mailto:f@acme.example}\n"
            "  spf: {include: [spf.a.example, spf.b.example], all: ~all}\n"
            "  tls_rpt: {rua: [mailto:tls@acme.example, 'https://tls.acme.example/v1']}\n"
        ),
    })
    plan = plan_of(root)
    by_kind = {r.kind: r.values for r in plan.records if r.domain == "acme.example"}
    assert by_kind["mx"] == ("10 mx1.gateway.example.", "20 mx2.gateway.example.")
    assert by_kind["spf"] == ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 include:spf.a.example include:spf.b.example ~all",)
    assert by_kind["dmarc"] == ("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=50;"
                                " rua=mailto:a@acme.example,mailto:b@reports.example; ruf=mailto:f@acme.example",)
    assert by_kind["tls-rpt"] == ("v=TLSRPTv1; rua=mailto:tls@acme.example,https://tls.acme.example/v1",)
    assert "mta-sts" not in by_kind and plan.ttl == 600


def test_spf_beyond_ten_lookups_warns(tmp_path: Path) -> None:
    includes = ", ".join(f"spf{i}.example" for i in range(11))
    root = write_policy(tmp_path, {
        "tenants/acme.yaml": f"name: acme\ndomains: [acme.example]\nroutes: [{{host: 127.0.0.1}}]\n"
                             f"dns: {{spf: {{include: [{includes}]}}}}\n",
    })
    done = cli("dns", str(root))
    assert done.returncode == 0
    assert "SPF needs at least 12 DNS lookups; RFC 7208 §4.6.4 allows 10" in done.stderr
    # no mx_hosts: MX names the hostname, SPF uses a:hostname (itself one lookup: 12)
    assert "IN MX   10 mx.example.com." in done.stdout and "a:mx.example.com" in done.stdout


def test_missing_dkim_key_is_named_with_the_command_that_creates_it(tmp_path: Path) -> None:
    root = copy_example(tmp_path / "policies", keys=False)
    done = cli("dns", str(root), "--domain", "acme.example")
    assert done.returncode == 0
    advice = f"create it with `liveprism dkim keygen {root} --tenant acme`"
    assert "DKIM record lp1._domainkey.acme.example skipped: key file" in done.stderr and advice in done.stderr
    assert "_domainkey IN TXT" not in done.stdout and advice in done.stdout  # a comment in the snippet


def test_invalid_dns_settings_are_refused_with_their_location(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {
        "tenants/acme.yaml": "name: acme\ndomains: [acme.example]\nroutes: [{host: 127.0.0.1}]\n"
                             "dns:\n  dmarc: {policy: reject, rua: 'mailto:a,b@acme.example'}\n"
                             "  mta_sts: {mode: strict}\n",
    })
    done = cli("validate", str(root))
    assert done.returncode == 1
    assert "tenants/acme.yaml:5:" in done.stdout and "no spaces, commas" in done.stdout
    assert "tenants/acme.yaml:6:" in done.stdout and "mode" in done.stdout
    assert cli("dns", str(root)).returncode == 2


# ---------------------------------------------------------------- dkim keygen


def test_keygen_writes_a_0600_key_prints_only_the_record_and_never_overwrites(tmp_path: Path) -> None:
    root = copy_example(tmp_path / "policies", keys=False)
    done = cli("dkim", "keygen", str(root), "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    path = root / "keys" / "acme.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = load_key(root, DkimKey(selector="lp1", private_key="keys/acme.pem"))
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert done.stdout.startswith("lp1._domainkey.acme.example. 3600 IN TXT (\n")
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, done.stdout.split(" IN TXT ", 1)[1])
    assert b"".join(rdata.strings).decode() == public_record(key)  # type: ignore[attr-defined]
    again = cli("dkim", "keygen", str(root), "--tenant", "acme")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert path.read_bytes() == pem


def test_keygen_ed25519_record_verifies_a_signature(tmp_path: Path) -> None:
    root = copy_example(tmp_path / "policies", keys=False)
    done = cli("dkim", "keygen", str(root), "--tenant", "acme", "--algorithm", "ed25519", "--selector", "lp1")
    assert done.returncode == 0, done.stderr
    key = load_key(root, DkimKey(selector="lp1", private_key="keys/acme.pem"))
    assert not isinstance(key, rsa.RSAPrivateKey) and not hasattr(key, "kind")
    record = public_record(key)  # type: ignore[arg-type]
    assert record.startswith("v=DKIM1; k=ed25519; p=") and len(base64.b64decode(record.split("p=")[1])) == 32
    assert f'IN TXT "{record}"' in done.stdout
    message = b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    signature = dkim.sign(message, b"lp1", b"acme.example", dkimpy_private_key(key),  # type: ignore[arg-type]
                          include_headers=[b"from"], signature_algorithm=b"ed25519-sha256")
    assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: record.encode())


@pytest.mark.parametrize(("args", "error"), [
    (["--tenant", "nobody"], "no tenant 'nobody'"),
    (["--tenant", "globex"], "has no outbound.dkim"),
    (["--tenant", "acme", "--selector", "lp2"], "signs with selector 'lp1', not 'lp2'"),
    (["--tenant", "acme", "--algorithm", "dsa"], "--algorithm must be rsa or ed25519"),
])
def test_keygen_refusals(tmp_path: Path, args: list[str], error: str) -> None:
    root = copy_example(tmp_path / "policies", keys=False)
    done = cli("dkim", "keygen", str(root), *args)
    assert done.returncode == 2 and error in done.stderr
    assert not (root / "keys").exists()


def test_key_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.dkim.keys import KeyProblem, private_pem

    key = generate_key("ed25519")
    reference = DkimKey(selector="s", private_key="env:LP_TEST_DKIM")
    monkeypatch.delenv("LP_TEST_DKIM", raising=False)
    missing = load_key(tmp_path, reference)
    assert isinstance(missing, KeyProblem) and missing.kind == "missing"
    monkeypatch.setenv("LP_TEST_DKIM", private_pem(key).decode())
    loaded = load_key(tmp_path, reference)
    assert not isinstance(loaded, KeyProblem) and public_record(loaded) == public_record(key)
    monkeypatch.setenv("LP_TEST_DKIM", "not a key")
    invalid = load_key(tmp_path, reference)
    assert isinstance(invalid, KeyProblem) and invalid.kind == "invalid"
    assert os.environ["LP_TEST_DKIM"] not in invalid.message


def test_external_dmarc_report_destinations_are_authorised_or_named(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.gateway.example\nmx_hosts: [{name: mx1.gateway.example, ipv4: [192.0.2.1]}]\n",
        "tenants/acme.yaml": (
            "name: acme\ndomains: [acme.example, acme-corp.example, sub.acme.example]\nroutes: [{host: 127.0.0.1}]\n"
            "dns: {dmarc: {policy: reject, rua: [mailto:d@acme.example, mailto:d@vendor.example],"
            " ruf: mailto:f@acme.example}}\n"
        ),
    })
    plan = plan_of(root)
    reports = [(r.zone, r.name, r.values) for r in plan.records if r.kind == "dmarc-report"]
    # acme-corp.example's reports go to acme.example: acme.example (in the plan) authorises them;
    # sub.acme.example shares acme.example's organisational domain: nothing to authorise
    assert reports == [("acme.example", "acme-corp.example._report._dmarc.acme.example", ("v=DMARC1",))]
    vendor = [w for w in plan.warnings if "vendor.example" in w]
    assert len(vendor) == 3 and (
        'acme.example: DMARC reports go to vendor.example, which must publish'
        ' acme.example._report._dmarc.vendor.example. TXT "v=DMARC1" (RFC 7489 §7.1)') in vendor[0]

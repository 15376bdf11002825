"""Render a `DnsPlan` as BIND zone snippets, octoDNS YAML zones or JSON (`liveprism dns --format`).

Contract: output depends only on the plan (same plan → same bytes). BIND snippets (templates/
bind.j2) set `$ORIGIN` and `$TTL` and use absolute names for targets; TXT data is cut into
character-strings of at most 255 octets (RFC 1035 §3.3.14) before quoting, `"` and `\\` are
escaped and octets outside printable ASCII written as `\\DDD` (RFC 1035 §5.1); data longer than
one string is wrapped in parentheses over several lines. octoDNS zones (templates/octodns.j2)
are YamlProvider files with keys in the natural order the provider enforces and `;` escaped in
TXT values, as octoDNS requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jinja2

from engine.dns_as_code.records import DnsPlan, Record, Zone

TXT_CHUNK = 255
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("engine.dns_as_code", "templates"),
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def txt_strings(data: str) -> list[bytes]:
    """The UTF-8 octets of `data` cut into character-strings of at most 255 octets (an empty TXT
    is one empty string). Cuts may fall inside a UTF-8 sequence: DNS strings are octets."""
    raw = data.encode()
    return [raw[i : i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""]


def quote_string(chunk: bytes) -> str:
    """One character-string in zone file syntax: quoted, `"` and `\\` escaped, other octets
    outside printable ASCII as `\\DDD`."""
    out = []
    for octet in chunk:
        char = chr(octet)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= octet < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{octet:03d}")
    return '"' + "".join(out) + '"'


def bind_txt(data: str) -> str:
    """TXT rdata in zone file syntax: one quoted string, or several in parentheses, one per line."""
    strings = [quote_string(chunk) for chunk in txt_strings(data)]
    if len(strings) == 1:
        return strings[0]
    return "(\n" + "\n".join(f"    {s}" for s in strings) + " )"


def _rdata(value: str, rtype: str) -> str:
    return bind_txt(value) if rtype == "TXT" else value


def _owner(name: str, width: int) -> str:
    return name.ljust(width)


def octodns_txt(value: str) -> str:
    """A TXT value as octoDNS wants it: `\\` and `;` escaped (octoDNS joins and re-chunks it)."""
    return value.replace("\\", "\\\\").replace(";", "\\;")


def yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is a subset of it)."""
    return json.dumps(value, ensure_ascii=True)


def _natural(name: str) -> tuple[str | int, ...]:
    """The natural sort key octoDNS's YamlProvider enforces (natsort's default: digit runs as numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def octodns_nodes(zone: Zone) -> Iterator[tuple[str, list[Record]]]:
    """(relative name, its records) in natural name order; the apex is `''`."""
    nodes: dict[str, list[Record]] = {}
    for record in zone.records:
        relative = "" if record.relative == "@" else record.relative
        nodes.setdefault(relative, []).append(record)
    for name in sorted(nodes, key=_natural):
        yield name, nodes[name]


_ENV.filters.update(rdata=_rdata, owner=_owner, octodns_txt=octodns_txt, yaml_str=yaml_str,
                    octodns_nodes=octodns_nodes)


def render_bind(zone: Zone, ttl: int) -> str:
    width = max([len(r.relative) for r in zone.records] + [1])
    return _ENV.get_template("bind.j2").render(zone=zone, ttl=ttl, width=width)


def render_octodns(zone: Zone, ttl: int) -> str:
    return _ENV.get_template("octodns.j2").render(zone=zone, ttl=ttl)


def render_json(plan: DnsPlan) -> str:
    """The whole plan as one JSON object (records with absolute and relative names)."""
    zones: list[dict[str, Any]] = []
    for zone in plan.zones:
        zones.append({
            "origin": zone.origin,
            "tenant": zone.tenant,
            "records": [
                {"name": r.name, "relative": r.relative, "type": r.rtype, "kind": r.kind, "domain": r.domain,
                 "ttl": plan.ttl, "values": list(r.values)}
                for r in zone.records
            ],
            "mta_sts_policies": [{"domain": p.domain, "url": p.url, "content": p.content} for p in zone.mta_sts],
            "skipped": [{"name": s.name, "kind": s.kind, "domain": s.domain, "reason": s.reason}
                        for s in zone.skipped],
        })
    doc = {"ttl": plan.ttl, "mx_hosts": list(plan.mx_hosts), "zones": zones, "warnings": list(plan.warnings)}
    return json.dumps(doc, indent=2) + "\n"


def render(plan: DnsPlan, fmt: str) -> str:
    """All zones of `plan` as one text: `bind` snippets one after the other, `octodns` YAML
    documents (one per zone), or `json`."""
    if fmt == "json":
        return render_json(plan)
    one = render_bind if fmt == "bind" else render_octodns
    return "\n".join(one(zone, plan.ttl) for zone in plan.zones)


def zone_files(plan: DnsPlan, fmt: str) -> dict[str, str]:
    """File name → content, one file per zone (`ORIGIN.zone`, `ORIGIN.yaml` as octoDNS names
    them, or `ORIGIN.json`), plus `mta-sts.DOMAIN.txt` policy files."""
    files: dict[str, str] = {}
    for zone in plan.zones:
        if fmt == "bind":
            files[f"{zone.origin}.zone"] = render_bind(zone, plan.ttl)
        elif fmt == "octodns":
            files[f"{zone.origin}.yaml"] = render_octodns(zone, plan.ttl)
        else:
            files[f"{zone.origin}.json"] = render_json(DnsPlan(plan.ttl, (zone,), plan.mx_hosts, ()))
        for policy in zone.mta_sts:
            files[f"mta-sts.{policy.domain}.txt"] = policy.content
    return files

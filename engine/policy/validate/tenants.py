"""Tenants and the gateway settings they meet: shared domains, routes, outbound settings and users
files, settings that cannot work, unsupported keys, missing list / rule set references."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from engine.policy.loader import LoadedFile, PolicySource, Problem, YamlPath
from engine.policy.users import read_users, users_path
from engine.policy.validate.common import ENV_PREFIX, _all_files, _Site


def _shared_domains(source: PolicySource) -> Iterator[Problem]:
    """A domain owned by two tenants: one error at each place, naming the other(s)."""
    owners: dict[str, list[tuple[str, _Site]]] = {}
    for loaded in source.tenants:
        seen: dict[str, _Site] = {}
        for index, domain in enumerate(loaded.model.domains):
            site = _Site(loaded, ("domains", index))
            if domain in seen:
                yield site.problem("warning", f"domain '{domain}' is listed twice (first at {seen[domain].where()})")
                continue
            seen[domain] = site
            owners.setdefault(domain, []).append((loaded.model.name, site))
    for domain, places in owners.items():
        for _, site in places:
            others = [f"tenant '{t}' ({s.where()})" for t, s in places if s is not site]
            if others:
                yield site.problem("error", f"domain '{domain}' is also owned by {', '.join(others)}")


def _tenants_without_routes(source: PolicySource) -> Iterator[Problem]:
    for loaded in source.tenants:
        if not loaded.model.routes:
            path: YamlPath = ("routes",) if ("routes",) in loaded.positions else ("name",)
            yield loaded.problem(
                "error", path, f"tenant '{loaded.model.name}' has no routes: accepted mail could not be delivered"
            )


_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _routes_to_the_gateway_itself(source: PolicySource) -> Iterator[Problem]:
    """A tenant route naming this gateway (its hostname, an `mx_hosts` name or address, or one of
    its listeners) makes every message loop (issue 7: 783 passes in 12 s). Judged from the policy
    alone, without DNS: names are compared as written, `localhost` as the loopback addresses."""
    if source.gateway is None:
        return
    gateway = source.gateway.model
    names = {gateway.hostname.lower().rstrip(".")} | {mx.name.lower().rstrip(".") for mx in gateway.mx_hosts}
    addresses = {str(address) for mx in gateway.mx_hosts for address in (*mx.ipv4, *mx.ipv6)}
    listeners = {"inbound": gateway.listeners.inbound, "outbound": gateway.listeners.outbound}
    for loaded in source.tenants:
        for index, route in enumerate(loaded.model.routes):
            host = route.host.lower().rstrip(".").removeprefix("[").removesuffix("]")
            why = None
            if host in names:
                why = f"it names this gateway ({host})"
            elif host in addresses:
                why = f"{host} is an address of this gateway's mx_hosts"
            for name, listener in listeners.items():
                if why is None and listener.port == route.port and _same_host(host, listener.address):
                    why = f"{route.label} is this gateway's {name} listener ({listener.address}:{listener.port})"
            if why is not None:
                yield loaded.problem(
                    "error", ("routes", index, "host"),
                    f"route {route.label} of tenant '{loaded.model.name}' points at this gateway itself: {why};"
                    " mail would loop",
                )


def _same_host(host: str, listen_address: str) -> bool:
    """Whether a connection to *host* certainly reaches a socket listening on *listen_address*."""
    if listen_address in _ANY_ADDRESS:
        return _local(host)
    return host == listen_address or (host in _LOOPBACK_NAMES and _local(listen_address))


def _local(host: str) -> bool:
    """Whether *host*, as written, is certainly this machine (loopback)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _not_supported_yet(source: PolicySource) -> Iterator[Problem]:
    """Keys of DESIGN.md that the gateway does not carry out yet: an error, so that nobody believes
    a setting protects them while it is ignored."""
    gateway = source.gateway
    if gateway is not None and gateway.model.storage.url is not None:
        yield gateway.problem("error", ("storage", "url"),
                              "not supported yet: a server database; remove storage.url to use the embedded store")


def _outbound_settings(source: PolicySource) -> Iterator[Problem]:
    """Outbound (DESIGN.md "Outbound"): the listener does not share the inbound one's port; SMTP
    AUTH needs STARTTLS (RFC 4954 §4: no passwords in clear text) and users files holding argon2
    hashes only, each user in one tenant; no tenant claims another's domain as a sending domain;
    tenants' outbound admission settings without an outbound listener only serve `explain`."""
    gateway = source.gateway
    if gateway is None:
        return
    listeners = gateway.model.listeners
    if listeners.outbound_enabled:
        mx, submission = listeners.inbound, listeners.outbound
        if mx.port == submission.port and (mx.address == submission.address
                                           or _ANY_ADDRESS & {mx.address, submission.address}):
            yield gateway.problem("error", ("listeners", "outbound", "port"),
                                  f"listeners.outbound uses the inbound listener's port {submission.port}")
    tls_on = gateway.model.tls.cert is not None and gateway.model.tls.key is not None
    claimed: dict[str, tuple[str, _Site]] = {}
    for loaded in source.tenants:
        for index, domain in enumerate(loaded.model.domains):
            claimed.setdefault(domain, (loaded.model.name, _Site(loaded, ("domains", index))))
    users_seen: dict[str, str] = {}
    for loaded in source.tenants:
        outbound, name = loaded.model.outbound, loaded.model.name
        for index, domain in enumerate(outbound.sender_domains):
            site = _Site(loaded, ("outbound", "sender_domains", index))
            labels = domain.split(".")
            parents = [".".join(labels[start:]) for start in range(1, len(labels))]
            owner = next((claimed[parent] for parent in parents if parent in claimed and claimed[parent][0] != name),
                         None) or claimed.setdefault(domain, (name, site))
            if owner[0] != name:
                yield site.problem("error", f"sending domain {domain} is tenant '{owner[0]}'s"
                                            f" ({owner[1].where()}): no tenant may send as another")
        key = outbound.dkim.private_key if outbound.dkim is not None else ENV_PREFIX
        if listeners.outbound_enabled and not key.startswith(ENV_PREFIX) and not (source.root / key).exists():
            yield loaded.problem("warning", ("outbound", "dkim", "private_key"),
                                 f"DKIM key {key} does not exist: tenant '{name}'s outbound mail waits in the queue"
                                 f" (4.7.0), never unsigned, until it does (liveprism dkim keygen DIR --tenant {name})")
        if (outbound.networks or outbound.auth is not None) and not listeners.outbound_enabled:
            yield loaded.problem("warning", ("outbound",),
                                 "gateway.yaml sets no listeners.outbound: these settings are used by"
                                 " `explain --direction outbound` only, no mail is accepted from them")
        if outbound.auth is None:
            continue
        if not tls_on:
            yield loaded.problem("error", ("outbound", "auth"),
                                 "outbound.auth needs STARTTLS: set tls.cert and tls.key in gateway.yaml"
                                 " (AUTH is only offered after STARTTLS, RFC 4954 §4)")
        yield from _users_file(source.root, loaded, outbound.auth.users, users_seen)


def _users_file(root: Path, loaded: LoadedFile[Any], reference: str, seen: dict[str, str]) -> Iterator[Problem]:
    """A users file's lines that are not `user:argon2-hash`, at FILE:LINE, and users of two tenants."""
    site = _Site(loaded, ("outbound", "auth", "users"))
    path = users_path(reference, root)
    if path is not None and not path.exists():
        yield site.problem("warning", f"users file {reference} does not exist: SMTP AUTH fails for"
                                      f" tenant '{loaded.model.name}' until it does")
        return
    found = read_users(reference, root)
    if isinstance(found, str):
        yield site.problem("warning", f"{found}: SMTP AUTH fails for tenant '{loaded.model.name}'")
        return
    shown = reference if path is None else os.path.relpath(path, root)
    for line, message in found.problems:
        yield Problem("error", shown, line, 1, message)
    for user in found.users:
        other = seen.setdefault(user, loaded.model.name)
        if other != loaded.model.name:
            yield site.problem("error", f"user '{user[:64]}' is also a user of tenant '{other}':"
                                        " a user belongs to one tenant")


def _settings_that_cannot_work(source: PolicySource) -> Iterator[Problem]:
    """Thresholds out of order (after tenant overrides), half a TLS key pair, `accept: listed`
    with nobody listed: each valid alone, none does what its author meant."""
    gateway = source.gateway
    if gateway is None:
        return
    postmaster = gateway.model.postmaster
    if postmaster is not None:
        domain = postmaster.rpartition("@")[2]
        if not any(domain in loaded.model.domains for loaded in source.tenants):
            yield gateway.problem("error", ("postmaster",),
                                  f"postmaster {postmaster}: no tenant owns {domain}, so it could not be delivered")
    ca_file = gateway.model.delivery.tls_ca_file
    if ca_file is not None:
        ca_path = Path(ca_file) if Path(ca_file).is_absolute() else source.root / ca_file
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(ca_path))
        except (OSError, ssl.SSLError) as exc:
            yield gateway.problem("error", ("delivery", "tls_ca_file"),
                                  f"delivery.tls_ca_file {ca_file}: not a readable PEM CA bundle ({exc})")
    tls = gateway.model.tls
    if (tls.cert is None) != (tls.key is None):
        yield gateway.problem("error", ("tls",), "tls needs both cert and key (STARTTLS cannot be offered with one)")
    scoring = gateway.model.scoring
    owners: list[tuple[LoadedFile[Any], tuple[float, float, float]]] = [
        (gateway, (scoring.tag_at, scoring.quarantine_at, scoring.reject_at))
    ]
    for loaded in source.tenants:
        own = loaded.model.scoring
        owners.append((loaded, (
            scoring.tag_at if own.tag_at is None else own.tag_at,
            scoring.quarantine_at if own.quarantine_at is None else own.quarantine_at,
            scoring.reject_at if own.reject_at is None else own.reject_at,
        )))
        if loaded.model.recipients.accept == "listed" and not loaded.model.recipients.addresses:
            yield loaded.problem(
                "error", ("recipients",), "recipients: accept: listed with no addresses refuses every recipient"
            )
    for loaded, (tag_at, quarantine_at, reject_at) in owners:
        if not tag_at <= quarantine_at <= reject_at:
            path: YamlPath = ("scoring",) if ("scoring",) in loaded.positions else ()
            yield loaded.problem(
                "error", path,
                f"scoring thresholds must rise: tag_at {tag_at:g} <= quarantine_at {quarantine_at:g}"
                f" <= reject_at {reject_at:g} (after tenant overrides)",
            )


def _missing_references(source: PolicySource) -> Iterator[Problem]:
    """`lists:` / `rules:` of the gateway and tenants name lists and rule sets that exist."""
    # A file that failed to load has its own problems; assume it defines its stem, so that one
    # broken list does not also produce an error at every reference to it.
    loaded_paths = {f.path for f in _all_files(source)}
    broken = [PurePosixPath(rel) for rel in source.files if rel not in loaded_paths]
    lists = {f.model.name for f in source.lists} | {p.stem for p in broken if p.parent.name == "lists"}
    rulesets = {f.model.name for f in source.rulesets} | {p.stem for p in broken if p.parent.name == "rules"}
    referrers: list[LoadedFile[Any]] = [*([source.gateway] if source.gateway else []), *source.tenants]
    for loaded in referrers:
        model = loaded.model
        for index, name in enumerate(model.lists):
            if name not in lists:
                hint = " (it is a rule set: put it under rules:)" if name in rulesets else ""
                yield loaded.problem("error", ("lists", index), f"unknown list '{name}'{hint}")
        for index, name in enumerate(model.rules):
            if name not in rulesets:
                hint = " (it is a list: put it under lists:)" if name in lists else ""
                yield loaded.problem("error", ("rules", index), f"unknown rule set '{name}'{hint}")

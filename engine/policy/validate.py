"""Semantic checks over a loaded policy (DESIGN.md `validate`): what one file's schema cannot see.

Contract: `validate_policy(source)` returns the loader's problems plus every semantic problem,
each located at the FILE:LINE:COL of the offending item, sorted by (file, line, col). It reads
nothing but the policy and, for the secret check, asks `git` which files it tracks. Errors make
the policy invalid; warnings alone do not (the CLI decides the exit code).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import re2

from engine.policy.loader import LoadedFile, PolicySource, Problem, Severity, YamlPath, paused_gc
from engine.policy.models import (
    AllCondition,
    AnyCondition,
    AttachmentCondition,
    BodyCondition,
    CheckCondition,
    Checks,
    HeaderCondition,
    ListAction,
    NotCondition,
    PolicyModel,
    Rule,
)
from engine.policy.users import read_users, users_path

ENV_PREFIX = "env:"


def validate_policy(source: PolicySource) -> tuple[Problem, ...]:
    """Load problems + semantic problems, deduplicated and sorted by (file, line, col).

    Every check is one pass over what it looks at (dicts keyed by name, id, domain or entry), and
    the garbage collector is paused as in `load_policy`: the checks only allocate."""
    with paused_gc():
        problems: set[Problem] = set(source.problems)
        for check in (
            _duplicate_names,
            _duplicate_rule_ids,
            _shared_domains,
            _missing_references,
            _bad_regexes,
            _tenants_without_routes,
            _routes_to_the_gateway_itself,
            _settings_that_cannot_work,
            _not_supported_yet,
            _outbound_settings,
            _allowed_and_blocked,
            _names_match_files,
            _tracked_secrets,
            _check_settings,
        ):
            problems.update(check(source))
        return tuple(sorted(problems, key=Problem.sort_key))


@dataclass(frozen=True, slots=True)
class _Site:
    """One place in the policy: a file and a YAML path in it."""

    file: LoadedFile[Any]
    path: YamlPath

    def where(self) -> str:
        """`FILE:LINE`, for messages that name another place."""
        return self.file.source(self.path)

    def problem(self, severity: Severity, message: str) -> Problem:
        return self.file.problem(severity, self.path, message)


def _all_files(source: PolicySource) -> Iterator[LoadedFile[Any]]:
    if source.gateway is not None:
        yield source.gateway
    yield from source.tenants
    yield from source.lists
    yield from source.rulesets


# ---------------------------------------------------------------- names and ids


def _duplicate_names(source: PolicySource) -> Iterator[Problem]:
    """A second tenant / list / rule set with an already used name (files in path order)."""
    kinds: list[tuple[str, Sequence[LoadedFile[Any]]]] = [
        ("tenant", source.tenants),
        ("list", source.lists),
        ("rule set", source.rulesets),
    ]
    for kind, files in kinds:
        first: dict[str, _Site] = {}
        for loaded in files:
            site = _Site(loaded, ("name",))
            name = loaded.model.name
            if name in first:
                yield site.problem("error", f"duplicate {kind} name '{name}': already defined at {first[name].where()}")
            else:
                first[name] = site


class _Memo:
    """The last result of a check over some files, reused while the very same file objects come
    again: the incremental loader of a hot reload (`engine.graph.build.incremental`) hands back an
    unchanged file's `LoadedFile` itself, so only checks over changed files run again."""

    def __init__(self) -> None:
        self._last: tuple[tuple[object, ...], tuple[Problem, ...]] = ((), ())

    def get(self, files: tuple[object, ...], compute: Callable[[], Iterable[Problem]]) -> tuple[Problem, ...]:
        key, value = self._last
        if files and len(files) == len(key) and all(a is b for a, b in zip(files, key, strict=True)):
            return value
        value = tuple(compute())
        self._last = (files, value)  # one assignment: a concurrent reader sees the old or the new pair
        return value


_RULE_IDS, _ALLOWED_AND_BLOCKED = _Memo(), _Memo()


class _CleanRules:
    """The rules one check found nothing wrong with, by identity, while the check's `context` is
    the same object: a hot reload hands back every unchanged rule as the very same object
    (`engine.graph.build.incremental`, `engine.policy.yaml_chunks`), so only new rules are checked.
    A rule with a problem is checked every time (its problem names its place)."""

    def __init__(self) -> None:
        self._state: tuple[object, dict[int, Rule]] = (None, {})  # (context, clean rules): one attribute

    def problems(
        self, rulesets: Iterable[LoadedFile[Any]], context: object,
        check: Callable[[LoadedFile[Any], int, Rule], Iterable[Problem]],
    ) -> Iterator[Problem]:
        last_context, last_clean = self._state
        known = last_clean if context is last_context else {}
        clean: dict[int, Rule] = {}
        for loaded in rulesets:
            rules: list[Rule] = loaded.model.rules
            for index, rule in enumerate(rules):
                if known.get(id(rule)) is not rule:
                    found = tuple(check(loaded, index, rule))
                    if found:
                        yield from found
                        continue
                clean[id(rule)] = rules[index]
        self._state = (context, clean)  # one assignment; only current rules are kept


_CHECKED_RULES, _REGEXES = _CleanRules(), _CleanRules()


def _duplicate_rule_ids(source: PolicySource) -> Iterator[Problem]:
    """Rule ids are unique across the whole policy."""
    return iter(_RULE_IDS.get(source.rulesets, lambda: _find_duplicate_rule_ids(source)))


def _find_duplicate_rule_ids(source: PolicySource) -> Iterator[Problem]:
    ids = [rule.id for loaded in source.rulesets for rule in loaded.model.rules]
    if len(set(ids)) == len(ids):
        return
    first: dict[str, _Site] = {}
    for loaded in source.rulesets:
        for index, rule in enumerate(loaded.model.rules):
            site = _Site(loaded, ("rules", index, "id"))
            if rule.id in first:
                where = first[rule.id].where()
                yield site.problem("error", f"duplicate rule id '{rule.id}': already defined at {where}")
            else:
                first[rule.id] = site


def _names_match_files(source: PolicySource) -> Iterator[Problem]:
    """`tenants/acme.yaml` should say `name: acme`."""
    named: list[LoadedFile[Any]] = [*source.tenants, *source.lists, *source.rulesets]
    for loaded in named:
        stem = PurePosixPath(loaded.path).stem
        name = loaded.model.name
        if stem != name:
            yield loaded.problem(
                "warning", ("name",), f"name '{name}' differs from the file name '{stem}': rename one of them"
            )


# ---------------------------------------------------------------- tenants


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


# ---------------------------------------------------------------- lists


_LIST_FIELDS = (("senders", "sender"), ("domains", "domain"), ("networks", "network"))


def _allowed_and_blocked(source: PolicySource) -> Iterator[Problem]:
    """An entry on an allow list and on a block list: the block list wins, the allow entry is dead."""
    return iter(_ALLOWED_AND_BLOCKED.get(source.lists, lambda: _find_allowed_and_blocked(source)))


def _find_allowed_and_blocked(source: PolicySource) -> Iterator[Problem]:
    allows = [loaded for loaded in source.lists if loaded.model.action is ListAction.allow]
    blocks = [loaded for loaded in source.lists if loaded.model.action is ListAction.block]
    for field, noun in _LIST_FIELDS:
        allowed: set[str] = set()
        for loaded in allows:
            allowed.update(getattr(loaded.model, field))
        blocked: set[str] = set()
        for loaded in blocks:
            blocked.update(getattr(loaded.model, field))
        both = allowed & blocked
        if not both:
            continue
        first: dict[str, tuple[LoadedFile[Any], int]] = {}  # first (file, index) of each entry on a block list
        for loaded in blocks:
            for index, entry in enumerate(getattr(loaded.model, field)):
                if entry in both and entry not in first:
                    first[entry] = (loaded, index)
        for loaded in allows:
            for index, entry in enumerate(getattr(loaded.model, field)):
                if entry in both:
                    block = _Site(first[entry][0], (field, first[entry][1]))
                    yield loaded.problem(
                        "warning",
                        (field, index),
                        f"{noun} '{entry}' is also on block list '{block.file.model.name}' ({block.where()}),"
                        " which takes precedence",
                    )


# ---------------------------------------------------------------- regexes


def _bad_regexes(source: PolicySource) -> Iterator[Problem]:
    """Every header/body regex and attachment filename pattern compiles with RE2 (memoised per rule)."""
    return _REGEXES.problems(source.rulesets, _REGEXES, _rule_bad_regexes)


def _rule_bad_regexes(loaded: LoadedFile[Any], index: int, rule: Rule) -> Iterator[Problem]:
    for path, pattern in _patterns(rule.when, ("rules", index, "when")):
        reason = _re2_error(pattern)
        if reason is not None:
            yield loaded.problem("error", path, f"{path[-1]}: RE2 cannot compile '{pattern}': {reason}")


@functools.lru_cache(maxsize=1 << 16)
def _re2_error(pattern: str) -> str | None:
    """Why RE2 cannot compile `pattern`, or None. Memoised: a hot reload re-validates every
    pattern of the policy, and compiling 10,000 of them again costs about a second."""
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options=options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    return None


def _leaf_conditions(condition: PolicyModel, path: YamlPath) -> Iterator[tuple[YamlPath, PolicyModel]]:
    """(YAML path, condition) of every leaf (not any/all/not) of a condition tree."""
    if isinstance(condition, AnyCondition):
        for index, child in enumerate(condition.any):
            yield from _leaf_conditions(child, (*path, "any", index))
    elif isinstance(condition, AllCondition):
        for index, child in enumerate(condition.all):
            yield from _leaf_conditions(child, (*path, "all", index))
    elif isinstance(condition, NotCondition):
        yield from _leaf_conditions(condition.not_, (*path, "not"))
    else:
        yield path, condition


def _patterns(tree: PolicyModel, tree_path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    """(YAML path, pattern) of every RE2 pattern in a condition tree."""
    for path, condition in _leaf_conditions(tree, tree_path):
        yield from _leaf_patterns(condition, path)


def _leaf_patterns(condition: PolicyModel, path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    if isinstance(condition, HeaderCondition) and condition.header.regex is not None:
        yield (*path, "header", "regex"), condition.header.regex
    elif isinstance(condition, BodyCondition) and condition.body.regex is not None:
        yield (*path, "body", "regex"), condition.body.regex
    elif isinstance(condition, AttachmentCondition) and condition.attachment.filename is not None:
        yield (*path, "attachment", "filename"), condition.attachment.filename


# ---------------------------------------------------------------- secrets


def _tracked_secrets(source: PolicySource) -> Iterator[Problem]:
    """A secret referenced by path (not `env:NAME`) must not be tracked by git."""
    secrets: list[tuple[_Site, str]] = []
    if source.gateway is not None and source.gateway.model.tls.key is not None:
        secrets.append((_Site(source.gateway, ("tls", "key")), source.gateway.model.tls.key))
    if source.gateway is not None and source.gateway.model.admin is not None:
        secrets.append((_Site(source.gateway, ("admin", "token")), source.gateway.model.admin.token))
    for loaded in source.tenants:
        dkim = loaded.model.outbound.dkim
        if dkim is not None:
            secrets.append((_Site(loaded, ("outbound", "dkim", "private_key")), dkim.private_key))
        auth = loaded.model.outbound.auth
        if auth is not None:
            secrets.append((_Site(loaded, ("outbound", "auth", "users")), auth.users))
    by_path = [(site, value) for site, value in secrets if not value.startswith(ENV_PREFIX)]
    if not by_path or not _in_git_work_tree(source.root):
        return
    for site, value in by_path:
        if _git_tracks(source.root, value):
            yield site.problem(
                "error",
                f"secret '{value}' is tracked by git: remove it from the repository (git rm --cached) "
                f"and reference it by a path outside git or as {ENV_PREFIX}NAME",
            )


def _git(root: Path, args: Iterable[str]) -> str | None:
    """Standard output of `git ARGS` run in `root`; None when it fails or git cannot be run."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _in_git_work_tree(root: Path) -> bool:
    return (_git(root, ["rev-parse", "--is-inside-work-tree"]) or "").strip() == "true"


def _git_tracks(root: Path, path: str) -> bool:
    return _git(root, ["ls-files", "--error-unmatch", "--", path]) is not None


# ---------------------------------------------------------------- external checks


def _check_settings(source: PolicySource) -> Iterator[Problem]:
    """Rules and tenant overrides may only name checks (and zones) the gateway runs; ARC trust
    needs ARC and DMARC (it forgives DMARC failures)."""
    gateway = source.gateway
    if gateway is None:
        return
    checks = gateway.model.checks
    if checks.arc.trusted_sealers and not (checks.arc.enabled and checks.dmarc.enabled):
        yield gateway.problem(
            "error", ("checks", "arc", "trusted_sealers"),
            "checks.arc.trusted_sealers needs arc and dmarc enabled (a trusted chain overrides DMARC failures)",
        )
    if checks.antivirus is not None and checks.antivirus.timeout >= checks.budget:
        yield gateway.problem(
            "warning", ("checks", "antivirus"),
            f"checks.antivirus.timeout {checks.antivirus.timeout:g} s is not below checks.budget {checks.budget:g} s:"
            " a slow scan is cut at the budget and the message gets on_error",
        )
    running = _running_checks(checks)
    yield from _CHECKED_RULES.problems(source.rulesets, gateway, lambda loaded, index, rule: _rule_checks(
        loaded, index, rule, running))
    for tenant in source.tenants:
        for key in tenant.model.checks:
            name, _, result = key.partition(":")
            problem = _unknown_check(running, name, [] if result == "*" else [result])
            if problem:
                yield tenant.problem("error", ("checks", key), f"override of {problem}")


def _rule_checks(loaded: LoadedFile[Any], index: int, rule: Rule, running: dict[str, set[str] | None]
                 ) -> Iterator[Problem]:
    """A rule may only test the checks the gateway runs (`running`)."""
    for path, condition in _check_conditions(rule.when, ("rules", index, "when")):
        problem = _unknown_check(running, condition.check, condition.result)
        if problem:
            yield loaded.problem("error", path, f"rule '{rule.id}' tests {problem}: it could never match")


def _running_checks(checks: Checks) -> dict[str, set[str] | None]:
    """Check name -> the results it can report (None: any), for the checks the gateway runs."""
    from engine.policy.models import CHECK_RESULTS

    running: dict[str, set[str] | None] = {}
    for name in ("spf", "dkim", "dmarc", "arc"):
        if getattr(checks, name).enabled:
            running[name] = set(CHECK_RESULTS[name])
    if checks.dnsbl:
        running["dnsbl"] = {zone.zone for zone in checks.dnsbl}
    if checks.uribl:
        running["uribl"] = {zone.zone for zone in checks.uribl}
    if checks.antivirus is not None:
        running["virus"] = None
        running["antivirus"] = {"error"}
    return running


def _unknown_check(running: dict[str, set[str] | None], name: str, results: Sequence[str]) -> str | None:
    """What is wrong with testing check `name` for `results` ("" when nothing), or None."""
    if name not in running:
        return f"check '{name}', which gateway.yaml checks does not run"
    allowed = running[name]
    unknown = [r for r in results if allowed is not None and r not in allowed]
    if unknown:
        what = "zone" if name in ("dnsbl", "uribl") else "result"
        return f"{name} {what} {', '.join(unknown)}, which gateway.yaml checks.{name} does not have"
    return None


def _check_conditions(tree: PolicyModel, tree_path: YamlPath) -> Iterator[tuple[YamlPath, CheckCondition]]:
    for path, condition in _leaf_conditions(tree, tree_path):
        if isinstance(condition, CheckCondition):
            yield (*path, "check"), condition

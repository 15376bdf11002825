"""Semantic checks over a loaded policy (DESIGN.md `validate`): what one file's schema cannot see.

Contract: `validate_policy(source)` returns the loader's problems plus every semantic problem,
each located at the FILE:LINE:COL of the offending item, sorted by (file, line, col). It reads
nothing but the policy and, for the secret check, asks `git` which files it tracks. Errors make
the policy invalid; warnings alone do not (the CLI decides the exit code).

`validate_policy` is here; the checks, by family: `names` (names and ids), `tenants`, `lists`,
`regexes`, `secrets`, `external_checks`; what they share (`_Site`, memos) is in `common`.
"""

from __future__ import annotations

from engine.policy.loader import PolicySource, Problem, paused_gc
from engine.policy.validate.common import ENV_PREFIX
from engine.policy.validate.external_checks import _check_settings
from engine.policy.validate.lists import _allowed_and_blocked
from engine.policy.validate.names import _duplicate_names, _duplicate_rule_ids, _names_match_files
from engine.policy.validate.regexes import _bad_regexes
from engine.policy.validate.secrets import _tracked_secrets
from engine.policy.validate.tenants import (
    _missing_references,
    _not_supported_yet,
    _outbound_settings,
    _routes_to_the_gateway_itself,
    _settings_that_cannot_work,
    _shared_domains,
    _tenants_without_routes,
)

__all__ = ["ENV_PREFIX", "validate_policy"]


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

"""SMTP AUTH users files (`outbound.auth.users` of a tenant): salted password hashes only.

Format: one `user:hash` per line; blank lines and lines starting with `#` are ignored. The hash
must be an argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, also `$argon2i$` and
`$argon2d$`), as `liveprism users hash` prints. Any other line — a plaintext password, a crypt(3)
or bcrypt hash, no `:` — is a problem reported at its line number and is never used: no password
is ever compared with anything but an argon2 hash. Problem messages never repeat the line's text
(it may be a plaintext password).

Contract: `parse_users` and `read_users` return values, never raise; `verify_password` is slow on
purpose (argon2, ~50 ms): callers on an event loop run it in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ENV_PREFIX = "env:"
_HASHER = argon2.PasswordHasher()  # argon2id with the library's (RFC 9106 "second") defaults
_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")


@dataclass(frozen=True, slots=True)
class UsersFile:
    """The usable entries of a users file (user → hash) and its problems as (line number, message)."""

    users: dict[str, str] = field(default_factory=dict)
    problems: tuple[tuple[int, str], ...] = ()


def _recognised(hash_text: str) -> bool:
    if not hash_text.startswith(_ARGON2_PREFIXES):
        return False
    try:
        argon2.extract_parameters(hash_text)
    except (InvalidHashError, ValueError):
        return False
    return True


def parse_users(text: str) -> UsersFile:
    """The entries of a users file; a line that is not `user:argon2-hash` is a problem, not an entry."""
    users: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, colon, hash_text = stripped.partition(":")
        user, hash_text = user.strip(), hash_text.strip()
        if not colon or not user:
            problems.append((number, "not a `user:hash` line"))
        elif not _recognised(hash_text):
            problems.append((number, f"user '{user[:64]}': not an argon2 hash (plaintext or unknown format);"
                                     " make one with `liveprism users hash`"))
        elif user in users:
            problems.append((number, f"user '{user[:64]}' is listed twice"))
        else:
            users[user] = hash_text
    return UsersFile(users, tuple(problems))


def users_path(reference: str, policy_dir: Path) -> Path | None:
    """The file a `users` reference names (relative to the policy directory); None for `env:NAME`."""
    if reference.startswith(ENV_PREFIX):
        return None
    path = Path(reference)
    return path if path.is_absolute() else policy_dir / path


def read_users(reference: str, policy_dir: Path) -> UsersFile | str:
    """The users file a reference names (a path, or `env:NAME` holding the text), or why it cannot be read."""
    path = users_path(reference, policy_dir)
    if path is None:
        name = reference[len(ENV_PREFIX):]
        text = os.environ.get(name)
        if text is None:
            return f"environment variable {name} is not set"
        return parse_users(text)
    try:
        return parse_users(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read users file {path}: {exc}"


def hash_password(password: str) -> str:
    """A salted argon2id hash of `password` for a users file."""
    return _HASHER.hash(password)


def verify_password(hash_text: str, password: str) -> bool:
    """Whether `password` matches `hash_text` (an argon2 hash; anything else never matches)."""
    try:
        return _HASHER.verify(hash_text, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False

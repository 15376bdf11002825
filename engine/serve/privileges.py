"""`serve --user NAME`: give up root once the listening sockets are bound, as every MTA does.

Contract: `resolve_account(name)` returns the account or an error line (unknown user, or root);
`drop_privileges(account)` sets the groups, gid and uid of the whole process (all threads; the
relay child started afterwards inherits them) and verifies that root cannot be regained. Before
the drop the caller gives the state directory to the account (`chown_state_dir`).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int


def resolve_account(name: str) -> Account | str:
    """The account called *name*, or why it cannot be used."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return f"--user {name}: no such user"
    if entry.pw_uid == 0:
        return f"--user {name}: is root; name an unprivileged account"
    return Account(name, entry.pw_uid, entry.pw_gid)


def drop_privileges(account: Account) -> None:
    """Become *account* for good (supplementary groups, then gid, then uid); raises OSError if the
    kernel refuses, or RuntimeError if root could be regained."""
    os.initgroups(account.name, account.gid)
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("root privileges could be regained after dropping them")

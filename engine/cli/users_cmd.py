"""`liveprism users hash`: a salted argon2id hash for a line of an SMTP AUTH users file.

Contract: reads the password from standard input — its first line without the line end, or, on a
terminal, typed twice without echo — and prints only its hash (`$argon2id$…`); the password is
never printed or written anywhere. The users file line is then `USER:HASH`. Exit 0; 2 when the
password is empty or the two typed ones differ.
"""

from __future__ import annotations

import getpass
import sys

import typer

from engine.policy.users import hash_password

users_app = typer.Typer(help="SMTP AUTH users files of the outbound listener.", no_args_is_help=True)

EXIT_USAGE = 2


@users_app.command("hash")
def hash_command() -> None:
    """Read a password from stdin and print its argon2 hash (a users file line is USER:HASH)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("error: empty password", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)
    print(hash_password(password))

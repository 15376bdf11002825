"""`liveprism dkim keygen [DIR] --tenant T [--selector S] [--algorithm rsa|ed25519]`.

Contract: creates the signing key of tenant T where its `outbound.dkim.private_key` points
(relative to DIR; RSA 2048 by default), mode 0600, never overwriting an existing file, and prints
the public key record of every domain of T in zone file syntax (the private key is never
printed). `--selector`, when given, must be the policy's selector (the policy is the source of
truth: change it there first). Exit 0 when written; 2 for any refusal, with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

dkim_app = typer.Typer(help="DKIM signing keys of the tenants' outbound mail.", no_args_is_help=True)

EXIT_OK = 0
EXIT_USAGE = 2


@dkim_app.command("keygen")
def keygen(
    directory: Annotated[Path, typer.Argument(help="Policy directory.")] = Path("policies"),
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant whose key to create.")] = "",
    selector: Annotated[str | None, typer.Option("--selector", help="Must match outbound.dkim.selector.")] = None,
    algorithm: Annotated[str, typer.Option("--algorithm", help="rsa (2048 bits) or ed25519.")] = "rsa",
) -> None:
    """Write the tenant's DKIM key where its policy points (mode 0600) and print the DNS record."""
    raise typer.Exit(run_keygen(directory, tenant, selector, algorithm))


def run_keygen(directory: Path, tenant_name: str, selector: str | None, algorithm: str) -> int:
    from engine.dkim.keys import generate_key, key_location, public_record, write_new_key
    from engine.dns_as_code.render import bind_txt
    from engine.policy.loader import load_policy

    if not tenant_name:
        print("error: give --tenant NAME", file=sys.stderr)
        return EXIT_USAGE
    if algorithm not in ("rsa", "ed25519"):
        print(f"error: --algorithm must be rsa or ed25519, not {algorithm!r}", file=sys.stderr)
        return EXIT_USAGE
    if not directory.is_dir():
        print(f"error: policy directory '{directory}' does not exist", file=sys.stderr)
        return EXIT_USAGE
    source = load_policy(directory)
    found = [t for t in source.tenants if t.model.name == tenant_name]
    if not found:
        for problem in source.problems:
            if problem.file.startswith("tenants/") and problem.severity == "error":
                print(problem.format("text", directory), file=sys.stderr)
        names = ", ".join(sorted(t.model.name for t in source.tenants)) or "none"
        print(f"error: no tenant '{tenant_name}' in {directory} (tenants: {names})", file=sys.stderr)
        return EXIT_USAGE
    loaded = found[0]
    dkim = loaded.model.outbound.dkim
    if dkim is None:
        print(f"error: {directory / loaded.path}: tenant '{tenant_name}' has no outbound.dkim; add e.g.\n"
              f"  outbound: {{dkim: {{selector: lp1, private_key: keys/{tenant_name}.pem}}}}\n"
              "and keep keys/ out of git (.gitignore)", file=sys.stderr)
        return EXIT_USAGE
    if selector is not None and selector.lower() != dkim.selector.lower():
        print(f"error: {directory / loaded.path} signs with selector '{dkim.selector}', not '{selector}': "
              "change outbound.dkim.selector (and private_key, to keep the old key) first", file=sys.stderr)
        return EXIT_USAGE
    path = key_location(directory, dkim)
    if path is None:
        print(f"error: the key is {dkim.private_key}: an environment variable cannot be written; "
              "point private_key at a file, or generate the PEM elsewhere (openssl genpkey)", file=sys.stderr)
        return EXIT_USAGE
    key = generate_key("ed25519" if algorithm == "ed25519" else "rsa")
    refused = write_new_key(path, key)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {algorithm} key {path} (mode 0600; keep it out of git). Publish:", file=sys.stderr)
    ttl = source.gateway.model.dns_ttl if source.gateway is not None else 3600
    data = bind_txt(public_record(key))
    for domain in loaded.model.domains:
        print(f"{dkim.selector.lower()}._domainkey.{domain}. {ttl} IN TXT {data}")
    return EXIT_OK

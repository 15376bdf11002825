"""Policy directories written by the tests: `write_policy` and the route of a tenant to a test port.

    write_policy(tmp_path, {"lists/x.yaml": "..."})          # on top of a minimal valid policy
    write_policy(tmp_path, POLICY, base=False, dedent=True)  # exactly these files
    write_policy(tmp_path / "policy", port=port, tenants=acme_to(box.port))  # for a real `liveprism serve`
    problems_of(root), problem_texts(problems), fingerprint(source)   # what loading it gives

Without `port` the base is `GATEWAY` + `tenants/acme.yaml` (`ACME`), enough for the loader,
validator and graph tests. With `port` it is the lab gateway: an inbound listener on
127.0.0.1:`port`, the example rule sets of policies/rules, short retry times, the `tenants`
(YAML-able dicts, routes from `route`) and `lists` given, and a git repository around it.
`files` (relative path -> text) are written last, over the base, in both cases.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.policy.loader import PolicySource, Problem, load_policy
from engine.policy.models import Route, RouteTls
from engine.policy.validate import validate_policy
from tests.support.processes import LOCALHOST, REPO

GATEWAY = "hostname: mx.example.com\n"
ACME = """\
name: acme
domains: [acme.example]
routes:
  - {host: mail1.acme.internal, port: 25}
"""


def route(port: int, priority: int = 10, tls: RouteTls | str = RouteTls.opportunistic) -> Route:
    """A tenant route (or next hop) to 127.0.0.1:`port`."""
    return Route(host=LOCALHOST, port=port, priority=priority, tls=RouteTls(tls))


def acme_to(port: int, **tenant: Any) -> dict[str, dict[str, Any]]:
    """`tenants=` for the lab gateway: acme (acme.example), its mail routed to 127.0.0.1:`port`."""
    return {"acme": {"domains": ["acme.example"], "routes": [route(port)], **tenant}}


def _plain(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    raise TypeError(f"not JSON: {value!r}")


def _lab_gateway(port: int, *, lists: Mapping[str, str], extra_gateway: str, mx_port: int,
                 private_next_hops: str, delivery_extra: str, max_message_size: int) -> str:
    """The lab's gateway.yaml. Its mail exchangers are on 127.0.0.1, so DSNs may go to internal next
    hops unless the test says `private_next_hops="refuse"` (the gateway's default)."""
    return f"""
hostname: mxpath.test.example
listeners:
  inbound: {{address: 127.0.0.1, port: {port}}}
limits: {{max_message_size: {max_message_size}, max_recipients: 50, max_connections: 200, max_connections_per_ip: 100,
          command_timeout: 60}}
delivery: {{retry_initial: 1, retry_max: 2, give_up_after: 3600, connect_timeout: 2, mx_port: {mx_port},
           private_next_hops: {private_next_hops}{", " + delivery_extra if delivery_extra else ""}}}
scoring: {{tag_at: 3.0, quarantine_at: 6.0, reject_at: 15.0, subject_prefix: "[SPAM] "}}
lists: [{", ".join(name for name in lists if name.startswith("global"))}]
rules: [global-content]
{extra_gateway}
"""


def write_policy(
    root: Path,
    files: Mapping[str, str] | None = None,
    *,
    base: bool = True,
    dedent: bool = False,
    port: int | None = None,
    tenants: Mapping[str, Mapping[str, object]] | None = None,
    lists: Mapping[str, str] | None = None,
    extra_gateway: str = "",
    mx_port: int = 25,
    private_next_hops: str = "allow",
    delivery_extra: str = "",
    max_message_size: int = 200000,
) -> Path:
    """Write a policy directory under `root` (see the module docstring); `root`.

    `base=False` writes `files` only; `dedent` removes the common indentation of each text."""
    root.mkdir(parents=True, exist_ok=True)
    everything: dict[str, str] = {}
    if port is not None:
        shutil.copytree(REPO / "policies" / "rules", root / "rules", dirs_exist_ok=True)
        (root / "tenants").mkdir(exist_ok=True)
        (root / "lists").mkdir(exist_ok=True)
        everything["gateway.yaml"] = _lab_gateway(
            port, lists=lists or {}, extra_gateway=extra_gateway, mx_port=mx_port,
            private_next_hops=private_next_hops, delivery_extra=delivery_extra, max_message_size=max_message_size)
        for name, tenant in (tenants or {}).items():
            everything[f"tenants/{name}.yaml"] = json.dumps({"name": name, **tenant}, default=_plain)
        for name, text in (lists or {}).items():
            everything[f"lists/{name}.yaml"] = text
    elif base:
        everything.update({"gateway.yaml": GATEWAY, "tenants/acme.yaml": ACME})
    everything.update(files or {})
    for rel, text in everything.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if dedent else text, encoding="utf-8")
    if port is not None:
        subprocess.run(["git", "init", "-q", str(root)], check=False)
    return root


def copy_example(root: Path, *, keys: bool = True) -> Path:
    """A copy of the worked example policy (policies/) at `root`; without its DKIM keys if `keys` is false."""
    shutil.copytree(REPO / "policies", root, ignore=None if keys else shutil.ignore_patterns("keys"))
    return root


def example_with_new_key(root: Path, tenant: str = "acme") -> Path:
    """`copy_example` without the keys, then `liveprism dkim keygen` for `tenant` (run in this process)."""
    from typer.testing import CliRunner

    from engine.cli.main import app

    copy_example(root, keys=False)
    done = CliRunner().invoke(app, ["dkim", "keygen", str(root), "--tenant", tenant])
    assert done.exit_code == 0, done.output
    return root


def problem_texts(problems: Iterable[Problem]) -> list[str]:
    """Problems as `liveprism validate` prints them (FILE:LINE:COL: severity: message)."""
    return [p.format_text() for p in problems]


def problems_of(root: Path) -> list[str]:
    """The texts of what loading and validating the policy at `root` finds."""
    return problem_texts(validate_policy(load_policy(root)))


def fingerprint(source: PolicySource) -> list[Any]:
    """What a loaded policy holds (models, positions, problems, hash, files), to compare two loads."""
    files = [source.gateway, *source.tenants, *source.lists, *source.rulesets]
    return [
        [(f.path, f.model.model_dump(mode="json"), dict(f.positions)) if f is not None else None for f in files],
        source.problems,
        source.content_hash,
        source.files,
    ]


# ---------------------------------------------------------------- policy repositories in git

GIT_IDENTITY = ("-c", "user.name=LivePrism test", "-c", "user.email=test@liveprism.example")


def git(*args: str, cwd: Path | None = None) -> str:
    """`git ARGS` in `cwd` with a committer identity; its stripped output (raises when git fails)."""
    done = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=60)
    return done.stdout.strip()


def commit(repo: Path, message: str, *, push: str | None = None) -> str:
    """Commit everything in the work tree `repo` (and push it to origin's branch `push`); the commit."""
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    if push is not None:
        git("push", "-q", "origin", push, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def remote_and_clone(root: Path, branch: str = "main") -> tuple[Path, Path]:
    """A bare repository root/remote.git (the "remote") and a clone root/work to push from, on `branch`."""
    bare, work = root / "remote.git", root / "work"
    git("init", "-q", "--bare", "-b", branch, str(bare))
    git("clone", "-q", str(bare), str(work))
    git("checkout", "-q", "-b", branch, cwd=work)
    return bare, work

"""The single evaluation path, proven: `explain --json` predicts exactly what a real `liveprism serve`
does with the same policy, envelope and message.

One gateway runs the worked example policy (policies/, copied: routes pointed at three real
mailboxes, one per tenant, and a few loopback addresses added to its lists so that network
entries can be exercised from 127.0.0.x). For every message of the example corpus, and for
hypothesis-generated envelopes (mixed-case and duplicate recipients, several tenants, unknown
users, relaying attempts, blocked and allowed senders and networks, the null sender), the test
compares, stage by stage:
- the reply to MAIL, to each RCPT and to DATA (code, enhanced status and text; the 250 after DATA
  up to its queue id);
- for each tenant copy: where it went — delivered to the tenant's first route (with its
  action, deliver or tag, and exactly its recipients), held in quarantine, or nowhere (rejected,
  tempfailed, discarded);
and at the end, that no copy arrived that explain did not predict.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli.explain_cmd import explain_json
from engine.graph.build.compiler import load_graph
from engine.graph.filter_graph import FilterGraph
from engine.graph.transaction import simulate
from tests.support.corpus import CLEAN, EXAMPLE_MESSAGES
from tests.support.gateway import Gateway
from tests.support.messages import message
from tests.support.peers import Sink
from tests.support.policies import copy_example
from tests.support.processes import LOCALHOST, REPO, free_port, liveprism, wait_for

HELO = "client.test.example"
GLOBAL_BLOCKED_IP = "127.0.0.66"
GLOBEX_BLOCKED_IP = "127.0.0.77"
ACME_ALLOWED_IP = "127.0.0.88"
TEMPFAIL_SUBJECT = "initech maintenance window"

SENDERS = [
    "news@sender.example",
    "Mixed.Case@Sender.Example",
    "",  # the null sender (DSNs)
    "spammer@bad.example",  # global block list (MAIL)
    "x@competitor.example",  # globex block list (RCPT, globex only)
    "billing@partner.example",  # acme allow list
]
RCPTS = [
    "bob@acme.example",
    "BOB@acme.example",
    "Bob@ACME.Example",
    "eve@globex.example",
    "eve@globex-corp.example",
    "peter@initech.example",
    "carol@support.initech.example",
    "nobody@initech.example",  # initech accepts listed users only
    "x@nowhere.example",  # no tenant: relaying denied
]
CLIENTS = [LOCALHOST, GLOBAL_BLOCKED_IP, GLOBEX_BLOCKED_IP, ACME_ALLOWED_IP]


def corpus() -> dict[str, bytes]:
    """Every example message: one per global rule, a clean one, an acme-only lure, a message that
    one tenant tempfails, and the .eml files of tests/corpus when there are any."""
    messages = {name: raw for name, (raw, _) in EXAMPLE_MESSAGES.items()}
    messages["clean"] = CLEAN
    messages["acme-invoice-phish"] = message("Please note our updated bank details.\n", subject="Overdue invoice")
    messages["initech-tempfail"] = message("We will be back soon.\n", subject=TEMPFAIL_SUBJECT)
    for path in sorted((REPO / "tests" / "corpus").glob("*.eml")):
        messages[f"corpus/{path.stem}"] = path.read_bytes()
    return messages


CORPUS = corpus()


# ---------------------------------------------------------------- the gateway under test


def example_policy(root: Path, port: int, sinks: dict[str, int]) -> Path:
    """policies/ copied, routes pointed at the test's mailboxes, loopback list entries added."""
    copy_example(root)
    gateway = (root / "gateway.yaml").read_text()
    gateway = re.sub(r"inbound: \{address: [^,]+, port: \d+\}", f"inbound: {{address: 127.0.0.1, port: {port}}}",
                     gateway)
    gateway = re.sub(r"outbound: \{address: [^,]+, port: \d+\}",
                     f"outbound: {{address: 127.0.0.1, port: {free_port()}}}", gateway)
    gateway = gateway.replace("lists: [global-block]", "lists: [global-block, diff-global-block]")
    gateway += "delivery: {retry_initial: 1, retry_max: 2, give_up_after: 3600, connect_timeout: 5}\n"
    gateway = re.sub(r"^delivery: \{retry_initial: 60.*\n", "", gateway, flags=re.M)
    (root / "gateway.yaml").write_text(gateway)
    routes = {"acme": [sinks["acme"], sinks["acme-backup"]], "globex": [sinks["globex"]],
              "initech": [sinks["initech"]]}
    for tenant, ports in routes.items():
        path = root / "tenants" / f"{tenant}.yaml"
        text = path.read_text()
        for old, new in zip(re.findall(r"port: (\d+), priority", text), ports, strict=True):
            text = text.replace(f"port: {old}, priority", f"port: {new}, priority", 1)
        path.write_text(text)
    lists = {
        "diff-global-block": f"name: diff-global-block\naction: block\nnetworks: [{GLOBAL_BLOCKED_IP}/32]\n",
        "diff-globex-block": f"name: diff-globex-block\naction: block\nnetworks: [{GLOBEX_BLOCKED_IP}/32]\n",
        "diff-acme-allow": f"name: diff-acme-allow\naction: allow\nnetworks: [{ACME_ALLOWED_IP}/32]\n",
    }
    for name, text in lists.items():
        (root / "lists" / f"{name}.yaml").write_text(text)
    (root / "rules" / "diff-content.yaml").write_text(
        "name: diff-content\nrules:\n  - id: initech-maintenance\n    description: initech is down for a while\n"
        f"    when: {{header: {{name: Subject, regex: '{TEMPFAIL_SUBJECT}'}}}}\n"
        "    then: {action: tempfail, message: initech is in maintenance}\n"
    )
    for tenant, extra_list in (("globex", "diff-globex-block"), ("acme", "diff-acme-allow")):
        path = root / "tenants" / f"{tenant}.yaml"
        path.write_text(re.sub(r"^lists: \[([^\]]*)\]", rf"lists: [\1, {extra_list}]", path.read_text(), flags=re.M))
    path = root / "tenants" / "initech.yaml"
    path.write_text(path.read_text() + "rules: [diff-content]\n")
    check = subprocess.run(liveprism("validate", str(root)), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    return root


@dataclass
class Lab:
    """The running gateway, one mailbox per tenant route, and the graph explain uses."""

    gateway: Gateway
    sinks: dict[str, Sink]
    graph: FilterGraph
    expected_copies: int = 0
    seen: set[str] = field(default_factory=set)  # queue ids checked

    def mailbox_of(self, route_label: str) -> str:
        port = int(route_label.rpartition(":")[2])
        return next(name for name, box in self.sinks.items() if box.port == port)

    def copies(self, queue_id: str) -> dict[str, dict[str, Any]]:
        """Delivered copies of `queue_id`: mailbox -> {action, recipients}."""
        found: dict[str, dict[str, Any]] = {}
        for name, box in self.sinks.items():
            for raw in box.messages():
                if f" id {queue_id}".encode() not in raw:
                    continue
                head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").decode("utf-8", "replace")
                action = re.search(r"X-LivePrism-Verdict: action=([a-z]+)", head)
                rcpts = re.search(r"X-Sink-Rcpt-To: (.*)", head)
                assert action and rcpts, head
                assert name not in found, f"two copies of {queue_id} in {name}"
                found[name] = {"action": action.group(1), "recipients": sorted(rcpts.group(1).split(", "))}
        return found

    def held(self, queue_id: str) -> dict[str, list[str]]:
        """Quarantined copies of `queue_id`: tenant -> recipients (read from the live store)."""
        uri = f"file:{self.gateway.state / 'index.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            rows = db.execute("SELECT tenant, recipients FROM quarantine WHERE queue_id = ?", (queue_id,)).fetchall()
        return {tenant: sorted(json.loads(rcpts)) for tenant, rcpts in rows}

    def total_delivered(self) -> int:
        return sum(len(box.messages()) for box in self.sinks.values())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("differential")
    started: list[Any] = []
    try:
        sinks = {}
        for name in ("acme", "acme-backup", "globex", "initech"):
            sinks[name] = Sink(free_port(), root / f"mail-{name}").start()
            started.append(sinks[name])
        port = free_port()
        policy = example_policy(root / "policy", port, {name: box.port for name, box in sinks.items()})
        gateway = Gateway(policy, root / "state", port).start()
        started.append(gateway)
        loaded = load_graph(policy)
        assert loaded.graph is not None
        yield Lab(gateway, sinks, loaded.graph)
    finally:
        for item in reversed(started):
            item.stop()


# ---------------------------------------------------------------- one transaction, both ways


def serve_transaction(port: int, client: str, sender: str, rcpts: list[str], raw: bytes) -> list[tuple[str, str]]:
    """What `liveprism serve` answers, stage by stage, to a client that stops at the first refusal
    of the whole transaction and sends DATA only when a recipient was accepted."""
    replies: list[tuple[str, str]] = []
    with smtplib.SMTP(LOCALHOST, port, timeout=60, source_address=(client, 0)) as smtp:
        smtp.ehlo(HELO)
        code, text = smtp.mail(sender)
        replies.append(("mail", f"{code} {text.decode()}"))
        if code != 250:
            return replies
        accepted = False
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            replies.append((f"rcpt {rcpt}", f"{code} {text.decode()}"))
            accepted |= code == 250
        if accepted:
            try:
                code, text = smtp.data(raw)
            except smtplib.SMTPDataError as exc:
                code, text = exc.smtp_code, exc.smtp_error
            replies.append(("data", f"{code} {text.decode()}"))
        else:
            smtp.rset()
    return replies


def check_one(lab: Lab, predicted: dict[str, Any], client: str, sender: str, rcpts: list[str], raw: bytes) -> None:
    """Run the transaction through serve and compare everything with explain's prediction."""
    served = serve_transaction(lab.gateway.port, client, sender, rcpts, raw)
    expected = [(item["stage"], item["reply"]) for item in predicted["replies"]]
    assert [stage for stage, _ in served] == [stage for stage, _ in expected], (served, expected)
    queue_id = None
    for (stage, got), (_, want) in zip(served, expected, strict=True):
        if stage == "data" and want.startswith("250 "):
            match = re.fullmatch(r"250 2\.0\.0 queued as ([0-9A-Z]{16})", got)
            assert match and want == "250 2.0.0 queued", (stage, got, want)
            queue_id = match.group(1)
        else:
            assert got == want, (stage, got, want)
    if queue_id is None:
        return  # refused as a whole: nothing stored but the archive row
    deliveries: dict[str, dict[str, Any]] = {}
    quarantined: dict[str, list[str]] = {}
    for tenant, verdict in predicted["tenants"].items():
        if verdict["action"] in ("deliver", "tag"):
            deliveries[lab.mailbox_of(verdict["route"][0])] = {
                "action": verdict["action"], "recipients": sorted(verdict["recipients"])}
        elif verdict["action"] == "quarantine":
            quarantined[tenant] = sorted(verdict["recipients"])
    assert wait_for(lambda: len(lab.copies(queue_id)) >= len(deliveries), timeout=60), (queue_id, deliveries)
    assert lab.copies(queue_id) == deliveries
    assert lab.held(queue_id) == quarantined
    lab.expected_copies += len(deliveries)
    lab.seen.add(queue_id)


def predict(lab: Lab, client: str, sender: str, rcpts: list[str], raw: bytes) -> dict[str, Any]:
    outcome = simulate(lab.graph, raw=raw, mail_from=sender, rcpts=rcpts, client_ip=client, helo=HELO)
    return explain_json(outcome, HELO)


ALL_TENANTS = ["bob@acme.example", "eve@globex.example", "peter@initech.example"]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_explain_cli_predicts_serve_for_every_corpus_message(lab: Lab, name: str, tmp_path: Path) -> None:
    """The `explain --json` command itself, one message of the corpus to every tenant."""
    path = tmp_path / "message.eml"
    path.write_bytes(CORPUS[name])
    args = ["explain", str(lab.gateway.policy), "--message", str(path), "--mail-from", "news@sender.example",
            "--client-ip", LOCALHOST, "--helo", HELO, "--json"]
    for rcpt in ALL_TENANTS:
        args += ["--rcpt", rcpt]
    out = subprocess.run(liveprism(*args), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    check_one(lab, json.loads(out.stdout), LOCALHOST, "news@sender.example", ALL_TENANTS, CORPUS[name])


@settings(max_examples=60, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    client=st.sampled_from(CLIENTS),
    sender=st.sampled_from(SENDERS),
    rcpts=st.lists(st.sampled_from(RCPTS), min_size=1, max_size=5),
    name=st.sampled_from(sorted(CORPUS)),
)
def test_explain_predicts_serve_for_generated_envelopes(
    lab: Lab, client: str, sender: str, rcpts: list[str], name: str
) -> None:
    raw = CORPUS[name]
    check_one(lab, predict(lab, client, sender, rcpts, raw), client, sender, rcpts, raw)


def test_no_copy_arrived_that_explain_did_not_predict(lab: Lab) -> None:
    """Runs last in this module: once the queue is empty, the mailboxes hold exactly the predicted copies."""
    assert lab.seen, "the differential tests above did not run"

    def queue_empty() -> bool:
        out = lab.gateway.cli("queue", "list", "--state", str(lab.gateway.state), "--json")
        return out.returncode == 0 and json.loads(out.stdout) == []

    assert wait_for(queue_empty, timeout=60)
    assert lab.total_delivered() == lab.expected_copies

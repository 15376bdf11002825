"""Issue 7 (hardening against hostile clients and operator mistakes), end to end through a real
`liveprism serve`: real sockets as clients, `liveprism sink` as the tenant's server."""

from __future__ import annotations

import os
import pwd
import smtplib
import stat
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.gateway import Gateway, Line, start_gateway
from tests.support.messages import folded_subject, many_parts
from tests.support.peers import refusing_server, start_sink
from tests.support.policies import acme_to, route, write_policy
from tests.support.processes import LOCALHOST, REPO, free_port, wait_for, wait_port

CLEAN = b"From: alice@example.com\r\nTo: bob@acme.example\r\nSubject: hello\r\n\r\nHello Bob.\r\n"


# ---------------------------------------------------------------- item 1: event-loop stalls

LONG_WORD = "=?utf-8?b?" + "QUJD" * 10 + "?="  # 6 MB of folded encoded-words: count = size // (len + 3)
NOOP_BOUND = 0.1  # seconds: issue 7 asks that a second client's NOOP be answered within 100 ms
STALL_BOUND = 0.6  # seconds: no single NOOP waits this long (scheduling noise of a loaded machine aside)


def noop_latencies_while_processing(port: int, raw: bytes) -> tuple[list[float], str, float]:
    """Client A sends *raw*; client B sends NOOPs back to back from just before A's final dot
    until A has its reply. Returns B's round-trip times, A's DATA reply and A's wait for it."""
    a, b = Line(port), Line(port)
    try:
        for client in (a, b):
            assert client.cmd("EHLO client.test.example").startswith("250")
        assert a.cmd("MAIL FROM:<alice@example.com>").startswith("250")
        assert a.cmd("RCPT TO:<bob@acme.example>").startswith("250")
        assert a.cmd("DATA").startswith("354")
        a.sock.sendall(raw)  # everything but the final dot: the gateway only buffers this
        latencies: list[float] = []
        done = threading.Event()
        result: dict[str, Any] = {}

        def finish_a() -> None:
            started = time.monotonic()
            result["reply"] = a.cmd(b".")
            result["wait"] = time.monotonic() - started
            done.set()

        assert b.cmd("NOOP").startswith("250")  # B's session is live before A's dot
        sender = threading.Thread(target=finish_a)
        sender.start()
        while not done.is_set():
            started = time.monotonic()
            assert b.cmd("NOOP").startswith("250")
            latencies.append(time.monotonic() - started)
        sender.join()
        return latencies, result["reply"], result["wait"]
    finally:
        a.close()
        b.close()


def test_noop_answered_within_100ms_while_hostile_messages_are_processed(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port), max_message_size=30 * 1024 * 1024)
    gateway.restart_with("command_timeout: 60", "command_timeout: 60, max_junk_commands: 1000000")  # B's NOOPs
    for raw in (folded_subject(6 * 1024 * 1024 // (len(LONG_WORD) + 3), LONG_WORD), many_parts(200_000)):
        latencies, reply, wait = noop_latencies_while_processing(gateway.port, raw)
        assert reply.startswith("250"), reply
        # B kept talking throughout A's processing (which once stalled the loop for all of it,
        # 3.4 s to 20 s): 95% of its NOOPs answered within 100 ms, none stalled for long. (On this
        # shared 2-core CI machine an idle gateway's NOOP already takes up to ~60 ms now and then.)
        latencies.sort()
        figure = f"p95 {latencies[len(latencies) * 95 // 100] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        assert len(latencies) >= 10, (latencies, wait)
        assert latencies[len(latencies) * 95 // 100] < NOOP_BOUND, f"{figure} (A waited {wait:.2f} s)"
        assert latencies[-1] < STALL_BOUND, f"{figure} (A waited {wait:.2f} s)"
    # both were accepted with the malformed-mime hit (a cap was reached: the example policy holds them)
    accepted = [line for line in gateway.log().splitlines() if "queued as" in line]
    assert len(accepted) == 2 and all("malformed-mime" in line for line in accepted), accepted


# ---------------------------------------------------------------- item 3: store permissions, --user

def modes(state: Path) -> dict[str, int]:
    """Mode of the state directory ("."), of each file in it and in its message directories (a
    directory counts as 0600 when it is 0700: private like the files)."""
    found = {".": stat.S_IMODE(state.stat().st_mode)}
    for entry in [*state.iterdir(), *(state / "bodies").iterdir(), *(state / "spool").iterdir()]:
        mode = stat.S_IMODE(entry.stat().st_mode)
        found[str(entry.relative_to(state))] = 0o600 if entry.is_dir() and mode == 0o700 else mode
    return found


def test_state_is_private_under_umask_022_and_loose_modes_are_repaired(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    old = os.umask(0o022)
    try:
        gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    finally:
        os.umask(old)
    send_clean(gateway.port)
    assert wait_for(lambda: len(box.messages()) == 1)
    found = modes(gateway.state)
    assert found.pop(".") == 0o700
    assert {"index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm", "relay-policy.json"} <= set(found)
    assert all(mode == 0o600 for mode in found.values()), {k: oct(v) for k, v in found.items()}
    # an operator (or an older version) left it readable by everyone: repaired at start, with a warning
    gateway.stop()
    os.chmod(gateway.state, 0o755)
    for entry in [*gateway.state.iterdir(), *(gateway.state / "bodies").iterdir()]:
        os.chmod(entry, 0o644)
    gateway.start()
    send_clean(gateway.port)
    assert wait_for(lambda: len(box.messages()) == 2)
    repaired = modes(gateway.state)
    assert repaired.pop(".") == 0o700 and set(repaired.values()) == {0o600}
    assert "state directory was readable by others; repaired" in gateway.log()


def send_raw(port: int, raw: bytes) -> str:
    """One transaction with *raw* sent as it is (it must not hold CRLF "." CRLF); the DATA reply."""
    client = Line(port)
    try:
        for command in ("EHLO client.test.example", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@acme.example>"):
            assert client.cmd(command).startswith("250")
        assert client.cmd("DATA").startswith("354")
        return client.cmd(raw + b".")
    finally:
        client.close()


def send_clean(port: int) -> None:
    with smtplib.SMTP(LOCALHOST, port, timeout=30) as client:
        client.sendmail("alice@example.com", ["bob@acme.example"], CLEAN)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def interpreter_for(user: str, base: Path) -> Path:
    """A Python that *user* may run: this machine's Python lives under /root (0700), so a venv of
    Debian's /usr/bin/python3.11 that imports this checkout and its dependencies."""
    import site
    import subprocess

    venv = base / "venv"
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = next(path for path in site.getsitepackages() if path.endswith("site-packages"))
    repo = REPO
    (venv / "lib" / "python3.11" / "site-packages" / "liveprism.pth").write_text(
        f"{repo}\nimport site; site.addsitedir({ours!r})\n"
    )
    return venv / "bin" / "python3"


def test_serve_user_binds_as_root_then_runs_as_the_user_and_delivers(tmp_path: Path, procs: list[Any]) -> None:
    import shutil
    import subprocess
    import tempfile

    assert os.geteuid() == 0, "this test checks the root -> --user drop (CI runs as root)"
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="liveprism-user-", dir="/tmp"))  # tmp_path's parents are 0700
    os.chmod(base, 0o755)
    proc: subprocess.Popen[bytes] | None = None
    try:
        python = interpreter_for("nobody", base)
        box = start_sink(tmp_path, procs)
        port = free_port()
        policy = write_policy(base / "policy", port=port,
                              tenants=acme_to(box.port))
        state = base / "state"
        log_path = tmp_path / "gateway-user.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([str(python), "-m", "engine", "serve", str(policy), "--state", str(state),
                                     "--user", "nobody"], cwd=base, stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, proc=proc)
        assert wait_for(lambda: uid_of(proc.pid) == nobody.pw_uid and children_of(proc.pid), timeout=20), \
            log_path.read_text()
        relay = children_of(proc.pid)[0]
        assert uid_of(relay) == nobody.pw_uid
        assert os.stat(state).st_uid == nobody.pw_uid
        send_clean(port)
        assert wait_for(lambda: len(box.messages()) == 1, timeout=30), log_path.read_text()
        assert "running as nobody" in log_path.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def test_serve_as_root_without_user_warns(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    assert wait_for(lambda: "use --user NAME to drop privileges" in gateway.log(), timeout=10)


# ---------------------------------------------------------------- item 6: control characters in addresses

def test_control_characters_and_unannounced_utf8_in_addresses_are_refused(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    client = Line(gateway.port)
    try:
        assert client.cmd("EHLO client.test.example").startswith("250")
        assert client.cmd(b"MAIL FROM:<al\x00ice@example.com>").startswith("501 5.5.2")
        assert client.cmd("MAIL FROM:<alice@example.com>").startswith("250")
        assert client.cmd(b"RCPT TO:<bo\x01b@acme.example>").startswith("501 5.5.2")
        assert client.cmd(b"RCPT TO:<bo\x1bb@acme.example>").startswith("501 5.5.2")
        assert client.cmd("RCPT TO:<b\u2028ob@acme.example>".encode()).startswith("501 5.5.2")
        assert client.cmd("RCPT TO:<jürgen@acme.example>".encode()).startswith("553 5.6.7")  # no SMTPUTF8
        assert client.cmd("RCPT TO:<bob@acme.example>").startswith("250")
        assert client.cmd("DATA").startswith("354")
        assert client.cmd(CLEAN + b".").startswith("250")
        # with SMTPUTF8 announced, a UTF-8 local part is fine
        assert client.cmd("MAIL FROM:<alice@example.com> SMTPUTF8").startswith("250")
        assert client.cmd("RCPT TO:<jürgen@acme.example>".encode()).startswith("250")
    finally:
        client.close()
    assert wait_for(lambda: len(box.messages()) >= 1)
    assert b"\x01" not in box.messages()[0]


# ---------------------------------------------------------------- item 7: error limits

def test_session_closed_after_max_errors_with_one_summary_line(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    client = Line(gateway.port)
    try:
        assert client.cmd("EHLO client.test.example").startswith("250")
        assert client.cmd("MAIL FROM:<alice@example.com>").startswith("250")
        # 300 pipelined refused RCPTs in one write, as in the repro
        client.sock.sendall(b"".join(b"RCPT TO:<victim%d@elsewhere.example>\r\n" % i for i in range(300)))
        replies = []
        while True:
            try:
                replies.append(client.reply())
            except ConnectionError:
                break
    finally:
        client.close()
    assert replies[:20] == [replies[0]] * 20 and replies[0].startswith("550"), replies[:3]
    assert replies[20].startswith("421 4.7.0") and "too many errors" in replies[20]
    assert len(replies) == 21  # nothing answered after the 421: the connection is closed
    assert wait_for(lambda: "errors=20" in gateway.log())
    summary = [line for line in gateway.log().splitlines() if "liveprism.session" in line]
    assert len(summary) == 1 and "disconnected='too many errors'" in summary[0], summary
    refusals = [line for line in gateway.log().splitlines() if "RCPT refused" in line]
    assert len(refusals) <= 1 and len(refusals[0] if refusals else "") < 4000  # one bounded line, not 68 MB


def test_junk_command_loop_is_closed(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    client = Line(gateway.port)
    try:
        assert client.cmd("EHLO client.test.example").startswith("250")
        for _ in range(100):
            assert client.cmd("NOOP").startswith("250")
        assert client.cmd("RSET").startswith("421 4.7.0")
        try:
            reply: str | None = client.cmd("NOOP")
        except (ConnectionError, OSError):
            reply = None
        assert reply is None
    finally:
        client.close()


# ---------------------------------------------------------------- item 8: bare CR, first-line folding

def test_forged_gateway_fields_behind_bare_cr_never_reach_the_tenant(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    forged = (b"From: alice@example.com\r\nSubject: x\rX-LivePrism-Verdict: action=deliver; forged\r"
              b"X-Spam-Flag: NO\r\nTo: bob@acme.example\r\n\r\nhello\r\n")
    assert send_raw(gateway.port, forged).startswith("250")  # raw bytes (smtplib would turn CR into CRLF)
    assert wait_for(lambda: len(box.messages()) == 1), gateway.log()[-2000:]
    for message in box.messages():
        head = message.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
        assert b"forged" not in head and b"X-Spam-Flag: NO" not in head, head
        assert head.count(b"X-LivePrism-Verdict:") == 1
        assert b"Subject: x\nTo: bob@acme.example" in head  # the bare CR became a line break


# ---------------------------------------------------------------- item 2: mail loops

def test_too_many_hops_get_554(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    hops = b"".join(b"Received: from hop%d.example by hop%d.example; Tue, 1 Dec 2026 10:00:00 +0000\r\n" % (i, i + 1)
                    for i in range(51))
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=30) as client:
        client.ehlo("client.test.example")
        client.mail("alice@example.com")
        client.rcpt("bob@acme.example")
        code, text = client.data(hops + CLEAN)
    assert (code, text.decode()[:25]) == (554, "5.4.6 too many hops (51 R")
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=30) as client:  # 50 hops: still fine
        client.sendmail("alice@example.com", ["bob@acme.example"], hops[hops.index(b"\r\n") + 2 :] + CLEAN)
    assert wait_for(lambda: len(box.messages()) == 1)


def test_route_pointing_at_the_gateway_itself_stops_looping(tmp_path: Path, procs: list[Any]) -> None:
    port = free_port()
    # `validate` refuses a route naming the gateway's listener (tests/policy/test_validate.py); 127.1 is
    # 127.0.0.1 to the resolver but not to the offline check: it stands for a DNS name that resolves here.
    loop_route = route(port).model_copy(update={"host": "127.1"})
    policy = write_policy(tmp_path / "policy", port=port,
                          tenants={"acme": {"domains": ["acme.example"], "routes": [loop_route]}})
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    with smtplib.SMTP(LOCALHOST, port, timeout=30) as client:
        client.sendmail("", ["bob@acme.example"], CLEAN)  # null sender: no DSN to chase
    assert wait_for(lambda: "mail loop" in gateway.log(), timeout=30), gateway.log()[-3000:]
    accepted = [line for line in gateway.log().splitlines() if "liveprism.txn" in line and "queued as" in line]
    assert len(accepted) == 1, accepted  # the copy coming back to its own recipient is refused at once
    queue_id = accepted[0].rpartition("queued as ")[2].split()[0]
    refusal = f"554 5.4.6 mail loop: this message already passed through mxpath.test.example as {queue_id}"
    assert refusal in gateway.log()


# ---------------------------------------------------------------- item 5: backscatter

def test_backscatter_headers_only_capped_one_dsn_per_message_none_to_address_literals(
    tmp_path: Path, procs: list[Any]
) -> None:
    box = start_sink(tmp_path, procs)  # globex's server: the (forged) sender's mailbox
    refusing = refusing_server(procs)  # acme's and initech's servers refuse DATA with 5xx
    port = free_port()
    policy = write_policy(tmp_path / "policy", port=port, tenants={
        "acme": {"domains": ["acme.example"], "routes": [route(refusing)]},
        "initech": {"domains": ["initech.example"], "routes": [route(refusing)]},
        "globex": {"domains": ["globex.example"], "routes": [route(box.port)]},
    })
    path = policy / "gateway.yaml"
    path.write_text(path.read_text().replace("max_message_size: 200000", "max_message_size: 2000000"))
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    reflected = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 900) for i in range(1000))  # ~900 KB of header
    raw = b"From: carol@globex.example\r\nSubject: bounce me\r\n" + reflected + b"\r\n" + b"body line\r\n" * 1000
    with smtplib.SMTP(LOCALHOST, port, timeout=60) as client:  # one message, two failing tenants
        client.sendmail("carol@globex.example", ["bob@acme.example", "dan@initech.example"], raw)
        client.sendmail("x@[127.0.0.1]", ["bob@acme.example"], CLEAN)  # a sender that is an address literal
    assert wait_for(lambda: gateway.log().count("no DSN to") >= 2, timeout=60), gateway.log()[-3000:]
    assert wait_for(lambda: len(box.messages()) >= 1, timeout=30)
    time.sleep(2)
    dsns = box.messages()
    assert len(dsns) == 1  # one DSN for the message, though both tenants' copies bounced
    assert len(dsns[0]) < 60 * 1024 and b"body line" not in dsns[0]
    assert "no DSN to x@[127.0.0.1]: the sender is an address literal" in gateway.log()
    assert "a DSN was already sent for this message" in gateway.log()


# ---------------------------------------------------------------- item 9: command_timeout per read in DATA

def test_slow_upload_succeeds_while_bytes_keep_coming(tmp_path: Path, procs: list[Any]) -> None:
    """RFC 5321 §4.5.3.2.6: the DATA timeout applies per read. With command_timeout 2 s, an upload
    taking 5 s in 0.5 s steps is accepted (aiosmtpd used one deadline for the whole DATA phase)."""
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    gateway.restart_with("command_timeout: 60", "command_timeout: 2")
    client = Line(gateway.port)
    try:
        for command in ("EHLO client.test.example", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@acme.example>"):
            assert client.cmd(command).startswith("250")
        assert client.cmd("DATA").startswith("354")
        client.sock.sendall(CLEAN)
        started = time.monotonic()
        for index in range(10):
            time.sleep(0.5)
            client.sock.sendall(b"slow line %d\r\n" % index)
        assert time.monotonic() - started > 4
        assert client.cmd(b".").startswith("250")
    finally:
        client.close()
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"slow line 9" in box.messages()[0]

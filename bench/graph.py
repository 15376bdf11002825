"""Benchmark of the filter graph: messages per second against 10, 1,000 and 10,000 content rules.

Usage (from the repository root):  python bench/graph.py [--seconds S] [--rules 10,1000,10000]

For each rule count a policy is generated (realistic mix: header regexes, body regexes, body
keyword lists, attachment extensions, some any/all/not trees) together with 100,000 list entries
(addresses, *@domains, domains, IPv4/IPv6 networks), written as YAML into a temporary directory
and loaded with `load_graph`, so the reported times include YAML loading and validation. The
per-message path is the full one: an `Evaluation` (MAIL, RCPT, `parse_message` + DATA) for one tenant, on a
single core. Each rule count runs in its own child process so resident memory is its own.

Targets (DESIGN.md "Architecture"): 2 KB against 10,000 rules costs at most 2x 2 KB against 10
rules; at least 5,000 msgs/s for 2 KB against 1,000 rules; compiling the 10,000-rule policy
takes under 2 s.
"""

from __future__ import annotations

import argparse
import email.utils
import gc
import json
import random
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

# Runnable as `python bench/graph.py` from the repository root without installing anything.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.graph.build.compiler import compile_policy
from engine.graph.transaction import Evaluation
from engine.graph.verdict import Decision
from engine.mime.view import parse_message
from engine.policy.loader import load_policy
from engine.policy.validate import validate_policy

LIST_ENTRIES = 100_000
TENANT = "acme"
RCPT = "bob.jones@acme.example"
MAIL_FROM = "alice.martin@example.com"
CLIENT_IP = "198.51.100.23"

# ---------------------------------------------------------------- messages (as in shared/bench/peers/helpers.py)

WORDS = (  # noqa: SIM905
    "the a to of and for on in with please thanks regards quarterly report meeting schedule project "
    "update invoice team budget review customer order shipment delivery contract proposal draft "
    "agenda minutes deadline feedback summary analysis figures revenue forecast planning office "
    "conference travel approval request support ticket release version server network backup policy "
    "training workshop lunch friday monday attached document spreadsheet presentation slides notes "
    "question answer issue status progress milestone estimate"
).split()
NAMES = ["Alice Martin", "Carol White", "Dave Kim", "Erin Lopez", "Frank Moreau", "Grace Chen"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def make_message(size: int, seed: int) -> bytes:
    """A realistic multipart/alternative (text/plain + text/html) message of about `size` bytes."""
    rng = random.Random(seed)
    name = NAMES[0]
    address = name.lower().replace(" ", ".") + "@example.com"
    stamp = 1_700_000_000
    boundary = f"=_bench_{seed:06d}_{rng.getrandbits(32):08x}"
    header = [
        "Received: from [10.1.2.3] (unknown [10.1.2.3])",
        f"\tby mail.example.com (Postfix) with ESMTPSA id {rng.getrandbits(40):010X}",
        f"\tfor <{RCPT}>; {email.utils.formatdate(stamp - 2)}",
        f"From: {name} <{address}>",
        f"To: Bob Jones <{RCPT}>",
        "Subject: " + " ".join(rng.choice(WORDS) for _ in range(6)).capitalize(),
        f"Date: {email.utils.formatdate(stamp)}",
        f"Message-ID: <{stamp}.{rng.getrandbits(48):012x}@mail.example.com>",
        "MIME-Version: 1.0",
        "User-Agent: BenchMailer/1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        "This is a multi-part message in MIME format.",
        "",
    ]
    paragraphs: list[str] = []
    url = f"https://www.example.com/reports/{seed % 97}"

    def render() -> str:
        plain = "\n\n".join(textwrap.fill(p, 72) for p in paragraphs) + f"\n\nDetails: {url}\n\n-- \n{name}\n"
        html = (
            '<html><head><meta charset="utf-8"></head><body>\n'
            + "\n".join(f"<p>{textwrap.fill(p, 72)}</p>" for p in paragraphs)
            + f'\n<p>Details: <a href="{url}">{url}</a></p>\n<p>-- <br>{name}</p>\n</body></html>\n'
        )
        return "\n".join(
            [
                *header,
                f"--{boundary}",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 7bit",
                "",
                plain,
                f"--{boundary}",
                "Content-Type: text/html; charset=utf-8",
                "Content-Transfer-Encoding: 7bit",
                "",
                html,
                f"--{boundary}--",
                "",
            ]
        )

    estimate = len(render())
    while estimate < size - 300:
        paragraphs.append(" ".join(_sentence(rng) for _ in range(rng.randint(2, 5))))
        estimate += 2 * len(paragraphs[-1]) + 10
    message = render()
    while len(message) < size:
        paragraphs.append(_sentence(rng))
        message = render()
    return message.replace("\n", "\r\n").encode()


# ---------------------------------------------------------------- policies

SYLLABLES = (  # noqa: SIM905
    "ka lo mi ne ru sa te vo zi bar cor dan fel gor hin jat kem lun mor nix pra quo rev sul tam"
).split()
SPAM_WORDS = (  # noqa: SIM905
    "viagra casino lottery winner bitcoin crypto pharmacy replica rolex unclaimed inheritance "
    "beneficiary prince refund overdue suspended verify password wallet giftcard prize "
    "congratulations urgent loan mortgage debt credit dating singles weight diet pills investment "
    "profit"
).split()
HEADERS = ["Subject", "From", "Reply-To", "X-Mailer", "Received", "Message-ID", "To", "List-Unsubscribe"]
EXTENSIONS = (  # noqa: SIM905
    "exe scr pif com bat cmd js jse vbs vbe wsf hta msi jar ps1 lnk cpl reg iso img vhd docm xlsm"
).split()


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _word(rng: random.Random, hit: bool) -> str:
    """A rule word: from the bench message's own vocabulary when `hit`, else spam-ish or made up."""
    if hit:
        return rng.choice(WORDS[10:])  # skip the stop words
    return rng.choice(SPAM_WORDS) + _pseudo_word(rng) if rng.random() < 0.5 else _pseudo_word(rng)


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _leaf(rng: random.Random, hit: bool) -> str:
    """One leaf condition as a YAML flow mapping."""
    kind = rng.choices(["header", "body-regex", "body-words", "attachment"], weights=[30, 25, 25, 10])[0]
    if kind == "header":
        name = "Subject" if hit else rng.choice(HEADERS)
        words = [_word(rng, hit) for _ in range(rng.randint(1, 3))]
        style = rng.randrange(3)
        if style == 0:
            regex = "(?i)\\b(" + "|".join(words) + ")\\b"
        elif style == 1:
            regex = "(?i)" + words[0] + ".{0,20}" + (words[-1] if len(words) > 1 else "\\d+")
        else:
            regex = "(?i)" + ("" if hit else "^") + words[0]
        return f"{{header: {{name: {name}, regex: {_yaml_str(regex)}}}}}"
    if kind == "body-regex":
        words = [_word(rng, hit) for _ in range(rng.randint(1, 3))]
        style = rng.randrange(3)
        if style == 0:
            regex = "(?i)\\b" + words[0] + "\\s+\\w+"
        elif style == 1:
            regex = "(?i)\\b(" + "|".join(words) + ")\\b"
        else:
            regex = words[0] + "[0-9]{3,}" if not hit else "(?i)" + words[0] + "s?\\b"
        return f"{{body: {{regex: {_yaml_str(regex)}}}}}"
    if kind == "body-words":
        words = [_word(rng, hit) + ("" if hit else " " + _word(rng, False)) for _ in range(rng.randint(2, 6))]
        return "{body: {contains: [" + ", ".join(_yaml_str(w) for w in words) + "]}}"
    extensions = rng.sample(EXTENSIONS, rng.randint(1, 4))
    return "{attachment: {extension: [" + ", ".join(extensions) + "]}}"


def _rule(rng: random.Random, index: int, hit: bool) -> str:
    shape = rng.choices(["leaf", "any", "all", "all-not"], weights=[70, 12, 12, 6])[0]
    if shape == "leaf":
        when = _leaf(rng, hit)
    elif shape == "any":
        when = "{any: [" + ", ".join([_leaf(rng, hit), *(_leaf(rng, False) for _ in range(rng.randint(1, 2)))]) + "]}"
    elif shape == "all":
        when = "{all: [" + ", ".join(_leaf(rng, hit) for _ in range(rng.randint(2, 3))) + "]}"
    else:
        when = "{all: [" + _leaf(rng, hit) + ", {not: " + _leaf(rng, False) + "}]}"
    then = f"{{score: {rng.choice([0.5, 1.0, 1.5, 2.0, 3.0])}}}"
    if rng.random() < 0.05:
        action = rng.choice(["tag", "reject"])
        then = "{action: quarantine}" if rng.random() < 0.5 else f"{{score: 4.0, action: {action}}}"
    direction = rng.choices(["inbound", "both", "outbound"], weights=[70, 25, 5])[0]
    return f"  - id: bench-rule-{index}\n    direction: {direction}\n    when: {when}\n    then: {then}\n"


def write_policy(root: Path, rule_count: int, seed: int = 7) -> None:
    """A gateway, one tenant, `rule_count` content rules and LIST_ENTRIES list entries, as YAML."""
    rng = random.Random(seed)
    (root / "tenants").mkdir(parents=True)
    (root / "lists").mkdir()
    (root / "rules").mkdir()
    (root / "gateway.yaml").write_text(
        "hostname: mxpath.bench.example\nlists: [global-block]\nrules: [bench-content]\n"
        "scoring: {tag_at: 3.0, quarantine_at: 6.0, reject_at: 15.0}\n"
    )
    (root / "tenants" / f"{TENANT}.yaml").write_text(
        f"name: {TENANT}\ndomains: [acme.example]\nroutes: [{{host: mail.acme.internal, port: 25}}]\n"
        "lists: [acme-block, acme-allow]\n"
    )
    # Matching rules are rare (about 1 in 500, at least one): a realistic share for a clean message.
    hits = {i for i in range(rule_count) if rng.random() < 0.002}
    rules = "".join(_rule(rng, i, i in hits) for i in range(1, rule_count))
    # Rule 0 matches every bench message (these words occur in both), so even 10 rules have a hit.
    rules = (
        "  - id: bench-rule-0\n    when: {body: {contains: [meeting, budget, report]}}\n    then: {score: 1.0}\n"
        + rules
    )
    (root / "rules" / "bench-content.yaml").write_text(f"name: bench-content\nrules:\n{rules}")

    per_list = {
        "global-block": LIST_ENTRIES // 2,
        "acme-block": LIST_ENTRIES * 2 // 5,
        "acme-allow": LIST_ENTRIES // 10,
    }
    serial = 0
    for name, count in per_list.items():
        senders: list[str] = []
        domains: list[str] = []
        networks: list[str] = []
        for _ in range(count):
            serial += 1
            roll = rng.random()
            domain = f"{_pseudo_word(rng)}{serial}.{rng.choice(['com', 'net', 'org', 'info', 'biz', 'example'])}"
            if roll < 0.40:
                senders.append(f"{_pseudo_word(rng)}.{serial}@{domain}")
            elif roll < 0.60:
                senders.append(f"*@{domain}")
            elif roll < 0.80:
                domains.append(domain)
            elif roll < 0.95:
                prefix = rng.choice([16, 20, 24, 24, 24, 28, 32])
                value = (serial * 2654435761) & 0xFFFFFFFF
                value = (value >> (32 - prefix)) << (32 - prefix)
                networks.append(f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{prefix}")
            else:
                networks.append(f"2001:db8:{serial & 0xFFFF:x}:{serial >> 16:x}::/64")
        action = "allow" if name.endswith("allow") else "block"
        body = f"name: {name}\naction: {action}\n"
        for field, values in (("senders", senders), ("domains", domains), ("networks", networks)):
            body += f"{field}:\n" + "".join(f"  - {_yaml_str(v)}\n" for v in values)
        (root / "lists" / f"{name}.yaml").write_text(body)


# ---------------------------------------------------------------- measurement


def rss_mb() -> float:
    """Resident set size now, from /proc/self/status (peak from getrusage where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(function: Callable[[], None], seconds: float, repeats: int = 15) -> float:
    """Best-of-`repeats` mean seconds per call, each repeat running about seconds/repeats."""
    start = time.perf_counter()
    function()
    loops = max(1, int(seconds / repeats / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            function()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def measure(rule_count: int, seconds: float) -> dict[str, object]:
    """Generate, load, compile and run one policy; the numbers for the table."""
    messages = {"2 KB": make_message(2048, 1), "50 KB": make_message(50 * 1024, 2)}
    rss_before = rss_mb()
    with tempfile.TemporaryDirectory(prefix="liveprism-bench-") as tmp:
        root = Path(tmp)
        write_policy(root, rule_count)
        gc.collect()
        start = time.perf_counter()
        source = load_policy(root)
        problems = [p for p in validate_policy(source) if p.severity == "error"]
        loaded = time.perf_counter()
        if problems or (source.problems and any(p.severity == "error" for p in source.problems)):
            raise SystemExit(f"generated policy is invalid: {(problems or list(source.problems))[:3]}")
        graph = compile_policy(source)
        compiled = time.perf_counter()
    del source
    gc.collect()
    rss_graph = rss_mb()
    results: dict[str, object] = {
        "rules": rule_count,
        "load_s": loaded - start,
        "compile_s": compiled - loaded,
        "rss_mb": rss_graph,
        "graph_mb": rss_graph - rss_before,
    }
    def transaction(raw: bytes) -> Decision:  # what serve does per message: MAIL, RCPT, DATA
        evaluation = Evaluation.begin(graph, CLIENT_IP, "client.bench.example")
        evaluation.mail(MAIL_FROM)
        evaluation.rcpt(RCPT)
        return evaluation.data(parse_message(raw))

    for label, raw in messages.items():
        verdict = transaction(raw).tenants[TENANT]
        matched = sum(1 for hit in verdict.hits if hit.kind == "rule")

        def full_path(raw: bytes = raw) -> None:
            transaction(raw)

        def parse_only(raw: bytes = raw) -> None:
            parse_message(raw)

        best = best_time(full_path, seconds / 2)
        parse = best_time(parse_only, seconds / 2)
        results[label] = {
            "bytes": len(raw),
            "matched": matched,
            "action": verdict.action.value,
            "us": best * 1e6,
            "parse_us": parse * 1e6,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default="10,1000,10000", help="comma-separated rule counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per message size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one rule count, JSON out
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.seconds)))
        return

    rows = []
    for count in (int(c) for c in args.rules.split(",")):
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(count), "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout))

    print(
        f"python {sys.version.split()[0]}, one core; {LIST_ENTRIES:,} list entries in every policy;"
        " full path per message = Evaluation: mail + rcpt + parse_message + data (1 tenant)"
    )
    print(
        f"{'rules':>6} {'msg':>6} {'bytes':>6} {'hits':>4} {'msgs/s':>8} {'us/msg':>8} {'parse us':>8}"
        f" {'load+valid s':>12} {'compile s':>9} {'RSS MB':>7} {'graph MB':>8}"
    )
    for row in rows:
        for label in ("2 KB", "50 KB"):
            cell = row[label]
            print(
                f"{row['rules']:>6} {label:>6} {cell['bytes']:>6} {cell['matched']:>4} {1e6 / cell['us']:>8.0f}"
                f" {cell['us']:>8.1f} {cell['parse_us']:>8.1f} {row['load_s']:>12.2f} {row['compile_s']:>9.2f}"
                f" {row['rss_mb']:>7.0f} {row['graph_mb']:>8.0f}"
            )
    by_rules = {row["rules"]: row for row in rows}
    if 10 in by_rules and 10_000 in by_rules:
        ratio = by_rules[10_000]["2 KB"]["us"] / by_rules[10]["2 KB"]["us"]
        print(f"cost(2 KB, 10,000 rules) / cost(2 KB, 10 rules) = {ratio:.2f}  (target <= 2)")
    if 1000 in by_rules:
        rate = 1e6 / by_rules[1000]["2 KB"]["us"]
        print(f"2 KB against 1,000 rules: {rate:,.0f} msgs/s  (target >= 5,000)")
    if 10_000 in by_rules:
        print(
            f"compile of the 10,000-rule policy: {by_rules[10_000]['compile_s']:.2f} s  (target < 2 s);"
            f" load+validate {by_rules[10_000]['load_s']:.2f} s"
        )


if __name__ == "__main__":
    main()

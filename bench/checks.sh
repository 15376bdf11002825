#!/usr/bin/env bash
# Throughput cost of the external checks (not a test). In one run, on this box, bench/smtp.sh
# (smtp-source -> liveprism serve -> smtp-sink) three times on the same DKIM-signed messages:
#   off    the example policy, no external checks
#   dns    + DNSBL, URIBL, SPF, DKIM, DMARC against a local nsd started here (the sender's SPF,
#          DMARC p=reject and DKIM key, an empty DNSBL and URIBL zone); the messages pass them all
#   clamd  dns + antivirus: clamd INSTREAM to a local clamd (one-signature database built here)
# and prints msgs/s of each, the ratios dns/off (target >= 0.70) and clamd/off (and the inverse ratio
# of the gateway processes' CPU per message, what the rate ratio would be on an idle CPU-bound box),
# then where the time goes: per-message cost of the DNS checks and of a clamd scan, measured alone.
#   bench/checks.sh                   # N=3000 2 KB messages, 20 sessions
#   N=2000 SIZES="2k 50k" bench/checks.sh
#   WORKERS=2 bench/checks.sh         # every run with serve --workers 2 (one count per run)
#   ROUNDS=3 RUNS="off dns" bench/checks.sh   # off and dns alternated 3 times (ratios of the mean rates)
#   REPO=OTHER_CHECKOUT bench/checks.sh   # measure another checkout (e.g. main, for before/after) with this script
# Needs: nsd, clamd, sigtool, the postfix tools, shared/bench/peers (as bench/smtp.sh). Loopback only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=${REPO:-$(dirname "$HERE")}
PY=${PY:-$REPO/.venv/bin/python}
WORKERS=${WORKERS:-1}
export N=${N:-3000} SIZES=${SIZES:-2k} SESSIONS=${SESSIONS:-20} PY
WORK=${WORK_CHECKS:-/tmp/liveprism-bench-checks}
PEERS=${PEERS:-$(dirname "$HERE")/../shared/bench/peers}
export REPO WORKERS PEERS
LH=127.0.0.1
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>"/dev/tcp/$LH/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

rm -rf "$WORK"; mkdir -p "$WORK/msgs" "$WORK/nsd" "$WORK/clamd/db"
"$PY" "$PEERS/helpers.py" gen "$WORK/msgs" >/dev/null

# 1. a DKIM key for example.com; sign the messages (CRLF, as they go over the wire; stored with LF
#    line ends because smtp-source sends each line with CRLF)
"$PY" - "$WORK" <<'EOF'
import base64, pathlib, sys
import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
work = pathlib.Path(sys.argv[1])
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                        serialization.NoEncryption())
spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
text = "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()
record = " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250))
(work / "nsd" / "example.com.zone").write_text(
    "$ORIGIN example.com.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n"
    '@ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
    f"bench._domainkey IN TXT {record}\n")
for msg in sorted((work / "msgs").glob("msg-*.eml")):
    raw = msg.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signature = dkim.sign(raw, b"bench", b"example.com", pem, include_headers=[b"from", b"to", b"subject", b"date"])
    msg.write_bytes((signature + raw).replace(b"\r\n", b"\n"))
EOF
for zone in bl.bench uribl.bench; do
  printf '$ORIGIN %s.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n' \
    "$zone" > "$WORK/nsd/$zone.zone"
done

# 2. nsd and clamd on loopback
P_DNS=$(free_port)
cat > "$WORK/nsd/nsd.conf" <<EOF
server:
  ip-address: $LH
  port: $P_DNS
  zonesdir: "$WORK/nsd"
  pidfile: "$WORK/nsd/nsd.pid"
  username: ""
  zonelistfile: "$WORK/nsd/zone.list"
  xfrdfile: "$WORK/nsd/xfrd.state"
  logfile: "$WORK/nsd/nsd.log"
  database: ""
  server-count: 1
remote-control:
  control-enable: no
zone:
  name: example.com
  zonefile: example.com.zone
zone:
  name: bl.bench
  zonefile: bl.bench.zone
zone:
  name: uribl.bench
  zonefile: uribl.bench.zone
EOF
nsd -c "$WORK/nsd/nsd.conf" -d & PIDS+=($!)
P_CLAM=$(free_port)
printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$WORK/clamd/eicar.com"
sigtool --md5 "$WORK/clamd/eicar.com" > "$WORK/clamd/db/test.hdb"
cat > "$WORK/clamd/clamd.conf" <<EOF
Foreground yes
DatabaseDirectory $WORK/clamd/db
TCPSocket $P_CLAM
TCPAddr $LH
LogFile $WORK/clamd/clamd.log
StreamMaxLength 25M
EOF
clamd --foreground --config-file="$WORK/clamd/clamd.conf" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$P_CLAM"
"$PY" - "$P_DNS" <<'EOF'
import sys, time, dns.resolver
r = dns.resolver.Resolver(configure=False); r.nameservers, r.port, r.lifetime = ["127.0.0.1"], int(sys.argv[1]), 0.5
for _ in range(100):
    try:
        r.resolve("example.com", "TXT"); break
    except Exception:
        time.sleep(0.1)
EOF

# 3. the gateway.yaml additions of each run (their top-level keys replace the example's)
DNS_YAML="dns: {nameservers: [$LH], port: $P_DNS, timeout: 2.0}
checks:
  mime: {malformed_score: 1.0}
  dnsbl: [{zone: bl.bench, score: 5.0}]
  uribl: [{zone: uribl.bench, score: 5.0}]
  spf: {enabled: true}
  dkim: {enabled: true}
  dmarc: {enabled: true}"
printf '%s\n' "$DNS_YAML" > "$WORK/dns.yaml"
printf '%s\n  antivirus: {clamd: "tcp://%s:%s"}\n' "$DNS_YAML" "$LH" "$P_CLAM" > "$WORK/clamd.yaml"

# 4. the runs, alternating off/dns/clamd ROUNDS times (a shared box drifts: alternating spreads the drift
#    over all three); the ratios are of the mean rates, each round's ratio is printed too
declare -A RATE ACC CPU PER
RUNS=${RUNS:-off dns clamd}
for round in $(seq "${ROUNDS:-1}"); do
for run in $RUNS; do
  extra=""; [[ $run != off ]] && extra=$WORK/$run.yaml
  out=$(CEILING=0 MSGS="$WORK/msgs" GATEWAY_EXTRA="$extra" WORK="$WORK/smtp-$run" bash "$HERE/smtp.sh")
  echo "$out" | sed "s/^liveprism_/checks_${run}_/"
  for sz in $SIZES; do
    line=$(echo "$out" | grep -E "^liveprism_${sz}(_workers$WORKERS)? ")
    rate=$(echo "$line" | sed -n 's/.* msgs_per_s=\([0-9.]*\).*/\1/p')
    RATE[$run-$sz]=$(echo "${RATE[$run-$sz]:-0} + $rate" | bc -l)
    ACC[$run-$sz]=$(echo "${ACC[$run-$sz]:-0} + $(echo "$line" | sed -n 's/.*accept_msgs_per_s=\([0-9.]*\).*/\1/p')" | bc -l)
    CPU[$run-$sz]=$(echo "${CPU[$run-$sz]:-0} + $(echo "$line" | sed -n 's/.*cpu_s_per_1000=\([0-9.]*\).*/\1/p')" | bc -l)
    [[ $run == off ]] && off_rate=$rate
    [[ $run != off ]] && PER[$run-$sz]+=" $(printf '%.2f' "$(echo "$rate / $off_rate" | bc -l)")"
  done
  [[ $run == off ]] || grep -q "spf:pass" "$WORK/smtp-$run/gateway-${SIZES%% *}"*.log \
    || { echo "# the $run run did not check SPF: see $WORK/smtp-$run" >&2; exit 1; }
done
done
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
for sz in $SIZES; do
  for run in $RUNS; do
    [[ $run == off ]] && continue
    target=""; [[ $run == dns ]] && target=" (target >= 0.70)"
    printf '# ratio %s/off (%s, %s worker(s), %s round(s)): %s end to end, %s accept%s; per round:%s;' "$run" "$sz" \
      "$WORKERS" "${ROUNDS:-1}" "$(ratio "${RATE[$run-$sz]}" "${RATE[off-$sz]}")" \
      "$(ratio "${ACC[$run-$sz]}" "${ACC[off-$sz]}")" "$target" "${PER[$run-$sz]}"
    printf ' gateway CPU per message off/%s: %s\n' "$run" "$(ratio "${CPU[off-$sz]}" "${CPU[$run-$sz]}")"
  done
done

# 5. where the time goes: each check alone, in one process, on the same messages and servers
for sz in $SIZES; do
  (cd "$REPO" && "$PY" - "$WORK/$sz" "$WORK/msgs/msg-$sz.eml" "$P_DNS" "$P_CLAM" "$SESSIONS" <<'EOF'
import asyncio, sys, time
from engine.checks import clamd
from engine.checks.runner import CheckRun
from engine.dns.resolver import Resolver
from engine.mime.view import parse_message
from engine.policy.models import Checks, DnsSettings
label, path, dns_port, clam_port, sessions = sys.argv[1].rsplit("/", 1)[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
raw = open(path, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
CONFIGS = {  # each check alone (dmarc needs spf and dkim), then all of them
    "dnsbl+uribl": {"dnsbl": [{"zone": "bl.bench"}], "uribl": [{"zone": "uribl.bench"}]},
    "spf": {"spf": {"enabled": True}},
    "dkim": {"dkim": {"enabled": True}},
    "spf+dkim+dmarc": {"spf": {"enabled": True}, "dkim": {"enabled": True}, "dmarc": {"enabled": True}},
}
CONFIGS["all"] = {k: v for c in CONFIGS.values() for k, v in c.items()}
async def dns_checks(settings, n, rounds=5):
    checks = Checks.model_validate(settings)
    resolver = Resolver(DnsSettings(nameservers=["127.0.0.1"], port=dns_port, timeout=2))
    async def one():
        run = CheckRun(checks, resolver, hostname="bench")
        run.connect("127.0.0.1", "bench.example"); run.mail("alice.martin@example.com")
        await run.early_hits()
        report = await run.data(raw, view)
        assert not any(h.id.endswith(("fail", "error", "reject", "none")) for h in report.hits), report.hits
    await one()  # warm the cache, as in a steady stream from one sender
    best = float("inf")
    for _ in range(rounds):  # the least CPU of several rounds: other load on the box only adds
        c0 = time.process_time()
        for _ in range(n // rounds):
            await one()
        best = min(best, (time.process_time() - c0) / (n // rounds))
    return best
view = parse_message(raw)  # the gateway parses each message once anyway
async def scans(n, concurrency):
    address = f"tcp://127.0.0.1:{clam_port}"
    t0, c0 = time.perf_counter(), time.process_time()
    async def worker(k):
        for _ in range(k):
            result = await clamd.scan(address, raw, timeout=30)
            assert result.status == "clean", result
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    done = n // concurrency * concurrency
    return done / (time.perf_counter() - t0), (time.process_time() - c0) / done
cpu = {name: asyncio.run(dns_checks(settings, 500)) for name, settings in CONFIGS.items()}
rate, gw_cpu = asyncio.run(scans(400, sessions))
print(f"where_{label} cpu_ms_per_msg (one process, DNS answers cached): "
      + " ".join(f"{name}={ms * 1000:.2f}" for name, ms in cpu.items()))
print(f"where_{label} clamd_scans_per_s={rate:.0f} ({sessions} concurrent, clamd's own CPU;"
      f" gateway side {gw_cpu * 1000:.2f} ms cpu per scan)")
EOF
  )
done

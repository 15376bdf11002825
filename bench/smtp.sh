#!/usr/bin/env bash
# End-to-end SMTP benchmark (not a test). In one run, on this box:
#   1. smtp-source -> bare aiosmtpd that only answers 250           (the Python ceiling)
#   2. smtp-source -> liveprism serve (example rules, spool+archive, fsync) -> smtp-sink
# and prints msgs/s (end to end: until the sink has all N) and p50/p99 accept latency
# (connect .. 250 after DATA, measured by a paced probe client while the load runs).
#   bench/smtp.sh                     # N=10000 2 KB messages, 20 sessions
#   N=2000 SIZES="2k 50k" bench/smtp.sh
#   WITH_POSTFIX=1 bench/smtp.sh      # also runs shared/bench/peers (Postfix relay, root) and prints the ratio;
#                                     # the gateway's policy then carries the peer's maps and regexes (equal_policy.py)
#   WORKERS="1 2" bench/smtp.sh       # serve --workers 1 and 2 in the same run (default "1"); for each: the
#                                     # CPU-seconds of all gateway processes per 1,000 messages (from /proc) and
#                                     # the box's idle % during the run, then the rate ratio to the first count
#   CEILING=0 GATEWAY_EXTRA=f.yaml MSGS=dir bench/smtp.sh   # gateway run only, top-level keys of f.yaml
#                                     # replace the example gateway.yaml's, messages msg-SIZE.eml from dir (bench/checks.sh uses it)
# Needs: postfix tools (smtp-source, smtp-sink), the venv (.venv or PY=...). Loopback only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=${REPO:-$(dirname "$HERE")}   # REPO=OTHER_CHECKOUT measures another commit with this script
PY=${PY:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3)
N=${N:-10000}
SESSIONS=${SESSIONS:-20}
SIZES=${SIZES:-2k 50k}
WORK=${WORK:-/tmp/liveprism-bench}
PEERS=${PEERS:-$REPO/../shared/bench/peers}
WORKERS=${WORKERS:-1}
P_CEIL=${P_CEIL:-25301}; P_GW=${P_GW:-25302}; P_SINK=${P_SINK:-25303}
LH=127.0.0.1
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rm -rf "$WORK"; mkdir -p "$WORK/msgs"
[[ -f $PEERS/helpers.py ]] || { echo "need shared/bench/peers (PEERS=...) for the test mail and the bare sink" >&2; exit 2; }
if [[ -n ${MSGS:-} ]]; then cp "$MSGS"/msg-*.eml "$WORK/msgs/"; else "$PY" "$PEERS/helpers.py" gen "$WORK/msgs" >/dev/null; fi
CEILING=${CEILING:-1}

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/$LH/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
now() { date +%s.%N; }
cpu_of_tree() {  # CPU-seconds (user+system) of a process and all its descendants, from /proc
  local pids=" $1 " todo=("$1") p kids
  while ((${#todo[@]})); do
    p=${todo[0]}; todo=("${todo[@]:1}")
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
    for k in $kids; do pids+="$k "; todo+=("$k"); done
  done
  local ticks=0 t
  for p in $pids; do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"$p"/stat 2>/dev/null || echo 0)
    ticks=$((ticks + t))
  done
  echo "$ticks / $(getconf CLK_TCK)" | bc -l
}
box_cpu() { awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }  # idle, total

policy() {  # example rules and lists; one tenant (example.net, the smtp-source recipient domain) -> smtp-sink
  local dir=$WORK/policy; rm -rf "$dir"; mkdir -p "$dir/tenants"
  cp -r "$REPO/policies/rules" "$REPO/policies/lists" "$dir/"
  sed -e "s/port: 2525/port: $P_GW/" -e 's/max_connections_per_ip: 50/max_connections_per_ip: 1000/' \
      -e '/^postmaster:/d' -e '/^  outbound:/d' "$REPO/policies/gateway.yaml" > "$dir/gateway.yaml"
  cat > "$dir/tenants/bench.yaml" <<EOF
name: bench
domains: [example.net, example.org]
routes: [{host: $LH, port: $P_SINK, priority: 10, tls: none}]
lists: [acme-allow]
EOF
  if [[ -n ${GATEWAY_EXTRA:-} ]]; then  # its top-level keys replace the example's
    awk -v keys="$(grep -o '^[a-z_]*:' "$GATEWAY_EXTRA" | tr '\n' ' ')" \
      'BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) drop[k[i]] = 1 } /^[a-z_]+:/ { skip = ($1 in drop) } !skip' \
      "$dir/gateway.yaml" > "$dir/gateway.tmp"
    cat "$dir/gateway.tmp" "$GATEWAY_EXTRA" > "$dir/gateway.yaml"; rm "$dir/gateway.tmp"
  fi
  # Beside the Postfix peer, the policy carries the same maps and regexes it checks (equal work):
  # 1,000 sender entries, 1,000 client networks, 100 header + 100 body regexes.
  if [[ ${WITH_POSTFIX:-0} == 1 || ${EQUAL_WORK:-0} == 1 ]]; then "$PY" "$PEERS/equal_policy.py" "$dir"; fi
}

probe() {  # $1 port, $2 msg, $3 pid to watch: prints p50/p99 of connect..250 in ms
  "$PY" - "$@" <<'EOF'
import smtplib, statistics, sys, time, os
port, msg, pid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
raw = open(msg, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
lat = []
def alive():
    try: return open(f"/proc/{pid}/stat").read().split(") ")[1][0] not in "ZX"
    except OSError: return False
while alive():
    t0 = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.bench.test", timeout=60) as s:
            s.sendmail("alice.martin@example.com", ["probe@example.org"], raw)
        lat.append((time.perf_counter() - t0) * 1000)
    except Exception as e:
        print("# probe error", e, file=sys.stderr)
    time.sleep(max(0.0, 0.02 - (time.perf_counter() - t0)))
lat.sort()
if len(lat) >= 5:
    print("p50_ms=%.2f p99_ms=%.2f probes=%d" % (statistics.median(lat), lat[int(len(lat) * 0.99) - 1], len(lat)))
else:
    print("p50_ms=nan p99_ms=nan probes=%d" % len(lat))
EOF
}

run_load() {  # $1 name, $2 port, $3 size, $4 count file or sink counter command
  local name=$1 port=$2 sz=$3
  local t0; t0=$(now)
  smtp-source -s "$SESSIONS" -m "$N" -f alice.martin@example.com -t bob.jones@example.net \
    -F "$WORK/msgs/msg-$sz.eml" "$LH:$port" & local src=$!
  probe "$port" "$WORK/msgs/msg-$sz.eml" "$src" > "$WORK/probe-$name-$sz.txt" &
  local pr=$!
  wait "$src"; local t_src; t_src=$(now)
  wait "$pr"
  echo "$t0 $t_src"
}

for sz in $SIZES; do
  # 1. ceilings: bare aiosmtpd answering 250, on asyncio and on uvloop (serve runs on uvloop)
  for flavour in asyncio uvloop; do
    [[ $CEILING == 1 ]] || break
    flag=""; [[ $flavour == uvloop ]] && flag="--uvloop"
    "$PY" "$PEERS/helpers.py" sink "$P_CEIL" $flag & PIDS+=($!); wait_port "$P_CEIL"
    read -r t0 t1 < <(run_load "ceiling-$flavour" "$P_CEIL" "$sz")
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    rate=$(echo "$N / ($t1 - $t0)" | bc -l)
    [[ $flavour == asyncio ]] && ceil=$rate || ceil_uv=$rate
    printf 'aiosmtpd_ceiling_%s_%s msgs_per_s=%.0f %s\n' "$flavour" "$sz" "$rate" \
      "$(cat "$WORK/probe-ceiling-$flavour-$sz.txt")"
  done

  # 2. liveprism serve -> smtp-sink (fsync on, archive on), once per worker count
  first_rate=""
  for w in $WORKERS; do
  policy
  rm -rf "$WORK/state" "$WORK/sink.count"
  smtp-sink -u nobody -c "$LH:$P_SINK" 1000 > "$WORK/sink.out" 2>&1 & PIDS+=($!); sinkpid=$!
  wait_port "$P_SINK"
  workers_flag=(); [[ $w == 1 ]] || workers_flag=(--workers "$w")  # checkouts before --workers run one
  (cd "$REPO" && exec "$PY" -m engine serve "$WORK/policy" --state "$WORK/state" "${workers_flag[@]}" \
     2> "$WORK/gateway-$sz-w$w.log") &
  PIDS+=($!); gwpid=$!
  wait_port "$P_GW"
  for _ in $(seq 600); do  # every worker up (they log when they serve)
    (( $(grep -c "worker .* serving policy" "$WORK/gateway-$sz-w$w.log" || true) >= w - 1 )) && break; sleep 0.1
  done
  cpu0=$(cpu_of_tree "$gwpid"); read -r idle0 total0 < <(box_cpu)
  read -r t0 t1 < <(run_load gateway "$P_GW" "$sz")
  # end to end: until the relay queue is empty (every message delivered to smtp-sink)
  "$PY" - "$WORK/state" <<'EOF2'
import sqlite3, sys, time
db = sys.argv[1] + "/index.sqlite3"
deadline = time.time() + 600
while time.time() < deadline:
    con = sqlite3.connect(db, timeout=30)
    pending = con.execute("select count(*) from deliveries").fetchone()[0]  # delivered rows are deleted
    con.close()
    if pending == 0:
        break
    time.sleep(0.05)
EOF2
  t2=$(now)
  cpu1=$(cpu_of_tree "$gwpid"); read -r idle1 total1 < <(box_cpu)
  accepted=$(grep -c "liveprism.txn.*reply='250" "$WORK/gateway-$sz-w$w.log" || true)
  sent=$(grep -c "status=sent" "$WORK/gateway-$sz-w$w.log" || true)   # one line per delivered recipient
  kill -TERM "$gwpid"; wait "$gwpid" 2>/dev/null || true
  kill "$sinkpid"; wait "$sinkpid" 2>/dev/null || true
  e2e=$(echo "$N / ($t2 - $t0)" | bc -l)
  acc=$(echo "$N / ($t1 - $t0)" | bc -l)
  cpu_k=$(echo "($cpu1 - $cpu0) * 1000 / $N" | bc -l)
  idle=$(echo "100 * ($idle1 - $idle0) / ($total1 - $total0)" | bc -l)
  name="liveprism_$sz"; [[ $WORKERS == 1 ]] || name+="_workers$w"  # the plain name when one count (bench/checks.sh)
  printf '%s msgs_per_s=%.0f accept_msgs_per_s=%.0f %s accepted_250=%s delivered=%s lost=%s cpu_s_per_1000=%.2f box_idle_pct=%.0f\n' \
    "$name" "$e2e" "$acc" "$(cat "$WORK/probe-gateway-$sz.txt")" "$accepted" "$sent" "$((accepted - sent))" \
    "$cpu_k" "$idle"
  [[ $CEILING == 1 ]] && printf '# ratio liveprism/ceiling (%s, %s workers): %.2f of asyncio, %.2f of uvloop\n' "$sz" "$w" \
    "$(echo "$e2e / $ceil" | bc -l)" "$(echo "$e2e / $ceil_uv" | bc -l)"
  if [[ -z $first_rate ]]; then first_rate=$e2e; first_w=$w; first_cpu=$cpu_k; else
    printf '# ratio workers %s/%s (%s): rate %.2f, cpu per message %.2f\n' "$w" "$first_w" "$sz" \
      "$(echo "$e2e / $first_rate" | bc -l)" "$(echo "$cpu_k / $first_cpu" | bc -l)"
  fi
  done
  if [[ ${WITH_POSTFIX:-0} == 1 ]]; then  # the peer a user would run instead, same box, same run
    n_peer=$N; [[ $sz == 50k ]] && n_var=N50 || n_var=N
    pf=$(env ONLY=postfix_relay SIZES="$sz" "$n_var=$n_peer" PY="$PY" bash "$PEERS/run.sh" 2>/dev/null \
         | sed -n 's/^postfix_relay[_0-9k]* msgs_per_s=\([0-9.]*\).*/\1/p')
    printf 'postfix_relay_%s msgs_per_s=%s\n# ratio liveprism/postfix (%s): %.2f with %s worker(s)' "$sz" "$pf" \
      "$sz" "$(echo "$first_rate / $pf" | bc -l)" "$first_w"
    [[ $first_w != "$w" ]] && printf ', %.2f with %s' "$(echo "$e2e / $pf" | bc -l)" "$w"
    echo
  fi
done

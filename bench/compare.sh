#!/usr/bin/env bash
# Before/after of a change, in one run on this box (not a test): bench/smtp.sh against a checkout of
# BASE (a git worktree under $WORK_BASE) and against this work tree, alternated ROUNDS times so that a
# noisy neighbour hits both, then the mean rate and CPU per message of each and their ratio.
#   bench/compare.sh                      # BASE=origin/main (else main~1), ROUNDS=3, N=5000, SIZES="2k 50k"
#   BASE=74e3e17 ROUNDS=2 N=3000 SIZES=2k bench/compare.sh
# The base runs on this checkout's venv (`python -m engine` from the base's directory imports the
# base's engine package), so only code differs. Needs what bench/smtp.sh needs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PY:-$REPO/.venv/bin/python}
BASE=${BASE:-$(git -C "$REPO" rev-parse -q --verify origin/main >/dev/null && echo origin/main || echo main~1)}
ROUNDS=${ROUNDS:-3}
export N=${N:-5000} SIZES=${SIZES:-2k 50k} CEILING=0
export PEERS=${PEERS:-$REPO/../shared/bench/peers}
WORK_BASE=${WORK_BASE:-/tmp/liveprism-compare-base}
OUT=$(mktemp -d)
cleanup() { git -C "$REPO" worktree remove --force "$WORK_BASE" 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

git -C "$REPO" worktree remove --force "$WORK_BASE" 2>/dev/null || rm -rf "$WORK_BASE"
git -C "$REPO" worktree add -q --detach "$WORK_BASE" "$BASE"
echo "# base $(git -C "$WORK_BASE" rev-parse --short HEAD) ($BASE) vs work tree $(git -C "$REPO" rev-parse --short HEAD)$(
  git -C "$REPO" diff --quiet HEAD || echo '+changes'), N=$N, sizes: $SIZES, rounds: $ROUNDS"

for round in $(seq "$ROUNDS"); do
  for side in base head; do
    checkout=$REPO; [[ $side == base ]] && checkout=$WORK_BASE
    REPO=$checkout PY=$PY bash "$HERE/smtp.sh" | tee -a "$OUT/$side.txt" | sed "s/^/# round $round $side: /"
  done
done

"$PY" - "$OUT/base.txt" "$OUT/head.txt" <<'EOF'
import re, statistics, sys
def read(path):
    found = {}
    for line in open(path):
        m = re.match(r"(liveprism_\S+) msgs_per_s=(\d+).*cpu_s_per_1000=([\d.]+)", line)
        if m:
            found.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
    return found
base, head = read(sys.argv[1]), read(sys.argv[2])
for name in base:
    b_rate = statistics.mean(r for r, _ in base[name]); h_rate = statistics.mean(r for r, _ in head[name])
    b_cpu = statistics.mean(c for _, c in base[name]); h_cpu = statistics.mean(c for _, c in head[name])
    print(f"{name} base msgs_per_s={b_rate:.0f} cpu_s_per_1000={b_cpu:.2f} head msgs_per_s={h_rate:.0f} "
          f"cpu_s_per_1000={h_cpu:.2f}  ratio head/base: rate {h_rate / b_rate:.3f}, cpu per message {h_cpu / b_cpu:.3f}"
          f"  (rounds base {[round(r) for r, _ in base[name]]}, head {[round(r) for r, _ in head[name]]})")
EOF

#!/usr/bin/env bash
# Added latency and throughput of gatehouse (full pipeline: ingress → guard → router over NATS, every
# request event through JetStream into ClickHouse) against the shared gateway benchmark's mock upstream,
# with the direct baseline and the peer gateways measured in the same run.
#
#   bench/run.sh                       # gatehouse + LiteLLM + Portkey (≈ 8 min)
#   TARGETS=gatehouse bench/run.sh     # gatehouse only (direct is always measured)
#   RUNS=3 bench/run.sh                # several runs; the report prints min–max over them
#
# Needs ../shared/bench (the harness) set up once with its setup.sh; results in /tmp/bench-results/.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HARNESS=${HARNESS:-$HERE/../../shared/bench}
if [ ! -x "$HARNESS/run.sh" ] && common=$(git -C "$HERE" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
  HARNESS=$(dirname "$common")/../shared/bench  # in a git worktree: next to the main checkout
fi
[ -x "$HARNESS/run.sh" ] || { echo "harness not found at $HARNESS (set HARNESS=...)"; exit 1; }
TARGETS_IN=${TARGETS:-"gatehouse litellm portkey"}
TARGETS_OUT=""
for t in $TARGETS_IN; do
  if [ "$t" = gatehouse ]; then TARGETS_OUT="$TARGETS_OUT $HERE/gatehouse-target.sh"; else TARGETS_OUT="$TARGETS_OUT $t"; fi
done
RUNS=${RUNS:-1}
STAMP=$(date +%Y%m%d-%H%M%S)
dirs=()
for i in $(seq 1 "$RUNS"); do
  RUN_ID="gatehouse-$STAMP-$i" TARGETS="$TARGETS_OUT" GATEHOUSE_REPO="$HERE/.." "$HARNESS/run.sh"
  dirs+=("${RESULTS_ROOT:-/tmp/bench-results}/gatehouse-$STAMP-$i")
done
if [ "$RUNS" -gt 1 ]; then
  "${BENCH_PY:-/opt/peers/bench-venv/bin/python}" "$HARNESS/lib/report.py" "${dirs[@]}"
fi

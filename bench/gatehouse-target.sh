# gatehouse as a target of the shared gateway benchmark (../shared/bench/run.sh), full pipeline on:
# ingress → guard → router over NATS, every request event to JetStream → accounting → ClickHouse (chDB).
#   TARGETS="litellm portkey $PWD/bench/gatehouse-target.sh" ../shared/bench/run.sh
GATEHOUSE_REPO=${GATEHOUSE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
TARGET_PORT=15080
TARGET_BASE_URL="http://127.0.0.1:15080/v1"
TARGET_HEALTH_URL="http://127.0.0.1:15080/readyz"
TARGET_MODEL="bench-model"
TARGET_STREAM_MODEL="bench-model-stream"
TARGET_EMBED_MODEL="bench-embed"
TARGET_HEADERS="Authorization: Bearer sk-bench"
TARGET_STREAM_HEADERS="$TARGET_HEADERS"
TARGET_START_TIMEOUT=120

target_version() { echo "gatehouse $(git -C "$GATEHOUSE_REPO" describe --always --dirty 2>/dev/null || echo unknown)"; }

target_start() {
  cd "$TARGET_WORKDIR"
  # the code under test is this checkout's, not whatever `pip install -e` points at: the launcher's
  # children inherit PYTHON* variables (gatehouse/childenv.py), so every service imports from here too
  export PYTHONPATH="$GATEHOUSE_REPO${PYTHONPATH:+:$PYTHONPATH}"
  "${GATEHOUSE_PYTHON:-python3}" -c 'import gatehouse, sys; sys.stdout.write(f"gatehouse code: {gatehouse.__path__[0]}\n")'
  exec "${GATEHOUSE_PYTHON:-python3}" -m gatehouse.cli up --config "$GATEHOUSE_REPO/bench/gatehouse.yaml" \
    --data-dir "$TARGET_WORKDIR/gatehouse-data" --port 15080 --nats-port 0 --prefix bench
}

target_stop() { kill -INT "$1"; }

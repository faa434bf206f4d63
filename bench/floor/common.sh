# Shared part of the floor targets (bench/floor/floor-*.sh): FLOOR_SHAPE picks the shape of bench/floor/pipeline.py.
FLOOR_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARGET_PORT=15090
TARGET_BASE_URL="http://127.0.0.1:15090/v1"
TARGET_HEALTH_URL="http://127.0.0.1:15090/health"
TARGET_MODEL="bench-model"
TARGET_STREAM_MODEL="bench-model"
TARGET_HEADERS="Authorization: Bearer sk-bench"
TARGET_STREAM_HEADERS="$TARGET_HEADERS"
TARGET_START_TIMEOUT=60

target_version() { echo "floor ($FLOOR_SHAPE) $(git -C "$FLOOR_DIR" describe --always --dirty 2>/dev/null || echo unknown)"; }

target_start() {
  cd "$TARGET_WORKDIR"
  exec "${GATEHOUSE_PYTHON:-python3}" "$FLOOR_DIR/pipeline.py" --shape "$FLOOR_SHAPE" --port 15090 \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT"
}

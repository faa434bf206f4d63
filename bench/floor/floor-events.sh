# The cost floor of gatehouse's shape, "events" (bench/floor/pipeline.py), as a target of ../shared/bench/run.sh.
FLOOR_SHAPE=events
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

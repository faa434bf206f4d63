# The cost floor of gatehouse's shape, "proxy" (bench/floor/pipeline.py), as a target of ../shared/bench/run.sh.
FLOOR_SHAPE=proxy
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

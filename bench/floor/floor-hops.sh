# The cost floor of gatehouse's shape, "hops" (bench/floor/pipeline.py), as a target of ../shared/bench/run.sh.
FLOOR_SHAPE=hops
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

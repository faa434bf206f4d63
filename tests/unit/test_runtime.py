"""The request-path services' garbage-collector settings (shared/runtime.py)."""

from __future__ import annotations

import subprocess
import sys


def test_tune_gc_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    # in a child interpreter: the test process keeps its own collector settings
    code = (
        "import gc; from shared.runtime import tune_gc, GEN0_THRESHOLD; "
        "before = gc.get_freeze_count(); tune_gc(); "
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0], GEN0_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    before, after, threshold, wanted = (int(x) for x in out.stdout.split())
    assert before == 0
    assert after > 1000  # the interpreter's and gatehouse's startup objects are out of the collector's walks
    assert threshold == wanted == 50_000

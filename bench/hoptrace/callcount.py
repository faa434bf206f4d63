"""Bench only: cProfile in a gatehouse service process, between two signals (see bench/hop_profile.py --calls).

SIGUSR1 starts a fresh profile of the main thread (the event loop); SIGUSR2 stops it and writes
`<dir>/<service>-<pid>.prof` (pstats). Function calls per request are then counted exactly, whatever else
runs on the machine, which makes them comparable across commits where timings on a shared machine are not.
"""

from __future__ import annotations

import cProfile
import os
import signal
from pathlib import Path
from types import FrameType


def install(directory: str, service: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    current: list[cProfile.Profile] = []

    def start(_signum: int, _frame: FrameType | None) -> None:
        for profile in current:
            profile.disable()
        current[:] = [cProfile.Profile()]
        current[0].enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if current:
            current[0].disable()
            final = out / f"{service}-{os.getpid()}.prof"
            partial = final.with_suffix(".part")
            current[0].dump_stats(partial)
            partial.rename(final)  # the reader waits for the name: it must never see half a file
            current.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)

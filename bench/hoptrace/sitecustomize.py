"""Bench only: instruments gatehouse's service processes when bench/hop_profile.py asks for it.

hop_profile.py puts this folder on the PYTHONPATH of `gatehouse up`, whose children inherit it. With
GATEHOUSE_HOPTRACE=<dir>, each service records per-request hop timestamps (hoptrace.py); with
GATEHOUSE_CPROFILE=<dir>, it profiles between SIGUSR1 and SIGUSR2 (callcount.py). Without either variable
nothing is imported or changed.
"""

import os
from pathlib import Path

if os.environ.get("GATEHOUSE_HOPTRACE") or os.environ.get("GATEHOUSE_CPROFILE"):
    _args = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    _module = _args[_args.index(b"-m") + 1].decode() if b"-m" in _args[:-1] else ""
    if _module.startswith("services."):
        if os.environ.get("GATEHOUSE_HOPTRACE"):
            import hoptrace

            hoptrace.install(os.environ["GATEHOUSE_HOPTRACE"], _module.split(".")[1])
        if os.environ.get("GATEHOUSE_CPROFILE"):
            import callcount

            callcount.install(os.environ["GATEHOUSE_CPROFILE"], _module.split(".")[1])

"""Process-wide runtime settings every request-path service applies once it has started up."""

from __future__ import annotations

import gc

# young objects between collections of the cyclic garbage collector (CPython's default is 700)
GEN0_THRESHOLD = 50_000


def tune_gc(gen0: int = GEN0_THRESHOLD) -> None:
    """Keep the cyclic garbage collector off the request path.

    A request allocates a few thousand short-lived objects (messages, Structs, dicts), almost none in reference
    cycles, so with CPython's defaults the collector runs several times per request and now and then walks the
    whole heap of a process that imported pydantic, httpx and the config (a few hundred thousand objects).
    Everything alive once the service has started (modules, config, compiled patterns) is frozen out of the
    collector, and young collections run every `gen0` allocations instead of every 700. Measured with
    bench/hop_profile.py in bench/README.md ("Garbage collector").
    """
    gc.freeze()
    gc.set_threshold(gen0, 20, 20)

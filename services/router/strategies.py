"""Routing strategies (pure): the order in which one request tries the deployments of a model.

Each strategy reads an `Option` per deployment (what this replica knows of it) and a random source:

- priority: the configured order (failover to the next).
- weighted: a random order in which each deployment leads with probability weight / total
  (weighted sampling without replacement, Efraimidis-Spirakis keys u^(1/w)).
- latency: the lowest EWMA first (time to first token for streams, total latency otherwise); a
  deployment with no sample yet counts as fastest, so each is measured; a share `explore` of requests
  goes in random order so the averages of the slower ones stay current.
- least_inflight: the fewest requests in flight on this replica first (ties at random).
- cost: the cheapest price of this request first (its prompt estimate and max_tokens at each
  deployment's rates; an unknown price last).
- usage: spread by what the providers' rate-limit headers say is left: weighted random by the share
  remaining (an exhausted deployment last).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    weight: int = 1
    ewma_ms: float | None = None
    inflight: int = 0
    price: float | None = None
    capacity: float = 1.0


def _weighted(weights: Sequence[float], rng: random.Random) -> list[int]:
    keys = [(rng.random() ** (1.0 / w) if w > 0 else -1.0, i) for i, w in enumerate(weights)]
    keys.sort(key=lambda k: -k[0])
    return [i for _, i in keys]


def order(strategy: str, options: Sequence[Option], rng: random.Random, explore: float = 0.0) -> list[int]:
    """Indices of `options` in the order to try them."""
    n = len(options)
    if n <= 1:
        return list(range(n))
    if strategy == "weighted":
        return _weighted([o.weight for o in options], rng)
    if strategy == "latency":
        if explore and rng.random() < explore:
            shuffled = list(range(n))
            rng.shuffle(shuffled)
            return shuffled
        return sorted(range(n), key=lambda i: (options[i].ewma_ms or 0.0, i))
    if strategy == "least_inflight":
        tiebreak = [rng.random() for _ in range(n)]
        return sorted(range(n), key=lambda i: (options[i].inflight, tiebreak[i]))
    if strategy == "cost":
        return sorted(range(n), key=lambda i: (options[i].price is None, options[i].price or 0.0, i))
    if strategy == "usage":
        return _weighted([o.capacity for o in options], rng)
    return list(range(n))  # priority

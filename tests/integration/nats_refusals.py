"""A NATS connection that remembers what the server refused it (permission tests of the bus's roles)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.aio.client import Client


@dataclass
class Watched:
    """A connection whose error callback appends to `errors`; `violations` reads the server's refusals."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    async def violations(self) -> list[str]:
        """What the server refused this connection since the last call."""
        await settle(self.nc)
        refused = [e for e in self.errors if "permissions violation" in e]
        self.errors.clear()
        return refused


async def settle(nc: Client) -> None:
    """Return once the server has handled everything this connection sent, and it has read the answers."""
    await nc.flush()
    await nc.flush()

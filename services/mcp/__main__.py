"""`python -m services.mcp`: run one mcp stage replica."""

from __future__ import annotations

import uvloop

from services.mcp.app import create_app
from services.mcp.settings import McpSettings
from shared.logs import setup_logging


def main() -> None:
    settings = McpSettings()
    setup_logging("mcp", settings.log_level)
    uvloop.run(create_app(settings).run())


if __name__ == "__main__":
    main()

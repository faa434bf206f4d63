"""`python -m services.mcp`: run one mcp stage replica."""

from __future__ import annotations

import uvloop

from services.mcp.app import create_app
from services.mcp.settings import McpSettings
from shared.logs import setup_logging
from shared.runtime import tune_gc


def main() -> None:
    settings = McpSettings()
    setup_logging("mcp", settings.log_level)
    app = create_app(settings)
    tune_gc()  # the app is built: what is alive now stays
    uvloop.run(app.run())


if __name__ == "__main__":
    main()

"""`python -m services.router`: run one router replica."""

from __future__ import annotations

import uvloop

from services.router.app import create_app
from services.router.settings import RouterSettings
from shared.logs import setup_logging


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    uvloop.run(create_app(settings).run())


if __name__ == "__main__":
    main()

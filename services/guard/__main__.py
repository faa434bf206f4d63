"""`python -m services.guard`: run one guard replica."""

from __future__ import annotations

import uvloop

from services.guard.app import create_app
from services.guard.settings import GuardSettings
from shared.logs import setup_logging


def main() -> None:
    settings = GuardSettings()
    setup_logging("guard", settings.log_level)
    uvloop.run(create_app(settings).run())


if __name__ == "__main__":
    main()

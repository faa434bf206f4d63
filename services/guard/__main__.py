"""`python -m services.guard`: run one guard replica."""

from __future__ import annotations

import uvloop

from services.guard.app import create_app
from services.guard.settings import GuardSettings
from shared.logs import setup_logging
from shared.runtime import tune_gc


def main() -> None:
    settings = GuardSettings()
    setup_logging("guard", settings.log_level)
    app = create_app(settings)
    tune_gc()  # the app is built: what is alive now stays
    uvloop.run(app.run())


if __name__ == "__main__":
    main()

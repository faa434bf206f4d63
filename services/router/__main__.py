"""`python -m services.router`: run one router replica."""

from __future__ import annotations

import uvloop

from services.router.app import create_app
from services.router.settings import RouterSettings
from shared.logs import setup_logging
from shared.runtime import tune_gc


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    app = create_app(settings)
    tune_gc()  # the app is built: what is alive now stays
    uvloop.run(app.run())


if __name__ == "__main__":
    main()

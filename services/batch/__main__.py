"""`python -m services.batch`: run one batch replica."""

from __future__ import annotations

import uvloop

from services.batch.app import create_app
from services.batch.settings import BatchSettings
from shared.logs import setup_logging
from shared.runtime import tune_gc


def main() -> None:
    settings = BatchSettings()
    setup_logging("batch", settings.log_level)
    app = create_app(settings)
    tune_gc()  # the app is built: what is alive now stays
    uvloop.run(app.run())


if __name__ == "__main__":
    main()

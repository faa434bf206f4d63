"""`python -m services.batch`: run one batch replica."""

from __future__ import annotations

import uvloop

from services.batch.app import create_app
from services.batch.settings import BatchSettings
from shared.logs import setup_logging


def main() -> None:
    settings = BatchSettings()
    setup_logging("batch", settings.log_level)
    uvloop.run(create_app(settings).run())


if __name__ == "__main__":
    main()

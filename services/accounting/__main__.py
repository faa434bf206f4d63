"""`python -m services.accounting`: run one accounting replica."""

from __future__ import annotations

import uvloop

from services.accounting.app import create_app
from services.accounting.settings import AccountingSettings
from shared.logs import setup_logging


def main() -> None:
    settings = AccountingSettings()
    setup_logging("accounting", settings.log_level)
    uvloop.run(create_app(settings).run())


if __name__ == "__main__":
    main()

"""`python -m services.accounting`: run one accounting replica."""

from __future__ import annotations

import logging
import sys

import uvloop
from pydantic import ValidationError

from services.accounting.app import create_app
from services.accounting.consumer import GEN0_THRESHOLD
from services.accounting.settings import AccountingSettings
from shared.config import ConfigError
from shared.logs import setup_logging
from shared.runtime import tune_gc


def main() -> None:
    try:
        settings = AccountingSettings()
    except ValidationError as exc:
        sys.exit(f"accounting: invalid GATEHOUSE_ACCOUNTING_* settings:\n{exc}")
    setup_logging("accounting", settings.log_level)
    try:
        app = create_app(settings)
    except (ConfigError, ValueError) as exc:  # a bad config file or migrations folder: say which, then stop
        logging.getLogger("gatehouse.accounting").error("cannot start: %s", exc)
        sys.exit(2)
    tune_gc(GEN0_THRESHOLD)
    uvloop.run(app.run())


if __name__ == "__main__":
    main()

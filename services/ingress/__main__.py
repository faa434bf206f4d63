"""`python -m services.ingress`: run one ingress replica (uvicorn + uvloop + httptools)."""

from __future__ import annotations

import os
import sys

import uvicorn

from services.ingress.app import create_app
from services.ingress.exposure import dev_key_exposure, is_loopback
from services.ingress.settings import IngressSettings
from services.ingress.telemetry import MetricsEndpoint
from shared.config import load_config
from shared.event_publisher import EventPublisher
from shared.logs import setup_logging
from shared.runtime import tune_gc
from shared.subjects import Subjects
from shared.telemetry import Telemetry, TelemetryConfig


def main() -> None:
    settings = IngressSettings()
    setup_logging("ingress", settings.log_level)
    config = load_config(settings.config)
    host = settings.ingress_host or config.server.host
    refused = dev_key_exposure(config, host)
    if refused and not settings.ingress_allow_dev_key:
        sys.exit(f"ingress: {refused}")
    events = EventPublisher.from_settings(settings, "ingress")
    subjects = Subjects(settings.subject_prefix)
    telemetry = Telemetry(TelemetryConfig.of(settings, "ingress", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()
    endpoint = (
        MetricsEndpoint(settings.ingress_metrics_token.get_secret_value(), is_loopback(host))
        if settings.metrics_enabled
        else None
    )
    app = create_app(
        config,
        settings.nats_link("ingress"),
        subjects,
        events,
        nats_timeout_s=settings.nats_timeout_s,
        admin_key=os.environ.get(config.governance.admin_key_env) or None,
        telemetry=telemetry,
        metrics_endpoint=endpoint,
    )
    tune_gc()  # the app is built: what is alive now stays
    uvicorn.run(
        app,
        host=host,
        port=settings.ingress_port if settings.ingress_port is not None else config.server.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        log_config=None,  # uvicorn's own lines go through the JSON handler (shared/logs.py), not its formatter
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()

"""Batch service settings: the common GATEHOUSE_* ones plus GATEHOUSE_BATCH_*."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class BatchSettings(ServiceSettings):
    # items in flight at once in this replica, all jobs together (jobs and keys have their own caps)
    batch_max_inflight: int = Field(default=256, gt=0)
    # an item not acknowledged this long after delivery (its replica died) goes to another replica; a live
    # replica working on an item tells JetStream so every third of it
    batch_ack_wait_s: float = Field(default=60.0, gt=2)
    # how often running jobs publish their progress (the `batch_jobs` table) and renew their reservation note
    batch_progress_every_s: float = Field(default=2.0, gt=0)
    # how often idle jobs are checked for their end (all items done, cancelled, expired)
    batch_sweep_every_s: float = Field(default=1.0, gt=0)
    # how often the work queue's backlog is read for the metrics
    batch_metrics_poll_s: float = Field(default=5.0, gt=0)
    # the longest one call to the batch API may take (a create reads and prices the whole file)
    batch_api_timeout_s: float = Field(default=120.0, gt=0)

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
    # the work queue's limits (all jobs and namespaces together): a publish past one is refused ("maximum … exceeded",
    # the producer's to retry later) instead of filling JetStream's storage, which the whole gateway writes to;
    # nats-server reserves max_bytes from JetStream's store when it makes the queue
    batch_queue_max_bytes: int = Field(default=1024**3, gt=0)
    batch_queue_max_items: int = Field(default=2_000_000, gt=0)
    # items queued at once on one job's subject (each namespace's subject of a job counts on its own)
    batch_queue_max_items_per_job: int = Field(default=1_000_000, gt=0)

-- Batch jobs (services/batch): each item's request row names its job (`batch_id`, there since 0001) and the
-- producer's item id; every job's progress as the batch service reports it (the latest row per job wins:
-- `SELECT … FROM batch_jobs FINAL`, or argMax(…, updated_at) grouped by job_id). Rows stored before read ''.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS batch_item_id String DEFAULT '' AFTER batch_id;

CREATE TABLE IF NOT EXISTS batch_jobs
(
    event_id     String,
    job_id       String,
    status       LowCardinality(String),
    surface      LowCardinality(String),
    endpoint     LowCardinality(String),
    model        LowCardinality(String),
    key_id       LowCardinality(String),
    team         LowCardinality(String),
    project      LowCardinality(String),
    user         String,
    org          LowCardinality(String),
    total        UInt32,
    completed    UInt32,
    failed       UInt32,
    cost_usd     Float64,
    reserved_usd Float64,
    created_at   DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC'),
    expires_at   DateTime64(3, 'UTC'),
    finished_at  DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (job_id);

-- Analytics (issue 9): the content log, and lookups by request id for the request explorer.

-- Prompts and responses of callers whose key, project, team or org opted in (`limits.log_content`), as the
-- guard redacted them for storage (every finding with a position becomes its placeholder). Kept
-- `retention_days` (`limits.log_retention_days`, default 30) from the request, then dropped by ClickHouse.
CREATE TABLE IF NOT EXISTS request_content
(
    event_id       String,
    request_id     String,
    at             DateTime64(3, 'UTC'),
    org            LowCardinality(String),
    team           LowCardinality(String),
    project        LowCardinality(String),
    key_id         LowCardinality(String),
    model          LowCardinality(String),
    direction      LowCardinality(String),
    policy         LowCardinality(String),
    guard_action   LowCardinality(String),
    texts          Nested
    (
        location String,
        text     String
    ),
    redactions     UInt32,
    truncated      Bool,
    retention_days UInt16,
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX request_id_idx request_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (event_id)
TTL toDateTime(at) + toIntervalDay(retention_days);

-- `gatehouse request <id>` reads a request's guard verdicts by request id (the table is ordered by event id).
ALTER TABLE guard_verdicts ADD INDEX IF NOT EXISTS request_id_idx request_id TYPE bloom_filter GRANULARITY 4;

-- One row per guard verdict that found something (clean passes are on the request row).
-- Positions and rule ids only: the matched values are never stored.
CREATE TABLE IF NOT EXISTS guard_verdicts
(
    event_id    String,
    request_id  String,
    policy      LowCardinality(String),
    action      LowCardinality(String),
    direction   LowCardinality(String),
    findings    Nested
    (
        scanner  String,
        rule     String,
        action   String,
        severity String,
        start    Int32,
        end      Int32,
        location String
    ),
    scan_us     UInt32,
    at          DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (event_id)

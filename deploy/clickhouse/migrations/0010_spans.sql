-- One row per span (shared/tracing.py): every stage's work on a request (ingress, guard, router, each
-- provider attempt, accounting), so a trace can be read back with no collector:
--   SELECT service, name, duration_ms, status FROM spans WHERE trace_id = '…' ORDER BY start_time
-- trace_id is the request record's (requests.trace_id). A span stored twice collapses on (trace_id, span_id).
-- Spans are diagnostics: kept 30 days (ALTER TABLE spans MODIFY TTL … to change it).
CREATE TABLE IF NOT EXISTS spans
(
    trace_id       String,
    span_id        String,
    parent_span_id String,
    name           LowCardinality(String),
    kind           LowCardinality(String),
    service        LowCardinality(String),
    instance       LowCardinality(String),
    start_time     DateTime64(6, 'UTC'),
    end_time       DateTime64(6, 'UTC'),
    duration_ms    Float64,
    status         LowCardinality(String),
    status_message String,
    request_id     String,
    attributes     Map(LowCardinality(String), String),
    batch_id       String,
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX request_id_idx request_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (trace_id, span_id)
TTL toDateTime(start_time) + INTERVAL 30 DAY

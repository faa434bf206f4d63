-- One row per request: the complete record ingress publishes when a request ends.
-- ReplacingMergeTree on event_id: a redelivered event collapses into the same row.
CREATE TABLE IF NOT EXISTS requests
(
    event_id          String,
    request_id        String,
    trace_id          String,
    batch_id          String,
    api               LowCardinality(String),
    key_id            LowCardinality(String),
    team              LowCardinality(String),
    project           LowCardinality(String),
    user              String,
    requested_model   LowCardinality(String),
    provider          LowCardinality(String),
    deployment        LowCardinality(String),
    provider_model    LowCardinality(String),
    stream            Bool,
    status            UInt16,
    error_type        LowCardinality(String),
    error_code        LowCardinality(String),
    error_message     String,
    input_tokens      UInt32,
    output_tokens     UInt32,
    cached_tokens     UInt32,
    reasoning_tokens  UInt32,
    finish_reason     LowCardinality(String),
    attempts          Nested
    (
        provider   String,
        deployment String,
        status     UInt16,
        latency_ms Float32,
        error_code String
    ),
    guard_action      LowCardinality(String),
    guard_policy      LowCardinality(String),
    guard_findings    Nested
    (
        scanner   String,
        rule      String,
        action    String,
        severity  String,
        start     Int32,
        end       Int32,
        direction String
    ),
    received_at       DateTime64(3, 'UTC'),
    finished_at       DateTime64(3, 'UTC'),
    latency_ms        Float32,
    ttft_ms           Float32,
    upstream_ms       Float32,
    request_bytes     UInt32,
    response_bytes    UInt32,
    tags              Map(String, String),
    cost_usd          Nullable(Float64),
    price_version     LowCardinality(String),
    reserved_cost_usd Nullable(Float64),
    settled_cost_usd  Nullable(Float64),
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (event_id)

-- MCP calls (services/ingress/mcp → services/guard → services/mcp): one row per tool call, resource read or
-- prompt get through the `/mcp` endpoint, refused ones included (status says why). Guard verdicts on the
-- arguments (direction `input`) and on the result (`output`) name rules and offsets, never the text.
CREATE TABLE IF NOT EXISTS mcp_calls
(
    event_id        String,
    call_id         String,
    trace_id        String,
    run_id          String,
    session_id      String,
    method          LowCardinality(String),
    server          LowCardinality(String),
    tool            String,
    key_id          LowCardinality(String),
    team            LowCardinality(String),
    project         LowCardinality(String),
    user            String,
    org             LowCardinality(String),
    status          LowCardinality(String),
    error_code      Int32,
    error_message   String,
    latency_ms      Float64,
    upstream_ms     Float64,
    request_bytes   UInt32,
    response_bytes  UInt32,
    guard_action    LowCardinality(String),
    guard_policy    LowCardinality(String),
    guard_findings  Nested
    (
        scanner   LowCardinality(String),
        rule      LowCardinality(String),
        action    LowCardinality(String),
        severity  LowCardinality(String),
        direction LowCardinality(String),
        location  String
    ),
    approval        LowCardinality(String),
    cost_usd        Float64,
    received_at     DateTime64(3, 'UTC'),
    finished_at     DateTime64(3, 'UTC'),
    mcp_replica     LowCardinality(String),
    guard_replica   LowCardinality(String),
    tags            Map(String, String),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(finished_at)
ORDER BY (finished_at, event_id);

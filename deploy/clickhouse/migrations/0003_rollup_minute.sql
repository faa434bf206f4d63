-- Per-minute rollup by key, team, model and provider, maintained by ClickHouse itself.
CREATE TABLE IF NOT EXISTS requests_per_minute
(
    minute          DateTime('UTC'),
    key_id          LowCardinality(String),
    team            LowCardinality(String),
    requested_model LowCardinality(String),
    provider        LowCardinality(String),
    requests        UInt64,
    errors          UInt64,
    input_tokens    UInt64,
    output_tokens   UInt64,
    cost_usd        Float64,
    latency_ms_sum  Float64
)
ENGINE = SummingMergeTree
ORDER BY (minute, key_id, team, requested_model, provider);

CREATE MATERIALIZED VIEW IF NOT EXISTS requests_per_minute_mv TO requests_per_minute AS
SELECT
    toStartOfMinute(received_at) AS minute,
    key_id,
    team,
    requested_model,
    provider,
    count() AS requests,
    countIf(status >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    sum(latency_ms) AS latency_ms_sum
FROM requests
GROUP BY minute, key_id, team, requested_model, provider;

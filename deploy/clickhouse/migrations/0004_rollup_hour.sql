-- Per-hour rollup by key, team, project, model and provider, maintained by ClickHouse itself.
-- Kept for long ranges (dashboards over months) where the per-minute rollup is too fine.
CREATE TABLE IF NOT EXISTS requests_per_hour
(
    hour             DateTime('UTC'),
    key_id           LowCardinality(String),
    team             LowCardinality(String),
    project          LowCardinality(String),
    requested_model  LowCardinality(String),
    provider         LowCardinality(String),
    requests         UInt64,
    errors           UInt64,
    input_tokens     UInt64,
    output_tokens    UInt64,
    cached_tokens    UInt64,
    reasoning_tokens UInt64,
    cost_usd         Float64,
    unpriced         UInt64,
    latency_ms_sum   Float64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, key_id, team, project, requested_model, provider);

CREATE MATERIALIZED VIEW IF NOT EXISTS requests_per_hour_mv TO requests_per_hour AS
SELECT
    toStartOfHour(received_at) AS hour,
    key_id,
    team,
    project,
    requested_model,
    provider,
    count() AS requests,
    countIf(status >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    countIf(requests.cost_usd IS NULL) AS unpriced,
    sum(latency_ms) AS latency_ms_sum
FROM requests
GROUP BY hour, key_id, team, project, requested_model, provider;

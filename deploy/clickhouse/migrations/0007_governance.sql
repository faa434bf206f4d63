-- Governance (virtual keys, quotas, budgets): who a request is accounted to, its reservation, and the
-- admin actions and budget alerts. Rows stored before this migration read '' / 0 / false.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS org LowCardinality(String) DEFAULT '' AFTER user;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS provider_kind LowCardinality(String) DEFAULT '' AFTER provider;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS usage_estimated Bool DEFAULT false AFTER reasoning_tokens;

-- Every admin action: who did what to which record, with the record before and after (records hold
-- key hashes and display prefixes, never a secret).
CREATE TABLE IF NOT EXISTS audit_log
(
    event_id    String,
    at          DateTime64(3, 'UTC'),
    actor       LowCardinality(String),
    actor_team  LowCardinality(String),
    action      LowCardinality(String),
    target_kind LowCardinality(String),
    target_id   String,
    before      String,
    after       String,
    request_id  String,
    source_ip   String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (event_id);

-- A budget crossed an alert threshold: once per scope, period and threshold (the event id says which).
CREATE TABLE IF NOT EXISTS budget_alerts
(
    event_id      String,
    at            DateTime64(3, 'UTC'),
    scope         LowCardinality(String),
    period        LowCardinality(String),
    period_key    String,
    threshold_pct UInt16,
    amount_usd    Float64,
    spent_usd     Float64,
    hard          Bool,
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (event_id);

-- Spend, tokens and requests per hour at every level a budget can sit on: org, team, project, user, key.
CREATE TABLE IF NOT EXISTS spend_per_hour
(
    hour          DateTime('UTC'),
    org           LowCardinality(String),
    team          LowCardinality(String),
    project       LowCardinality(String),
    user          String,
    key_id        LowCardinality(String),
    requests      UInt64,
    errors        UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_usd      Float64,
    reserved_usd  Float64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, org, team, project, user, key_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS spend_per_hour_mv TO spend_per_hour AS
SELECT
    toStartOfHour(received_at) AS hour,
    org,
    team,
    project,
    user,
    key_id,
    count() AS requests,
    countIf(status >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(ifNull(settled_cost_usd, 0)) AS cost_usd,
    sum(ifNull(reserved_cost_usd, 0)) AS reserved_usd
FROM requests
GROUP BY hour, org, team, project, user, key_id;

-- Webhook deliveries (services/accounting/webhooks.py): one row per delivery of one event to one webhook, written
-- when it ended: `delivered`, or `dead` after its last attempt (the dead-letter record, which keeps the body that
-- was not delivered). Stored once per delivery id (the event stream's Nats-Msg-Id and accounting's event-id check).
CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    event_id     String,
    webhook      LowCardinality(String),
    event_type   LowCardinality(String),
    source_id    String,
    outcome      LowCardinality(String),
    attempts     UInt16,
    http_status  UInt16,
    error        String,
    signed       Bool,
    event_at     DateTime64(3, 'UTC'),
    at           DateTime64(3, 'UTC'),
    body         String,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(at)
PARTITION BY toYYYYMM(at)
ORDER BY (event_id);

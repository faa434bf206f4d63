-- Routing and failover (issue 8): for each attempt, the model group it served (a fallback's name), why it
-- was made (first, failover, retry, probe, fallback, context_window_fallback, content_policy_fallback,
-- cancel), how long the router waited before it (backoff or Retry-After) and its time to first byte;
-- for the request, the strategy that ordered its deployments and the model group that answered.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS `attempts.model` Array(String) AFTER `attempts.error_message`;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS `attempts.route` Array(String) AFTER `attempts.model`;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS `attempts.retry_delay_ms` Array(Float32) AFTER `attempts.route`;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS `attempts.ttft_ms` Array(Float32) AFTER `attempts.retry_delay_ms`;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS route_strategy LowCardinality(String);
ALTER TABLE requests ADD COLUMN IF NOT EXISTS answered_model LowCardinality(String);

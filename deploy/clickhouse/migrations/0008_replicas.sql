-- Which guard and router replica handled each request (their GATEHOUSE_REPLICA name: `<service>-<n>` under
-- the launcher, host name and pid otherwise), to tell a misbehaving replica from a misbehaving stage.
-- Rows stored before this migration, and stages a request never reached, read ''.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS guard_replica LowCardinality(String) DEFAULT '' AFTER guard_policy;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS router_replica LowCardinality(String) DEFAULT '' AFTER deployment;

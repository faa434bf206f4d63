-- Why each attempt failed, for operators (e.g. a provider's reason for rejecting the gateway's key), at
-- most 300 characters; clients only ever see the taxonomy message.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS `attempts.error_message` Array(String) AFTER `attempts.error_code`;

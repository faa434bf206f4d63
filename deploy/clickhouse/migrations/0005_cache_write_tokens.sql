-- Prompt-cache writes (Anthropic `cache_creation_input_tokens`, OpenAI `cache_write_tokens`). Like
-- `cached_tokens` (the cache reads) they are part of `input_tokens`, and are priced at the cache-write rate.
-- Rows stored before this migration read 0.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_write_tokens UInt32 DEFAULT 0 AFTER cached_tokens;

-- Prompt-cache writes (Anthropic `cache_creation_input_tokens`, OpenAI `cache_write_tokens`). Like
-- `cached_tokens` (the cache reads) they are part of `input_tokens`, and are priced at the cache-write rate;
-- `cache_write_1h_tokens` are the writes with a one-hour lifetime (a higher rate). `web_search_requests`
-- counts searches the provider ran itself (priced per search). Rows stored before this migration read 0.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_write_tokens UInt32 DEFAULT 0 AFTER cached_tokens;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_write_1h_tokens UInt32 DEFAULT 0 AFTER cache_write_tokens;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS web_search_requests UInt32 DEFAULT 0 AFTER reasoning_tokens;

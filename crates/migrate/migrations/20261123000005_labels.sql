-- Labels: finding executions by tag key.
--
-- executions_tags_idx (jsonb_path_ops) answers `tags @> '{"k":"v"}'` but not key existence
-- (`tags ? 'k'`, `tags ?& ARRAY[...]`), which only the default jsonb_ops class indexes. `lineq list
-- --has-tag k` uses `?&`, so it gets an index of its own.
CREATE INDEX IF NOT EXISTS executions_tags_keys_idx ON lineq.executions USING gin (tags);

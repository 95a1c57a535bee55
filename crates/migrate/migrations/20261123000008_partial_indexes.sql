-- The write path, continued: an index entry nobody can look up is pure write cost, and each
-- execution row is indexed twice (its insert, and its finishing update, which cannot be HOT
-- because `status` is indexed).
--
-- Executions without tags or without metadata stay out of those GIN indexes. Filters add the
-- same predicate (orchestration/src/query.rs), so the indexes still serve every filter: a
-- non-empty containment or key test implies a non-empty object.
DROP INDEX IF EXISTS lineq.executions_tags_keys_idx;
CREATE INDEX executions_tags_keys_idx ON lineq.executions USING gin (tags)
    WHERE tags <> '{}'::jsonb;
DROP INDEX IF EXISTS lineq.executions_metadata_idx;
CREATE INDEX executions_metadata_idx ON lineq.executions USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb;
-- Most submissions have no idempotency key, and a unique index takes an entry for NULL too.
-- `ON CONFLICT DO NOTHING` (no target) still treats this index as an arbiter.
ALTER TABLE lineq.executions DROP CONSTRAINT IF EXISTS executions_idempotency_key_key;
CREATE UNIQUE INDEX executions_idempotency_key_idx ON lineq.executions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Steps by execution: the unique (execution_id, name) index serves every lookup by execution,
-- and an execution's few steps are sorted by position in memory.
DROP INDEX IF EXISTS lineq.steps_execution_idx;

-- The write path: every execution writes ~8 events, so every index on lineq.events costs 8
-- index insertions per execution. Keep only the indexes a query uses.
--
-- Events by correlation id or trace id are found through lineq.executions (whose
-- correlation_id is indexed; a trace id is the root's correlation id), so these two indexes
-- only cost writes.
DROP INDEX IF EXISTS lineq.events_correlation_idx;
DROP INDEX IF EXISTS lineq.events_trace_idx;
-- executions_tags_keys_idx (jsonb_ops, 20261123000005) answers both `@>` and `?&`; the
-- jsonb_path_ops one is redundant.
DROP INDEX IF EXISTS lineq.executions_tags_idx;
-- Room on each page for HOT updates: step and execution rows are updated a few times each.
ALTER TABLE lineq.steps SET (fillfactor = 80);
ALTER TABLE lineq.executions SET (fillfactor = 85);

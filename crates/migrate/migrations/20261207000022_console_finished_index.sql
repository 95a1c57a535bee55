-- no-transaction
-- The console's Fleet page charts executions finished per minute over the last hour
-- (`lineq_orchestration::query::finished_per_minute`): a range on finished_at, index-backed so it
-- stays a few milliseconds at millions of executions. Partial: unfinished executions (the ones
-- updated most) are not in it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS executions_finished_idx ON lineq.executions (finished_at)
    WHERE finished_at IS NOT NULL;
-- Built CONCURRENTLY (outside a transaction, alone in its file) so that `lineq migrate` on a
-- live fleet does not hold writes to lineq.executions while it reads the table.

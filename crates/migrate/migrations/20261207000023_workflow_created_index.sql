-- no-transaction
-- The console's and the API's filter by workflow (or handler) name, newest or oldest first: an
-- index range in created_at order, so it reads one page of rows at any table size instead of
-- scanning for a name that few (or no) executions have.
CREATE INDEX CONCURRENTLY IF NOT EXISTS executions_workflow_created_idx
    ON lineq.executions (workflow_name, created_at, execution_id);
-- Built CONCURRENTLY (outside a transaction, alone in its file) so that `lineq migrate` on a
-- live fleet does not hold writes to lineq.executions while it reads the table.

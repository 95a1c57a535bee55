-- no-transaction
-- `lineq prune` removes a fired execution's record in lineq.schedule_fires with its tree; this
-- index finds it by execution. Built CONCURRENTLY so a live fleet keeps firing meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS schedule_fires_execution_idx
    ON lineq.schedule_fires (execution_id);

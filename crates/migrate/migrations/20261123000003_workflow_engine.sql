-- Workflow execution: per-step retry policy and failure mode, steps that wait for child
-- executions, and the link from a child execution to the step that spawned it.

ALTER TABLE lineq.executions
    ADD COLUMN kind text NOT NULL DEFAULT 'task' CHECK (kind IN ('task', 'workflow')),
    ADD COLUMN parent_step_id uuid,
    -- the spawning step completes with this child's output (and fails with its error)
    ADD COLUMN parent_waits boolean NOT NULL DEFAULT false;

CREATE INDEX executions_parent_step_idx ON lineq.executions (parent_step_id)
    WHERE parent_step_id IS NOT NULL;

ALTER TABLE lineq.steps DROP CONSTRAINT steps_status_check;
ALTER TABLE lineq.steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('pending', 'enqueued', 'waiting', 'completed', 'failed', 'cancelled'));

ALTER TABLE lineq.steps
    ADD COLUMN retry jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN on_failure text NOT NULL DEFAULT 'fail' CHECK (on_failure IN ('fail', 'continue')),
    ADD COLUMN params jsonb,
    ADD COLUMN position integer NOT NULL DEFAULT 0;

CREATE INDEX steps_execution_idx ON lineq.steps (execution_id, position);

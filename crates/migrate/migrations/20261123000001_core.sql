-- lineq core schema: executions, steps and the append-only event log (the lineage).
-- PGMQ lives in schema pgmq and is installed separately (as plain SQL) by `lineq migrate`.

CREATE SCHEMA IF NOT EXISTS lineq;

CREATE TABLE lineq.executions (
    execution_id          uuid PRIMARY KEY,
    workflow_name         text NOT NULL,
    workflow_version      integer NOT NULL DEFAULT 1,
    namespace             text NOT NULL,
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input                 jsonb NOT NULL,
    output                jsonb,
    error                 jsonb,
    correlation_id        uuid NOT NULL,
    parent_correlation_id uuid,
    parent_execution_id   uuid REFERENCES lineq.executions (execution_id),
    root_execution_id     uuid NOT NULL,
    parent_event_id       uuid,
    parent_step           text,
    tags                  jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(tags) = 'object'),
    metadata              jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    idempotency_key       text UNIQUE,
    priority              integer NOT NULL DEFAULT 0,
    version               bigint NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at           timestamptz,
    -- a root is its own root; a child names its parent
    CHECK ((parent_execution_id IS NULL) = (root_execution_id = execution_id))
);

CREATE INDEX executions_correlation_idx ON lineq.executions (correlation_id);
CREATE INDEX executions_parent_idx ON lineq.executions (parent_execution_id)
    WHERE parent_execution_id IS NOT NULL;
CREATE INDEX executions_root_idx ON lineq.executions (root_execution_id);
CREATE INDEX executions_status_created_idx ON lineq.executions (status, created_at);
CREATE INDEX executions_created_idx ON lineq.executions (created_at, execution_id);
CREATE INDEX executions_metadata_idx ON lineq.executions USING gin (metadata jsonb_path_ops);
CREATE INDEX executions_tags_idx ON lineq.executions USING gin (tags jsonb_path_ops);

CREATE TABLE lineq.steps (
    step_id       uuid PRIMARY KEY,
    execution_id  uuid NOT NULL REFERENCES lineq.executions (execution_id) ON DELETE CASCADE,
    name          text NOT NULL,
    handler       text NOT NULL,
    namespace     text NOT NULL,
    queue         text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'enqueued', 'completed', 'failed', 'cancelled')),
    depends_on    text[] NOT NULL DEFAULT '{}',
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts  integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    timeout_ms    bigint CHECK (timeout_ms > 0),
    input         jsonb,
    output        jsonb,
    error         jsonb,
    msg_id        bigint,
    worker_id     text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    UNIQUE (execution_id, name)
);

-- Append-only. No foreign key to the parent event: a parent may live in another execution and
-- `lineq lineage check` must be able to report a missing parent rather than be prevented from
-- seeing one.
CREATE TABLE lineq.events (
    event_id            uuid PRIMARY KEY,
    parent_event_id     uuid,
    execution_id        uuid NOT NULL,
    step_id             uuid,
    parent_execution_id uuid,
    root_execution_id   uuid NOT NULL,
    correlation_id      uuid NOT NULL,
    event_type          text NOT NULL,
    node_name           text NOT NULL,
    worker_id           text,
    attempt             integer,
    trace_id            text,
    span_id             text,
    payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_execution_idx ON lineq.events (execution_id, created_at);
CREATE INDEX events_parent_idx ON lineq.events (parent_event_id) WHERE parent_event_id IS NOT NULL;
CREATE INDEX events_root_idx ON lineq.events (root_execution_id);
CREATE INDEX events_correlation_idx ON lineq.events (correlation_id);
CREATE INDEX events_step_idx ON lineq.events (step_id) WHERE step_id IS NOT NULL;
CREATE INDEX events_trace_idx ON lineq.events (trace_id);

COMMENT ON TABLE lineq.events IS
    'Append-only lineage log: every event has one parent except a root execution''s execution_started.';

-- The fleet: every worker registers itself and heartbeats here, so `lineq workers` can show who
-- is running, and an orchestrator can release the steps of a worker that went silent (killed,
-- partitioned, frozen) instead of leaving them hidden until their visibility timeout.
--
-- One row per worker id. A worker restarted with the same id takes its row over.

CREATE TABLE lineq.workers (
    worker_id          text PRIMARY KEY,
    host               text NOT NULL,
    pid                integer NOT NULL,
    namespaces         text[] NOT NULL DEFAULT '{}',
    version            text NOT NULL,
    handlers           text[] NOT NULL DEFAULT '{}',
    started_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_heartbeat_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- set by the worker on a clean shutdown
    stopped_at         timestamptz,
    -- set by the orchestrator that released the steps of this worker after it went silent, so
    -- that is done once; cleared when the worker heartbeats again
    released_at        timestamptz
);

-- What the orchestrators' sweep looks for: running workers by heartbeat age.
CREATE INDEX workers_heartbeat_idx ON lineq.workers (last_heartbeat_at)
    WHERE stopped_at IS NULL AND released_at IS NULL;

COMMENT ON TABLE lineq.workers IS
    'The worker fleet: registration and heartbeats (lineq workers), and the release of a silent worker''s steps.';

-- lineq lineage: functions and a view over the event log, so "why did this run, and what did it
-- cause?" is one query. See docs/lineage.md for the model and recipes.
--
-- Every event has at most one parent (lineq.events.parent_event_id), and every execution at most
-- one parent execution. All walks below rely on that: walking DOWN from X can only revisit a row
-- by passing through X again (each row has one way up), so excluding X from the recursive term
-- is enough to end the walk even when a corrupted parent makes a cycle. Walking UP is a chain,
-- and is guarded by Brent's cycle detection (constant memory per row, see event_ancestors).
-- Every recursive term also carries a depth bound, far above any real tree, so no walk can run
-- away even if the reasoning above were broken by a future schema change.
--
-- The functions are LANGUAGE sql, STABLE and not STRICT so the planner inlines them into the
-- calling query: a caller's EXPLAIN shows the index scans inside the recursion, and filters on
-- their output are planned together with them.

-- ---------------------------------------------------------------------------------------------
-- event_ancestors: the chain from an event up to the root of its tree, nearest first.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION lineq.event_ancestors(p_event_id uuid)
RETURNS TABLE (
    distance            integer,
    event_id            uuid,
    parent_event_id     uuid,
    execution_id        uuid,
    step_id             uuid,
    step_name           text,
    parent_execution_id uuid,
    root_execution_id   uuid,
    correlation_id      uuid,
    event_type          text,
    node_name           text,
    worker_id           text,
    attempt             integer,
    trace_id            text,
    span_id             text,
    payload             jsonb,
    created_at          timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE walk AS (
        SELECT 0 AS distance, e.event_id AS mark, e.*
        FROM lineq.events e
        WHERE e.event_id = p_event_id
      UNION ALL
        -- Brent's cycle detection: `mark` is the event at the last power-of-two distance. On a
        -- chain that loops, the walk meets its mark again within one more power of two and
        -- stops there; on a sound chain the condition never holds. The whole row is carried so
        -- that each ancestor costs one index lookup and nothing is joined again afterwards.
        SELECT w.distance + 1,
               CASE WHEN ((w.distance + 1) & w.distance) = 0 THEN p.event_id ELSE w.mark END,
               p.*
        FROM walk w
        JOIN lineq.events p ON p.event_id = w.parent_event_id
        WHERE p.event_id <> w.mark AND w.distance < 10000000
    )
    SELECT w.distance, w.event_id, w.parent_event_id, w.execution_id, w.step_id, s.name,
           w.parent_execution_id, w.root_execution_id, w.correlation_id, w.event_type,
           w.node_name, w.worker_id, w.attempt, w.trace_id, w.span_id, w.payload, w.created_at
    FROM walk w
    LEFT JOIN lineq.steps s ON s.step_id = w.step_id
    -- A sound chain (no row stopped at its mark) is returned as it is. On a loop the walk may
    -- have passed some events twice before it noticed: keep what precedes the first repeat.
    -- The second condition is evaluated only when the first fails, i.e. only on a loop.
    WHERE NOT EXISTS (SELECT 1 FROM walk c WHERE c.parent_event_id = c.mark)
       OR w.distance < coalesce((SELECT min(b.distance)
                                 FROM walk a
                                 JOIN walk b ON b.event_id = a.event_id
                                            AND b.distance > a.distance), 2147483647)
    ORDER BY w.distance
$$;

COMMENT ON FUNCTION lineq.event_ancestors(uuid) IS
$$The chain from an event up to the root of its tree, nearest first: the event itself (distance 0), its parent (1), ... up to the root execution's execution_started, crossing into parent executions. Ends early at a missing parent; a corrupted chain that loops is reported once per event.
Example (why did this event happen?):
  SELECT distance, event_type, step_name, worker_id, created_at
  FROM lineq.event_ancestors('0193…') ORDER BY distance;$$;

-- ---------------------------------------------------------------------------------------------
-- event_descendants: everything an event caused, across child executions.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION lineq.event_descendants(p_event_id uuid)
RETURNS TABLE (
    depth               integer,
    path                uuid[],
    event_id            uuid,
    parent_event_id     uuid,
    execution_id        uuid,
    step_id             uuid,
    step_name           text,
    parent_execution_id uuid,
    root_execution_id   uuid,
    correlation_id      uuid,
    event_type          text,
    node_name           text,
    worker_id           text,
    attempt             integer,
    trace_id            text,
    span_id             text,
    payload             jsonb,
    created_at          timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE walk AS (
        SELECT e.event_id, 0 AS depth, ARRAY[e.event_id] AS path
        FROM lineq.events e
        WHERE e.event_id = p_event_id
      UNION ALL
        SELECT c.event_id, w.depth + 1, w.path || c.event_id
        FROM walk w
        JOIN lineq.events c ON c.parent_event_id = w.event_id
        -- one parent per event: only a loop back through the start can revisit a row
        WHERE c.event_id <> p_event_id AND w.depth < 100000
    )
    SELECT w.depth, w.path, e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name,
           e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
           e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
    FROM walk w
    JOIN lineq.events e ON e.event_id = w.event_id
    LEFT JOIN lineq.steps s ON s.step_id = e.step_id
    ORDER BY w.path
$$;

COMMENT ON FUNCTION lineq.event_descendants(uuid) IS
$$Everything an event caused: the event itself (depth 0) and every event below it, child executions included, with the path of event ids from the event down. Ordered by path, i.e. depth first (ids are UUIDv7, so siblings come in the order they were written).
Example (what did this claim lead to?):
  SELECT repeat('  ', depth) || event_type AS event, step_name, worker_id, execution_id
  FROM lineq.event_descendants('0193…') ORDER BY path;$$;

-- ---------------------------------------------------------------------------------------------
-- execution_tree: an execution and all its descendant executions.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION lineq.execution_tree(p_execution_id uuid)
RETURNS TABLE (
    depth                 integer,
    path                  uuid[],
    execution_id          uuid,
    parent_execution_id   uuid,
    root_execution_id     uuid,
    correlation_id        uuid,
    parent_correlation_id uuid,
    parent_event_id       uuid,
    parent_step           text,
    workflow_name         text,
    workflow_version      integer,
    namespace             text,
    status                text,
    created_at            timestamptz,
    finished_at           timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE tree AS (
        SELECT x.execution_id, 0 AS depth, ARRAY[x.execution_id] AS path
        FROM lineq.executions x
        WHERE x.execution_id = p_execution_id
      UNION ALL
        SELECT c.execution_id, t.depth + 1, t.path || c.execution_id
        FROM tree t
        JOIN lineq.executions c ON c.parent_execution_id = t.execution_id
        WHERE c.execution_id <> p_execution_id AND t.depth < 100000
    )
    SELECT t.depth, t.path, x.execution_id, x.parent_execution_id, x.root_execution_id,
           x.correlation_id, x.parent_correlation_id, x.parent_event_id, x.parent_step,
           x.workflow_name, x.workflow_version, x.namespace, x.status, x.created_at,
           x.finished_at
    FROM tree t
    JOIN lineq.executions x ON x.execution_id = t.execution_id
    ORDER BY t.path
$$;

COMMENT ON FUNCTION lineq.execution_tree(uuid) IS
$$An execution (depth 0) and all its descendant executions, each with its depth below it and the path of execution ids from it down. Ordered by path (depth first, siblings oldest first).
Example (what did this execution spawn?):
  SELECT repeat('  ', depth) || workflow_name AS execution, status, parent_step, execution_id
  FROM lineq.execution_tree('0193…') ORDER BY path;$$;

-- ---------------------------------------------------------------------------------------------
-- lineage: every event of an execution and its descendants, as one tree.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION lineq.lineage(p_execution_id uuid)
RETURNS TABLE (
    execution_depth     integer,
    depth               integer,
    path                uuid[],
    event_id            uuid,
    parent_event_id     uuid,
    execution_id        uuid,
    workflow_name       text,
    step_id             uuid,
    step_name           text,
    parent_execution_id uuid,
    root_execution_id   uuid,
    correlation_id      uuid,
    event_type          text,
    node_name           text,
    worker_id           text,
    attempt             integer,
    trace_id            text,
    span_id             text,
    payload             jsonb,
    created_at          timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE execs AS MATERIALIZED (
        SELECT t.execution_id, t.depth, t.workflow_name
        FROM lineq.execution_tree(p_execution_id) t
    ),
    ev AS MATERIALIZED (
        SELECT e.event_id, e.parent_event_id
        FROM lineq.events e
        JOIN execs x ON x.execution_id = e.execution_id
    ),
    walk AS (
        -- Tops: the execution's first event (whose parent is in the parent execution, or none),
        -- and any event whose parent is missing, so a broken tree still shows every event.
        SELECT ev.event_id, 0 AS depth, ARRAY[ev.event_id] AS path
        FROM ev
        WHERE NOT EXISTS (SELECT 1 FROM ev p WHERE p.event_id = ev.parent_event_id)
      UNION ALL
        SELECT c.event_id, w.depth + 1, w.path || c.event_id
        FROM walk w
        JOIN ev c ON c.parent_event_id = w.event_id
        WHERE w.depth < 100000
    )
    -- Events on a loop are reached from no top: they are still listed, with NULL depth/path.
    SELECT x.depth, w.depth, w.path, e.event_id, e.parent_event_id, e.execution_id,
           x.workflow_name, e.step_id, s.name, e.parent_execution_id, e.root_execution_id,
           e.correlation_id, e.event_type, e.node_name, e.worker_id, e.attempt, e.trace_id,
           e.span_id, e.payload, e.created_at
    FROM ev
    JOIN lineq.events e ON e.event_id = ev.event_id
    JOIN execs x ON x.execution_id = e.execution_id
    LEFT JOIN walk w ON w.event_id = ev.event_id
    LEFT JOIN lineq.steps s ON s.step_id = e.step_id
    ORDER BY w.path NULLS LAST, e.created_at, e.event_id
$$;

COMMENT ON FUNCTION lineq.lineage(uuid) IS
$$Every event of an execution and of all its descendant executions, as one tree: depth and path (event ids) from the execution's first event down, execution_depth of the execution that wrote it, and the step and worker. Ordered by path, so indenting by depth draws the tree. An event whose parent is missing starts a tree of its own (depth 0); events on a corrupted loop come last with NULL depth and path.
Example:
  SELECT repeat('  ', depth) || event_type AS event, step_name, attempt, worker_id, created_at
  FROM lineq.lineage('0193…') ORDER BY path;$$;

-- ---------------------------------------------------------------------------------------------
-- correlation: all executions under a correlation id, children included.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION lineq.correlation(p_correlation_id uuid)
RETURNS TABLE (
    depth                 integer,
    path                  uuid[],
    execution_id          uuid,
    parent_execution_id   uuid,
    root_execution_id     uuid,
    correlation_id        uuid,
    parent_correlation_id uuid,
    parent_event_id       uuid,
    parent_step           text,
    workflow_name         text,
    workflow_version      integer,
    namespace             text,
    status                text,
    created_at            timestamptz,
    finished_at           timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE tree AS (
        SELECT x.execution_id, 0 AS depth, ARRAY[x.execution_id] AS path
        FROM lineq.executions x
        WHERE x.correlation_id = p_correlation_id
      UNION ALL
        SELECT c.execution_id, t.depth + 1, t.path || c.execution_id
        FROM tree t
        JOIN lineq.executions c ON c.parent_execution_id = t.execution_id
        -- several starts: a path is short (execution depth), so checking it is cheap
        WHERE c.execution_id <> ALL (t.path) AND t.depth < 100000
    ),
    -- A child may carry the same correlation id as its parent and so be reached twice: keep
    -- the longest path, the one from the topmost execution of the correlation.
    once AS (
        SELECT DISTINCT ON (t.execution_id) t.execution_id, t.depth, t.path
        FROM tree t
        ORDER BY t.execution_id, t.depth DESC
    )
    SELECT o.depth, o.path, x.execution_id, x.parent_execution_id, x.root_execution_id,
           x.correlation_id, x.parent_correlation_id, x.parent_event_id, x.parent_step,
           x.workflow_name, x.workflow_version, x.namespace, x.status, x.created_at,
           x.finished_at
    FROM once o
    JOIN lineq.executions x ON x.execution_id = o.execution_id
    ORDER BY o.path
$$;

COMMENT ON FUNCTION lineq.correlation(uuid) IS
$$All executions under a correlation id: every execution that carries it, and all their descendant executions (which may carry correlation ids of their own), with depth and path of execution ids from the topmost execution of the correlation.
Example:
  SELECT repeat('  ', depth) || workflow_name AS execution, status, execution_id
  FROM lineq.correlation('0193…') ORDER BY path;$$;

-- ---------------------------------------------------------------------------------------------
-- lineage_edges: the graph, one row per edge, for graph tools.
-- ---------------------------------------------------------------------------------------------
CREATE VIEW lineq.lineage_edges AS
    SELECT 'event'::text AS kind,
           e.parent_event_id AS parent_id,
           e.event_id AS child_id,
           e.event_type AS child_label,
           e.execution_id,
           e.root_execution_id,
           e.created_at
    FROM lineq.events e
    WHERE e.parent_event_id IS NOT NULL
  UNION ALL
    SELECT 'execution'::text, x.parent_execution_id, x.execution_id, x.workflow_name,
           x.execution_id, x.root_execution_id, x.created_at
    FROM lineq.executions x
    WHERE x.parent_execution_id IS NOT NULL
  UNION ALL
    SELECT 'spawned'::text, x.parent_event_id, x.execution_id, x.workflow_name,
           x.execution_id, x.root_execution_id, x.created_at
    FROM lineq.executions x
    WHERE x.parent_event_id IS NOT NULL;

COMMENT ON VIEW lineq.lineage_edges IS
$$Lineage as a graph, one row per edge: kind 'event' (parent event -> event), 'execution' (parent execution -> child execution) and 'spawned' (the event that spawned a child execution -> that execution). child_label is the event type or workflow name; filter on root_execution_id for one tree (indexed).
Example (edges of one tree, as CSV for a graph tool):
  \copy (SELECT kind, parent_id, child_id, child_label FROM lineq.lineage_edges WHERE root_execution_id = '0193…') TO 'edges.csv' CSV HEADER$$;

-- ---------------------------------------------------------------------------------------------
-- lineage_messages: the queue messages of a root tree, with their meta.
-- ---------------------------------------------------------------------------------------------
-- PGMQ keeps one table pair per queue (pgmq.q_<queue> live, pgmq.a_<queue> archived), and step
-- queues are created per namespace at run time, so this has to be dynamic SQL: the table names
-- come from pgmq.meta and are quoted with %I; the root is passed as a parameter.
CREATE FUNCTION lineq.lineage_messages(p_root_execution_id uuid)
RETURNS TABLE (
    queue_name      text,
    state           text,
    kind            text,
    msg_id          bigint,
    enqueued_at     timestamptz,
    archived_at     timestamptz,
    execution_id    uuid,
    parent_event_id uuid,
    meta            jsonb,
    message         jsonb,
    reason          text
)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    q text;
    executions text[];
    -- a message body is untrusted: read ids as text and only cast what looks like a UUID
    uuid_re constant text := '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
BEGIN
    SELECT coalesce(array_agg(x.execution_id::text), '{}') INTO executions
    FROM lineq.executions x
    WHERE x.root_execution_id = p_root_execution_id;

    FOR q IN
        SELECT m.queue_name FROM pgmq.meta m
        WHERE m.queue_name LIKE 'lineq\_%' ORDER BY m.queue_name
    LOOP
        -- Dead letters wrap the original message: {source_queue, source_msg_id, reason, message}.
        RETURN QUERY EXECUTE format($q$
            WITH raw AS (
                SELECT 'queued'::text AS state, t.msg_id, t.enqueued_at,
                       NULL::timestamptz AS archived_at, t.message
                FROM pgmq.%1$I t
              UNION ALL
                SELECT 'archived', t.msg_id, t.enqueued_at, t.archived_at, t.message
                FROM pgmq.%2$I t
            ),
            body AS (
                SELECT r.*,
                       CASE WHEN %3$L = 'lineq_dlq' THEN r.message -> 'message' ELSE r.message END AS inner_msg
                FROM raw r
            )
            SELECT %3$L::text, b.state,
                   CASE WHEN %3$L = 'lineq_dlq' THEN 'dead_letter'
                        WHEN %3$L = 'lineq_results' THEN 'result'
                        ELSE 'step' END,
                   b.msg_id, b.enqueued_at, b.archived_at,
                   CASE WHEN b.inner_msg ->> 'execution_id' ~ $3
                        THEN (b.inner_msg ->> 'execution_id')::uuid END,
                   CASE WHEN b.inner_msg -> 'meta' ->> 'parent_event_id' ~ $3
                        THEN (b.inner_msg -> 'meta' ->> 'parent_event_id')::uuid END,
                   b.inner_msg -> 'meta',
                   b.inner_msg,
                   CASE WHEN %3$L = 'lineq_dlq' THEN b.message ->> 'reason' END
            FROM body b
            WHERE b.inner_msg -> 'meta' ->> 'root_execution_id' = $1::text
               OR b.inner_msg ->> 'execution_id' = ANY ($2)
        $q$, 'q_' || q, 'a_' || q, q)
        USING p_root_execution_id, executions, uuid_re;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION lineq.lineage_messages(uuid) IS
$$Every PGMQ message of a root execution's tree, live or archived, in every lineq queue: step messages (kind 'step', one queue per namespace), results ('result') and dead letters ('dead_letter', unwrapped, with the reason). A message belongs to the tree when its meta names the root or its execution_id is an execution of the tree. Scans the queue tables (they have no index on meta): for inspection and `lineq lineage check`, not for hot paths.
Example (each message next to the event that sent it):
  SELECT m.queue_name, m.msg_id, m.state, p.event_type AS sent_by, m.meta
  FROM lineq.lineage_messages('0193…') m
  LEFT JOIN lineq.events p ON p.event_id = m.parent_event_id
  ORDER BY m.enqueued_at;$$;

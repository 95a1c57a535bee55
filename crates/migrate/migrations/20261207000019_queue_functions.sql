-- The hot path's statements on a queue table, planned once per session.
--
-- A queue's tables are named by its namespace, so the claim's read and the report's archive
-- were dynamic SQL, planned at every call (about 0.15-0.2 ms each, docs/benchmarks.md). Each
-- queue now has the two statements as functions of its own, made by lineq.create_queue (and
-- here for the queues that exist); worker_claim and worker_report call them.

-- Makes (again) the two statements of a queue's hot path as functions of their own, static SQL
-- that PostgreSQL plans once per session: lineq._claim_<queue> (read and mark up to p_qty
-- visible messages) and lineq._archive_<queue> (archive the messages a report names that the
-- worker holds). They run as lineq's owner and nobody else may call them.
CREATE FUNCTION lineq._make_queue_functions(p_queue text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    q record;
BEGIN
    SELECT t.live, t.archive INTO q FROM lineq._queue_tables(p_queue) t;
    IF q.live IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ005',
            MESSAGE = format('unknown queue %s: it has no tables owned by lineq''s owner', quote_literal(p_queue));
    END IF;
    EXECUTE format($def$
        CREATE OR REPLACE FUNCTION lineq.%2$I(p_qty integer, p_vt_secs integer, p_handlers text[],
                                               p_worker text)
        RETURNS lineq._claimed[]
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        SET plan_cache_mode = force_custom_plan
        AS $body$
        DECLARE
            v lineq._claimed[];
        BEGIN

        WITH cte AS (
            SELECT m.msg_id FROM %1$s m
            WHERE m.vt <= clock_timestamp()
              AND (p_handlers IS NULL OR jsonb_typeof(m.message -> 'handler') IS DISTINCT FROM 'string'
                   OR m.message ->> 'handler' = ANY (p_handlers))
            ORDER BY m.msg_id
            LIMIT p_qty
            FOR UPDATE SKIP LOCKED),
        got AS (
            UPDATE %1$s m
            SET last_read_at = clock_timestamp(),
                vt = clock_timestamp() + make_interval(secs => p_vt_secs),
                read_ct = m.read_ct + 1,
                -- the event id: a UUIDv7 (lineq.uuid_v7's layout, inline: no call per row)
                headers = coalesce(m.headers, '{}'::jsonb) || jsonb_build_object('lineq_claim',
                    jsonb_build_object('worker', p_worker, 'delivery', m.read_ct + 1,
                        'event', encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                                        || substring(int4send(28672 | floor(random() * 4096)::integer) FROM 3)
                                        || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid))
            WHERE m.msg_id = ANY (ARRAY(SELECT msg_id FROM cte))
            RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.headers, m.message)
        SELECT coalesce(array_agg(ROW(g.msg_id, g.read_ct, g.enqueued_at,
                   (g.headers -> 'lineq_claim' ->> 'event')::uuid, g.message,
                   -- a body stored uncompressed (small) by its stored size; a compressed one,
                   -- which may be any size, measured as text
                   CASE WHEN pg_column_compression(g.message) IS NULL THEN pg_column_size(g.message)
                        ELSE octet_length(g.message::text) END,
                   NULL)::lineq._claimed ORDER BY g.msg_id), '{}')
        INTO v
        FROM got g
;
            RETURN v;
        END
        $body$
    $def$, q.live, '_claim_' || p_queue);
    EXECUTE format('REVOKE ALL ON FUNCTION lineq.%I(integer, integer, text[], text) FROM PUBLIC',
                   '_claim_' || p_queue);
    EXECUTE format($def$
        CREATE OR REPLACE FUNCTION lineq.%3$I(p_outcomes jsonb, p_worker text)
        RETURNS jsonb
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        SET plan_cache_mode = force_custom_plan
        AS $body$
        DECLARE
            v jsonb;
        BEGIN

        WITH o AS (SELECT * FROM jsonb_to_recordset(p_outcomes) AS o(msg_id bigint, delivery integer)),
        archived AS (
            DELETE FROM %1$s m USING o
            WHERE m.msg_id = o.msg_id AND m.read_ct = o.delivery
              AND m.headers -> 'lineq_claim' ->> 'worker' = p_worker
              AND (m.headers -> 'lineq_claim' ->> 'delivery')::integer = o.delivery
            RETURNING m.msg_id, m.vt, m.read_ct, m.enqueued_at, m.last_read_at, m.message, m.headers),
        moved AS (
            INSERT INTO %2$s (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
            SELECT x.msg_id, x.vt, x.read_ct, x.enqueued_at, x.last_read_at, x.message, x.headers FROM archived x
            RETURNING 1)
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'msg_id', a.msg_id, 'event_id', a.headers -> 'lineq_claim' -> 'event',
                   'head', a.message - 'input' - 'context')), '[]'::jsonb)
        INTO v
        FROM archived a
;
            RETURN v;
        END
        $body$
    $def$, q.live, q.archive, '_archive_' || p_queue);
    EXECUTE format('REVOKE ALL ON FUNCTION lineq.%I(jsonb, text) FROM PUBLIC', '_archive_' || p_queue);
END
$fn$;
REVOKE ALL ON FUNCTION lineq._make_queue_functions(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION lineq.create_queue(p_queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_queue IS NULL OR p_queue !~ '^[a-z][a-z0-9_]{0,46}$' THEN
        PERFORM lineq.invalid('queue', format(
            'a queue name is 1 to 47 characters of a-z, 0-9 and _, starting with a letter (got %s)',
            coalesce(quote_literal(left(p_queue, 80)), 'NULL')));
    END IF;
    IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = p_queue) THEN
        RETURN false;
    END IF;
    -- Concurrent creators of one queue wait here, then find it.
    PERFORM pg_advisory_xact_lock(hashtext('lineq.create_queue'), hashtext(p_queue));
    IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = p_queue) THEN
        RETURN false;
    END IF;
    PERFORM pgmq.create(p_queue);
    EXECUTE format('ALTER TABLE pgmq.%I SET (fillfactor = 50)', 'q_' || p_queue);
    IF p_queue LIKE 'lineq\_steps\_%' THEN
        PERFORM lineq._make_queue_functions(p_queue);
    END IF;
    RETURN true;
END
$$;

-- lineq's pools force a custom plan for every statement (shared/src/database.rs), which would
-- plan each statement of these functions at every call (0.75 ms a claim and 1 ms a report
-- against 0.45 and 0.5, measured). Their statements read their arguments and look rows up by
-- primary key only, so they use the plan cache; the two statements over a queue table, whose
-- size swings, keep custom plans in the queue's own functions.
--
-- The claim. Each message is first checked by a fast test built from casts instead of regular
-- expressions (PostgreSQL runs one of those in about 4.5 µs; the full check runs nine); only
-- when some message fails it, or makes a cast raise, is the whole batch checked by
-- lineq._step_message_problem_sql, which stays the one definition of a runnable message and
-- the source of every dead-letter reason. The fast test accepts a message only where the full
-- check finds no problem: tests/sql_worker.rs sends malformed messages through the claim and
-- expects each dead-lettered with the full check's reason.
CREATE OR REPLACE FUNCTION lineq.worker_claim(
    p_worker_id text,
    p_token text,
    p_namespace text,
    p_qty integer,
    p_vt_secs integer DEFAULT 30,
    p_max_deliveries integer DEFAULT 5,
    p_handlers text[] DEFAULT NULL,
    p_node_name text DEFAULT NULL
) RETURNS TABLE (
    msg_id bigint,
    delivery integer,
    enqueued_at timestamptz,
    message text,
    started_event_id uuid,
    traceparent text
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = auto
AS $$
DECLARE
    w lineq.workers := lineq._worker(p_worker_id, p_token);
    q record;
    v_batch lineq._claimed[];
    v_ok boolean;
    v_letters jsonb;
    v_node text := coalesce(left(p_node_name, 255), w.host);
BEGIN
    IF p_qty IS NULL OR p_qty NOT BETWEEN 1 AND 1000 THEN
        PERFORM lineq.invalid('qty', format('a claim takes 1 to 1000 messages (got %s)', p_qty));
    END IF;
    IF p_vt_secs IS NULL OR p_vt_secs NOT BETWEEN 1 AND 86400 THEN
        PERFORM lineq.invalid('vt_secs', format('a visibility timeout is 1 to 86400 seconds (got %s)', p_vt_secs));
    END IF;
    IF p_max_deliveries IS NULL OR p_max_deliveries < 1 THEN
        PERFORM lineq.invalid('max_deliveries', format('at least 1 (got %s)', p_max_deliveries));
    END IF;
    SELECT * INTO q FROM lineq._worker_queue(w, p_namespace);

    -- The read: PGMQ's, plus the claim's mark in the message's headers (who holds which
    -- delivery, and the action_started event that says so), in the queue's own function.
    IF to_regprocedure(format('lineq.%I(integer, integer, text[], text)', '_claim_' || q.queue)) IS NULL THEN
        PERFORM lineq._make_queue_functions(q.queue);
    END IF;
    EXECUTE format('SELECT lineq.%I($1, $2, $3, $4)', '_claim_' || q.queue)
    INTO v_batch USING p_qty, p_vt_secs, p_handlers, p_worker_id;

    IF cardinality(v_batch) = 0 THEN
        RETURN;
    END IF;

    -- The fast test: true only for a message the full check finds nothing wrong with.
    BEGIN
        SELECT bool_and(coalesce(
                   b.bytes <= 2097152
               AND jsonb_typeof(b.message) = 'object'
               AND jsonb_typeof(b.message -> 'step_id') = 'string'
               AND (b.message ->> 'step_id')::uuid::text = lower(b.message ->> 'step_id')
               AND jsonb_typeof(b.message -> 'execution_id') = 'string'
               AND (b.message ->> 'execution_id')::uuid::text = lower(b.message ->> 'execution_id')
               AND jsonb_typeof(b.message -> 'step') = 'string'
               AND length(b.message ->> 'step') BETWEEN 1 AND 128
               AND translate(b.message ->> 'step', 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = ''
               AND jsonb_typeof(b.message -> 'handler') = 'string'
               AND length(b.message ->> 'handler') BETWEEN 1 AND 128
               AND translate(b.message ->> 'handler', 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = ''
               AND jsonb_typeof(b.message -> 'attempt') = 'number'
               AND length(b.message ->> 'attempt') BETWEEN 1 AND 9
               AND translate(b.message ->> 'attempt', '0123456789', '') = ''
               AND (b.message ->> 'attempt')::integer >= 1
               AND b.message ? 'input'
               AND jsonb_typeof(b.message -> 'meta') = 'object'
               AND (b.message -> 'meta' ->> 'correlation_id')::uuid::text = lower(b.message -> 'meta' ->> 'correlation_id')
               AND (b.message -> 'meta' ->> 'parent_event_id')::uuid::text = lower(b.message -> 'meta' ->> 'parent_event_id')
               AND (b.message -> 'meta' ->> 'root_execution_id')::uuid::text = lower(b.message -> 'meta' ->> 'root_execution_id')
               AND (coalesce(jsonb_typeof(b.message -> 'meta' -> 'parent_execution_id'), 'null') = 'null'
                    OR (b.message -> 'meta' ->> 'parent_execution_id')::uuid::text = lower(b.message -> 'meta' ->> 'parent_execution_id'))
               AND length(b.message -> 'meta' ->> 'traceparent') = 55
               AND b.message -> 'meta' ->> 'traceparent' = lower(b.message -> 'meta' ->> 'traceparent')
               AND substr(b.message -> 'meta' ->> 'traceparent', 3, 1) = '-'
               AND substr(b.message -> 'meta' ->> 'traceparent', 36, 1) = '-'
               AND substr(b.message -> 'meta' ->> 'traceparent', 53, 1) = '-'
               -- 52 hex digits, 26 bytes: decode raises on anything else but whitespace,
               -- which makes it shorter
               AND length(decode(replace(b.message -> 'meta' ->> 'traceparent', '-', ''), 'hex')) = 26
               AND substr(b.message -> 'meta' ->> 'traceparent', 1, 2) <> 'ff'
               AND substr(b.message -> 'meta' ->> 'traceparent', 4, 32) <> '00000000000000000000000000000000'
               AND substr(b.message -> 'meta' ->> 'traceparent', 37, 16) <> '0000000000000000'
               AND (NOT (b.message -> 'meta' ? 'tracestate')
                    OR jsonb_typeof(b.message -> 'meta' -> 'tracestate') = 'string'),
                   false))
        INTO v_ok
        FROM unnest(v_batch) b;
    EXCEPTION WHEN data_exception THEN
        v_ok := false;
    END;
    IF NOT v_ok THEN
        EXECUTE format($q$
            SELECT array_agg(ROW(g.msg_id, g.delivery, g.enqueued_at, g.event_id, g.message,
                                 g.bytes, %1$s)::lineq._claimed ORDER BY g.msg_id)
            FROM unnest($1) g
        $q$, lineq._step_message_problem_sql('g.message', 'g.bytes'))
        INTO v_batch USING v_batch;
    END IF;

    -- action_started for what can run; message_dead_lettered for poison.
    INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
        parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
        worker_id, attempt, trace_id, span_id, payload, created_at)
    SELECT b.event_id, (b.message -> 'meta' ->> 'parent_event_id')::uuid,
           (b.message ->> 'execution_id')::uuid, (b.message ->> 'step_id')::uuid,
           (b.message -> 'meta' ->> 'parent_execution_id')::uuid,
           (b.message -> 'meta' ->> 'root_execution_id')::uuid,
           (b.message -> 'meta' ->> 'correlation_id')::uuid,
           CASE WHEN b.delivery > p_max_deliveries THEN 'message_dead_lettered' ELSE 'action_started' END,
           v_node, p_worker_id, (b.message ->> 'attempt')::integer,
           -- the span id: the event id's last 8 bytes (lineq.span_id, inline)
           substr(b.message -> 'meta' ->> 'traceparent', 4, 32), right(replace(b.event_id::text, '-', ''), 16),
           CASE WHEN b.delivery > p_max_deliveries
                THEN jsonb_build_object('step', b.message ->> 'step', 'queue', q.queue,
                         'msg_id', b.msg_id,
                         'reason', format('delivered %s times without a reported outcome (limit %s): it may crash or hang every worker that runs it',
                                          b.delivery, p_max_deliveries))
                ELSE jsonb_build_object('step', b.message ->> 'step', 'handler', b.message ->> 'handler',
                         'queue', q.queue, 'msg_id', b.msg_id, 'delivery', b.delivery) END,
           clock_timestamp() + make_interval(secs => b.ord * 0.000001)
    FROM unnest(v_batch) WITH ORDINALITY AS b(msg_id, delivery, enqueued_at, event_id, message,
                                             bytes, problem, ord)
    WHERE b.problem IS NULL
    ORDER BY b.ord;

    IF NOT v_ok OR EXISTS (SELECT 1 FROM unnest(v_batch) b WHERE b.delivery > p_max_deliveries) THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'msg_id', b.msg_id,
                   'reason', coalesce(b.problem, format('delivered %s times without a reported outcome (limit %s): it may crash or hang every worker that runs it',
                                                        b.delivery, p_max_deliveries)),
                   'event_id', CASE WHEN b.problem IS NULL THEN b.event_id END)), '[]'::jsonb)
        INTO v_letters
        FROM unnest(v_batch) b
        WHERE b.problem IS NOT NULL OR b.delivery > p_max_deliveries;
        IF jsonb_array_length(v_letters) > 0 THEN
            PERFORM lineq._dead_letter(q.queue, q.live, q.archive, v_letters);
        END IF;
    END IF;

    RETURN QUERY
    SELECT b.msg_id, b.delivery, b.enqueued_at, b.message::text, b.event_id,
           '00-' || substr(b.message -> 'meta' ->> 'traceparent', 4, 32) || '-'
                 || right(replace(b.event_id::text, '-', ''), 16) || '-01'
    FROM unnest(v_batch) b
    WHERE b.problem IS NULL AND b.delivery <= p_max_deliveries
    ORDER BY b.msg_id;
END
$$;

CREATE OR REPLACE FUNCTION lineq.worker_report(p_worker_id text, p_token text, p_namespace text,
                                    p_outcomes jsonb, p_node_name text DEFAULT NULL)
RETURNS TABLE (msg_id bigint, reported boolean, action_event_id uuid, result_event_id uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = auto
AS $$
DECLARE
    w lineq.workers := lineq._worker(p_worker_id, p_token);
    q record;
    v_held jsonb;
    v_bad record;
    v_node text := coalesce(left(p_node_name, 255), w.host);
BEGIN
    IF p_outcomes IS NULL OR jsonb_typeof(p_outcomes) <> 'array'
       OR jsonb_array_length(p_outcomes) > 1000 THEN
        PERFORM lineq.invalid('outcomes', 'a JSON array of at most 1000 outcomes');
    END IF;
    SELECT o.i, o.value AS v INTO v_bad
    FROM jsonb_array_elements(p_outcomes) WITH ORDINALITY AS o(value, i)
    WHERE jsonb_typeof(o.value) <> 'object'
       OR jsonb_typeof(o.value -> 'msg_id') IS DISTINCT FROM 'number'
       OR jsonb_typeof(o.value -> 'delivery') IS DISTINCT FROM 'number'
       OR NOT coalesce(o.value ->> 'started_event_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
       OR o.value ->> 'outcome' IS NULL OR o.value ->> 'outcome' NOT IN ('completed', 'failed')
       OR (o.value ->> 'outcome' = 'failed' AND jsonb_typeof(o.value -> 'error') IS DISTINCT FROM 'object')
       OR (o.value ? 'children' AND jsonb_typeof(o.value -> 'children') NOT IN ('array', 'null'))
       OR octet_length((o.value -> 'output')::text) > 1048576
    LIMIT 1;
    IF FOUND THEN
        PERFORM lineq.invalid('outcomes', format(
            'outcome %s must be {msg_id, delivery, started_event_id, outcome: completed|failed, output (at most 1048576 bytes), error (an object when failed), children (an array)}',
            v_bad.i));
    END IF;
    SELECT * INTO q FROM lineq._worker_queue(w, p_namespace);

    -- Archive what this worker holds at the reported delivery; keep what the events and the
    -- result need from each.
    IF to_regprocedure(format('lineq.%I(jsonb, text)', '_archive_' || q.queue)) IS NULL THEN
        PERFORM lineq._make_queue_functions(q.queue);
    END IF;
    EXECUTE format('SELECT lineq.%I($1, $2)', '_archive_' || q.queue)
    INTO v_held USING p_outcomes, p_worker_id;

    -- A delivery no longer held must at least be one this worker claimed.
    SELECT o.msg_id INTO v_bad
    FROM jsonb_to_recordset(p_outcomes) AS o(msg_id bigint, started_event_id uuid)
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(v_held) AS h(msg_id bigint) WHERE h.msg_id = o.msg_id)
      AND NOT EXISTS (
          SELECT 1 FROM lineq.events e
          WHERE e.event_id = o.started_event_id AND e.event_type = 'action_started'
            AND e.worker_id = p_worker_id
            AND e.payload ->> 'msg_id' = o.msg_id::text AND e.payload ->> 'queue' = q.queue)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ006',
            MESSAGE = format('worker %s never claimed message %s of %s; it cannot report it',
                             quote_literal(p_worker_id), v_bad.msg_id, q.queue);
    END IF;

    RETURN QUERY
    WITH o AS (
        SELECT o.*, h.head, h.msg_id IS NOT NULL AS held,
               -- UUIDv7s (lineq.uuid_v7's layout, inline) whose counter bits put the action
               -- event before its sibling step_result
               encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                      || substring(int4send(28672 | mod(o.ord * 2, 4096)::integer) FROM 3)
                      || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid AS action_id,
               encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                      || substring(int4send(28672 | mod(o.ord * 2 + 1, 4096)::integer) FROM 3)
                      || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid AS result_id
        FROM ROWS FROM (jsonb_to_recordset(p_outcomes)
                        AS (msg_id bigint, delivery integer, started_event_id uuid, outcome text,
                            output jsonb, error jsonb, children jsonb, duration_ms bigint))
             WITH ORDINALITY AS o(msg_id, delivery, started_event_id, outcome, output, error,
                                  children, duration_ms, ord)
        LEFT JOIN jsonb_to_recordset(v_held) AS h(msg_id bigint, event_id uuid, head jsonb)
               ON h.msg_id = o.msg_id AND h.event_id = o.started_event_id),
    -- Lineage: from the message for what is held, from the claim's event otherwise.
    -- (The claim's event is read by its primary key, and only for what is no longer held: the
    -- plan stays right whatever size lineq.events had when it was made.)
    l AS (
        SELECT o.*,
               coalesce((o.head ->> 'step_id')::uuid, (s.e).step_id) AS step_id,
               coalesce((o.head ->> 'execution_id')::uuid, (s.e).execution_id) AS execution_id,
               coalesce((o.head -> 'meta' ->> 'parent_execution_id')::uuid, (s.e).parent_execution_id) AS parent_execution_id,
               coalesce((o.head -> 'meta' ->> 'root_execution_id')::uuid, (s.e).root_execution_id) AS root_execution_id,
               coalesce((o.head -> 'meta' ->> 'correlation_id')::uuid, (s.e).correlation_id) AS correlation_id,
               coalesce((o.head ->> 'attempt')::integer, (s.e).attempt) AS attempt,
               coalesce(substr(o.head -> 'meta' ->> 'traceparent', 4, 32), (s.e).trace_id) AS trace_id,
               coalesce(o.head ->> 'step', (s.e).payload ->> 'step') AS step
        FROM o CROSS JOIN LATERAL (
            SELECT CASE WHEN NOT o.held THEN
                (SELECT x FROM lineq.events x WHERE x.event_id = o.started_event_id)
            END AS e) s),
    ev AS (
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
            parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
            worker_id, attempt, trace_id, span_id, payload, created_at)
        SELECT e.event_id, l.started_event_id, l.execution_id, l.step_id, l.parent_execution_id,
               l.root_execution_id, l.correlation_id, e.event_type, v_node, p_worker_id,
               l.attempt, l.trace_id, right(replace(e.event_id::text, '-', ''), 16), e.payload,
               clock_timestamp() + make_interval(secs => (l.ord * 2 + e.n) * 0.000001)
        FROM l, LATERAL (VALUES
            (0, l.action_id,
             CASE WHEN l.outcome = 'completed' THEN 'action_completed' ELSE 'action_failed' END,
             jsonb_build_object('step', l.step, 'duration_ms', coalesce(l.duration_ms, 0))
               || CASE WHEN l.outcome = 'failed' THEN jsonb_build_object('error', l.error)
                       ELSE '{}'::jsonb END
               || jsonb_build_object('superseded', NOT l.held)),
            (1, l.result_id, 'step_result',
             jsonb_build_object('step', l.step, 'outcome', l.outcome))
        ) AS e(n, event_id, event_type, payload)
        WHERE e.n = 0 OR l.held
        ORDER BY l.ord, e.n),
    sent AS (
        INSERT INTO pgmq.q_lineq_results (vt, message)
        SELECT clock_timestamp(),
               jsonb_build_object(
                   'step_id', l.step_id, 'execution_id', l.execution_id, 'step', l.step,
                   'attempt', l.attempt, 'worker_id', p_worker_id, 'outcome', l.outcome,
                   'output', CASE WHEN l.outcome = 'completed' THEN coalesce(l.output, 'null'::jsonb) ELSE 'null'::jsonb END,
                   'error', CASE WHEN l.outcome = 'failed' THEN l.error ELSE 'null'::jsonb END,
                   'started_event_id', l.started_event_id,
                   'meta', jsonb_build_object(
                       'correlation_id', l.correlation_id, 'parent_event_id', l.result_id,
                       'parent_execution_id', l.parent_execution_id,
                       'root_execution_id', l.root_execution_id,
                       'traceparent', '00-' || l.trace_id || '-' || right(replace(l.result_id::text, '-', ''), 16) || '-01',
                       'tracestate', coalesce(l.head -> 'meta' ->> 'tracestate', '')))
               || CASE WHEN l.outcome = 'completed' AND jsonb_typeof(l.children) = 'array'
                            AND jsonb_array_length(l.children) > 0
                       THEN jsonb_build_object('children', l.children) ELSE '{}'::jsonb END
        FROM l WHERE l.held
        ORDER BY l.ord
        RETURNING 1),
    wake AS MATERIALIZED (
        SELECT pg_notify('lineq_results', 'lineq_results') WHERE EXISTS (SELECT 1 FROM l WHERE l.held))
    SELECT l.msg_id, l.held, l.action_id, CASE WHEN l.held THEN l.result_id END
    FROM l LEFT JOIN wake ON true
    ORDER BY l.ord;
END
$$;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT queue_name FROM lineq.queues() WHERE queue_name LIKE 'lineq\_steps\_%' LOOP
        PERFORM lineq._make_queue_functions(r.queue_name);
    END LOOP;
END
$$;

-- The caller and queue checks the worker functions start with: primary-key and catalog
-- look-ups, planned once.
ALTER FUNCTION lineq._worker(text, text) SET plan_cache_mode = auto;
ALTER FUNCTION lineq._worker_queue(lineq.workers, text) SET plan_cache_mode = auto;
ALTER FUNCTION lineq._queue_tables(text) SET plan_cache_mode = auto;

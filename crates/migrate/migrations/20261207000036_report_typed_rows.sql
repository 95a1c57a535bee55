-- The report's archive hands the messages it archived to lineq.worker_report as typed rows
-- (lineq._held: each field the events and the result need, read from the message once)
-- instead of JSON that the report built, then parsed back field by field.

CREATE TYPE lineq._held AS (
    msg_id bigint,
    event_id uuid,
    step_id uuid,
    execution_id uuid,
    parent_execution_id uuid,
    root_execution_id uuid,
    correlation_id uuid,
    attempt integer,
    trace_id text,
    step text,
    tracestate text
);

-- lineq._make_queue_functions (migration 000019) with the archive returning lineq._held[].
CREATE OR REPLACE FUNCTION lineq._make_queue_functions(p_queue text) RETURNS void
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
    -- Its result type changed (migration 000036): made anew.
    EXECUTE format('DROP FUNCTION IF EXISTS lineq.%I(jsonb, text)', '_archive_' || p_queue);
    EXECUTE format($def$
        CREATE FUNCTION lineq.%3$I(p_outcomes jsonb, p_worker text)
        RETURNS lineq._held[]
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        SET plan_cache_mode = force_custom_plan
        AS $body$
        DECLARE
            v lineq._held[];
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
        SELECT coalesce(array_agg(ROW(
                   a.msg_id, (a.headers -> 'lineq_claim' ->> 'event')::uuid,
                   (a.message ->> 'step_id')::uuid, (a.message ->> 'execution_id')::uuid,
                   (m.meta ->> 'parent_execution_id')::uuid, (m.meta ->> 'root_execution_id')::uuid,
                   (m.meta ->> 'correlation_id')::uuid, (a.message ->> 'attempt')::integer,
                   substr(m.meta ->> 'traceparent', 4, 32), a.message ->> 'step',
                   coalesce(m.meta ->> 'tracestate', ''))::lineq._held), '{}')
        INTO v
        FROM archived a CROSS JOIN LATERAL (SELECT a.message -> 'meta' AS meta OFFSET 0) m
;
            RETURN v;
        END
        $body$
    $def$, q.live, q.archive, '_archive_' || p_queue);
    EXECUTE format('REVOKE ALL ON FUNCTION lineq.%I(jsonb, text) FROM PUBLIC', '_archive_' || p_queue);
END
$fn$;
REVOKE ALL ON FUNCTION lineq._make_queue_functions(text) FROM PUBLIC;

-- worker_report (migration 000019) over lineq._held.
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
    v_held lineq._held[];
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
    WHERE NOT EXISTS (SELECT 1 FROM unnest(v_held) AS h WHERE h.msg_id = o.msg_id)
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
        SELECT o.*, h.msg_id IS NOT NULL AS held, h.step_id AS h_step_id,
               h.execution_id AS h_execution_id, h.parent_execution_id AS h_parent_execution_id,
               h.root_execution_id AS h_root_execution_id, h.correlation_id AS h_correlation_id,
               h.attempt AS h_attempt, h.trace_id AS h_trace_id, h.step AS h_step,
               h.tracestate AS h_tracestate,
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
        LEFT JOIN unnest(v_held) AS h
               ON h.msg_id = o.msg_id AND h.event_id = o.started_event_id),
    -- Lineage: from the message for what is held, from the claim's event otherwise.
    -- (The claim's event is read by its primary key, and only for what is no longer held: the
    -- plan stays right whatever size lineq.events had when it was made.)
    l AS (
        SELECT o.*,
               -- what is held is read from its message, in lineq._held; the parent
               -- execution is NULL for a root, so "held" decides, not coalesce
               CASE WHEN o.held THEN o.h_step_id ELSE (s.e).step_id END AS step_id,
               CASE WHEN o.held THEN o.h_execution_id ELSE (s.e).execution_id END AS execution_id,
               CASE WHEN o.held THEN o.h_parent_execution_id ELSE (s.e).parent_execution_id END AS parent_execution_id,
               CASE WHEN o.held THEN o.h_root_execution_id ELSE (s.e).root_execution_id END AS root_execution_id,
               CASE WHEN o.held THEN o.h_correlation_id ELSE (s.e).correlation_id END AS correlation_id,
               CASE WHEN o.held THEN o.h_attempt ELSE (s.e).attempt END AS attempt,
               CASE WHEN o.held THEN o.h_trace_id ELSE (s.e).trace_id END AS trace_id,
               CASE WHEN o.held THEN o.h_step ELSE (s.e).payload ->> 'step' END AS step
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
                       'tracestate', l.h_tracestate))
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

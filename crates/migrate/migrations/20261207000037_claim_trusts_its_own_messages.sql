-- A step message that lineq's own send function wrote is marked so (headers {"lineq": 1}), and
-- the claim skips the fast test for such messages: they were built from typed columns and
-- validated names, so the test could only find what their size says. Their size is still
-- checked. Any other message (sent with pgmq.send by a role that may, replayed from the
-- dead-letter queue, or queued before this migration) goes through the fast test and, when it
-- fails, the full check, as before. Only the owner and the orchestrator role may write to the
-- queues (docs/security.md), and the orchestrator role can already send any step it likes.

ALTER TYPE lineq._claimed ADD ATTRIBUTE sent_by_lineq boolean;

-- lineq._make_send_function (migration 000024), the messages it writes marked as lineq's.
CREATE OR REPLACE FUNCTION lineq._make_send_function(p_queue text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    q record;
BEGIN
    SELECT t.live INTO q FROM lineq._queue_tables(p_queue) t;
    IF q.live IS NULL OR p_queue NOT LIKE 'lineq\_steps\_%' THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ005',
            MESSAGE = format('unknown step queue %s: it has no tables owned by lineq''s owner', quote_literal(p_queue));
    END IF;
    EXECUTE format($def$
        CREATE OR REPLACE FUNCTION lineq.%4$I(p_steps lineq._step_send[], p_node_name text,
                                               p_not_before timestamptz, p_mark_steps boolean)
        RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        SET plan_cache_mode = force_generic_plan
        AS $body$
        #variable_conflict use_column
        BEGIN
            RETURN QUERY
            WITH s AS MATERIALIZED (
                SELECT e.ord, e.step_id, e.execution_id, e.parent_execution_id,
                       e.root_execution_id, e.correlation_id, e.step, e.handler,
                       e.attempt, e.input, e.timeout_ms, e.parent_event_id, e.retry_reason,
                       coalesce(e.delay_ms, 0) AS delay_ms,
                       nullif(e.context, 'null'::jsonb) AS context,
                       -- lineq.trace_id and lineq.span_id, inlined
                       CASE WHEN e.trace_correlation_id = '00000000-0000-0000-0000-000000000000' THEN '00000000000000000000000000000001' ELSE replace(e.trace_correlation_id::text, '-', '') END AS trace_id,
                       CASE WHEN right(replace(id.event_id::text, '-', ''), 16) = '0000000000000000' THEN '0000000000000001' ELSE right(replace(id.event_id::text, '-', ''), 16) END AS span_id,
                       id.event_id,
                       -- a priority above 0 takes an id below the plain ones (the claim reads
                       -- in id order): 2^40 ids per level, levels -1000000 to 1000000
                       nextval(%2$L::regclass)
                           - (least(greatest(coalesce(e.priority, 0), -1000000), 1000000)::bigint << 40) AS msg_id
                FROM unnest(p_steps) WITH ORDINALITY AS e(execution_id, parent_execution_id,
                    root_execution_id, correlation_id, trace_correlation_id, step_id, step,
                    handler, queue, attempt, input, timeout_ms, parent_event_id, delay_ms,
                    retry_reason, context, priority, flow, ord)
                -- a UUIDv7 whose counter bits are the row's position, so the events of one
                -- call (siblings, often) sort in the order they were given (OFFSET 0: once per row)
                CROSS JOIN LATERAL (SELECT encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) || substring(int4send(28672 | mod(e.ord, 4096)::integer) FROM 3) || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid AS event_id OFFSET 0) AS id
                WHERE e.queue = %3$L AND e.flow IS NULL),
            sent AS (
                INSERT INTO %1$s (msg_id, vt, headers, message) OVERRIDING SYSTEM VALUE
                SELECT s.msg_id, clock_timestamp() + make_interval(secs => s.delay_ms / 1000.0),
                       '{"lineq": 1}'::jsonb,
                       jsonb_build_object(
                           'step_id', s.step_id, 'execution_id', s.execution_id,
                           'step', s.step, 'handler', s.handler,
                           'attempt', s.attempt,
                           'input', coalesce(s.input, 'null'::jsonb),
                           'meta', jsonb_build_object(
                               'correlation_id', s.correlation_id,
                               'parent_event_id', s.event_id,
                               'parent_execution_id', s.parent_execution_id,
                               'root_execution_id', s.root_execution_id,
                               -- lineq.traceparent, inlined
                               'traceparent', '00-' || s.trace_id || '-' || s.span_id || '-01',
                               'tracestate', '')
                               || CASE WHEN s.attempt > 1
                                       THEN jsonb_build_object('attempt', s.attempt)
                                       ELSE '{}'::jsonb END
                               || CASE WHEN s.retry_reason IS NOT NULL
                                       THEN jsonb_build_object('retry_reason', s.retry_reason)
                                       ELSE '{}'::jsonb END)
                       || CASE WHEN s.timeout_ms IS NOT NULL
                               THEN jsonb_build_object('timeout_ms', s.timeout_ms)
                               ELSE '{}'::jsonb END
                       || CASE WHEN s.context IS NOT NULL
                               THEN jsonb_build_object('context', s.context)
                               ELSE '{}'::jsonb END
                FROM s
                ORDER BY s.ord),
            ev AS (
                INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
                    parent_execution_id, root_execution_id, correlation_id, event_type,
                    node_name, worker_id, attempt, trace_id, span_id, payload, created_at)
                SELECT s.event_id, s.parent_event_id, s.execution_id,
                       s.step_id, s.parent_execution_id,
                       s.root_execution_id, s.correlation_id,
                       'step_enqueued', p_node_name, NULL, s.attempt, s.trace_id, s.span_id,
                       jsonb_build_object('step', s.step, 'handler', s.handler,
                                          'queue', %3$L, 'msg_id', s.msg_id,
                                          'delay_ms', s.delay_ms,
                                          'retry_reason', s.retry_reason),
                       -- increasing in array order and after the event that made the step
                       -- ready, so time order follows causality: after p_not_before when the caller
                       -- knows when its events were stamped, else after the parent as stored
                       CASE WHEN p_not_before IS NOT NULL
                            THEN greatest(clock_timestamp(), p_not_before)
                                 + make_interval(secs => s.ord * 0.000001)
                            ELSE greatest(clock_timestamp() + make_interval(secs => s.ord * 0.000001),
                                          (SELECT p.created_at + interval '1 microsecond'
                                           FROM lineq.events p
                                           WHERE p.event_id = s.parent_event_id))
                       END
                FROM s
                ORDER BY s.ord),
            marked AS (
                UPDATE lineq.steps st
                SET status = 'enqueued', msg_id = s.msg_id, attempts = s.attempt,
                    input = coalesce(s.input, 'null'::jsonb), updated_at = clock_timestamp()
                FROM s
                WHERE p_mark_steps AND st.step_id = s.step_id)
            SELECT s.step_id, s.msg_id, s.event_id FROM s ORDER BY s.ord;
        END
        $body$
    $def$, q.live, pg_get_serial_sequence(q.live::text, 'msg_id'), p_queue, '_send_' || p_queue);
    EXECUTE format('REVOKE ALL ON FUNCTION lineq.%I(lineq._step_send[], text, timestamptz, boolean) FROM PUBLIC',
                   '_send_' || p_queue);
END
$fn$;
REVOKE ALL ON FUNCTION lineq._make_send_function(text) FROM PUBLIC;

-- lineq._make_queue_functions (migration 000036), the claim saying which messages lineq sent.
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
                   NULL, coalesce(g.headers -> 'lineq' = '1', false))::lineq._claimed ORDER BY g.msg_id), '{}')
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


-- The claim (migration 000020): the fast test only for what lineq did not send.
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

    -- What lineq's send function wrote needs only its size checked (migration 000037).
    SELECT bool_and(b.sent_by_lineq AND b.bytes <= 2097152) INTO v_ok FROM unnest(v_batch) b;

    -- The fast test: true only for a message the full check finds nothing wrong with.
    IF NOT v_ok THEN
    BEGIN  -- a cast that raises means the batch needs the full check
        SELECT bool_and(coalesce(
                   b.bytes <= 2097152
               AND x.kind = 'object'
               AND x.step_id_t = 'string'
               AND x.step_id::uuid::text = lower(x.step_id)
               AND x.execution_id_t = 'string'
               AND x.execution_id::uuid::text = lower(x.execution_id)
               AND x.step_t = 'string'
               AND length(x.step) BETWEEN 1 AND 128
               AND translate(x.step, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = ''
               AND x.handler_t = 'string'
               AND length(x.handler) BETWEEN 1 AND 128
               AND (x.handler = x.step
                    OR translate(x.handler, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = '')
               AND x.attempt_t = 'number'
               AND length(x.attempt) BETWEEN 1 AND 9
               AND translate(x.attempt, '0123456789', '') = ''
               AND x.attempt::integer >= 1
               AND x.has_input
               AND x.meta_t = 'object'
               AND x.correlation_id::uuid::text = lower(x.correlation_id)
               AND x.parent_event_id::uuid::text = lower(x.parent_event_id)
               AND x.root_execution_id::uuid::text = lower(x.root_execution_id)
               AND (coalesce(x.parent_execution_id_t, 'null') = 'null'
                    OR x.parent_execution_id::uuid::text = lower(x.parent_execution_id))
               AND length(x.traceparent) = 55
               AND x.traceparent = lower(x.traceparent)
               AND substr(x.traceparent, 3, 1) = '-'
               AND substr(x.traceparent, 36, 1) = '-'
               AND substr(x.traceparent, 53, 1) = '-'
               AND length(decode(replace(x.traceparent, '-', ''), 'hex')) = 26
               AND substr(x.traceparent, 1, 2) <> 'ff'
               AND substr(x.traceparent, 4, 32) <> '00000000000000000000000000000000'
               AND substr(x.traceparent, 37, 16) <> '0000000000000000'
               AND coalesce(x.tracestate_t, 'string') = 'string',
                   false))
        INTO v_ok
        FROM unnest(v_batch) b
        CROSS JOIN LATERAL (
            SELECT jsonb_typeof(b.message) AS kind,
                   jsonb_typeof(b.message -> 'step_id') AS step_id_t, b.message ->> 'step_id' AS step_id,
                   jsonb_typeof(b.message -> 'execution_id') AS execution_id_t, b.message ->> 'execution_id' AS execution_id,
                   jsonb_typeof(b.message -> 'step') AS step_t, b.message ->> 'step' AS step,
                   jsonb_typeof(b.message -> 'handler') AS handler_t, b.message ->> 'handler' AS handler,
                   jsonb_typeof(b.message -> 'attempt') AS attempt_t, b.message ->> 'attempt' AS attempt,
                   b.message ? 'input' AS has_input,
                   jsonb_typeof(m.meta) AS meta_t,
                   m.meta ->> 'correlation_id' AS correlation_id,
                   m.meta ->> 'parent_event_id' AS parent_event_id,
                   m.meta ->> 'root_execution_id' AS root_execution_id,
                   jsonb_typeof(m.meta -> 'parent_execution_id') AS parent_execution_id_t,
                   m.meta ->> 'parent_execution_id' AS parent_execution_id,
                   m.meta ->> 'traceparent' AS traceparent,
                   jsonb_typeof(m.meta -> 'tracestate') AS tracestate_t
            FROM (SELECT b.message -> 'meta' AS meta OFFSET 0) m
            OFFSET 0) x;
    EXCEPTION WHEN data_exception THEN
        v_ok := false;
    END;
    END IF;
    IF NOT v_ok THEN
        EXECUTE format($q$
            SELECT array_agg(ROW(g.msg_id, g.delivery, g.enqueued_at, g.event_id, g.message,
                                 g.bytes, %1$s, g.sent_by_lineq)::lineq._claimed ORDER BY g.msg_id)
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
                                             bytes, problem, sent_by_lineq, ord)
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

-- The queue functions of the step queues that exist, made anew over the new lineq._claimed.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT queue_name FROM lineq.queues() WHERE queue_name LIKE 'lineq\_steps\_%' LOOP
        PERFORM lineq._make_queue_functions(r.queue_name);
        PERFORM lineq._make_send_function(r.queue_name);
    END LOOP;
END
$$;

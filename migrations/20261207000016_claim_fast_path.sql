-- worker_claim, cheaper per call and per message (docs/benchmarks.md, "The SQL interface").
--
-- The claim's one dynamic statement (the queue table is named by the namespace) now only reads
-- and marks the messages; everything else is static SQL, planned once per session. Each
-- message is first checked by a fast test built from casts instead of regular expressions
-- (PostgreSQL runs one of those in about 4.5 µs; the full check runs nine); only when some
-- message fails it, or makes a cast raise, is the whole batch checked by
-- lineq._step_message_problem_sql, which stays the one definition of a runnable message and
-- the source of every dead-letter reason. The fast test accepts a message only where the full
-- check finds no problem: tests/sql_worker.rs sends malformed messages through the claim and
-- expects each dead-lettered with the full check's reason.

-- A message a claim took: its mark, its body, and why it cannot run (NULL: it can).
CREATE TYPE lineq._claimed AS (
    msg_id bigint,
    delivery integer,
    enqueued_at timestamptz,
    event_id uuid,
    message jsonb,
    bytes bigint,
    problem text
);

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
    -- delivery, and the action_started event that says so).
    EXECUTE format($q$
        WITH cte AS (
            SELECT m.msg_id FROM %1$s m
            WHERE m.vt <= clock_timestamp()
              AND ($3::text[] IS NULL OR jsonb_typeof(m.message -> 'handler') IS DISTINCT FROM 'string'
                   OR m.message ->> 'handler' = ANY ($3))
            ORDER BY m.msg_id
            LIMIT $1
            FOR UPDATE SKIP LOCKED),
        got AS (
            UPDATE %1$s m
            SET last_read_at = clock_timestamp(),
                vt = clock_timestamp() + make_interval(secs => $2::integer),
                read_ct = m.read_ct + 1,
                -- the event id: a UUIDv7 (lineq.uuid_v7's layout, inline: no call per row)
                headers = coalesce(m.headers, '{}'::jsonb) || jsonb_build_object('lineq_claim',
                    jsonb_build_object('worker', $4::text, 'delivery', m.read_ct + 1,
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
        FROM got g
    $q$, q.live)
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

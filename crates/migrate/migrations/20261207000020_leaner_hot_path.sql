-- Less work per execution on the hot path: submission and the claim's check (docs/benchmarks.md,
-- "The SQL interface against the release before it").
--
-- 1. Requests that use only the plain fields (a target without @VERSION, input, a namespace, a
--    priority of 0, and empty or no tags and metadata) are checked by one cheap test,
--    lineq._plain_requests; only a batch with another request goes through every rule.
-- 2. The first steps of new executions reach lineq._enqueue_step_rows as typed rows; before,
--    they were written out as JSON and read back field by field. lineq._enqueue_steps (the
--    orchestrator's dependents and retries) reads its JSON into the same rows: one definition
--    of the step message and its step_enqueued event.
-- 3. lineq._create_executions plans its statements once per session (plan_cache_mode = auto):
--    they read their arguments and look rows up by primary key or unique index, so a generic
--    plan is as good, and lineq's pools otherwise force a custom plan at every call.
-- 4. The claim's fast test reads each field of a message once.

-- True when every request of a batch is valid by a test that needs no regular expression: an
-- object with
-- known fields only, a target of 1 to 128 letters, digits, '_', '.', ':' or '-' (no
-- @VERSION), an input of at most 1048576 bytes serialized, a namespace as the rules want it,
-- priority 0 or none, and empty or no tags, metadata, idempotency key, timeout, correlation id
-- and parent. It is false for a batch with any request the full rules refuse
-- (tests/sql_submit.rs), and for some they accept, which then go through them.
CREATE FUNCTION lineq._plain_requests(p_requests jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(bool_and(CASE WHEN jsonb_typeof(p_req) = 'object' THEN coalesce(
               (p_req - ARRAY['target', 'input', 'namespace', 'correlation_id', 'idempotency_key',
                              'priority', 'timeout_ms', 'tags', 'metadata',
                              'parent_execution_id']) = '{}'::jsonb
           AND jsonb_typeof(p_req -> 'target') = 'string'
           AND char_length(p_req ->> 'target') BETWEEN 1 AND 128
           AND translate(p_req ->> 'target',
                         'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = ''
           AND coalesce(nullif(p_req -> 'tags', 'null'::jsonb), '{}'::jsonb) = '{}'::jsonb
           AND coalesce(nullif(p_req -> 'metadata', 'null'::jsonb), '{}'::jsonb) = '{}'::jsonb
           AND (coalesce(p_req -> 'namespace', 'null'::jsonb) = 'null'::jsonb
                OR (jsonb_typeof(p_req -> 'namespace') = 'string'
                    AND char_length(p_req ->> 'namespace') BETWEEN 1 AND 32
                    AND ascii(p_req ->> 'namespace') BETWEEN 97 AND 122
                    AND translate(p_req ->> 'namespace', 'abcdefghijklmnopqrstuvwxyz0123456789_', '') = ''))
           AND coalesce(p_req -> 'priority', '0'::jsonb) IN ('0'::jsonb, 'null'::jsonb)
           AND coalesce(p_req -> 'idempotency_key', 'null'::jsonb) = 'null'::jsonb
           AND coalesce(p_req -> 'timeout_ms', 'null'::jsonb) = 'null'::jsonb
           AND coalesce(p_req -> 'correlation_id', 'null'::jsonb) = 'null'::jsonb
           AND coalesce(p_req -> 'parent_execution_id', 'null'::jsonb) = 'null'::jsonb
           AND coalesce(octet_length((p_req -> 'input')::text), 0) <= 1048576,
           false) ELSE false END), false)
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_requests) = 'array' THEN p_requests
                                   ELSE '[]'::jsonb END) AS q(p_req)
$$;
REVOKE ALL ON FUNCTION lineq._plain_requests(jsonb) FROM PUBLIC;

-- A step message to send, as lineq._enqueue_step_rows reads it (the fields of
-- lineq._enqueue_steps's JSON objects, typed).
CREATE TYPE lineq._step_send AS (
    execution_id         uuid,
    parent_execution_id  uuid,
    root_execution_id    uuid,
    correlation_id       uuid,
    trace_correlation_id uuid,
    step_id              uuid,
    step                 text,
    handler              text,
    queue                text,
    attempt              integer,
    input                jsonb,
    timeout_ms           bigint,
    parent_event_id      uuid,
    delay_ms             bigint,
    retry_reason         text,
    context              jsonb
);

-- Makes (again) lineq._send_<queue>: the statement that sends step messages on one step queue
-- (below), static SQL planned once per session. Its plan is generic: it reads its arguments and
-- looks rows up by primary key, and a custom plan, made at every call, cost more than the
-- statement.
CREATE FUNCTION lineq._make_send_function(p_queue text) RETURNS void
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
                       nextval(%2$L::regclass) AS msg_id
                FROM unnest(p_steps) WITH ORDINALITY AS e(execution_id, parent_execution_id,
                    root_execution_id, correlation_id, trace_correlation_id, step_id, step,
                    handler, queue, attempt, input, timeout_ms, parent_event_id, delay_ms,
                    retry_reason, context, ord)
                -- a UUIDv7 whose counter bits are the row's position, so the events of one
                -- call (siblings, often) sort in the order they were given (OFFSET 0: once per row)
                CROSS JOIN LATERAL (SELECT encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) || substring(int4send(28672 | mod(e.ord, 4096)::integer) FROM 3) || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid AS event_id OFFSET 0) AS id
                WHERE e.queue = %3$L),
            sent AS (
                INSERT INTO %1$s (msg_id, vt, message) OVERRIDING SYSTEM VALUE
                SELECT s.msg_id, clock_timestamp() + make_interval(secs => s.delay_ms / 1000.0),
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

-- Sends step messages: for each step, its `step_enqueued` event (parent: what made it ready)
-- and its message on its queue, whose meta names that event; one statement per queue (the
-- queue's own lineq._send_<queue>, made here for a queue that has none yet), and one
-- pg_notify(<queue>, <queue>) per queue (delivered on commit). With p_mark_steps the existing
-- step rows are moved to `enqueued` with their message, attempt and input in the same statement
-- (the orchestrator's dependents and retries); without, no step row is touched and the caller
-- writes its new steps with the returned message ids (submission). Events are stamped after
-- p_not_before, or when it is NULL after their parent events as stored. The message is
-- shared/src/message.rs StepMessage as serde_json writes it. Each message's id is taken from
-- the queue's own sequence up front (in array order, as the identity column would take it), so
-- the message, its event and its step row are all written from one row set.
CREATE FUNCTION lineq._enqueue_step_rows(p_steps lineq._step_send[], p_node_name text,
                                         p_not_before timestamptz DEFAULT NULL,
                                         p_mark_steps boolean DEFAULT false)
RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_queue text;
BEGIN
    FOR v_queue IN
        SELECT DISTINCT s.queue FROM unnest(p_steps) AS s ORDER BY 1
    LOOP
        IF v_queue IS NULL OR v_queue !~ '^[a-z][a-z0-9_]{0,46}$' THEN
            PERFORM lineq.invalid('queue', format(
                'a queue name is 1 to 47 characters of a-z, 0-9 and _, starting with a letter (got %s)',
                coalesce(to_jsonb(v_queue)::text, 'null')));
        END IF;
        IF to_regprocedure(format('lineq.%I(lineq._step_send[], text, timestamptz, boolean)',
                                  '_send_' || v_queue)) IS NULL THEN
            IF NOT EXISTS (SELECT 1 FROM pgmq.meta m WHERE m.queue_name = v_queue) THEN
                RAISE EXCEPTION USING ERRCODE = 'LQ005',
                    MESSAGE = format('unknown queue %s: it does not exist', v_queue),
                    DETAIL = format('namespace=%s', regexp_replace(v_queue, '^lineq_steps_', ''));
            END IF;
            -- Concurrent first senders on one queue make its function once.
            PERFORM pg_advisory_xact_lock(hashtext('lineq._make_send_function'), hashtext(v_queue));
            IF to_regprocedure(format('lineq.%I(lineq._step_send[], text, timestamptz, boolean)',
                                      '_send_' || v_queue)) IS NULL THEN
                PERFORM lineq._make_send_function(v_queue);
            END IF;
        END IF;
        PERFORM pg_notify(v_queue, v_queue);
        RETURN QUERY EXECUTE format('SELECT * FROM lineq.%I($1, $2, $3, $4)', '_send_' || v_queue)
        USING p_steps, p_node_name, p_not_before, p_mark_steps;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION lineq._enqueue_step_rows(lineq._step_send[], text, timestamptz, boolean) FROM PUBLIC;
COMMENT ON FUNCTION lineq._enqueue_step_rows(lineq._step_send[], text, timestamptz, boolean) IS
    'Internal: sends step messages with their step_enqueued events and wake-ups.';

-- The same from a JSON array of objects with the fields of lineq._step_send (the orchestrator's
-- dependents and retries, shared/src/message.rs); `step` and `handler` must be strings.
CREATE OR REPLACE FUNCTION lineq._enqueue_steps(p_steps jsonb, p_node_name text,
                                                p_not_before timestamptz DEFAULT NULL,
                                                p_mark_steps boolean DEFAULT false)
RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $$
    SELECT * FROM lineq._enqueue_step_rows(
        ARRAY(SELECT jsonb_populate_record(NULL::lineq._step_send, e.j)
              FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS e(j, ord)
              ORDER BY e.ord),
        p_node_name, p_not_before, p_mark_steps)
$$;

-- Creates executions from requests, in the caller's transaction; the one code path behind
-- lineq.submit, lineq.submit_many and the orchestrator's child executions (migration 000013).
CREATE OR REPLACE FUNCTION lineq._create_executions(p_requests jsonb, p_node_name text, p_internal boolean)
RETURNS TABLE (
    execution_id uuid, workflow_name text, workflow_version integer, namespace text,
    status text, input jsonb, output jsonb, error jsonb, correlation_id uuid,
    parent_correlation_id uuid, parent_execution_id uuid, root_execution_id uuid,
    parent_event_id uuid, parent_step text, tags jsonb, metadata jsonb, idempotency_key text,
    priority integer, version bigint, created_at timestamptz, updated_at timestamptz,
    finished_at timestamptz, kind text, parent_step_id uuid, parent_waits boolean,
    created boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
SET plan_cache_mode = auto
AS $fn$
#variable_conflict use_column
DECLARE
    v_node text := coalesce(nullif(p_node_name, ''),
                            nullif(current_setting('application_name', true), ''), 'sql');
    v_total integer;
    v_bad record;
    v_specs lineq._new_execution[];
    v_rows lineq.executions[];
    v_steps lineq._new_step[];
    v_sent_steps uuid[];
    v_sent_msgs bigint[];
    v_t0 timestamptz;
    v_fields constant text[] := ARRAY['target', 'input', 'namespace', 'correlation_id',
        'idempotency_key', 'priority', 'timeout_ms', 'tags', 'metadata', 'parent_execution_id'];
    v_internal_fields constant text[] := ARRAY['execution_id', 'parent_event_id', 'parent_step',
        'parent_step_id', 'parent_waits'];
    v_uuid constant text := '^\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?$';
BEGIN
    IF p_requests IS NULL OR jsonb_typeof(p_requests) <> 'array' THEN
        PERFORM lineq.invalid('requests', format('it must be a JSON array of request objects (got %s)',
                                                 coalesce(jsonb_typeof(p_requests), 'NULL')));
    END IF;
    v_total := jsonb_array_length(p_requests);
    IF v_total = 0 THEN
        RETURN;
    END IF;

    -- 1. Every rule of every request, in the Rust client's order; the first broken one of the
    --    first bad request is raised. A batch of plain requests passes one cheap test instead.
    IF p_internal OR NOT lineq._plain_requests(p_requests) THEN
        SELECT r.ord, (r.err)[1] AS field, (r.err)[2] AS reason INTO v_bad
        FROM (
            SELECT q.ord, CASE
                WHEN jsonb_typeof(q.req) <> 'object' THEN
                    ARRAY['request', format('it must be a JSON object (got %s)', jsonb_typeof(q.req))]
                WHEN (q.req - v_fields - CASE WHEN p_internal THEN v_internal_fields
                                              ELSE '{}'::text[] END) <> '{}'::jsonb THEN
                    ARRAY['request', format('unknown field %s; a request has %s',
                        to_jsonb((SELECT k FROM jsonb_object_keys(q.req) k
                                  WHERE k <> ALL (v_fields)
                                    AND (NOT p_internal OR k <> ALL (v_internal_fields))
                                  ORDER BY k LIMIT 1))::text,
                        array_to_string(v_fields, ', '))]
                WHEN jsonb_typeof(q.req->'target') IS DISTINCT FROM 'string' THEN
                    ARRAY['target', format('it is required, a workflow or handler name (got %s)',
                                           coalesce(jsonb_typeof(q.req->'target'), 'nothing'))]
                -- tags
                WHEN jsonb_typeof(coalesce(q.req->'tags', '{}')) NOT IN ('object', 'null') THEN
                    ARRAY['tags', format('it must be a JSON object of string values (got %s)',
                                         jsonb_typeof(q.req->'tags'))]
                WHEN jsonb_typeof(q.req->'tags') = 'object' AND q.req->'tags' <> '{}'::jsonb
                     AND (SELECT count(*) FROM jsonb_object_keys(q.req->'tags')) > 20 THEN
                    ARRAY['tags', format('%s tags; the limit is 20',
                                         (SELECT count(*) FROM jsonb_object_keys(q.req->'tags')))]
                WHEN o.tag_error IS NOT NULL THEN ARRAY['tags', o.tag_error]
                -- metadata
                WHEN jsonb_typeof(coalesce(q.req->'metadata', '{}')) NOT IN ('object', 'null') THEN
                    ARRAY['metadata', format('it must be a JSON object (got %s)', jsonb_typeof(q.req->'metadata'))]
                WHEN jsonb_typeof(q.req->'metadata') = 'object' AND q.req->'metadata' <> '{}'::jsonb
                     AND (SELECT count(*) FROM jsonb_object_keys(q.req->'metadata')) > 50 THEN
                    ARRAY['metadata', format('%s top-level keys; the limit is 50',
                                             (SELECT count(*) FROM jsonb_object_keys(q.req->'metadata')))]
                WHEN jsonb_typeof(q.req->'metadata') = 'object' AND q.req->'metadata' <> '{}'::jsonb
                     AND EXISTS (SELECT 1 FROM jsonb_object_keys(q.req->'metadata') k
                                 WHERE k LIKE '\_lineq\_%') THEN
                    ARRAY['metadata', format('key %s starts with the reserved prefix "_lineq_"',
                        (SELECT to_jsonb(k)::text FROM jsonb_object_keys(q.req->'metadata') k
                         WHERE k LIKE '\_lineq\_%' ORDER BY k COLLATE "C" LIMIT 1))]
                WHEN jsonb_typeof(q.req->'metadata') = 'object'
                     AND octet_length((q.req->'metadata')::text) > 65536
                     AND lineq._json_size(q.req->'metadata', 65536) > 65536 THEN
                    ARRAY['metadata', format('it is %s bytes serialized; the limit is 65536 bytes',
                                             lineq._json_size(q.req->'metadata', 65536))]
                -- the handler (or workflow) name
                WHEN split_part(q.req->>'target', '@', 1) !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
                    ARRAY['handler', format('a handler is 1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'' (got %s)',
                                            to_jsonb(split_part(q.req->>'target', '@', 1))::text)]
                -- namespace
                WHEN jsonb_typeof(coalesce(q.req->'namespace', '"default"')) NOT IN ('string', 'null') THEN
                    ARRAY['namespace', format('it must be a string (got %s)', jsonb_typeof(q.req->'namespace'))]
                WHEN coalesce(q.req->>'namespace', 'default') !~ '^[a-z][a-z0-9_]{0,31}$' THEN
                    ARRAY['namespace', format('%s; a namespace is 1 to 32 characters of a-z, 0-9 and _, starting with a letter (got %s)',
                        CASE WHEN q.req->>'namespace' = '' THEN 'it is empty'
                             WHEN char_length(q.req->>'namespace') > 32
                                  THEN format('it is %s characters long', char_length(q.req->>'namespace'))
                             WHEN q.req->>'namespace' !~ '^[a-z]' THEN 'it does not start with a lowercase letter'
                             ELSE format('it contains ''%s''', substring(q.req->>'namespace' FROM '[^a-z0-9_]'))
                        END,
                        to_jsonb(q.req->>'namespace')::text)]
                -- input
                WHEN octet_length((q.req->'input')::text) > 1048576
                     AND lineq._json_size(q.req->'input', 1048576) > 1048576 THEN
                    ARRAY['input', format('it is %s bytes serialized; the limit is 1048576 bytes',
                                          lineq._json_size(q.req->'input', 1048576))]
                -- idempotency key
                WHEN jsonb_typeof(coalesce(q.req->'idempotency_key', 'null')) NOT IN ('string', 'null') THEN
                    ARRAY['idempotency_key', format('it must be a string (got %s)', jsonb_typeof(q.req->'idempotency_key'))]
                WHEN q.req->>'idempotency_key' IS NOT NULL
                     AND char_length(q.req->>'idempotency_key') NOT BETWEEN 1 AND 255 THEN
                    ARRAY['idempotency_key', format('it must be 1 to 255 characters (got %s)',
                                                    char_length(q.req->>'idempotency_key'))]
                WHEN q.req->>'idempotency_key' ~ '[\u0001-\u001f\u007f-\u009f]' THEN
                    ARRAY['idempotency_key', 'it must not contain control characters']
                -- timeout
                WHEN jsonb_typeof(coalesce(q.req->'timeout_ms', 'null')) NOT IN ('number', 'null')
                     OR (q.req->>'timeout_ms') !~ '^-?[0-9]{1,18}$' THEN
                    ARRAY['timeout_ms', format('it must be a whole number of milliseconds (got %s)', q.req->'timeout_ms')]
                WHEN (q.req->>'timeout_ms')::bigint < 1 THEN
                    ARRAY['timeout_ms', format('it must be at least 1 (got %s)', q.req->>'timeout_ms')]
                -- the version in NAME@VERSION
                WHEN strpos(q.req->>'target', '@') > 0
                     AND (substr(q.req->>'target', strpos(q.req->>'target', '@') + 1) !~ '^[0-9]{1,10}$'
                          OR substr(q.req->>'target', strpos(q.req->>'target', '@') + 1)::bigint
                             NOT BETWEEN 1 AND 2147483647) THEN
                    ARRAY['workflow', format('%s: the version after @ must be a whole number from 1',
                                             to_jsonb(q.req->>'target')::text)]
                -- the rest
                WHEN jsonb_typeof(coalesce(q.req->'priority', '0')) NOT IN ('number', 'null')
                     OR (q.req->>'priority') !~ '^-?[0-9]{1,10}$'
                     OR (q.req->>'priority')::bigint NOT BETWEEN -2147483648 AND 2147483647 THEN
                    ARRAY['priority', format('it must be a whole number from -2147483648 to 2147483647 (got %s)', q.req->'priority')]
                WHEN jsonb_typeof(coalesce(q.req->'correlation_id', 'null')) NOT IN ('string', 'null')
                     OR (q.req->>'correlation_id') !~ v_uuid THEN
                    ARRAY['correlation_id', format('it must be a UUID (got %s)', q.req->'correlation_id')]
                WHEN jsonb_typeof(coalesce(q.req->'parent_execution_id', 'null')) NOT IN ('string', 'null')
                     OR (q.req->>'parent_execution_id') !~ v_uuid THEN
                    ARRAY['parent', format('parent_execution_id must be a UUID (got %s)', q.req->'parent_execution_id')]
                WHEN p_internal AND (q.req->>'execution_id' !~ v_uuid
                                     OR q.req->>'parent_event_id' !~ v_uuid
                                     OR q.req->>'parent_step_id' !~ v_uuid) THEN
                    ARRAY['request', 'execution_id, parent_event_id and parent_step_id must be UUIDs']
                END AS err
            FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS q(req, ord)
            CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(q.req->'tags') = 'object'
                                                 AND q.req->'tags' <> '{}'::jsonb THEN (
                SELECT x.reason
                FROM jsonb_each(CASE WHEN jsonb_typeof(q.req->'tags') = 'object' THEN q.req->'tags'
                                     ELSE '{}'::jsonb END) AS t(k, v),
                LATERAL (SELECT CASE
                    WHEN t.k = '' OR octet_length(t.k) > 64 THEN
                        format('tag key %s is %s characters; a key is 1 to 64',
                               to_jsonb(t.k)::text, char_length(t.k))
                    WHEN t.k ~ '[^a-z0-9_-]' THEN
                        format('tag key %s contains ''%s''; keys use a-z, 0-9, ''-'' and ''_''',
                               to_jsonb(t.k)::text, substring(t.k FROM '[^a-z0-9_-]'))
                    WHEN t.k LIKE 'lineq\_%' THEN
                        format('tag key %s starts with the reserved prefix "lineq_"', to_jsonb(t.k)::text)
                    WHEN t.k LIKE '\_%' THEN
                        format('tag key %s starts with the reserved prefix "_"', to_jsonb(t.k)::text)
                    WHEN jsonb_typeof(t.v) <> 'string' THEN
                        format('tag %s value must be a string (got %s)', to_jsonb(t.k)::text, jsonb_typeof(t.v))
                    WHEN char_length(t.v #>> '{}') > 256 THEN
                        format('tag %s value is %s characters; the limit is 256',
                               to_jsonb(t.k)::text, char_length(t.v #>> '{}'))
                    WHEN (t.v #>> '{}') ~ '[\n\r]' THEN
                        format('tag %s value contains a newline', to_jsonb(t.k)::text)
                    END AS reason) AS x
                WHERE x.reason IS NOT NULL
                ORDER BY t.k COLLATE "C"
                LIMIT 1) END AS tag_error) AS o
        ) AS r
        WHERE r.err IS NOT NULL
        ORDER BY r.ord
        LIMIT 1;
        IF FOUND THEN
            PERFORM lineq.invalid(v_bad.field, CASE WHEN v_total > 1
                                                    THEN format('request %s: %s', v_bad.ord - 1, v_bad.reason)
                                                    ELSE v_bad.reason END);
        END IF;
    END IF;

    -- 2. Resolve: the target (a registered workflow, else a handler run as a one-step task)
    --    and the parent.
    SELECT array_agg(ROW(
               q.ord, q.execution_id,
               coalesce(w.name, q.name), coalesce(w.version, 1),
               CASE WHEN w.name IS NULL THEN 'task' ELSE 'workflow' END,
               CASE WHEN w.name IS NULL THEN q.namespace
                    ELSE coalesce(w.definition->>'namespace', 'default') END,
               CASE WHEN w.name IS NULL
                    THEN jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                             'name', q.name, 'handler', q.name, 'namespace', q.namespace,
                             'timeout_ms', q.req->'timeout_ms')))
                    ELSE w.definition->'steps' END,
               coalesce(q.req->'input', 'null'::jsonb),
               q.correlation_id,
               q.req->>'idempotency_key',
               coalesce((q.req->>'priority')::integer, 0),
               coalesce(nullif(q.req->'tags', 'null'::jsonb), '{}'::jsonb),
               coalesce(nullif(q.req->'metadata', 'null'::jsonb), '{}'::jsonb),
               p.correlation_id, q.parent_id,
               coalesce(p.root_execution_id, q.execution_id),
               coalesce(p.trace_correlation_id, q.correlation_id),
               CASE WHEN p_internal THEN (q.req->>'parent_event_id')::uuid ELSE p.latest_event_id END,
               CASE WHEN p_internal THEN q.req->>'parent_step' END,
               CASE WHEN p_internal THEN (q.req->>'parent_step_id')::uuid END,
               CASE WHEN p_internal THEN coalesce((q.req->>'parent_waits')::boolean, false) ELSE false END,
               encode(set_bit(set_bit(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 54, 1), 55, 0), 'hex')::uuid, encode(set_bit(set_bit(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 54, 1), 55, 0), 'hex')::uuid
           )::lineq._new_execution ORDER BY q.ord)
    INTO v_specs
    FROM (
        SELECT a.ord::integer AS ord, a.req,
               CASE WHEN p_internal AND a.req ? 'execution_id' THEN (a.req->>'execution_id')::uuid
                    ELSE encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) || substring(int4send(28672 | mod(a.ord, 4096)::integer) FROM 3) || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid END AS execution_id,
               split_part(a.req->>'target', '@', 1) AS name,
               CASE WHEN strpos(a.req->>'target', '@') > 0
                    THEN substr(a.req->>'target', strpos(a.req->>'target', '@') + 1)::integer END AS version,
               coalesce(a.req->>'namespace', 'default') AS namespace,
               (a.req->>'parent_execution_id')::uuid AS parent_id,
               coalesce((a.req->>'correlation_id')::uuid, encode(set_bit(set_bit(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 54, 1), 55, 0), 'hex')::uuid) AS correlation_id
        FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS a(req, ord)
        OFFSET 0  -- each request's generated ids are computed once
    ) AS q
    -- one registry lookup per distinct target, not per request
    LEFT JOIN (
        SELECT t.name AS target_name, t.version AS target_version, wf.*
        FROM (SELECT DISTINCT split_part(a.req->>'target', '@', 1) AS name,
                     CASE WHEN strpos(a.req->>'target', '@') > 0
                          THEN substr(a.req->>'target', strpos(a.req->>'target', '@') + 1)::integer
                          ELSE 0 END AS version
              FROM jsonb_array_elements(p_requests) AS a(req)) AS t
        CROSS JOIN LATERAL (
            SELECT w1.name, w1.version, w1.definition FROM lineq.workflows w1
            WHERE w1.name = t.name AND (t.version = 0 OR w1.version = t.version)
            ORDER BY w1.version DESC LIMIT 1) AS wf
    ) AS w ON w.target_name = q.name AND w.target_version = coalesce(q.version, 0)
    LEFT JOIN LATERAL (
        SELECT px.correlation_id, px.root_execution_id, px.status,
               rx.correlation_id AS trace_correlation_id, rx.status AS root_status,
               (SELECT ev.event_id FROM lineq.events ev WHERE ev.execution_id = px.execution_id
                ORDER BY ev.created_at DESC, ev.event_id DESC LIMIT 1) AS latest_event_id
        FROM lineq.executions px
        JOIN lineq.executions rx ON rx.execution_id = px.root_execution_id
        WHERE px.execution_id = q.parent_id
    ) AS p ON q.parent_id IS NOT NULL;

    -- A NAME@VERSION that is not registered.
    SELECT q.ord, q.req->>'target' AS target INTO v_bad
    FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS q(req, ord)
    JOIN unnest(v_specs) AS s ON s.ord = q.ord
    WHERE strpos(q.req->>'target', '@') > 0 AND s.kind = 'task'
    ORDER BY q.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('workflow %s not found', v_bad.target),
            DETAIL = format('what=workflow; id=%s', v_bad.target);
    END IF;

    -- An explicit parent must exist, and its tree must still be running.
    -- (A request without a parent skips the look-up: most requests.)
    IF p_internal OR jsonb_path_exists(p_requests, '$[*] ? (@.parent_execution_id != null)') THEN
        SELECT s.ord, s.parent_execution_id AS id,
               CASE WHEN s.parent_event_id IS NOT NULL THEN p.status END AS status,
               p.root_execution_id AS root,
               r.status AS root_status
        INTO v_bad
        FROM unnest(v_specs) AS s
        LEFT JOIN lineq.executions p ON p.execution_id = s.parent_execution_id
        LEFT JOIN lineq.executions r ON r.execution_id = p.root_execution_id
        WHERE s.parent_execution_id IS NOT NULL
          AND (p.execution_id IS NULL OR s.parent_event_id IS NULL
               OR (NOT p_internal AND (p.status IN ('completed', 'failed', 'cancelled')
                                       OR r.status IN ('completed', 'failed', 'cancelled'))))
        ORDER BY s.ord LIMIT 1;
        IF FOUND THEN
            IF v_bad.status IS NULL THEN
                PERFORM lineq.invalid('parent', CASE WHEN v_total > 1
                    THEN format('request %s: parent execution %s does not exist', v_bad.ord - 1, v_bad.id)
                    ELSE format('parent execution %s does not exist', v_bad.id) END);
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'LQ004',
                MESSAGE = CASE WHEN v_bad.status IN ('completed', 'failed', 'cancelled')
                    THEN format('parent execution %s is %s; a child cannot be added to a finished tree',
                                v_bad.id, v_bad.status)
                    ELSE format('the root %s of parent execution %s is %s; a child cannot be added to a finished tree',
                                v_bad.root, v_bad.id, v_bad.root_status) END,
                DETAIL = format('what=execution; id=%s; status=%s', v_bad.id,
                                CASE WHEN v_bad.status IN ('completed', 'failed', 'cancelled')
                                     THEN v_bad.status ELSE v_bad.root_status END);
        END IF;
    END IF;

    -- Every step's namespace must have a step queue.
    SELECT ns INTO v_bad
    FROM (SELECT DISTINCT coalesce(st->>'namespace', s.namespace) AS ns
          FROM unnest(v_specs) AS s, jsonb_array_elements(s.steps) AS st) AS n
    WHERE ns !~ '^[a-z][a-z0-9_]{0,31}$'
       OR NOT EXISTS (SELECT 1 FROM pgmq.meta m WHERE m.queue_name = 'lineq_steps_' || n.ns)
    ORDER BY ns LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ005',
            MESSAGE = format('unknown namespace ''%s'': it has no step queue (start a worker with --namespace %s, or run `lineq namespace create %s`)',
                             v_bad.ns, v_bad.ns, v_bad.ns),
            DETAIL = format('namespace=%s', v_bad.ns);
    END IF;

    -- 3. The execution rows. A taken idempotency key (or, for a child, a taken id) skips the
    --    row; the insert waits for a concurrent holder of the key to commit or roll back.
    WITH ins AS (
        INSERT INTO lineq.executions AS x (execution_id, workflow_name, workflow_version,
            namespace, status, input, correlation_id, parent_correlation_id,
            parent_execution_id, root_execution_id, parent_event_id, parent_step,
            parent_step_id, parent_waits, idempotency_key, priority, tags, metadata, kind)
        SELECT s.execution_id, s.workflow_name, s.workflow_version, s.namespace, 'pending',
               s.input, s.correlation_id, s.parent_correlation_id, s.parent_execution_id,
               s.root_execution_id, s.parent_event_id, s.parent_step, s.parent_step_id,
               s.parent_waits, s.idempotency_key, s.priority, s.tags, s.metadata, s.kind
        FROM unnest(v_specs) AS s
        ORDER BY s.ord
        ON CONFLICT DO NOTHING
        RETURNING x.*)
    SELECT array_agg(ins::lineq.executions) INTO v_rows FROM ins;

    IF v_rows IS NOT NULL THEN
        -- 4. execution_started and workflow_initialized of each new execution, stamped in
        --    causal order from v_t0.
        v_t0 := clock_timestamp();
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
            parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
            worker_id, attempt, trace_id, span_id, payload, created_at)
        SELECT ev.event_id, ev.parent_event_id, s.execution_id, NULL, s.parent_execution_id,
               s.root_execution_id, s.correlation_id, ev.event_type, v_node, NULL, NULL,
               CASE WHEN s.trace_correlation_id = '00000000-0000-0000-0000-000000000000' THEN '00000000000000000000000000000001' ELSE replace(s.trace_correlation_id::text, '-', '') END,
               CASE WHEN right(replace(ev.event_id::text, '-', ''), 16) = '0000000000000000' THEN '0000000000000001' ELSE right(replace(ev.event_id::text, '-', ''), 16) END, ev.payload,
               v_t0 + make_interval(secs => (2 * s.ord + ev.n) * 0.000001)
        FROM unnest(v_specs) AS s
        JOIN unnest(v_rows) AS x ON x.execution_id = s.execution_id
        CROSS JOIN LATERAL (VALUES
            (0, s.started_event_id, s.parent_event_id, 'execution_started',
             jsonb_build_object('workflow', s.workflow_name, 'version', s.workflow_version,
                                'kind', s.kind, 'parent_step', s.parent_step,
                                'parent_waits', s.parent_waits)),
            (1, s.initialized_event_id, s.started_event_id, 'workflow_initialized',
             jsonb_build_object('steps', (SELECT jsonb_agg(st->'name' ORDER BY i)
                                          FROM jsonb_array_elements(s.steps) WITH ORDINALITY AS t(st, i))))
        ) AS ev(n, event_id, parent_event_id, event_type, payload)
        ORDER BY s.ord, ev.n;

        -- 5. The step rows to write; the first steps (no dependencies) get their input.
        SELECT array_agg(ROW(s.ord, s.execution_id, encode(set_bit(set_bit(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 54, 1), 55, 0), 'hex')::uuid, st.j->>'name',
                   st.j->>'handler', st.ns, 'lineq_steps_' || st.ns,
                   ARRAY(SELECT jsonb_array_elements_text(coalesce(st.j->'depends_on', '[]'))),
                   coalesce((st.retry->>'max_attempts')::integer, 1),
                   (st.j->>'timeout_ms')::bigint, st.retry,
                   coalesce(st.j->>'on_failure', 'fail'),
                   nullif(st.j->'params', 'null'::jsonb),
                   (st.i - 1)::integer,
                   CASE WHEN jsonb_array_length(coalesce(st.j->'depends_on', '[]')) > 0 THEN NULL
                        WHEN s.kind = 'task' THEN s.input
                        ELSE jsonb_build_object('input', s.input, 'steps', '{}'::jsonb)
                             || CASE WHEN nullif(st.j->'params', 'null'::jsonb) IS NOT NULL
                                     THEN jsonb_build_object('params', st.j->'params')
                                     ELSE '{}'::jsonb END
                   END)::lineq._new_step ORDER BY s.ord, st.i)
        INTO v_steps
        FROM unnest(v_specs) AS s
        JOIN unnest(v_rows) AS x ON x.execution_id = s.execution_id
        CROSS JOIN LATERAL (
            SELECT e.j, e.i, coalesce(e.j->>'namespace', s.namespace) AS ns,
                   '{"max_attempts": 1, "backoff_ms": 1000, "multiplier": 2.0, "max_backoff_ms": 60000, "jitter": true}'::jsonb
                   || coalesce(e.j->'retry', '{}') AS retry
            FROM jsonb_array_elements(s.steps) WITH ORDINALITY AS e(j, i)
        ) AS st;

        IF (SELECT count(DISTINCT st.execution_id) FROM unnest(v_steps) AS st
            WHERE st.input IS NOT NULL) <> cardinality(v_rows) THEN
            RAISE EXCEPTION USING ERRCODE = 'LQ004',
                MESSAGE = 'a workflow has no step without dependencies';
        END IF;

        -- 6. Send the first steps (lineq._enqueue_step_rows: step_enqueued, message, wake-up).
        SELECT array_agg(e.step_id), array_agg(e.msg_id)
        INTO v_sent_steps, v_sent_msgs
        FROM lineq._enqueue_step_rows(
            ARRAY(SELECT ROW(s.execution_id, s.parent_execution_id, s.root_execution_id,
                             s.correlation_id, s.trace_correlation_id, st.step_id, st.name,
                             st.handler, st.queue, 1, st.input, st.timeout_ms,
                             s.initialized_event_id, NULL, NULL,
                             jsonb_build_object('workflow', s.workflow_name)
                             || CASE WHEN s.tags <> '{}' THEN jsonb_build_object('tags', s.tags) ELSE '{}' END
                             || CASE WHEN s.metadata <> '{}' THEN jsonb_build_object('metadata', s.metadata) ELSE '{}' END
                             || CASE WHEN s.parent_step IS NOT NULL
                                     THEN jsonb_build_object('parent_step', s.parent_step) ELSE '{}' END
                         )::lineq._step_send
                  FROM unnest(v_steps) AS st JOIN unnest(v_specs) AS s ON s.execution_id = st.execution_id
                  WHERE st.input IS NOT NULL
                  ORDER BY st.ord, st.position),
            v_node, v_t0 + make_interval(secs => (2 * v_total + 2) * 0.000001)) AS e;

        -- 7. The steps, written once: the first ones already enqueued with their message.
        INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
            depends_on, max_attempts, timeout_ms, retry, on_failure, params, position, attempts,
            msg_id, input)
        SELECT st.step_id, st.execution_id, st.name, st.handler, st.namespace, st.queue,
               CASE WHEN st.input IS NULL THEN 'pending' ELSE 'enqueued' END,
               st.depends_on, st.max_attempts, st.timeout_ms, st.retry, st.on_failure,
               st.params, st.position,
               CASE WHEN st.input IS NULL THEN 0 ELSE 1 END,
               x.msg_id, st.input
        FROM unnest(v_steps) AS st
        LEFT JOIN unnest(v_sent_steps, v_sent_msgs) AS x(step_id, msg_id) ON x.step_id = st.step_id;
    END IF;

    -- 8. One row per request, in order: the new execution, or the one holding its key (a
    --    request that created its row finds itself by its key, and is left out of the second
    --    half).
    RETURN QUERY
    SELECT e.execution_id, e.workflow_name, e.workflow_version, e.namespace, e.status, e.input,
           e.output, e.error, e.correlation_id, e.parent_correlation_id, e.parent_execution_id,
           e.root_execution_id, e.parent_event_id, e.parent_step, e.tags, e.metadata,
           e.idempotency_key, e.priority, e.version, e.created_at, e.updated_at, e.finished_at,
           e.kind, e.parent_step_id, e.parent_waits, e.created
    FROM (
        SELECT s.ord, x.*, true AS created
        FROM unnest(v_specs) AS s JOIN unnest(v_rows) AS x ON x.execution_id = s.execution_id
        UNION ALL
        SELECT s.ord, x.*, false
        FROM unnest(v_specs) AS s
        JOIN lineq.executions AS x ON x.idempotency_key = s.idempotency_key
        WHERE s.idempotency_key IS NOT NULL AND x.idempotency_key IS NOT NULL
          AND x.execution_id <> s.execution_id
    ) AS e
    ORDER BY e.ord;
END
$fn$;

-- The claim (migration 000019), its fast test reading each field of a message once.
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

-- A new step queue gets its send function with its claim and archive functions.
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
        PERFORM lineq._make_send_function(p_queue);
    END IF;
    RETURN true;
END
$$;

-- The send functions of the step queues that exist.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT queue_name FROM lineq.queues() WHERE queue_name LIKE 'lineq\_steps\_%' LOOP
        PERFORM lineq._make_send_function(r.queue_name);
    END LOOP;
END
$$;

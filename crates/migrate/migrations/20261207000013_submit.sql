-- Submission as SQL: lineq.submit and lineq.submit_many write an execution, its steps, its first
-- events and its first step messages in the CALLER's transaction, so the work exists exactly when
-- that transaction commits (docs/sql-api.md, "Submitting"). The Rust client and the orchestrator
-- (child executions) call the same code: lineq._create_executions.
--
-- Limits are the ones shared/src/validation.rs and shared/src/labels.rs enforce; an error is
-- LQ001 with the field in COLUMN and the rule (with its limit, and what was given) in the
-- message, and nothing is written.

-- Ids and trace context are computed by the expressions of lineq.uuid_v7(), lineq.trace_id(),
-- lineq.span_id() and lineq.traceparent() (migration 000011) written out inline: a call of a
-- function with a pinned search_path costs 10-50 µs, and a batch of 500 executions makes
-- thousands of them (tests/sql_submit.rs holds the results to Rust's TraceContext).

-- An execution about to be created: a request, validated and resolved.
CREATE TYPE lineq._new_execution AS (
    ord                   integer,
    execution_id          uuid,
    workflow_name         text,
    workflow_version      integer,
    kind                  text,
    namespace             text,
    steps                 jsonb,
    input                 jsonb,
    correlation_id        uuid,
    idempotency_key       text,
    priority              integer,
    tags                  jsonb,
    metadata              jsonb,
    parent_correlation_id uuid,
    parent_execution_id   uuid,
    root_execution_id     uuid,
    trace_correlation_id  uuid,
    parent_event_id       uuid,
    parent_step           text,
    parent_step_id        uuid,
    parent_waits          boolean,
    started_event_id      uuid,
    initialized_event_id  uuid
);

-- A step row about to be written.
CREATE TYPE lineq._new_step AS (
    ord          integer,
    execution_id uuid,
    step_id      uuid,
    name         text,
    handler      text,
    namespace    text,
    queue        text,
    depends_on   text[],
    max_attempts integer,
    timeout_ms   bigint,
    retry        jsonb,
    on_failure   text,
    params       jsonb,
    position     integer,
    input        jsonb
);

-- The size of a JSON value serialized compactly (no whitespace), as serde_json counts it for
-- the Rust client's limits. PostgreSQL prints a space after every ':' and ',', so the compact
-- size is the printed size less one byte per separator; the separators are counted only when
-- the printed size passes p_limit (the common case costs one print).
CREATE FUNCTION lineq._json_size(p_value jsonb, p_limit bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_printed bigint := octet_length(p_value::text);
    v_separators bigint;
BEGIN
    IF v_printed <= p_limit THEN
        RETURN v_printed;
    END IF;
    SELECT coalesce(sum(CASE jsonb_typeof(x)
                            WHEN 'object' THEN greatest(2 * (SELECT count(*) FROM jsonb_object_keys(x)) - 1, 0)
                            WHEN 'array' THEN greatest(jsonb_array_length(x) - 1, 0)
                            ELSE 0 END), 0)
    INTO v_separators
    FROM jsonb_path_query(p_value, 'strict $.**') AS x;
    RETURN v_printed - v_separators;
END
$$;

-- Sends step messages: for each step, its `step_enqueued` event (parent: what made it ready)
-- and its message on its queue, whose meta names that event; one statement per queue, and one
-- pg_notify(<queue>, <queue>) per queue (delivered on commit). With p_mark_steps the existing
-- step rows are moved to `enqueued` with their message, attempt and input in the same statement
-- (the orchestrator's dependents and retries); without, no step row is touched and the caller
-- writes its new steps with the returned message ids (submission).
--
-- p_steps is a JSON array of objects: execution_id, parent_execution_id, root_execution_id,
-- correlation_id, trace_correlation_id, step_id, step (name), handler, queue, attempt, input,
-- timeout_ms, parent_event_id, delay_ms, retry_reason, context (the message's `context` object,
-- or null). Their events are stamped after p_not_before, or when it is NULL after their parent
-- events as stored. The message is shared/src/message.rs StepMessage as serde_json writes it.
CREATE FUNCTION lineq._enqueue_steps(p_steps jsonb, p_node_name text,
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
        SELECT DISTINCT s->>'queue' FROM jsonb_array_elements(p_steps) AS s ORDER BY 1
    LOOP
        IF v_queue IS NULL OR v_queue !~ '^[a-z][a-z0-9_]{0,46}$' THEN
            PERFORM lineq.invalid('queue', format(
                'a queue name is 1 to 47 characters of a-z, 0-9 and _, starting with a letter (got %s)',
                coalesce(to_jsonb(v_queue)::text, 'null')));
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pgmq.meta m WHERE m.queue_name = v_queue) THEN
            RAISE EXCEPTION USING ERRCODE = 'LQ005',
                MESSAGE = format('unknown queue %s: it does not exist', v_queue),
                DETAIL = format('namespace=%s', regexp_replace(v_queue, '^lineq_steps_', ''));
        END IF;
        PERFORM pg_notify(v_queue, v_queue);
        -- Each message's id is taken from the queue's own sequence up front (in array order,
        -- as the identity column would take it), so the message, its event and its step row
        -- are all written from one row set: nothing below joins two row sets.
        RETURN QUERY EXECUTE format($q$
            WITH s AS MATERIALIZED (
                SELECT e.ord, e.j,
                       (e.j->>'step_id')::uuid AS step_id,
                       (e.j->>'attempt')::integer AS attempt,
                       (e.j->>'timeout_ms')::bigint AS timeout_ms,
                       coalesce((e.j->>'delay_ms')::bigint, 0) AS delay_ms,
                       nullif(e.j->'context', 'null'::jsonb) AS context,
                       -- lineq.trace_id and lineq.span_id, inlined
                       CASE WHEN (e.j->>'trace_correlation_id')::uuid = '00000000-0000-0000-0000-000000000000' THEN '00000000000000000000000000000001' ELSE replace((e.j->>'trace_correlation_id')::uuid::text, '-', '') END AS trace_id,
                       CASE WHEN right(replace(id.event_id::text, '-', ''), 16) = '0000000000000000' THEN '0000000000000001' ELSE right(replace(id.event_id::text, '-', ''), 16) END AS span_id,
                       id.event_id,
                       nextval(%L::regclass) AS msg_id
                FROM jsonb_array_elements($1) WITH ORDINALITY AS e(j, ord)
                -- a UUIDv7 whose counter bits are the row's position, so the events of one
                -- call (siblings, often) sort in the order they were given (OFFSET 0: once per row)
                CROSS JOIN LATERAL (SELECT encode(substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) || substring(int4send(28672 | mod(e.ord, 4096)::integer) FROM 3) || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid AS event_id OFFSET 0) AS id
                WHERE e.j->>'queue' = $2),
            sent AS (
                INSERT INTO pgmq.%I (msg_id, vt, message) OVERRIDING SYSTEM VALUE
                SELECT s.msg_id, clock_timestamp() + make_interval(secs => s.delay_ms / 1000.0),
                       -- ids pass through as the caller's JSON strings (lowercase, hyphenated:
                       -- PostgreSQL's and serde's form alike)
                       jsonb_build_object(
                           'step_id', s.j->'step_id', 'execution_id', s.j->'execution_id',
                           'step', s.j->'step', 'handler', s.j->'handler',
                           'attempt', s.attempt,
                           'input', coalesce(s.j->'input', 'null'::jsonb),
                           'meta', jsonb_build_object(
                               'correlation_id', s.j->'correlation_id',
                               'parent_event_id', s.event_id,
                               'parent_execution_id', coalesce(s.j->'parent_execution_id', 'null'::jsonb),
                               'root_execution_id', s.j->'root_execution_id',
                               -- lineq.traceparent, inlined
                               'traceparent', '00-' || s.trace_id || '-' || s.span_id || '-01',
                               'tracestate', '')
                               || CASE WHEN s.attempt > 1
                                       THEN jsonb_build_object('attempt', s.attempt)
                                       ELSE '{}'::jsonb END
                               || CASE WHEN s.j->>'retry_reason' IS NOT NULL
                                       THEN jsonb_build_object('retry_reason', s.j->>'retry_reason')
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
                SELECT s.event_id, (s.j->>'parent_event_id')::uuid, (s.j->>'execution_id')::uuid,
                       s.step_id, (s.j->>'parent_execution_id')::uuid,
                       (s.j->>'root_execution_id')::uuid, (s.j->>'correlation_id')::uuid,
                       'step_enqueued', $3, NULL, s.attempt, s.trace_id, s.span_id,
                       jsonb_build_object('step', s.j->'step', 'handler', s.j->'handler',
                                          'queue', $2, 'msg_id', s.msg_id,
                                          'delay_ms', s.delay_ms,
                                          'retry_reason', s.j->'retry_reason'),
                       -- increasing in array order and after the event that made the step
                       -- ready, so time order follows causality: after $4 when the caller
                       -- knows when its events were stamped, else after the parent as stored
                       CASE WHEN $4 IS NOT NULL
                            THEN greatest(clock_timestamp(), $4)
                                 + make_interval(secs => s.ord * 0.000001)
                            ELSE greatest(clock_timestamp() + make_interval(secs => s.ord * 0.000001),
                                          (SELECT p.created_at + interval '1 microsecond'
                                           FROM lineq.events p
                                           WHERE p.event_id = (s.j->>'parent_event_id')::uuid))
                       END
                FROM s
                ORDER BY s.ord),
            marked AS (
                UPDATE lineq.steps st
                SET status = 'enqueued', msg_id = s.msg_id, attempts = s.attempt,
                    input = coalesce(s.j->'input', 'null'::jsonb), updated_at = clock_timestamp()
                FROM s
                WHERE $5 AND st.step_id = s.step_id)
            SELECT s.step_id, s.msg_id, s.event_id FROM s ORDER BY s.ord
            $q$, pg_get_serial_sequence(format('pgmq.%I', 'q_' || v_queue), 'msg_id'), 'q_' || v_queue)
        USING p_steps, v_queue, p_node_name, p_not_before, p_mark_steps;
    END LOOP;
END
$fn$;

-- Creates executions from requests, in the caller's transaction; the one code path behind
-- lineq.submit, lineq.submit_many and the orchestrator's child executions.
--
-- p_requests: a JSON array of request objects (see lineq.submit_many). With p_internal (the
-- orchestrator creating children a step asked for), a request may also carry execution_id,
-- parent_event_id, parent_step, parent_step_id and parent_waits, and its parent may be anywhere
-- in its life (the orchestrator holds it locked and checked it). Rows come back in request
-- order; a request whose idempotency key is taken gets the execution that holds it
-- (created = false); a child whose execution_id exists already is left out.
CREATE FUNCTION lineq._create_executions(p_requests jsonb, p_node_name text, p_internal boolean)
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
    v_sent jsonb;
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
    --    first bad request is raised.
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

        -- 6. Send the first steps (lineq._enqueue_steps: step_enqueued, message, wake-up).
        SELECT jsonb_object_agg(e.step_id::text, e.msg_id)
        INTO v_sent
        FROM lineq._enqueue_steps(
            (SELECT jsonb_agg(jsonb_build_object(
                 'execution_id', s.execution_id, 'parent_execution_id', s.parent_execution_id,
                 'root_execution_id', s.root_execution_id, 'correlation_id', s.correlation_id,
                 'trace_correlation_id', s.trace_correlation_id, 'step_id', st.step_id,
                 'step', st.name, 'handler', st.handler, 'queue', st.queue, 'attempt', 1,
                 'input', st.input, 'timeout_ms', st.timeout_ms,
                 'parent_event_id', s.initialized_event_id,
                 'context', jsonb_build_object('workflow', s.workflow_name)
                     || CASE WHEN s.tags <> '{}' THEN jsonb_build_object('tags', s.tags) ELSE '{}' END
                     || CASE WHEN s.metadata <> '{}' THEN jsonb_build_object('metadata', s.metadata) ELSE '{}' END
                     || CASE WHEN s.parent_step IS NOT NULL
                             THEN jsonb_build_object('parent_step', s.parent_step) ELSE '{}' END)
                 ORDER BY st.ord, st.position)
             FROM unnest(v_steps) AS st JOIN unnest(v_specs) AS s ON s.execution_id = st.execution_id
             WHERE st.input IS NOT NULL),
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
               (v_sent->>(st.step_id::text))::bigint, st.input
        FROM unnest(v_steps) AS st;
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

-- Submits many executions in the caller's transaction (docs/sql-api.md).
CREATE FUNCTION lineq.submit_many(p_requests jsonb, p_node_name text DEFAULT NULL)
RETURNS TABLE (
    execution_id uuid, workflow_name text, workflow_version integer, namespace text,
    status text, input jsonb, output jsonb, error jsonb, correlation_id uuid,
    parent_correlation_id uuid, parent_execution_id uuid, root_execution_id uuid,
    parent_event_id uuid, parent_step text, tags jsonb, metadata jsonb, idempotency_key text,
    priority integer, version bigint, created_at timestamptz, updated_at timestamptz,
    finished_at timestamptz, kind text, parent_step_id uuid, parent_waits boolean,
    created boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $$
    SELECT * FROM lineq._create_executions(p_requests, p_node_name, false)
$$;

-- Submits one execution in the caller's transaction (docs/sql-api.md).
CREATE FUNCTION lineq.submit(
    p_target text,
    p_input jsonb DEFAULT 'null',
    p_namespace text DEFAULT 'default',
    p_correlation_id uuid DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_tags jsonb DEFAULT '{}',
    p_metadata jsonb DEFAULT '{}',
    p_parent_execution_id uuid DEFAULT NULL,
    p_timeout_ms bigint DEFAULT NULL,
    p_priority integer DEFAULT 0,
    p_node_name text DEFAULT NULL)
RETURNS TABLE (
    execution_id uuid, workflow_name text, workflow_version integer, namespace text,
    status text, input jsonb, output jsonb, error jsonb, correlation_id uuid,
    parent_correlation_id uuid, parent_execution_id uuid, root_execution_id uuid,
    parent_event_id uuid, parent_step text, tags jsonb, metadata jsonb, idempotency_key text,
    priority integer, version bigint, created_at timestamptz, updated_at timestamptz,
    finished_at timestamptz, kind text, parent_step_id uuid, parent_waits boolean,
    created boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $$
    SELECT * FROM lineq._create_executions(
        jsonb_build_array(jsonb_build_object(
            'target', p_target, 'input', coalesce(p_input, 'null'::jsonb),
            'namespace', p_namespace, 'correlation_id', p_correlation_id,
            'idempotency_key', p_idempotency_key, 'tags', p_tags, 'metadata', p_metadata,
            'parent_execution_id', p_parent_execution_id, 'timeout_ms', p_timeout_ms,
            'priority', p_priority)),
        p_node_name, false)
$$;

REVOKE ALL ON FUNCTION lineq._json_size(jsonb, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq._enqueue_steps(jsonb, text, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq._create_executions(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq.submit_many(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq.submit(text, jsonb, text, uuid, text, jsonb, jsonb, uuid, bigint, integer, text) FROM PUBLIC;

COMMENT ON FUNCTION lineq.submit_many(jsonb, text) IS
    'Submits a JSON array of requests in the caller''s transaction; one row per request, in order (docs/sql-api.md).';
COMMENT ON FUNCTION lineq.submit(text, jsonb, text, uuid, text, jsonb, jsonb, uuid, bigint, integer, text) IS
    'Submits one execution in the caller''s transaction (docs/sql-api.md).';
COMMENT ON FUNCTION lineq._enqueue_steps(jsonb, text, timestamptz, boolean) IS
    'Internal: sends step messages with their step_enqueued events and wake-ups.';
COMMENT ON FUNCTION lineq._create_executions(jsonb, text, boolean) IS
    'Internal: the code path behind lineq.submit_many and the orchestrator''s child executions.';

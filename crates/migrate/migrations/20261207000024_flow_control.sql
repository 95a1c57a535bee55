-- Flow control (docs/flow-control.md): delayed starts, concurrency and rate limits by key with
-- fair release, and priorities.
--
-- * A request may name `run_at` or `delay_ms`: its first steps are sent with that delay, and a
--   delayed message wakes the queue's workers when it becomes visible (the wake-up's payload
--   names the time; shared/src/wakeup.rs).
-- * A request or a workflow step may name `concurrency: {key, limit}` and `rate_limit: {key,
--   limit, per}`; the key is literal or a path into the execution's tags, metadata or input,
--   resolved at submit. A step with a key is sent only when its key has room: otherwise it is
--   `throttled`, with a `step_throttled` event, and waits in lineq.flow_waiting until a slot
--   frees (lineq.flow_pump, or the next send on its key).
-- * A priority above 0 gives a step's message an id below the plain ones, so claims (which
--   read in id order) take it first.
--
-- Plain requests (no delay, no key, priority 0) go the way they went before: one more test of
-- an array in lineq._enqueue_step_rows, no other statement.

-- Steps: the new state, their flow key and their priority.
ALTER TABLE lineq.steps DROP CONSTRAINT steps_status_check;
ALTER TABLE lineq.steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('pending', 'enqueued', 'throttled', 'waiting', 'completed', 'failed', 'cancelled'))
    NOT VALID;
ALTER TABLE lineq.steps VALIDATE CONSTRAINT steps_status_check;
ALTER TABLE lineq.steps
    -- {"key": resolved key, "limit": N, "rate": N, "per_ms": 1000|60000}; NULL for most steps
    ADD COLUMN flow jsonb,
    ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- One row per flow key: its latest limits (the last send that named the key sets them), its
-- current rate window, and its turn in the round-robin between keys. Sends on a key lock its
-- row, so the count of its holders and the window are decided by one transaction at a time.
CREATE TABLE lineq.flow_keys (
    key          text PRIMARY KEY,
    max_running  integer CHECK (max_running >= 1),
    rate         integer CHECK (rate >= 1),
    per_ms       integer CHECK (per_ms IN (1000, 60000)),
    window_start timestamptz,
    window_sent  integer NOT NULL DEFAULT 0,
    served       bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE SEQUENCE lineq.flow_turn;

-- A step that holds a slot of its key's concurrency limit: from its send to its end.
CREATE TABLE lineq.flow_holders (
    step_id uuid PRIMARY KEY,
    key     text NOT NULL,
    since   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX flow_holders_key_idx ON lineq.flow_holders (key);

-- A throttled step: what to send when its key has room (the lineq._step_send, as JSON, whose
-- parent event is its step_throttled), in line by priority then arrival.
CREATE TABLE lineq.flow_waiting (
    step_id      uuid PRIMARY KEY,
    key          text NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    priority     integer NOT NULL DEFAULT 0,
    reason       text NOT NULL CHECK (reason IN ('concurrency_limit', 'rate_limited', 'delayed')),
    not_before   timestamptz,
    since        timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_id uuid NOT NULL,
    send         jsonb NOT NULL
);
CREATE INDEX flow_waiting_line_idx ON lineq.flow_waiting (key, priority DESC, seq);
CREATE INDEX flow_waiting_due_idx ON lineq.flow_waiting (not_before) WHERE not_before IS NOT NULL;
CREATE INDEX flow_waiting_execution_idx ON lineq.flow_waiting (execution_id);

-- What a step send carries beyond the plain fields; a first step's resolved flow, priority
-- and delay.
ALTER TYPE lineq._step_send ADD ATTRIBUTE priority integer, ADD ATTRIBUTE flow jsonb;
ALTER TYPE lineq._new_step ADD ATTRIBUTE flow jsonb, ADD ATTRIBUTE priority integer,
    ADD ATTRIBUTE delay_ms bigint;

-- An RFC 3339 timestamp (a date, 'T', a time and 'Z' or an offset), or NULL.
CREATE FUNCTION lineq._rfc3339(p_text text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_text IS NULL OR p_text !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$' THEN
        RETURN NULL;
    END IF;
    RETURN p_text::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- A JSON whole number that fits an integer, or NULL.
CREATE FUNCTION lineq._int_or_null(p jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN jsonb_typeof(p) = 'number' AND (p #>> '{}') ~ '^-?[0-9]{1,9}$'
                THEN (p #>> '{}')::integer END
$$;

-- The delay of a (checked) request's first steps in milliseconds: delay_ms, or the time to
-- run_at (0 for a run_at in the past).
CREATE FUNCTION lineq._request_delay_ms(p_request jsonb) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN jsonb_typeof(p_request -> 'delay_ms') = 'number' THEN (p_request ->> 'delay_ms')::bigint
        WHEN jsonb_typeof(p_request -> 'run_at') = 'string' THEN
            greatest(0, ceil(extract(epoch FROM lineq._rfc3339(p_request ->> 'run_at') - clock_timestamp()) * 1000))::bigint
        ELSE 0 END
$$;

-- What is wrong with a `concurrency` ({key, limit}) or, with p_rate, `rate_limit` ({key,
-- limit, per: second|minute}) object: ARRAY[field, reason], or NULL when nothing is (or it is
-- absent).
CREATE FUNCTION lineq._flow_spec_problem(p_field text, p_spec jsonb, p_rate boolean) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_spec IS NULL OR p_spec = 'null'::jsonb THEN NULL
        WHEN jsonb_typeof(p_spec) <> 'object' THEN
            ARRAY[p_field, format('it must be an object {"key": KEY, "limit": N%s} (got %s)',
                                  CASE WHEN p_rate THEN ', "per": "second" or "minute"' ELSE '' END,
                                  jsonb_typeof(p_spec))]
        WHEN (p_spec - CASE WHEN p_rate THEN ARRAY['key', 'limit', 'per'] ELSE ARRAY['key', 'limit'] END) <> '{}'::jsonb THEN
            ARRAY[p_field, format('unknown field %s; it has key, limit%s',
                                  to_jsonb((SELECT k FROM jsonb_object_keys(p_spec) k
                                            WHERE k NOT IN ('key', 'limit', 'per') OR NOT p_rate
                                              AND k = 'per' ORDER BY k LIMIT 1))::text,
                                  CASE WHEN p_rate THEN ' and per' ELSE '' END)]
        WHEN jsonb_typeof(p_spec -> 'key') IS DISTINCT FROM 'string'
             OR char_length(p_spec ->> 'key') NOT BETWEEN 1 AND 200 THEN
            ARRAY[p_field || '.key', format('it is required: 1 to 200 characters, a literal key or a path tags.NAME, metadata.PATH or input.PATH (got %s)',
                                            coalesce((p_spec -> 'key')::text, 'nothing'))]
        WHEN p_spec ->> 'key' ~ '^(tags|metadata|input)\.?$' OR p_spec ->> 'key' ~ '^(tags|metadata|input)\..*(\.\.|\.$)' THEN
            ARRAY[p_field || '.key', format('%s is not a path: tags.NAME, metadata.NAME[.NAME...] or input.NAME[.NAME...]',
                                            (p_spec -> 'key')::text)]
        WHEN jsonb_typeof(p_spec -> 'limit') IS DISTINCT FROM 'number'
             OR (p_spec ->> 'limit') !~ '^-?[0-9]{1,9}$' THEN
            ARRAY[p_field || '.limit', format('it must be a whole number from 1 to %s (got %s)',
                                              CASE WHEN p_rate THEN 1000000 ELSE 100000 END,
                                              coalesce((p_spec -> 'limit')::text, 'nothing'))]
        WHEN (p_spec ->> 'limit')::integer NOT BETWEEN 1 AND CASE WHEN p_rate THEN 1000000 ELSE 100000 END THEN
            ARRAY[p_field || '.limit', format('it must be a whole number from 1 to %s (got %s)',
                                              CASE WHEN p_rate THEN 1000000 ELSE 100000 END,
                                              p_spec ->> 'limit')]
        WHEN p_rate AND coalesce(p_spec -> 'per', '"second"'::jsonb) NOT IN ('"second"'::jsonb, '"minute"'::jsonb) THEN
            ARRAY[p_field || '.per', format('it must be "second" or "minute" (got %s)', (p_spec -> 'per')::text)]
    END
$$;

-- A flow key as the execution resolves it: a literal key as it is; tags.NAME, metadata.PATH
-- and input.PATH as the path and the string, number or boolean it names ("tags.customer=acme").
-- NULL when the path names nothing of those.
CREATE FUNCTION lineq._flow_key(p_key text, p_tags jsonb, p_metadata jsonb, p_input jsonb) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_key !~ '^(tags|metadata|input)\.' THEN p_key
                WHEN jsonb_typeof(v.v) IN ('string', 'number', 'boolean') THEN p_key || '=' || (v.v #>> '{}')
           END
    FROM (SELECT CASE split_part(p_key, '.', 1)
                     WHEN 'tags' THEN p_tags -> substr(p_key, 6)
                     WHEN 'metadata' THEN p_metadata #> string_to_array(substr(p_key, 10), '.')
                     WHEN 'input' THEN p_input #> string_to_array(substr(p_key, 7), '.')
                 END AS v) v
$$;

-- A step's flow (lineq.steps.flow): the step's own concurrency and rate_limit, else the
-- request's, with keys resolved for this execution; NULL when neither names any. Raises
-- invalid (naming the field) for a spec that is wrong or a path that names nothing.
CREATE FUNCTION lineq._step_flow(p_request jsonb, p_step jsonb, p_tags jsonb, p_metadata jsonb,
                                 p_input jsonb, p_where text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_step_c boolean := coalesce(p_step -> 'concurrency', 'null'::jsonb) <> 'null'::jsonb;
    v_step_r boolean := coalesce(p_step -> 'rate_limit', 'null'::jsonb) <> 'null'::jsonb;
    c jsonb := CASE WHEN v_step_c THEN p_step -> 'concurrency'
                    ELSE nullif(p_request -> 'concurrency', 'null'::jsonb) END;
    r jsonb := CASE WHEN v_step_r THEN p_step -> 'rate_limit'
                    ELSE nullif(p_request -> 'rate_limit', 'null'::jsonb) END;
    v_cf text := CASE WHEN v_step_c THEN format('steps.%s.concurrency', p_step ->> 'name') ELSE 'concurrency' END;
    v_rf text := CASE WHEN v_step_r THEN format('steps.%s.rate_limit', p_step ->> 'name') ELSE 'rate_limit' END;
    v_bad text[];
    ck text;
    rk text;
BEGIN
    IF c IS NULL AND r IS NULL THEN
        RETURN NULL;
    END IF;
    v_bad := coalesce(lineq._flow_spec_problem(v_cf, c, false), lineq._flow_spec_problem(v_rf, r, true));
    IF v_bad IS NOT NULL THEN
        PERFORM lineq.invalid(v_bad[1], p_where || v_bad[2]);
    END IF;
    IF c IS NOT NULL THEN
        ck := lineq._flow_key(c ->> 'key', p_tags, p_metadata, p_input);
        IF ck IS NULL THEN
            PERFORM lineq.invalid(v_cf || '.key', format(
                '%s%s names nothing in this execution: a key path must name a string, number or boolean that the execution has',
                p_where, to_jsonb(c ->> 'key')::text));
        END IF;
    END IF;
    IF r IS NOT NULL THEN
        rk := lineq._flow_key(r ->> 'key', p_tags, p_metadata, p_input);
        IF rk IS NULL THEN
            PERFORM lineq.invalid(v_rf || '.key', format(
                '%s%s names nothing in this execution: a key path must name a string, number or boolean that the execution has',
                p_where, to_jsonb(r ->> 'key')::text));
        END IF;
    END IF;
    IF ck IS NOT NULL AND rk IS NOT NULL AND ck <> rk THEN
        PERFORM lineq.invalid(v_rf || '.key', format(
            '%sa step has one flow key: concurrency names %s and rate_limit names %s',
            p_where, to_jsonb(ck)::text, to_jsonb(rk)::text));
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'key', coalesce(ck, rk),
        'limit', (c ->> 'limit')::integer,
        'rate', (r ->> 'limit')::integer,
        'per_ms', CASE WHEN r IS NULL THEN NULL WHEN r ->> 'per' = 'minute' THEN 60000 ELSE 1000 END));
END
$$;
REVOKE ALL ON FUNCTION lineq._step_flow(jsonb, jsonb, jsonb, jsonb, jsonb, text) FROM PUBLIC;

-- lineq._make_send_function (migration 000020), now reading each step's priority.
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

-- The send functions of the step queues that exist, with priorities.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT queue_name FROM lineq.queues() WHERE queue_name LIKE 'lineq\_steps\_%' LOOP
        PERFORM lineq._make_send_function(r.queue_name);
    END LOOP;
END
$$;

-- Sends step messages (migration 000020), now also for steps with a flow key, a priority or a
-- delay. Steps without a flow key are sent at once as before; one with a delay also wakes its
-- queue's consumers when it becomes visible: a notification whose payload is
-- '<queue>@<epoch milliseconds>' (sent with the plain '<queue>' one, on commit). Steps with a
-- flow key go through lineq._flow_enqueue, which sends what has room and returns the others
-- with a NULL msg_id and their step_throttled event.
CREATE OR REPLACE FUNCTION lineq._enqueue_step_rows(p_steps lineq._step_send[], p_node_name text,
                                                    p_not_before timestamptz DEFAULT NULL,
                                                    p_mark_steps boolean DEFAULT false)
RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_queue text;
    v_keyed boolean;
    v_delayed boolean;
    v_sent text;
    v_any_keyed boolean := false;
BEGIN
    -- One row per queue for plain steps (the query the plain path always made, with two more
    -- sort keys): another for its delayed ones, one for its steps with a flow key.
    FOR v_queue, v_keyed, v_delayed IN
        SELECT DISTINCT s.queue, s.flow IS NOT NULL, s.delay_ms > 0
        FROM unnest(p_steps) AS s ORDER BY 1, 2, 3
    LOOP
        IF v_keyed THEN
            v_any_keyed := true;
            CONTINUE;
        END IF;
        -- The queue's steps are sent at its first row (the rest only add wake-ups).
        IF v_sent IS DISTINCT FROM v_queue THEN
            v_sent := v_queue;
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
            -- (the steps of this queue without a flow key)
            RETURN QUERY EXECUTE format('SELECT * FROM lineq.%I($1, $2, $3, $4)', '_send_' || v_queue)
            USING p_steps, p_node_name, p_not_before, p_mark_steps;
        END IF;
        IF v_delayed THEN
            -- After the send, so each named time is at or after its messages' visibility.
            PERFORM pg_notify(v_queue, v_queue || '@' ||
                              (ceil(extract(epoch FROM clock_timestamp()) * 1000) + d.delay_ms)::bigint)
            FROM (SELECT DISTINCT s.delay_ms FROM unnest(p_steps) AS s
                  WHERE s.queue = v_queue AND s.flow IS NULL AND s.delay_ms > 0) AS d;
        END IF;
    END LOOP;
    IF v_any_keyed THEN
        -- Held back or sent by their keys (which call back here without the keys).
        RETURN QUERY SELECT * FROM lineq._flow_enqueue(p_steps, p_node_name, p_not_before,
                                                       p_mark_steps);
    END IF;
END
$fn$;

-- The steps with a flow key of a send (lineq._enqueue_step_rows sends the others): each joins its key's
-- line in lineq.flow_waiting (a retry gives its slot back first); then lineq._flow_admit sends,
-- key by key, what the limits allow; what is still waiting gets its step_throttled event (the
-- parent of its step_enqueued when it is sent) and, with p_mark_steps, its row `throttled`.
-- A step whose delay has not passed waits with reason `delayed` (holding no slot).
CREATE FUNCTION lineq._flow_enqueue(p_steps lineq._step_send[], p_node_name text,
                                    p_not_before timestamptz, p_mark_steps boolean)
RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_ids uuid[];
    v_keys text[];
    v_fast text[];
BEGIN
    v_ids := ARRAY(SELECT (p_steps[i]).step_id FROM generate_subscripts(p_steps, 1) AS i
                   WHERE (p_steps[i]).flow IS NOT NULL ORDER BY i);

    -- The keys, made on first use with the limits this call names, and locked in key order.
    WITH named AS (
        SELECT DISTINCT ON ((p_steps[i]).flow ->> 'key') (p_steps[i]).flow AS f
        FROM generate_subscripts(p_steps, 1) AS i
        WHERE (p_steps[i]).flow IS NOT NULL
        ORDER BY (p_steps[i]).flow ->> 'key', i DESC)
    INSERT INTO lineq.flow_keys AS k (key, max_running, rate, per_ms)
    SELECT n.f ->> 'key', (n.f ->> 'limit')::integer, (n.f ->> 'rate')::integer,
           (n.f ->> 'per_ms')::integer
    FROM named n ORDER BY 1
    ON CONFLICT (key) DO UPDATE
    SET max_running = excluded.max_running, rate = excluded.rate, per_ms = excluded.per_ms,
        window_start = CASE WHEN k.per_ms IS DISTINCT FROM excluded.per_ms THEN NULL ELSE k.window_start END,
        updated_at = clock_timestamp()
    WHERE (k.max_running, k.rate, k.per_ms) IS DISTINCT FROM
          (excluded.max_running, excluded.rate, excluded.per_ms);
    v_keys := ARRAY(SELECT DISTINCT (p_steps[i]).flow ->> 'key' FROM generate_subscripts(p_steps, 1) AS i
                    WHERE (p_steps[i]).flow IS NOT NULL ORDER BY 1);
    PERFORM 1 FROM lineq.flow_keys k WHERE k.key = ANY (v_keys) ORDER BY k.key FOR UPDATE;

    -- A retry's attempt has ended: it gives its slot back and queues again.
    DELETE FROM lineq.flow_holders h WHERE h.step_id = ANY (v_ids);

    -- The common case: a key with nobody in line and room for all of this call's steps sends
    -- them at once, taking their slots, without writing them into its line.
    UPDATE lineq.flow_keys k
    SET window_start = to_timestamp(floor(extract(epoch FROM clock_timestamp()) * 1000 / k.per_ms) * k.per_ms / 1000.0),
        window_sent = 0
    WHERE k.key = ANY (v_keys) AND k.rate IS NOT NULL
      AND (k.window_start IS NULL
           OR k.window_start + make_interval(secs => k.per_ms / 1000.0) <= clock_timestamp());
    v_fast := ARRAY(
        SELECT n.key
        FROM (SELECT s.flow ->> 'key' AS key, count(*) AS n,
                     bool_or(coalesce(s.delay_ms, 0) > 0) AS delayed
              FROM unnest(p_steps) AS s WHERE s.flow IS NOT NULL GROUP BY 1) AS n
        JOIN lineq.flow_keys k ON k.key = n.key
        WHERE NOT n.delayed
          AND NOT EXISTS (SELECT 1 FROM lineq.flow_waiting w WHERE w.key = n.key)
          AND (k.max_running IS NULL
               OR k.max_running - (SELECT count(*) FROM lineq.flow_holders h WHERE h.key = n.key) >= n.n)
          AND (k.rate IS NULL OR k.rate - k.window_sent >= n.n)
        ORDER BY 1);
    IF cardinality(v_fast) > 0 THEN
        INSERT INTO lineq.flow_holders (step_id, key)
        SELECT s.step_id, s.flow ->> 'key' FROM unnest(p_steps) AS s
        WHERE s.flow ->> 'key' = ANY (v_fast) AND s.flow ? 'limit'
        ON CONFLICT (step_id) DO NOTHING;
        UPDATE lineq.flow_keys k SET window_sent = k.window_sent + n.n
        FROM (SELECT s.flow ->> 'key' AS key, count(*) AS n FROM unnest(p_steps) AS s
              WHERE s.flow ->> 'key' = ANY (v_fast) GROUP BY 1) AS n
        WHERE k.key = n.key AND k.rate IS NOT NULL;
        RETURN QUERY SELECT * FROM lineq._enqueue_step_rows(
            ARRAY(SELECT ROW(s.execution_id, s.parent_execution_id, s.root_execution_id,
                             s.correlation_id, s.trace_correlation_id, s.step_id, s.step,
                             s.handler, s.queue, s.attempt, s.input, s.timeout_ms,
                             s.parent_event_id, s.delay_ms, s.retry_reason, s.context,
                             s.priority, NULL)::lineq._step_send
                  FROM unnest(p_steps) WITH ORDINALITY AS s
                  WHERE s.flow ->> 'key' = ANY (v_fast) ORDER BY s.ordinality),
            p_node_name, p_not_before, p_mark_steps);
        v_ids := ARRAY(SELECT (p_steps[i]).step_id FROM generate_subscripts(p_steps, 1) AS i
                       WHERE (p_steps[i]).flow ->> 'key' <> ALL (v_fast) ORDER BY i);
        v_keys := ARRAY(SELECT k FROM unnest(v_keys) AS k WHERE k <> ALL (v_fast) ORDER BY 1);
        IF cardinality(v_ids) = 0 THEN
            RETURN;
        END IF;
    END IF;

    INSERT INTO lineq.flow_waiting (step_id, key, priority, reason, not_before, execution_id, send)
    SELECT s.step_id, s.flow ->> 'key', coalesce(s.priority, 0),
           CASE WHEN coalesce(s.delay_ms, 0) > 0 THEN 'delayed' ELSE 'concurrency_limit' END,
           CASE WHEN coalesce(s.delay_ms, 0) > 0
                THEN clock_timestamp() + make_interval(secs => s.delay_ms / 1000.0) END,
           s.execution_id,
           to_jsonb(s) - 'flow' - 'delay_ms'
    FROM unnest(p_steps) WITH ORDINALITY AS s
    WHERE s.step_id = ANY (v_ids)
    ORDER BY s.ordinality
    ON CONFLICT (step_id) DO NOTHING;

    -- Send what has room (new steps of a submission have no row yet: not marked).
    RETURN QUERY SELECT * FROM lineq._flow_admit(v_keys, p_node_name, p_not_before,
                                                 CASE WHEN p_mark_steps THEN '{}'::uuid[] ELSE v_ids END);

    -- What waits says why.
    RETURN QUERY
    WITH w AS MATERIALIZED (
        SELECT fw.step_id, fw.key, fw.not_before, fw.send, k.max_running, k.rate, k.per_ms,
               k.window_start, s.ord,
               CASE WHEN fw.not_before > clock_timestamp() THEN 'delayed'
                    WHEN k.rate IS NOT NULL AND k.window_sent >= k.rate
                         AND (k.max_running IS NULL
                              OR (SELECT count(*) FROM lineq.flow_holders h WHERE h.key = fw.key) < k.max_running)
                         THEN 'rate_limited'
                    ELSE 'concurrency_limit' END AS reason,
               lineq.uuid_v7() AS event_id
        FROM unnest(v_ids) WITH ORDINALITY AS s(step_id, ord)
        JOIN lineq.flow_waiting fw ON fw.step_id = s.step_id
        JOIN lineq.flow_keys k ON k.key = fw.key),
    upd AS (
        UPDATE lineq.flow_waiting fw
        SET reason = w.reason,
            send = jsonb_set(fw.send, '{parent_event_id}', to_jsonb(w.event_id))
        FROM w WHERE fw.step_id = w.step_id),
    ev AS (
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
            parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
            worker_id, attempt, trace_id, span_id, payload, created_at)
        SELECT w.event_id, (w.send ->> 'parent_event_id')::uuid, (w.send ->> 'execution_id')::uuid,
               w.step_id, (w.send ->> 'parent_execution_id')::uuid,
               (w.send ->> 'root_execution_id')::uuid, (w.send ->> 'correlation_id')::uuid,
               'step_throttled', p_node_name, NULL, (w.send ->> 'attempt')::integer,
               lineq.trace_id((w.send ->> 'trace_correlation_id')::uuid), lineq.span_id(w.event_id),
               jsonb_strip_nulls(jsonb_build_object(
                   'step', w.send ->> 'step', 'key', w.key, 'reason', w.reason,
                   'limit', w.max_running, 'rate', w.rate,
                   'per', CASE w.per_ms WHEN 1000 THEN 'second' WHEN 60000 THEN 'minute' END,
                   'until', CASE WHEN w.reason = 'delayed' THEN w.not_before
                                 WHEN w.reason = 'rate_limited'
                                 THEN w.window_start + make_interval(secs => w.per_ms / 1000.0) END)),
               CASE WHEN p_not_before IS NOT NULL
                    THEN greatest(clock_timestamp(), p_not_before) + make_interval(secs => w.ord * 0.000001)
                    ELSE greatest(clock_timestamp() + make_interval(secs => w.ord * 0.000001),
                                  (SELECT p.created_at + interval '1 microsecond' FROM lineq.events p
                                   WHERE p.event_id = (w.send ->> 'parent_event_id')::uuid))
               END
        FROM w ORDER BY w.ord),
    marked AS (
        UPDATE lineq.steps st
        SET status = 'throttled', msg_id = NULL, attempts = (w.send ->> 'attempt')::integer,
            input = coalesce(w.send -> 'input', 'null'::jsonb), updated_at = clock_timestamp()
        FROM w WHERE p_mark_steps AND st.step_id = w.step_id)
    SELECT w.step_id, NULL::bigint, w.event_id FROM w ORDER BY w.ord;
END
$fn$;
REVOKE ALL ON FUNCTION lineq._flow_enqueue(lineq._step_send[], text, timestamptz, boolean) FROM PUBLIC;

-- Sends the waiting steps of p_keys that their limits allow now: per key, in line (priority,
-- then arrival), up to the free slots of its concurrency limit and what its rate window has
-- left; the steps taken hold a slot until they end. Keys are served round-robin: the sends of
-- one call are ordered first by place in their key's line, then by how long ago each key was
-- served, so a key with a long line cannot crowd the queue ahead of a key with a short one.
-- Steps in p_unmarked (a submission's new steps, whose rows the caller writes) are sent
-- without touching step rows. The caller locks nothing: the keys are locked here, in order.
CREATE FUNCTION lineq._flow_admit(p_keys text[], p_node_name text, p_not_before timestamptz,
                                  p_unmarked uuid[])
RETURNS TABLE (step_id uuid, msg_id bigint, event_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_sends jsonb;
BEGIN
    PERFORM 1 FROM lineq.flow_keys k WHERE k.key = ANY (p_keys) ORDER BY k.key FOR UPDATE;
    -- A rate window that has passed starts again.
    UPDATE lineq.flow_keys k
    SET window_start = to_timestamp(floor(extract(epoch FROM clock_timestamp()) * 1000 / k.per_ms) * k.per_ms / 1000.0),
        window_sent = 0
    WHERE k.key = ANY (p_keys) AND k.rate IS NOT NULL
      AND (k.window_start IS NULL
           OR k.window_start + make_interval(secs => k.per_ms / 1000.0) <= clock_timestamp());

    WITH room AS (
        SELECT k.key, k.served, k.max_running,
               least(CASE WHEN k.max_running IS NULL THEN 2147483647
                          ELSE k.max_running - (SELECT count(*) FROM lineq.flow_holders h WHERE h.key = k.key) END,
                     CASE WHEN k.rate IS NULL THEN 2147483647 ELSE k.rate - k.window_sent END) AS n
        FROM lineq.flow_keys k
        WHERE k.key = ANY (p_keys)),
    picked AS (
        SELECT p.step_id, r.key, r.served, r.max_running, p.rn
        FROM room r
        CROSS JOIN LATERAL (
            SELECT x.step_id, row_number() OVER (ORDER BY x.priority DESC, x.seq) AS rn
            -- (a step whose cancel is in flight holds its row: skipped, not waited for, so
            -- that transaction may go on to lock this key without a deadlock)
            FROM (SELECT w.step_id, w.priority, w.seq FROM lineq.flow_waiting w
                  WHERE w.key = r.key AND (w.not_before IS NULL OR w.not_before <= clock_timestamp())
                  ORDER BY w.priority DESC, w.seq
                  LIMIT greatest(r.n, 0)
                  FOR UPDATE OF w SKIP LOCKED) x) p
        WHERE r.n > 0),
    gone AS (
        DELETE FROM lineq.flow_waiting w USING picked p
        WHERE w.step_id = p.step_id
        RETURNING w.step_id, w.send, p.key, p.served, p.max_running, p.rn),
    held AS (
        INSERT INTO lineq.flow_holders (step_id, key)
        SELECT g.step_id, g.key FROM gone g WHERE g.max_running IS NOT NULL
        ON CONFLICT (step_id) DO NOTHING),
    counted AS (
        UPDATE lineq.flow_keys k
        SET window_sent = k.window_sent + c.n, served = nextval('lineq.flow_turn')
        FROM (SELECT g.key, count(*) AS n FROM gone g GROUP BY g.key) c
        WHERE k.key = c.key)
    SELECT jsonb_agg(jsonb_build_object('send', g.send, 'unmarked', g.step_id = ANY (p_unmarked))
                     ORDER BY g.rn, g.served, g.key)
    INTO v_sends
    FROM gone g;

    IF v_sends IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM lineq._enqueue_step_rows(
        ARRAY(SELECT jsonb_populate_record(NULL::lineq._step_send, e.j -> 'send')
              FROM jsonb_array_elements(v_sends) WITH ORDINALITY AS e(j, ord)
              WHERE (e.j ->> 'unmarked')::boolean ORDER BY e.ord),
        p_node_name, p_not_before, false);
    RETURN QUERY SELECT * FROM lineq._enqueue_step_rows(
        ARRAY(SELECT jsonb_populate_record(NULL::lineq._step_send, e.j -> 'send')
              FROM jsonb_array_elements(v_sends) WITH ORDINALITY AS e(j, ord)
              WHERE NOT (e.j ->> 'unmarked')::boolean ORDER BY e.ord),
        p_node_name, p_not_before, true);
END
$fn$;
REVOKE ALL ON FUNCTION lineq._flow_admit(text[], text, timestamptz, uuid[]) FROM PUBLIC;

-- Gives freed slots, passed delays and new rate windows to the steps waiting for them: the
-- keys in p_keys that have waiting steps, or with NULL every such key, in key order
-- (lineq._flow_admit). Orchestrators call it with the keys of a batch that ended steps with a
-- flow key, after a cancel, and for every key on a timer (when the next delay or rate window
-- is due, at most their poll interval apart); it is safe to call any time, from any number of
-- processes. Returns how many steps it sent and when something waiting next becomes due (NULL
-- when nothing waits on time).
CREATE FUNCTION lineq.flow_pump(p_node_name text DEFAULT NULL, p_keys text[] DEFAULT NULL)
RETURNS TABLE (sent integer, next_due timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $fn$
DECLARE
    v_keys text[];
    v_sent integer;
    v_node text := coalesce(nullif(left(p_node_name, 255), ''),
                            nullif(current_setting('application_name', true), ''), 'sql');
BEGIN
    IF p_keys IS NOT NULL THEN
        v_keys := ARRAY(SELECT DISTINCT k FROM unnest(p_keys) AS k
                        WHERE EXISTS (SELECT 1 FROM lineq.flow_waiting w WHERE w.key = k)
                        ORDER BY 1);
        IF cardinality(v_keys) > 0 THEN
            SELECT count(*) INTO v_sent FROM lineq._flow_admit(v_keys, v_node, NULL, '{}'::uuid[]) a
            WHERE a.msg_id IS NOT NULL;
        END IF;
        RETURN QUERY SELECT coalesce(v_sent, 0), NULL::timestamptz;
        RETURN;
    END IF;
    -- The distinct keys of the waiting steps, one index probe each.
    WITH RECURSIVE k(key) AS (
        (SELECT w.key FROM lineq.flow_waiting w ORDER BY w.key LIMIT 1)
        UNION ALL
        SELECT (SELECT w.key FROM lineq.flow_waiting w WHERE w.key > k.key ORDER BY w.key LIMIT 1)
        FROM k WHERE k.key IS NOT NULL)
    SELECT array_agg(k.key ORDER BY k.key) INTO v_keys FROM k WHERE k.key IS NOT NULL;
    IF v_keys IS NULL THEN
        RETURN QUERY SELECT 0, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT count(*) INTO v_sent FROM lineq._flow_admit(v_keys, v_node, NULL, '{}'::uuid[]) a
    WHERE a.msg_id IS NOT NULL;
    RETURN QUERY
    SELECT v_sent, least(
        (SELECT min(w.not_before) FROM lineq.flow_waiting w WHERE w.not_before > clock_timestamp()),
        (SELECT min(k.window_start + make_interval(secs => k.per_ms / 1000.0))
         FROM lineq.flow_keys k
         WHERE k.key = ANY (v_keys) AND k.rate IS NOT NULL AND k.window_sent >= k.rate
           AND EXISTS (SELECT 1 FROM lineq.flow_waiting w WHERE w.key = k.key)));
END
$fn$;
REVOKE ALL ON FUNCTION lineq.flow_pump(text, text[]) FROM PUBLIC;
COMMENT ON FUNCTION lineq.flow_pump(text, text[]) IS
    'Sends the throttled steps whose keys have room now; returns how many, and when the next delay or rate window is due.';

-- A step with a flow key that leaves `enqueued` or `throttled` for good (it ended, waits for
-- its children, or was cancelled) frees its slot and leaves its key's line. (A retry stays
-- `enqueued` and is handled by lineq._flow_enqueue; a step sent again keeps its slot.) Only
-- row locks of the step itself: the key's next step is sent by the pump or the next send.
CREATE FUNCTION lineq._flow_step_left() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM lineq.flow_holders h WHERE h.step_id = NEW.step_id;
    DELETE FROM lineq.flow_waiting w WHERE w.step_id = NEW.step_id;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION lineq._flow_step_left() FROM PUBLIC;
CREATE TRIGGER steps_flow_left AFTER UPDATE OF status ON lineq.steps
FOR EACH ROW
WHEN (OLD.flow IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status
      AND NEW.status NOT IN ('enqueued', 'throttled'))
EXECUTE FUNCTION lineq._flow_step_left();

-- Steps waiting, by reason: throttled steps by theirs, and steps whose message waits for its
-- delay ('delayed': unread messages not yet visible). For `lineq_steps_waiting{reason}`.
CREATE FUNCTION lineq.steps_waiting()
RETURNS TABLE (reason text, steps bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_delayed bigint := 0;
    n bigint;
    q record;
BEGIN
    FOR q IN SELECT m.queue_name FROM pgmq.meta m
             WHERE m.queue_name LIKE 'lineq\_steps\_%' AND m.queue_name ~ '^[a-z][a-z0-9_]{0,46}$'
             ORDER BY 1 LOOP
        EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE vt > clock_timestamp() AND read_ct = 0',
                       'q_' || q.queue_name) INTO n;
        v_delayed := v_delayed + n;
    END LOOP;
    RETURN QUERY
    SELECT r.reason, coalesce(w.n, 0) + CASE WHEN r.reason = 'delayed' THEN v_delayed ELSE 0 END
    FROM (VALUES ('concurrency_limit'), ('rate_limited'), ('delayed')) AS r(reason)
    LEFT JOIN (SELECT fw.reason, count(*) AS n FROM lineq.flow_waiting fw GROUP BY fw.reason) w
           ON w.reason = r.reason
    ORDER BY r.reason;
END
$$;
REVOKE ALL ON FUNCTION lineq.steps_waiting() FROM PUBLIC;

-- lineq._create_executions (migration 000020) with run_at and delay_ms, concurrency and
-- rate_limit (a request's, or its workflow steps'), and step priorities.
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
    v_plain boolean;
    v_fields constant text[] := ARRAY['target', 'input', 'namespace', 'correlation_id',
        'idempotency_key', 'priority', 'timeout_ms', 'tags', 'metadata', 'parent_execution_id',
        'run_at', 'delay_ms', 'concurrency', 'rate_limit'];
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
    v_plain := NOT p_internal AND lineq._plain_requests(p_requests);
    IF NOT v_plain THEN
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
                -- delayed start
                WHEN q.req ? 'run_at' AND q.req ? 'delay_ms'
                     AND q.req->'run_at' <> 'null'::jsonb AND q.req->'delay_ms' <> 'null'::jsonb THEN
                    ARRAY['run_at', 'give run_at or delay_ms, not both']
                WHEN jsonb_typeof(coalesce(q.req->'run_at', 'null')) NOT IN ('string', 'null') THEN
                    ARRAY['run_at', format('it must be an RFC 3339 timestamp string such as "2026-12-24T18:00:00Z" (got %s)', q.req->'run_at')]
                WHEN q.req->>'run_at' IS NOT NULL AND lineq._rfc3339(q.req->>'run_at') IS NULL THEN
                    ARRAY['run_at', format('%s is not an RFC 3339 timestamp (date, "T", time, and "Z" or an offset such as +01:00)', q.req->'run_at')]
                WHEN q.req->>'run_at' IS NOT NULL
                     AND lineq._rfc3339(q.req->>'run_at') > clock_timestamp() + interval '365 days' THEN
                    ARRAY['run_at', format('%s is more than 365 days from now; the limit is 365 days', q.req->'run_at')]
                WHEN jsonb_typeof(coalesce(q.req->'delay_ms', 'null')) NOT IN ('number', 'null')
                     OR (q.req->>'delay_ms') !~ '^-?[0-9]{1,18}$' THEN
                    ARRAY['delay_ms', format('it must be a whole number of milliseconds (got %s)', q.req->'delay_ms')]
                WHEN (q.req->>'delay_ms')::bigint < 0 THEN
                    ARRAY['delay_ms', format('it must be at least 0 (got %s)', q.req->>'delay_ms')]
                WHEN (q.req->>'delay_ms')::bigint > 31536000000 THEN
                    ARRAY['delay_ms', format('it is %s; the limit is 31536000000 (365 days)', q.req->>'delay_ms')]
                -- flow control
                WHEN lineq._flow_spec_problem('concurrency', q.req->'concurrency', false) IS NOT NULL THEN
                    lineq._flow_spec_problem('concurrency', q.req->'concurrency', false)
                WHEN lineq._flow_spec_problem('rate_limit', q.req->'rate_limit', true) IS NOT NULL THEN
                    lineq._flow_spec_problem('rate_limit', q.req->'rate_limit', true)
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
             -- a delayed execution names its time (the plain path concatenates nothing)
             CASE WHEN NOT v_plain AND lineq._request_delay_ms(p_requests -> (s.ord - 1)) > 0
                  THEN jsonb_build_object('workflow', s.workflow_name, 'version', s.workflow_version,
                                          'kind', s.kind, 'parent_step', s.parent_step,
                                          'parent_waits', s.parent_waits,
                                          'run_at', v_t0 + make_interval(
                              secs => lineq._request_delay_ms(p_requests -> (s.ord - 1)) / 1000.0))
                  ELSE jsonb_build_object('workflow', s.workflow_name, 'version', s.workflow_version,
                                          'kind', s.kind, 'parent_step', s.parent_step,
                                          'parent_waits', s.parent_waits) END),
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
                   END,
                   -- flow control: only a request or step that names a limit pays for it
                   CASE WHEN v_plain THEN NULL
                        ELSE lineq._step_flow(p_requests -> (s.ord - 1), st.j, s.tags, s.metadata,
                                              s.input, CASE WHEN v_total > 1
                                                            THEN format('request %s: ', s.ord - 1)
                                                            ELSE '' END) END,
                   CASE WHEN v_plain THEN 0
                        ELSE coalesce(lineq._int_or_null(st.j->'priority'), s.priority) END,
                   CASE WHEN v_plain THEN 0
                        ELSE lineq._request_delay_ms(p_requests -> (s.ord - 1)) END
                   )::lineq._new_step ORDER BY s.ord, st.i)
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
        SELECT array_agg(e.step_id) FILTER (WHERE e.msg_id IS NOT NULL),
               array_agg(e.msg_id) FILTER (WHERE e.msg_id IS NOT NULL)
        INTO v_sent_steps, v_sent_msgs
        FROM lineq._enqueue_step_rows(
            ARRAY(SELECT ROW(s.execution_id, s.parent_execution_id, s.root_execution_id,
                             s.correlation_id, s.trace_correlation_id, st.step_id, st.name,
                             st.handler, st.queue, 1, st.input, st.timeout_ms,
                             s.initialized_event_id, nullif(st.delay_ms, 0), NULL,
                             jsonb_build_object('workflow', s.workflow_name)
                             || CASE WHEN s.tags <> '{}' THEN jsonb_build_object('tags', s.tags) ELSE '{}' END
                             || CASE WHEN s.metadata <> '{}' THEN jsonb_build_object('metadata', s.metadata) ELSE '{}' END
                             || CASE WHEN s.parent_step IS NOT NULL
                                     THEN jsonb_build_object('parent_step', s.parent_step) ELSE '{}' END,
                             st.priority, st.flow
                         )::lineq._step_send
                  FROM unnest(v_steps) AS st JOIN unnest(v_specs) AS s ON s.execution_id = st.execution_id
                  WHERE st.input IS NOT NULL
                  ORDER BY st.ord, st.position),
            v_node, v_t0 + make_interval(secs => (2 * v_total + 2) * 0.000001)) AS e;

        -- 7. The steps, written once: the first ones already enqueued with their message.
        INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
            depends_on, max_attempts, timeout_ms, retry, on_failure, params, position, attempts,
            msg_id, input, flow, priority)
        SELECT st.step_id, st.execution_id, st.name, st.handler, st.namespace, st.queue,
               -- a first step held back by its flow key has no message yet
               CASE WHEN st.input IS NULL THEN 'pending'
                    WHEN x.msg_id IS NULL THEN 'throttled' ELSE 'enqueued' END,
               st.depends_on, st.max_attempts, st.timeout_ms, st.retry, st.on_failure,
               st.params, st.position,
               CASE WHEN st.input IS NULL THEN 0 ELSE 1 END,
               x.msg_id, st.input, st.flow, st.priority
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

-- lineq._cancel_tree (migration 000014): a throttled step is cancelled like a queued one (the
-- trigger above takes it out of its key's line).
CREATE OR REPLACE FUNCTION lineq._cancel_tree(
    p_execution_id uuid,
    p_cause uuid,
    p_reason text,
    p_actor text,
    p_include_self boolean,
    p_write_events boolean
) RETURNS TABLE (executions integer, steps integer, messages_deleted integer, cancelled uuid[],
                 events jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reason text := coalesce(p_reason, '');
    v_node text := coalesce(nullif(left(p_actor, 255), ''), session_user::text);
    v_tree uuid[];
    v_ids uuid[];
    v_cev jsonb := '{}'::jsonb;   -- execution id -> its cancellation event
    v_events jsonb := '[]'::jsonb;
    v_by_queue jsonb := '{}'::jsonb;  -- queue -> msg ids
    v_exec integer := 0;
    v_steps integer := 0;
    v_deleted integer := 0;
    v_cancelled uuid[] := '{}';
    v_parent_event uuid;
    v_event uuid;
    v_trace uuid;
    v_id uuid;
    e record;
    s record;
    q record;
    n integer;
BEGIN
    WITH RECURSIVE t(execution_id, depth) AS (
        SELECT p_execution_id, 0
        UNION ALL
        SELECT c.execution_id, t.depth + 1
        FROM lineq.executions c JOIN t ON c.parent_execution_id = t.execution_id
        WHERE t.depth < 1000
    )
    SELECT array_agg(t.execution_id ORDER BY t.depth, t.execution_id) INTO v_tree FROM t;
    v_ids := ARRAY(SELECT x FROM unnest(v_tree) x
                   WHERE p_include_self OR x <> p_execution_id ORDER BY x);
    -- Locked in id order, as the orchestrator locks, so they wait for each other rather than
    -- deadlock.
    PERFORM 1 FROM lineq.executions x WHERE x.execution_id = ANY (v_ids)
    ORDER BY x.execution_id FOR UPDATE;
    IF p_cause IS NOT NULL THEN
        v_cev := jsonb_build_object(p_execution_id::text, p_cause);
    END IF;

    FOREACH v_id IN ARRAY v_tree LOOP
        CONTINUE WHEN NOT (v_id = ANY (v_ids));
        SELECT x.execution_id, x.status, x.parent_execution_id, x.root_execution_id,
               x.correlation_id
        INTO e FROM lineq.executions x WHERE x.execution_id = v_id;
        CONTINUE WHEN NOT FOUND OR e.status IN ('completed', 'failed', 'cancelled');
        IF v_id <> p_execution_id AND v_cev ? e.parent_execution_id::text THEN
            v_parent_event := (v_cev ->> e.parent_execution_id::text)::uuid;
        ELSIF v_id = p_execution_id THEN
            v_parent_event := p_cause;
        ELSE
            SELECT ev.event_id INTO v_parent_event FROM lineq.events ev
            WHERE ev.execution_id = v_id ORDER BY ev.created_at DESC, ev.event_id DESC LIMIT 1;
        END IF;
        v_trace := lineq._trace_correlation_id(v_id);
        v_event := lineq.uuid_v7();
        v_cev := v_cev || jsonb_build_object(v_id::text, v_event);
        v_events := v_events || jsonb_build_array(jsonb_build_object(
            'event_id', v_event, 'parent_event_id', v_parent_event,
            'event_type', 'execution_cancelled', 'execution_id', v_id,
            'parent_execution_id', e.parent_execution_id,
            'root_execution_id', e.root_execution_id, 'correlation_id', e.correlation_id,
            'trace_correlation_id', v_trace, 'step_id', NULL, 'attempt', NULL,
            'node_name', v_node,
            'payload', jsonb_build_object('status', 'cancelled', 'reason', v_reason)));
        UPDATE lineq.executions x
        SET status = 'cancelled', version = x.version + 1,
            error = jsonb_build_object('kind', 'cancelled', 'message', v_reason),
            updated_at = clock_timestamp(), finished_at = clock_timestamp()
        WHERE x.execution_id = v_id AND x.status IN ('pending', 'running');
        v_exec := v_exec + 1;
        v_cancelled := v_cancelled || v_id;
        FOR s IN
            WITH old AS (
                SELECT st.step_id, st.status AS was FROM lineq.steps st
                WHERE st.execution_id = v_id AND st.status IN ('pending', 'enqueued', 'throttled', 'waiting')
                ORDER BY st.step_id
                FOR UPDATE
            ), u AS (
                UPDATE lineq.steps st
                SET status = 'cancelled', updated_at = clock_timestamp(),
                    finished_at = clock_timestamp()
                FROM old WHERE st.step_id = old.step_id
                RETURNING st.step_id, st.name, old.was, st.queue, st.msg_id, st.attempts
            )
            SELECT * FROM u ORDER BY u.step_id
        LOOP
            IF s.was = 'enqueued' AND s.msg_id IS NOT NULL THEN
                v_by_queue := jsonb_set(v_by_queue, ARRAY[s.queue],
                    coalesce(v_by_queue -> s.queue, '[]'::jsonb) || to_jsonb(s.msg_id));
            END IF;
            v_events := v_events || jsonb_build_array(jsonb_build_object(
                'event_id', lineq.uuid_v7(), 'parent_event_id', v_event,
                'event_type', 'step_cancelled', 'execution_id', v_id,
                'parent_execution_id', e.parent_execution_id,
                'root_execution_id', e.root_execution_id, 'correlation_id', e.correlation_id,
                'trace_correlation_id', v_trace, 'step_id', s.step_id,
                'attempt', greatest(s.attempts, 1), 'node_name', v_node,
                'payload', jsonb_build_object('step', s.name, 'was', s.was)));
            v_steps := v_steps + 1;
        END LOOP;
    END LOOP;

    -- Queued messages of cancelled steps: no worker will take them now.
    FOR q IN SELECT j.key AS queue, j.value AS ids FROM jsonb_each(v_by_queue) j ORDER BY j.key LOOP
        IF q.queue !~ '^[a-z][a-z0-9_]{0,46}$' THEN
            PERFORM lineq.invalid('queue', format('%s is not a queue name lineq makes', to_json(q.queue)));
        END IF;
        EXECUTE format('WITH d AS (DELETE FROM pgmq.%I WHERE msg_id = ANY ($1) RETURNING 1)
                        SELECT count(*) FROM d', 'q_' || q.queue)
        INTO n
        USING ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(q.ids) x);
        v_deleted := v_deleted + n;
    END LOOP;

    IF p_write_events THEN
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
            parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
            worker_id, attempt, trace_id, span_id, payload, created_at)
        SELECT (j.ev ->> 'event_id')::uuid, (j.ev ->> 'parent_event_id')::uuid,
               (j.ev ->> 'execution_id')::uuid, (j.ev ->> 'step_id')::uuid,
               (j.ev ->> 'parent_execution_id')::uuid, (j.ev ->> 'root_execution_id')::uuid,
               (j.ev ->> 'correlation_id')::uuid, j.ev ->> 'event_type', j.ev ->> 'node_name',
               NULL, (j.ev ->> 'attempt')::integer,
               lineq.trace_id((j.ev ->> 'trace_correlation_id')::uuid),
               lineq.span_id((j.ev ->> 'event_id')::uuid), j.ev -> 'payload',
               -- increasing in array order, so time order follows causality
               clock_timestamp() + make_interval(secs => j.ord * 0.000001)
        FROM jsonb_array_elements(v_events) WITH ORDINALITY AS j(ev, ord)
        ORDER BY j.ord;
    END IF;

    RETURN QUERY SELECT v_exec, v_steps, v_deleted, v_cancelled, v_events;
END
$$;
REVOKE ALL ON FUNCTION lineq._cancel_tree(uuid, uuid, text, text, boolean, boolean) FROM PUBLIC;

-- lineq._dead_letter (migration 000012): a dead-lettered step frees its flow slot.
CREATE OR REPLACE FUNCTION lineq._dead_letter(p_queue text, p_live regclass, p_archive regclass,
                                   p_letters jsonb) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    IF jsonb_array_length(p_letters) = 0 THEN
        RETURN 0;
    END IF;
    EXECUTE format($q$
        WITH l AS (SELECT * FROM jsonb_to_recordset($1) AS l(msg_id bigint, reason text, event_id uuid)),
        archived AS (
            DELETE FROM %1$s m USING l WHERE m.msg_id = l.msg_id
            RETURNING m.msg_id, m.vt, m.read_ct, m.enqueued_at, m.last_read_at, m.message, m.headers),
        moved AS (
            INSERT INTO %2$s (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
            SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers FROM archived
            RETURNING msg_id),
        -- a dead-lettered step runs no more: its flow slot is free (an orchestrator's pump
        -- gives it to the next waiting step)
        freed AS (
            DELETE FROM lineq.flow_holders h USING archived a
            WHERE h.step_id::text = a.message ->> 'step_id'),
        sized AS (SELECT a.*, octet_length(a.message::text) AS bytes FROM archived a),
        letters AS (
            INSERT INTO pgmq.q_lineq_dlq (vt, message)
            SELECT clock_timestamp(),
                   jsonb_build_object('source_queue', $2::text, 'source_msg_id', s.msg_id,
                                      'read_ct', s.read_ct, 'enqueued_at', s.enqueued_at,
                                      'reason', l.reason, 'event_id', l.event_id,
                                      'message', CASE WHEN s.bytes <= 2097152 THEN s.message
                                                      ELSE to_jsonb(left(s.message::text, 65536)) END)
                   || CASE WHEN s.bytes > 2097152
                           THEN jsonb_build_object('message_truncated', true, 'message_bytes', s.bytes)
                           ELSE '{}'::jsonb END
            FROM sized s JOIN l USING (msg_id)
            ORDER BY s.msg_id
            RETURNING msg_id)
        SELECT count(*)::integer FROM moved
    $q$, p_live, p_archive) INTO n USING p_letters, p_queue;
    PERFORM pg_notify('lineq_dlq', 'lineq_dlq');
    RETURN n;
END
$$;

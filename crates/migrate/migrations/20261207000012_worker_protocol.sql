-- Queues made only by lineq's owner, and the worker protocol as functions.
--
-- 1. Queue creation goes through lineq.create_queue, which validates the name and makes exactly
--    PGMQ's tables, owned by lineq's owner. No role that applications or services hold needs
--    CREATE on schema pgmq or writes to pgmq.meta any more (`lineq migrate --roles` takes both
--    away), and whatever reads "every queue" reads only tables owned by lineq's owner.
-- 2. A worker registers (and gets a secret token), claims, extends, reports, releases and
--    rejects messages through the lineq.worker_* functions. They run as lineq's owner and check
--    what the caller may do: a report is accepted only for the delivery the worker holds, a
--    heartbeat only with its own registration's token, and a message leaves its queue only
--    with the event that says why. The worker role needs EXECUTE on them and nothing that
--    writes.

-- ---------------------------------------------------------------------------------------------
-- Queues
-- ---------------------------------------------------------------------------------------------

-- The owner of lineq's objects: the role that owns schema lineq.
-- (PL/pgSQL, here and below, where a function is called on every claim or report: it keeps its
-- plans across calls, where an SQL function with a pinned search_path is planned at each call.)
CREATE FUNCTION lineq._owner() RETURNS oid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT nspowner FROM pg_namespace WHERE nspname = 'lineq');
END
$$;

-- The queue's live and archive tables, when both are plain tables owned by lineq's owner (so
-- reading them runs nobody's code); NULL otherwise.
CREATE FUNCTION lineq._queue_tables(p_queue text, OUT live regclass, OUT archive regclass)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner oid := (SELECT nspowner FROM pg_namespace WHERE nspname = 'lineq');
BEGIN
    SELECT q.oid::regclass, a.oid::regclass INTO live, archive
    FROM pg_class q, pg_class a
    WHERE q.oid = to_regclass(format('pgmq.%I', 'q_' || p_queue))
      AND a.oid = to_regclass(format('pgmq.%I', 'a_' || p_queue))
      AND q.relkind IN ('r', 'p') AND a.relkind IN ('r', 'p')
      AND q.relowner = owner AND a.relowner = owner;
END
$$;

-- Creates a queue (PGMQ's tables, with half of each page free for the row versions reads
-- write) unless it exists. Names: 1 to 47 characters of a-z, 0-9 and _, starting with a
-- letter, as lineq's QueueName.
CREATE FUNCTION lineq.create_queue(p_queue text) RETURNS boolean
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
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION lineq.create_queue(text) FROM PUBLIC;

COMMENT ON FUNCTION lineq.create_queue(text) IS
    'Creates a PGMQ queue owned by lineq''s owner (validated name); false when it existed.';

-- lineq's queues: those whose tables are plain tables owned by lineq's owner. Whatever reads
-- "every queue" starts here, never from pgmq.meta alone.
CREATE FUNCTION lineq.queues()
RETURNS TABLE (queue_name text, live regclass, archive regclass)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.queue_name, t.live, t.archive
    FROM pgmq.meta m, LATERAL lineq._queue_tables(m.queue_name) t
    WHERE m.queue_name ~ '^lineq_[a-z0-9_]+$' AND t.live IS NOT NULL
    ORDER BY m.queue_name
$$;

-- Depth and oldest message of each of lineq's queues (pgmq.metrics_all() reads every queue
-- pgmq.meta lists, whatever its tables are).
CREATE FUNCTION lineq.queue_metrics()
RETURNS TABLE (queue_name text, queue_length bigint, oldest_msg_age_sec integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q record;
BEGIN
    FOR q IN SELECT * FROM lineq.queues() LOOP
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, count(*), extract(epoch FROM clock_timestamp() - min(enqueued_at))::integer FROM %s',
            q.queue_name, q.live);
    END LOOP;
END
$$;

-- Queue tables made before by another role (an orchestrator creating a namespace) become the
-- owner's, so the readers below keep seeing them. A table that is not a plain table (a view
-- put there in its place) is left alone and is not read.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel
        FROM pgmq.meta m
        JOIN pg_class c ON c.oid IN (to_regclass(format('pgmq.%I', 'q_' || m.queue_name)),
                                     to_regclass(format('pgmq.%I', 'a_' || m.queue_name)))
        WHERE m.queue_name ~ '^lineq_[a-z0-9_]+$' AND c.relkind IN ('r', 'p')
          AND c.relowner <> lineq._owner()
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s OWNER TO %I', t.rel,
                           (SELECT rolname FROM pg_roles WHERE oid = lineq._owner()));
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'cannot make % owned by lineq''s owner; it is not read by lineage_messages', t.rel;
        END;
    END LOOP;
END
$$;

-- lineage_messages reads only queues whose tables are plain tables owned by lineq's owner: a
-- view someone slipped into schema pgmq under a queue's name never runs as the caller.
CREATE OR REPLACE FUNCTION lineq.lineage_messages(p_root_execution_id uuid)
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
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    q record;
    executions text[];
    -- a message body is untrusted: read ids as text and only cast what looks like a UUID
    uuid_re constant text := '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
BEGIN
    SELECT coalesce(array_agg(x.execution_id::text), '{}') INTO executions
    FROM lineq.executions x
    WHERE x.root_execution_id = p_root_execution_id;

    FOR q IN SELECT x.queue_name AS name, x.live, x.archive FROM lineq.queues() x LOOP
        -- Dead letters wrap the original message: {source_queue, source_msg_id, reason, message}.
        RETURN QUERY EXECUTE format($q$
            WITH raw AS (
                SELECT 'queued'::text AS state, t.msg_id, t.enqueued_at,
                       NULL::timestamptz AS archived_at, t.message
                FROM %1$s t
              UNION ALL
                SELECT 'archived', t.msg_id, t.enqueued_at, t.archived_at, t.message
                FROM %2$s t
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
        $q$, q.live, q.archive, q.name)
        USING p_root_execution_id, executions, uuid_re;
    END LOOP;
END
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Worker registration
-- ---------------------------------------------------------------------------------------------

ALTER TABLE lineq.workers
    -- sha256 of the secret the worker got when it registered; its other calls present it
    ADD COLUMN token_hash bytea,
    ADD COLUMN language text NOT NULL DEFAULT 'rust';

-- The registration a worker id and token name, locked; LQ006 when they do not match a running
-- registration.
CREATE FUNCTION lineq._worker(p_worker_id text, p_token text) RETURNS lineq.workers
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w lineq.workers;
BEGIN
    SELECT * INTO w FROM lineq.workers
    WHERE worker_id = p_worker_id AND stopped_at IS NULL
      AND token_hash = sha256(convert_to(coalesce(p_token, ''), 'UTF8'));
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ006',
            MESSAGE = format('worker %s is not registered with this token (register first with lineq.worker_register)',
                             quote_literal(left(p_worker_id, 128))),
            DETAIL = 'what=worker';
    END IF;
    RETURN w;
END
$$;

-- Registers a worker and returns the secret token its later calls present. A worker id whose
-- registration is still alive (heartbeat within p_takeover_after_secs, not stopped) cannot be
-- taken over: that would let one worker silence another and have its steps released.
CREATE FUNCTION lineq.worker_register(
    p_worker_id text,
    p_namespaces text[],
    p_handlers text[],
    p_host text DEFAULT NULL,
    p_pid integer DEFAULT NULL,
    p_version text DEFAULT NULL,
    p_language text DEFAULT 'rust',
    p_takeover_after_secs double precision DEFAULT 30
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token text := encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex');
    v_ns text;
    v_h text;
BEGIN
    IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 128
       OR p_worker_id ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('worker_id', 'a worker id is 1 to 128 characters without control characters');
    END IF;
    IF p_namespaces IS NULL OR cardinality(p_namespaces) NOT BETWEEN 1 AND 64 THEN
        PERFORM lineq.invalid('namespaces', 'a worker serves 1 to 64 namespaces');
    END IF;
    FOREACH v_ns IN ARRAY p_namespaces LOOP
        IF v_ns IS NULL OR v_ns !~ '^[a-z][a-z0-9_]{0,31}$' THEN
            PERFORM lineq.invalid('namespaces', format(
                'a namespace is 1 to 32 characters of a-z, 0-9 and _, starting with a letter (got %s)',
                coalesce(quote_literal(left(v_ns, 80)), 'NULL')));
        END IF;
    END LOOP;
    IF p_handlers IS NULL OR cardinality(p_handlers) > 10000 THEN
        PERFORM lineq.invalid('handlers', 'at most 10000 handlers');
    END IF;
    FOREACH v_h IN ARRAY p_handlers LOOP
        IF v_h IS NULL OR v_h !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            PERFORM lineq.invalid('handlers', format(
                'a handler is 1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'' (got %s)',
                coalesce(quote_literal(left(v_h, 80)), 'NULL')));
        END IF;
    END LOOP;
    IF length(p_host) > 255 OR p_host ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('host', 'a host is at most 255 characters without control characters');
    END IF;
    IF length(p_version) > 64 OR p_version ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('version', 'a version is at most 64 characters without control characters');
    END IF;
    IF p_language IS NULL OR p_language !~ '^[a-z0-9_.+-]{1,32}$' THEN
        PERFORM lineq.invalid('language', 'a language is 1 to 32 characters of a-z, 0-9, ''_'', ''.'', ''+'' and ''-''');
    END IF;

    INSERT INTO lineq.workers AS w (worker_id, host, pid, namespaces, version, handlers, language,
                                    token_hash)
    VALUES (p_worker_id, coalesce(p_host, ''), coalesce(p_pid, 0), p_namespaces,
            coalesce(p_version, ''), p_handlers, p_language,
            sha256(convert_to(v_token, 'UTF8')))
    ON CONFLICT (worker_id) DO UPDATE
        SET host = EXCLUDED.host, pid = EXCLUDED.pid, namespaces = EXCLUDED.namespaces,
            version = EXCLUDED.version, handlers = EXCLUDED.handlers,
            language = EXCLUDED.language, token_hash = EXCLUDED.token_hash,
            started_at = clock_timestamp(), last_heartbeat_at = clock_timestamp(),
            stopped_at = NULL, released_at = NULL
        WHERE w.stopped_at IS NOT NULL OR w.released_at IS NOT NULL
           OR w.last_heartbeat_at < clock_timestamp() - make_interval(secs => p_takeover_after_secs);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ006',
            MESSAGE = format('worker id %s is registered and alive; a worker cannot take over a live registration (choose another id, or wait until it has been silent for %s s)',
                             quote_literal(p_worker_id), p_takeover_after_secs),
            DETAIL = 'what=worker';
    END IF;
    RETURN v_token;
END
$$;

-- A heartbeat: the registration is alive (and no longer released, if it had been).
CREATE FUNCTION lineq.worker_heartbeat(p_worker_id text, p_token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lineq._worker(p_worker_id, p_token);
    UPDATE lineq.workers SET last_heartbeat_at = clock_timestamp(), released_at = NULL
    WHERE worker_id = p_worker_id;
END
$$;

-- A clean stop: the registration is marked stopped (not silent) and its token is void.
CREATE FUNCTION lineq.worker_stop(p_worker_id text, p_token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lineq._worker(p_worker_id, p_token);
    UPDATE lineq.workers
    SET stopped_at = clock_timestamp(), last_heartbeat_at = clock_timestamp(), token_hash = NULL
    WHERE worker_id = p_worker_id;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Claims
-- ---------------------------------------------------------------------------------------------

-- The step queue of a namespace the worker serves, checked; returns its live table.
CREATE FUNCTION lineq._worker_queue(w lineq.workers, p_namespace text, OUT queue text,
                                    OUT live regclass, OUT archive regclass)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_namespace IS NULL OR NOT (p_namespace = ANY (w.namespaces)) THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ006',
            MESSAGE = format('worker %s is not registered for namespace %s',
                             quote_literal(w.worker_id), coalesce(quote_literal(p_namespace), 'NULL'));
    END IF;
    queue := 'lineq_steps_' || p_namespace;
    SELECT t.live, t.archive INTO live, archive FROM lineq._queue_tables(queue) t;
    IF live IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ005',
            MESSAGE = format('unknown namespace %s: it has no step queue', quote_literal(p_namespace)),
            DETAIL = 'namespace=' || p_namespace;
    END IF;
END
$$;

-- Why a step message cannot be run, or NULL when it can: a step message is an object with
-- step_id, execution_id, step, handler, attempt >= 1, input, and a meta whose ids are UUIDs and
-- whose traceparent is W3C. The check is an SQL expression over the body and its size, kept
-- here once: lineq._step_message_problem_sql returns it for an expression of the body and one of
-- its size (a claim puts it into its own statement, so it costs no function call per message),
-- and lineq.step_message_problem(body, bytes) evaluates it.
CREATE FUNCTION lineq._step_message_problem_sql(p_body text, p_bytes text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT replace(replace($sql$CASE
        WHEN {bytes} > 2097152 THEN format('message is %s bytes; the limit is 2097152', {bytes})
        WHEN {body} IS NULL OR jsonb_typeof({body}) <> 'object'
            THEN format('expected a JSON object, got %s', coalesce(jsonb_typeof({body}), 'null'))
        WHEN NOT coalesce({body} ->> 'step_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' AND jsonb_typeof({body} -> 'step_id') = 'string', false)
            THEN 'step message: step_id is not a UUID'
        WHEN NOT coalesce({body} ->> 'execution_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' AND jsonb_typeof({body} -> 'execution_id') = 'string', false)
            THEN 'step message: execution_id is not a UUID'
        WHEN jsonb_typeof({body} -> 'step') IS DISTINCT FROM 'string'
             OR NOT coalesce({body} ->> 'step' ~ '^[A-Za-z0-9_.:-]{1,128}$', false)
            THEN 'step message: step is not a name (1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'')'
        WHEN jsonb_typeof({body} -> 'handler') IS DISTINCT FROM 'string'
             OR NOT coalesce({body} ->> 'handler' ~ '^[A-Za-z0-9_.:-]{1,128}$', false)
            THEN 'step message: handler is not a name (1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'')'
        WHEN jsonb_typeof({body} -> 'attempt') IS DISTINCT FROM 'number'
             OR NOT coalesce({body} ->> 'attempt' ~ '^[0-9]{1,9}$', false)
             OR (CASE WHEN {body} ->> 'attempt' ~ '^[0-9]{1,9}$' THEN ({body} ->> 'attempt')::integer END) < 1
            THEN 'step message: attempt must be a whole number of at least 1'
        WHEN NOT ({body} ? 'input') THEN 'step message: missing field `input`'
        WHEN jsonb_typeof({body} -> 'meta') IS DISTINCT FROM 'object' THEN 'step message: meta is not an object'
        WHEN NOT coalesce({body} -> 'meta' ->> 'correlation_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
            THEN 'step message: meta.correlation_id is not a UUID'
        WHEN NOT coalesce({body} -> 'meta' ->> 'parent_event_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
            THEN 'step message: meta.parent_event_id is not a UUID'
        WHEN NOT coalesce({body} -> 'meta' ->> 'root_execution_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
            THEN 'step message: meta.root_execution_id is not a UUID'
        WHEN coalesce(jsonb_typeof({body} -> 'meta' -> 'parent_execution_id'), 'null') <> 'null'
             AND NOT coalesce({body} -> 'meta' ->> 'parent_execution_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
            THEN 'step message: meta.parent_execution_id is not a UUID'
        WHEN NOT coalesce({body} -> 'meta' ->> 'traceparent'
                          ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$', false)
             OR substr({body} -> 'meta' ->> 'traceparent', 1, 2) = 'ff'
             OR substr({body} -> 'meta' ->> 'traceparent', 4, 32) = repeat('0', 32)
             OR substr({body} -> 'meta' ->> 'traceparent', 37, 16) = repeat('0', 16)
            THEN 'meta.traceparent: not a W3C traceparent'
        WHEN {body} -> 'meta' ? 'tracestate'
             AND jsonb_typeof({body} -> 'meta' -> 'tracestate') <> 'string'
            THEN 'step message: meta.tracestate is not a string'
    END$sql$, '{body}', '(' || p_body || ')'), '{bytes}', '(' || p_bytes || ')')
$fn$;

CREATE FUNCTION lineq.step_message_problem(p_body jsonb, p_bytes bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    problem text;
BEGIN
    EXECUTE 'SELECT ' || lineq._step_message_problem_sql('$1', '$2') INTO problem
        USING p_body, p_bytes;
    RETURN problem;
END
$fn$;

-- Dead-letters held messages of a queue: each goes to lineq_dlq with its reason (the body as it
-- was, or its first 64 KiB when it is over the 2 MiB message limit) and is archived from its
-- queue. `p_letters` is [{msg_id, reason, event_id}]. Returns how many were moved.
CREATE FUNCTION lineq._dead_letter(p_queue text, p_live regclass, p_archive regclass,
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

-- Claims up to p_qty visible messages of a namespace for a registered worker: hides them for
-- p_vt_secs, records action_started for each (with its delivery count), and returns them.
-- Messages that cannot be run (malformed, over 2 MiB) are dead-lettered with the reason;
-- messages delivered more than p_max_deliveries times without an outcome are dead-lettered
-- with a message_dead_lettered event. With p_handlers, only steps of those handlers are taken
-- (and malformed ones, to dead-letter them): a step nobody here serves waits for a worker that
-- does.
CREATE FUNCTION lineq.worker_claim(
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
    v_batch jsonb;
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
    -- delivery, and the action_started event that says so). Bodies stay in the table; only
    -- what the checks need is taken out.
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
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'msg_id', g.msg_id, 'delivery', g.read_ct, 'enqueued_at', g.enqueued_at,
                   'event_id', g.headers -> 'lineq_claim' -> 'event',
                   'problem', %2$s,
                   'head', CASE WHEN jsonb_typeof(g.message) = 'object'
                                THEN g.message - 'input' - 'context' END)
                 ORDER BY g.msg_id), '[]'::jsonb)
        FROM got g
    $q$, q.live, lineq._step_message_problem_sql('g.message',
            -- a body stored uncompressed (small) by its stored size; a compressed one, which
            -- may be any size, measured as text
            'CASE WHEN pg_column_compression(g.message) IS NULL THEN pg_column_size(g.message)
                  ELSE octet_length(g.message::text) END'))
    INTO v_batch USING p_qty, p_vt_secs, p_handlers, p_worker_id;

    IF jsonb_array_length(v_batch) = 0 THEN
        RETURN;
    END IF;

    -- action_started for what can run; message_dead_lettered for poison.
    WITH b AS (
        SELECT x.*, (x.head ->> 'step_id')::uuid AS step_id,
               (x.head ->> 'execution_id')::uuid AS execution_id,
               x.delivery > p_max_deliveries AS poison,
               row_number() OVER (ORDER BY x.msg_id) AS ord
        FROM jsonb_to_recordset(v_batch)
             AS x(msg_id bigint, delivery integer, enqueued_at timestamptz, event_id uuid,
                  problem text, head jsonb)
        WHERE x.problem IS NULL)
    INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
        parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
        worker_id, attempt, trace_id, span_id, payload, created_at)
    SELECT b.event_id, (b.head -> 'meta' ->> 'parent_event_id')::uuid, b.execution_id, b.step_id,
           (b.head -> 'meta' ->> 'parent_execution_id')::uuid,
           (b.head -> 'meta' ->> 'root_execution_id')::uuid,
           (b.head -> 'meta' ->> 'correlation_id')::uuid,
           CASE WHEN b.poison THEN 'message_dead_lettered' ELSE 'action_started' END,
           v_node, p_worker_id, (b.head ->> 'attempt')::integer,
           -- the span id: the event id's last 8 bytes (lineq.span_id, inline)
           substr(b.head -> 'meta' ->> 'traceparent', 4, 32), right(replace(b.event_id::text, '-', ''), 16),
           CASE WHEN b.poison
                THEN jsonb_build_object('step', b.head ->> 'step', 'queue', q.queue,
                         'msg_id', b.msg_id,
                         'reason', format('delivered %s times without a reported outcome (limit %s): it may crash or hang every worker that runs it',
                                          b.delivery, p_max_deliveries))
                ELSE jsonb_build_object('step', b.head ->> 'step', 'handler', b.head ->> 'handler',
                         'queue', q.queue, 'msg_id', b.msg_id, 'delivery', b.delivery) END,
           clock_timestamp() + make_interval(secs => b.ord * 0.000001)
    FROM b
    ORDER BY b.ord;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'msg_id', x.msg_id,
               'reason', coalesce(x.problem, format('delivered %s times without a reported outcome (limit %s): it may crash or hang every worker that runs it',
                                                    x.delivery, p_max_deliveries)),
               'event_id', CASE WHEN x.problem IS NULL THEN x.event_id END)), '[]'::jsonb)
    INTO v_letters
    FROM jsonb_to_recordset(v_batch) AS x(msg_id bigint, delivery integer, event_id uuid, problem text)
    WHERE x.problem IS NOT NULL OR x.delivery > p_max_deliveries;
    IF jsonb_array_length(v_letters) > 0 THEN
        PERFORM lineq._dead_letter(q.queue, q.live, q.archive, v_letters);
    END IF;

    RETURN QUERY EXECUTE format($q$
        SELECT m.msg_id, m.read_ct, m.enqueued_at, m.message::text,
               (m.headers -> 'lineq_claim' ->> 'event')::uuid,
               '00-' || substr(m.message -> 'meta' ->> 'traceparent', 4, 32) || '-'
                     || right(replace(m.headers -> 'lineq_claim' ->> 'event', '-', ''), 16) || '-01'
        FROM %1$s m
        WHERE m.msg_id = ANY ($1)
        ORDER BY m.msg_id
    $q$, q.live)
    USING ARRAY(SELECT x.msg_id FROM jsonb_to_recordset(v_batch) AS x(msg_id bigint, delivery integer, problem text)
                WHERE x.problem IS NULL AND x.delivery <= p_max_deliveries);
END
$$;

-- Pushes the visibility timeout of the messages this worker holds p_vt_secs into the future.
-- Returns the ids it still holds (a message delivered again to another worker is not its).
CREATE FUNCTION lineq.worker_extend(p_worker_id text, p_token text, p_namespace text,
                                    p_msg_ids bigint[], p_vt_secs integer DEFAULT 30)
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w lineq.workers := lineq._worker(p_worker_id, p_token);
    q record;
BEGIN
    IF p_vt_secs IS NULL OR p_vt_secs NOT BETWEEN 0 AND 86400 THEN
        PERFORM lineq.invalid('vt_secs', format('a visibility timeout is 0 to 86400 seconds (got %s)', p_vt_secs));
    END IF;
    SELECT * INTO q FROM lineq._worker_queue(w, p_namespace);
    RETURN QUERY EXECUTE format($q$
        UPDATE %1$s m SET vt = clock_timestamp() + make_interval(secs => $2::integer)
        WHERE m.msg_id = ANY ($1) AND m.headers -> 'lineq_claim' ->> 'worker' = $3
          AND (m.headers -> 'lineq_claim' ->> 'delivery')::integer = m.read_ct
        RETURNING m.msg_id
    $q$, q.live) USING p_msg_ids, p_vt_secs, p_worker_id;
END
$$;

-- Makes the messages this worker holds visible again at once (a shutdown that could not wait
-- for its handlers). Returns the ids released.
CREATE FUNCTION lineq.worker_release(p_worker_id text, p_token text, p_namespace text,
                                     p_msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT lineq.worker_extend(p_worker_id, p_token, p_namespace, p_msg_ids, 0) $$;

-- ---------------------------------------------------------------------------------------------
-- Outcomes
-- ---------------------------------------------------------------------------------------------

-- Reports finished attempts, all in the caller's transaction (one call, one transaction when
-- called alone). p_outcomes is a JSON array of
--   {msg_id, delivery, started_event_id, outcome: "completed"|"failed", output, error,
--    children, duration_ms}
-- For each message this worker still holds at that delivery: archives it, writes
-- action_completed|action_failed and step_result, and sends the result to the orchestrators
-- (woken on commit). For a delivery it no longer holds (it was delivered again, or another
-- delivery already reported), only its action event is written, marked superseded: it
-- happened, but the step keeps one outcome per attempt. A message the worker never claimed is
-- refused (LQ006) and nothing is written.
CREATE FUNCTION lineq.worker_report(p_worker_id text, p_token text, p_namespace text,
                                    p_outcomes jsonb, p_node_name text DEFAULT NULL)
RETURNS TABLE (msg_id bigint, reported boolean, action_event_id uuid, result_event_id uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
    EXECUTE format($q$
        WITH o AS (SELECT * FROM jsonb_to_recordset($1) AS o(msg_id bigint, delivery integer)),
        archived AS (
            DELETE FROM %1$s m USING o
            WHERE m.msg_id = o.msg_id AND m.read_ct = o.delivery
              AND m.headers -> 'lineq_claim' ->> 'worker' = $2
              AND (m.headers -> 'lineq_claim' ->> 'delivery')::integer = o.delivery
            RETURNING m.msg_id, m.vt, m.read_ct, m.enqueued_at, m.last_read_at, m.message, m.headers),
        moved AS (
            INSERT INTO %2$s (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
            SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers FROM archived
            RETURNING msg_id)
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'msg_id', a.msg_id, 'event_id', a.headers -> 'lineq_claim' -> 'event',
                   'head', a.message - 'input' - 'context')), '[]'::jsonb)
        FROM archived a
    $q$, q.live, q.archive) INTO v_held USING p_outcomes, p_worker_id;

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
    l AS (
        SELECT o.*,
               coalesce((o.head ->> 'step_id')::uuid, s.step_id) AS step_id,
               coalesce((o.head ->> 'execution_id')::uuid, s.execution_id) AS execution_id,
               coalesce((o.head -> 'meta' ->> 'parent_execution_id')::uuid, s.parent_execution_id) AS parent_execution_id,
               coalesce((o.head -> 'meta' ->> 'root_execution_id')::uuid, s.root_execution_id) AS root_execution_id,
               coalesce((o.head -> 'meta' ->> 'correlation_id')::uuid, s.correlation_id) AS correlation_id,
               coalesce((o.head ->> 'attempt')::integer, s.attempt) AS attempt,
               coalesce(substr(o.head -> 'meta' ->> 'traceparent', 4, 32), s.trace_id) AS trace_id,
               coalesce(o.head ->> 'step', s.payload ->> 'step') AS step
        FROM o LEFT JOIN lineq.events s ON s.event_id = o.started_event_id AND NOT o.held),
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

-- Dead-letters a message this worker holds but cannot run (its body does not parse in the
-- worker's language, say), with a message_dead_lettered event under the claim's
-- action_started. Returns false when the worker no longer holds it.
CREATE FUNCTION lineq.worker_reject(p_worker_id text, p_token text, p_namespace text,
                                    p_msg_id bigint, p_reason text, p_node_name text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w lineq.workers := lineq._worker(p_worker_id, p_token);
    q record;
    v_claim uuid;
    v_event uuid := lineq.uuid_v7();
    v_reason text := left(coalesce(p_reason, 'rejected by the worker'), 4096);
BEGIN
    SELECT * INTO q FROM lineq._worker_queue(w, p_namespace);
    EXECUTE format($q$
        SELECT (m.headers -> 'lineq_claim' ->> 'event')::uuid FROM %1$s m
        WHERE m.msg_id = $1 AND m.headers -> 'lineq_claim' ->> 'worker' = $2
          AND (m.headers -> 'lineq_claim' ->> 'delivery')::integer = m.read_ct
        FOR UPDATE
    $q$, q.live) INTO v_claim USING p_msg_id, p_worker_id;
    IF v_claim IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
        parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
        worker_id, attempt, trace_id, span_id, payload)
    SELECT v_event, s.event_id, s.execution_id, s.step_id, s.parent_execution_id,
           s.root_execution_id, s.correlation_id, 'message_dead_lettered',
           coalesce(left(p_node_name, 255), w.host), p_worker_id, s.attempt, s.trace_id,
           lineq.span_id(v_event),
           jsonb_build_object('step', s.payload ->> 'step', 'queue', q.queue, 'msg_id', p_msg_id,
                              'reason', v_reason)
    FROM lineq.events s WHERE s.event_id = v_claim;
    PERFORM lineq._dead_letter(q.queue, q.live, q.archive,
        jsonb_build_array(jsonb_build_object('msg_id', p_msg_id, 'reason', v_reason,
                                             'event_id', v_event)));
    RETURN true;
END
$$;

-- Steps waiting in a namespace's queue for a handler that no live worker serves (registered,
-- not stopped, heartbeat within p_silent_after_secs): what `lineq workers` and the
-- lineq_steps_unserved gauge show, so a step that waits for a deploy is visible.
CREATE FUNCTION lineq.unserved_steps(p_silent_after_secs double precision DEFAULT 30)
RETURNS TABLE (namespace text, handler text, steps bigint, oldest_age_secs integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q record;
BEGIN
    FOR q IN SELECT x.queue_name, x.live FROM lineq.queues() x
             WHERE x.queue_name LIKE 'lineq\_steps\_%' LOOP
        RETURN QUERY EXECUTE format($q$
            SELECT %1$L::text, m.message ->> 'handler', count(*),
                   extract(epoch FROM clock_timestamp() - min(m.enqueued_at))::integer
            FROM %2$s m
            WHERE jsonb_typeof(m.message -> 'handler') = 'string'
              AND NOT EXISTS (
                  SELECT 1 FROM lineq.workers w
                  WHERE w.stopped_at IS NULL AND w.released_at IS NULL
                    AND w.last_heartbeat_at > clock_timestamp() - make_interval(secs => $1)
                    AND %1$L = ANY (w.namespaces) AND m.message ->> 'handler' = ANY (w.handlers))
            GROUP BY 2 ORDER BY 2
        $q$, substr(q.queue_name, length('lineq_steps_') + 1), q.live) USING p_silent_after_secs;
    END LOOP;
END
$$;

-- Whether steps were cancelled, for a worker's handlers (workers may not read executions).
CREATE FUNCTION lineq.worker_cancelled(p_step_ids uuid[]) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT step_id FROM lineq.steps WHERE step_id = ANY (p_step_ids) AND status = 'cancelled'
$$;

DO $$
DECLARE
    f regprocedure;
BEGIN
    -- Only the roles lineq grants to may call these (PUBLIC may call functions by default).
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'lineq'::regnamespace
          AND (p.proname LIKE 'worker\_%' OR p.proname LIKE '\_%' OR p.proname = 'create_queue')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    -- Every lineq function runs with a pinned search_path, so nothing a caller puts earlier
    -- in theirs can stand in for what it names.
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'lineq'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\_path=%')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, lineq, pgmq, pg_temp', f);
    END LOOP;
END
$$;

COMMENT ON FUNCTION lineq.worker_register(text, text[], text[], text, integer, text, text, double precision) IS
    'Registers a worker; returns the secret token its other calls present (docs/sql-api.md).';
COMMENT ON FUNCTION lineq.worker_claim(text, text, text, integer, integer, integer, text[], text) IS
    'Claims up to qty step messages for a registered worker, recording action_started (docs/sql-api.md).';
COMMENT ON FUNCTION lineq.worker_report(text, text, text, jsonb, text) IS
    'Reports finished attempts of messages the worker holds (docs/sql-api.md).';

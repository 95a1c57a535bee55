-- The operations a client needs, as SQL functions (docs/sql-api.md, "Operations"): changing
-- tags, cancelling, reading one execution and listing executions. The Rust client, CLI and REST
-- API call these, so the semantics are defined once.
--
-- Writes are SECURITY DEFINER (an application's role may call them without any write privilege
-- on lineq's tables); reads run with the caller's privileges (the reader role has SELECT).

-- ---------------------------------------------------------------------------------------------
-- Tag rules (shared/src/labels.rs): the messages are the Rust ones, field first.

-- Checks a tag key: 1–64 bytes of a-z 0-9 '-' '_', and (p_reserved) not a reserved prefix.
-- Raises LQ001 for p_field.
CREATE FUNCTION lineq._check_tag_key(p_field text, p_key text, p_reserved boolean) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c text;
    p text;
BEGIN
    IF p_key IS NULL THEN
        PERFORM lineq.invalid(p_field, 'a tag key is null');
    END IF;
    -- As written to a tag map a key is counted in bytes; as a filter, in characters.
    IF p_key = '' OR (CASE WHEN p_reserved THEN octet_length(p_key) ELSE char_length(p_key) END) > 64 THEN
        PERFORM lineq.invalid(p_field, format('tag key %s is %s characters; a key is 1 to 64',
                                              to_json(p_key), char_length(p_key)));
    END IF;
    c := substring(p_key FROM '[^a-z0-9_-]');
    IF c IS NOT NULL THEN
        PERFORM lineq.invalid(p_field, format('tag key %s contains %L; keys use a-z, 0-9, ''-'' and ''_''',
                                              to_json(p_key), c));
    END IF;
    IF p_reserved THEN
        FOREACH p IN ARRAY ARRAY['lineq_', '_'] LOOP
            IF starts_with(p_key, p) THEN
                PERFORM lineq.invalid(p_field, format('tag key %s starts with the reserved prefix %s',
                                                      to_json(p_key), to_json(p)));
            END IF;
        END LOOP;
    END IF;
END
$$;

-- Checks a tag value: a JSON string of at most 256 characters without newlines.
CREATE FUNCTION lineq._check_tag_value(p_field text, p_key text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text;
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) <> 'string' THEN
        PERFORM lineq.invalid(p_field, format('tag %s value must be a string, not %s',
                                              to_json(p_key), coalesce(jsonb_typeof(p_value), 'null')));
    END IF;
    v := p_value #>> '{}';
    IF char_length(v) > 256 THEN
        PERFORM lineq.invalid(p_field, format('tag %s value is %s characters; the limit is 256',
                                              to_json(p_key), char_length(v)));
    END IF;
    IF strpos(v, chr(10)) > 0 OR strpos(v, chr(13)) > 0 THEN
        PERFORM lineq.invalid(p_field, format('tag %s value contains a newline', to_json(p_key)));
    END IF;
END
$$;

-- Checks a cause or reason: at most 256 characters, no control characters (it is shown in text
-- output and logs).
CREATE FUNCTION lineq._check_reason(p_field text, p_text text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF char_length(p_text) > 256 THEN
        PERFORM lineq.invalid(p_field, format('it is %s characters; the limit is 256',
                                              char_length(p_text)));
    END IF;
    IF p_text ~ '[\u0001-\u001f\u007f-\u009f]' THEN
        PERFORM lineq.invalid(p_field, 'it must not contain control characters');
    END IF;
END
$$;

-- The identity an event of execution p_execution_id carries, as the Rust ExecState::lineage:
-- the trace is the root's correlation id.
CREATE FUNCTION lineq._trace_correlation_id(p_execution_id uuid) RETURNS uuid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN e.root_execution_id = e.execution_id THEN e.correlation_id
                ELSE coalesce((SELECT r.correlation_id FROM lineq.executions r
                               WHERE r.execution_id = e.root_execution_id), e.correlation_id)
           END
    FROM lineq.executions e WHERE e.execution_id = p_execution_id
$$;

-- ---------------------------------------------------------------------------------------------
-- Tags

-- Changes the tags of a pending execution: sets p_set (a JSON object of strings), removes the
-- keys of p_remove. Returns the execution as it is afterwards. A change that leaves the tags as
-- they are writes nothing. Otherwise the version is bumped and a tags_changed event (child of
-- the execution's execution_started, payload {before, after, version, cause}) is written.
CREATE FUNCTION lineq.update_tags(
    p_execution_id uuid,
    p_set jsonb DEFAULT '{}',
    p_remove text[] DEFAULT '{}',
    p_expect_version bigint DEFAULT NULL,
    p_cause text DEFAULT NULL,
    p_actor text DEFAULT NULL
) RETURNS lineq.executions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_set jsonb := coalesce(p_set, '{}'::jsonb);
    v_remove text[] := coalesce(p_remove, '{}'::text[]);
    v_cause text := coalesce(p_cause, '');
    v_node text := coalesce(nullif(left(p_actor, 255), ''), session_user::text);
    k text;
    v jsonb;
    n integer;
    cur lineq.executions;
    upd lineq.executions;
    v_after jsonb;
    v_started uuid;
    v_trace uuid;
    v_event uuid;
BEGIN
    -- The change on its own, before any row is read.
    IF jsonb_typeof(v_set) <> 'object' THEN
        PERFORM lineq.invalid('tags', format('the tags to set must be a JSON object of strings, not %s',
                                             jsonb_typeof(v_set)));
    END IF;
    IF v_set = '{}'::jsonb AND cardinality(v_remove) = 0 THEN
        PERFORM lineq.invalid('tags', 'nothing to change: give at least one tag to set or remove');
    END IF;
    FOR k, v IN SELECT j.key, j.value FROM jsonb_each(v_set) j ORDER BY j.key COLLATE "C" LOOP
        PERFORM lineq._check_tag_key('tags', k, true);
        PERFORM lineq._check_tag_value('tags', k, v);
    END LOOP;
    FOREACH k IN ARRAY v_remove LOOP
        PERFORM lineq._check_tag_key('tags', k, true);
        IF v_set ? k THEN
            PERFORM lineq.invalid('tags', format('tag %s is both set and removed', to_json(k)));
        END IF;
    END LOOP;
    PERFORM lineq._check_reason('cause', v_cause);

    -- The lock orders this change after any concurrent one (and after the orchestrator's status
    -- changes, which lock the same row), so the tags read here are those the change applies to.
    SELECT * INTO cur FROM lineq.executions WHERE execution_id = p_execution_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('execution %s not found', p_execution_id),
            DETAIL = format('what=execution; id=%s', p_execution_id);
    END IF;
    IF p_expect_version IS NOT NULL AND p_expect_version <> cur.version THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ003',
            MESSAGE = format('conflict: execution %s is at version %s, not %s; read it again and retry',
                             p_execution_id, cur.version, p_expect_version),
            DETAIL = format('what=execution; id=%s; expected=%s; actual=%s',
                            p_execution_id, p_expect_version, cur.version);
    END IF;
    IF cur.status <> 'pending' THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('execution %s is %s; tags can change only while it is pending',
                             p_execution_id, cur.status);
    END IF;
    IF jsonb_typeof(cur.tags) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(cur.tags) j WHERE jsonb_typeof(j.value) <> 'string') THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('execution %s has tags that are not a string map; fix them in SQL first',
                             p_execution_id);
    END IF;

    v_after := (cur.tags - v_remove) || v_set;
    SELECT count(*) INTO n FROM jsonb_object_keys(v_after);
    IF n > 20 THEN
        PERFORM lineq.invalid('tags', format('%s tags; the limit is 20', n));
    END IF;
    FOR k, v IN SELECT j.key, j.value FROM jsonb_each(v_after) j ORDER BY j.key COLLATE "C" LOOP
        PERFORM lineq._check_tag_key('tags', k, true);
        PERFORM lineq._check_tag_value('tags', k, v);
    END LOOP;
    IF v_after = cur.tags THEN
        RETURN cur;
    END IF;

    UPDATE lineq.executions
    SET tags = v_after, version = version + 1, updated_at = clock_timestamp()
    WHERE execution_id = p_execution_id
    RETURNING * INTO upd;

    SELECT ev.event_id INTO v_started FROM lineq.events ev
    WHERE ev.execution_id = p_execution_id AND ev.event_type = 'execution_started'
    ORDER BY ev.created_at, ev.event_id LIMIT 1;
    v_trace := lineq._trace_correlation_id(p_execution_id);
    v_event := lineq.uuid_v7();
    INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
        parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
        worker_id, attempt, trace_id, span_id, payload)
    VALUES (v_event, v_started, upd.execution_id, NULL, upd.parent_execution_id,
            upd.root_execution_id, upd.correlation_id, 'tags_changed', v_node, NULL, NULL,
            lineq.trace_id(v_trace), lineq.span_id(v_event),
            jsonb_build_object('before', cur.tags, 'after', v_after, 'version', upd.version,
                               'cause', v_cause));
    RETURN upd;
END
$$;
REVOKE ALL ON FUNCTION lineq.update_tags(uuid, jsonb, text[], bigint, text, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Cancellation

-- Cancels the unfinished executions of the tree under p_execution_id (itself too with
-- p_include_self), locked in id order: their pending/enqueued/waiting steps are cancelled and the
-- queued messages of enqueued ones deleted. Each execution_cancelled event's parent is its
-- parent execution's cancellation (p_cause for p_execution_id; otherwise the execution's latest
-- event); each step_cancelled's is its execution's. The events are returned in order (as JSON
-- objects) and, with p_write_events, written; without, the caller writes them.
CREATE FUNCTION lineq._cancel_tree(
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
                WHERE st.execution_id = v_id AND st.status IN ('pending', 'enqueued', 'waiting')
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

-- lineq.cancel with two choices its Rust caller makes: p_caller_settles_parent (the caller
-- carries the cancellation to a parent step that waits for this execution and settles the
-- parent, as lineq's orchestrator code does; otherwise that case is refused) and
-- p_write_events. Also returns the id of the target's execution_cancelled event.
CREATE FUNCTION lineq._cancel(
    p_execution_id uuid,
    p_reason text,
    p_actor text,
    p_caller_settles_parent boolean,
    p_write_events boolean
) RETURNS TABLE (execution_id uuid, executions integer, steps integer, messages_deleted integer,
                 cancelled uuid[], ending_event_id uuid, events jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reason text := coalesce(p_reason, '');
    t lineq.executions;
    v_latest uuid;
    r record;
BEGIN
    PERFORM lineq._check_reason('reason', v_reason);
    SELECT * INTO t FROM lineq.executions x WHERE x.execution_id = p_execution_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('execution %s not found', p_execution_id),
            DETAIL = format('what=execution; id=%s', p_execution_id);
    END IF;
    IF t.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('execution %s is already %s; only unfinished executions can be cancelled',
                             p_execution_id, t.status);
    END IF;
    -- Ending the last unfinished child a parent step waits for ends that step, and settling
    -- the parent (retries, dependents, its own end) is the orchestrator's, in Rust for now.
    IF NOT p_caller_settles_parent AND t.parent_waits AND t.parent_step_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM lineq.steps ps
                   JOIN lineq.executions pe ON pe.execution_id = ps.execution_id
                   WHERE ps.step_id = t.parent_step_id AND ps.status = 'waiting'
                     AND pe.status IN ('pending', 'running'))
       AND NOT EXISTS (SELECT 1 FROM lineq.executions sib
                       WHERE sib.parent_step_id = t.parent_step_id AND sib.parent_waits
                         AND sib.execution_id <> p_execution_id
                         AND sib.status NOT IN ('completed', 'failed', 'cancelled')) THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('execution %s is the last unfinished child that step %s of execution %s waits for; '
                             'cancel it with `lineq cancel` or the REST API, which settle the parent step, '
                             'or cancel execution %s', p_execution_id, t.parent_step,
                             t.parent_execution_id, t.parent_execution_id),
            DETAIL = format('parent_execution_id=%s; parent_step_id=%s', t.parent_execution_id,
                            t.parent_step_id);
    END IF;
    SELECT ev.event_id INTO v_latest FROM lineq.events ev
    WHERE ev.execution_id = p_execution_id ORDER BY ev.created_at DESC, ev.event_id DESC LIMIT 1;
    SELECT * INTO r FROM lineq._cancel_tree(p_execution_id, v_latest, v_reason, p_actor, true,
                                            p_write_events);
    RETURN QUERY SELECT p_execution_id, r.executions, r.steps, r.messages_deleted, r.cancelled,
        (SELECT (j ->> 'event_id')::uuid FROM jsonb_array_elements(r.events) j
         WHERE j ->> 'event_type' = 'execution_cancelled' LIMIT 1),
        r.events;
END
$$;
REVOKE ALL ON FUNCTION lineq._cancel(uuid, text, text, boolean, boolean) FROM PUBLIC;

-- Cancels an unfinished execution and everything below it, in one transaction.
CREATE FUNCTION lineq.cancel(
    p_execution_id uuid,
    p_reason text DEFAULT NULL,
    p_actor text DEFAULT NULL
) RETURNS TABLE (execution_id uuid, executions integer, steps integer, messages_deleted integer,
                 cancelled uuid[])
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.execution_id, c.executions, c.steps, c.messages_deleted, c.cancelled
    FROM lineq._cancel(p_execution_id, p_reason, p_actor, false, true) c
$$;
REVOKE ALL ON FUNCTION lineq.cancel(uuid, text, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Reads (with the caller's privileges)

-- One execution; LQ002 when there is none.
CREATE FUNCTION lineq.get_execution(p_execution_id uuid) RETURNS lineq.executions
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e lineq.executions;
BEGIN
    SELECT * INTO e FROM lineq.executions x WHERE x.execution_id = p_execution_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('execution %s not found', p_execution_id),
            DETAIL = format('what=execution; id=%s', p_execution_id);
    END IF;
    RETURN e;
END
$$;

-- Checks a list filter (query.rs ExecutionFilter): each error names the filter as the CLI flag
-- and REST parameter are named.
CREATE FUNCTION lineq._check_list_filter(
    p_tags jsonb, p_has_tags text[], p_metadata jsonb, p_statuses text[], p_workflow text,
    p_since timestamptz, p_until timestamptz, p_after_created_at timestamptz,
    p_after_execution_id uuid
) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    n integer;
BEGIN
    IF p_tags IS NOT NULL THEN
        IF jsonb_typeof(p_tags) <> 'object' THEN
            PERFORM lineq.invalid('tag', 'the tag filter must be a JSON object of strings');
        END IF;
        SELECT count(*) INTO n FROM jsonb_object_keys(p_tags);
        IF n > 20 THEN
            PERFORM lineq.invalid('tag', format('%s tag filters; an execution has at most 20 tags', n));
        END IF;
        FOR k, v IN SELECT j.key, j.value FROM jsonb_each(p_tags) j ORDER BY j.key COLLATE "C" LOOP
            PERFORM lineq._check_tag_key('tag', k, false);
            PERFORM lineq._check_tag_value('tag', k, v);
        END LOOP;
    END IF;
    IF cardinality(p_has_tags) > 20 THEN
        PERFORM lineq.invalid('has_tag', format('%s has_tag filters; an execution has at most 20 tags',
                                                cardinality(p_has_tags)));
    END IF;
    FOREACH k IN ARRAY coalesce(p_has_tags, '{}'::text[]) LOOP
        PERFORM lineq._check_tag_key('has_tag', k, false);
    END LOOP;
    IF p_metadata IS NOT NULL THEN
        IF jsonb_typeof(p_metadata) <> 'object' THEN
            PERFORM lineq.invalid('metadata',
                'the filter must be a JSON object, e.g. {"order":{"id":"12345"}}');
        END IF;
        IF octet_length(p_metadata::text) > 65536 THEN
            PERFORM lineq.invalid('metadata', format('it is %s bytes; the limit is 65536',
                                                     octet_length(p_metadata::text)));
        END IF;
    END IF;
    FOREACH k IN ARRAY coalesce(p_statuses, '{}'::text[]) LOOP
        IF k IS NULL OR k NOT IN ('pending', 'running', 'completed', 'failed', 'cancelled') THEN
            PERFORM lineq.invalid('status', format('%s is not a status: pending, running, completed, failed or cancelled',
                                                   coalesce(to_json(k)::text, 'null')));
        END IF;
    END LOOP;
    IF p_workflow IS NOT NULL THEN
        IF p_workflow = '' OR char_length(p_workflow) > 128 THEN
            PERFORM lineq.invalid('workflow', format('it is %s characters; a workflow name is 1 to 128',
                                                     char_length(p_workflow)));
        END IF;
        IF p_workflow ~ '[\u0001-\u001f\u007f-\u009f]' THEN
            PERFORM lineq.invalid('workflow', 'it contains a control character');
        END IF;
    END IF;
    IF p_since > p_until THEN
        PERFORM lineq.invalid('until', format('until (%s) is before since (%s)', p_until, p_since));
    END IF;
    IF (p_after_created_at IS NULL) <> (p_after_execution_id IS NULL) THEN
        PERFORM lineq.invalid('cursor', 'give both the created_at and the execution_id of the last row of the previous page, or neither');
    END IF;
END
$$;

-- The query of a list: only the conditions asked for, each value a parameter ($1 tags, $2
-- has_tags, $3 metadata, $4 statuses, $5 workflow, $6 parent, $7 root, $8 correlation id,
-- $9 since, $10 until, $11/$12 the cursor, $13 limit), written as `@>` containment and `?&` so
-- that the GIN indexes answer them, and planned for the values given (EXECUTE plans each time).
CREATE FUNCTION lineq._list_executions_query(
    p_tags jsonb, p_has_tags text[], p_metadata jsonb, p_statuses text[], p_workflow text,
    p_parent_execution_id uuid, p_root_execution_id uuid, p_correlation_id uuid,
    p_since timestamptz, p_until timestamptz, p_after_created_at timestamptz,
    p_after_execution_id uuid
) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := 'SELECT * FROM lineq.executions WHERE TRUE';
BEGIN
    IF p_tags IS NOT NULL AND p_tags <> '{}'::jsonb THEN
        -- One containment test for all tags: a single GIN probe. The GIN indexes leave out
        -- empty objects (migration 000008).
        q := q || ' AND tags @> $1 AND tags <> ''{}''::jsonb';
    END IF;
    IF cardinality(p_has_tags) > 0 THEN
        q := q || ' AND tags ?& $2 AND tags <> ''{}''::jsonb';
    END IF;
    IF p_metadata IS NOT NULL THEN
        q := q || ' AND metadata @> $3';
        -- `@> '{}'` matches every row, empty ones too; anything more needs a non-empty one.
        IF p_metadata <> '{}'::jsonb THEN
            q := q || ' AND metadata <> ''{}''::jsonb';
        END IF;
    END IF;
    IF cardinality(p_statuses) > 0 THEN
        q := q || ' AND status = ANY ($4)';
    END IF;
    IF p_workflow IS NOT NULL THEN
        q := q || ' AND workflow_name = $5';
    END IF;
    IF p_parent_execution_id IS NOT NULL THEN
        q := q || ' AND parent_execution_id = $6';
    END IF;
    IF p_root_execution_id IS NOT NULL THEN
        q := q || ' AND root_execution_id = $7';
    END IF;
    IF p_correlation_id IS NOT NULL THEN
        q := q || ' AND correlation_id = $8';
    END IF;
    IF p_since IS NOT NULL THEN
        q := q || ' AND created_at >= $9';
    END IF;
    IF p_until IS NOT NULL THEN
        q := q || ' AND created_at < $10';
    END IF;
    IF p_after_created_at IS NOT NULL THEN
        -- A row comparison, so executions_created_idx (created_at, execution_id) can seek.
        q := q || ' AND (created_at, execution_id) > ($11, $12)';
    END IF;
    RETURN q || ' ORDER BY created_at, execution_id LIMIT $13';
END
$$;

-- lineq.list_executions without its page-size limit (lineq's Rust code asks for one row more
-- than a page, to know whether another follows).
CREATE FUNCTION lineq._list_executions(
    p_tags jsonb, p_has_tags text[], p_metadata jsonb, p_statuses text[], p_workflow text,
    p_parent_execution_id uuid, p_root_execution_id uuid, p_correlation_id uuid,
    p_since timestamptz, p_until timestamptz, p_limit integer,
    p_after_created_at timestamptz, p_after_execution_id uuid
) RETURNS SETOF lineq.executions
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lineq._check_list_filter(p_tags, p_has_tags, p_metadata, p_statuses, p_workflow,
                                     p_since, p_until, p_after_created_at, p_after_execution_id);
    IF p_limit IS NULL OR p_limit < 1 THEN
        PERFORM lineq.invalid('limit', format('it is %s; a page holds 1 to 1000 executions',
                                              coalesce(p_limit::text, 'null')));
    END IF;
    RETURN QUERY EXECUTE lineq._list_executions_query(
            p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
            p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
            p_after_execution_id)
        USING p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
              p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
              p_after_execution_id, p_limit::bigint;
END
$$;

-- Lists the executions that match every filter given, oldest first (created_at, then
-- execution_id), at most p_limit (1–1000). The next page: pass the last row's created_at and
-- execution_id as p_after_created_at and p_after_execution_id.
CREATE FUNCTION lineq.list_executions(
    p_tags jsonb DEFAULT NULL,
    p_has_tags text[] DEFAULT NULL,
    p_metadata jsonb DEFAULT NULL,
    p_statuses text[] DEFAULT NULL,
    p_workflow text DEFAULT NULL,
    p_parent_execution_id uuid DEFAULT NULL,
    p_root_execution_id uuid DEFAULT NULL,
    p_correlation_id uuid DEFAULT NULL,
    p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL,
    p_limit integer DEFAULT 50,
    p_after_created_at timestamptz DEFAULT NULL,
    p_after_execution_id uuid DEFAULT NULL
) RETURNS SETOF lineq.executions
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        PERFORM lineq.invalid('limit', format('it is %s; a page holds 1 to 1000 executions',
                                              coalesce(p_limit::text, 'null')));
    END IF;
    RETURN QUERY SELECT * FROM lineq._list_executions(
        p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
        p_root_execution_id, p_correlation_id, p_since, p_until, p_limit, p_after_created_at,
        p_after_execution_id);
END
$$;

-- PostgreSQL's plan (EXPLAIN (FORMAT JSON), not run) of the query a list with these arguments
-- runs, with the same values bound: for checking that tag and metadata filters use their
-- indexes.
CREATE FUNCTION lineq.explain_list_executions(
    p_tags jsonb DEFAULT NULL,
    p_has_tags text[] DEFAULT NULL,
    p_metadata jsonb DEFAULT NULL,
    p_statuses text[] DEFAULT NULL,
    p_workflow text DEFAULT NULL,
    p_parent_execution_id uuid DEFAULT NULL,
    p_root_execution_id uuid DEFAULT NULL,
    p_correlation_id uuid DEFAULT NULL,
    p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL,
    p_limit integer DEFAULT 50,
    p_after_created_at timestamptz DEFAULT NULL,
    p_after_execution_id uuid DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE  -- EXPLAIN is not allowed in a non-volatile function
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_plan json;
BEGIN
    PERFORM lineq._check_list_filter(p_tags, p_has_tags, p_metadata, p_statuses, p_workflow,
                                     p_since, p_until, p_after_created_at, p_after_execution_id);
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || lineq._list_executions_query(
            p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
            p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
            p_after_execution_id)
        INTO v_plan
        USING p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
              p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
              p_after_execution_id, p_limit::bigint;
    RETURN v_plan::jsonb;
END
$$;

COMMENT ON FUNCTION lineq.update_tags(uuid, jsonb, text[], bigint, text, text) IS
    'Changes the tags of a pending execution (docs/sql-api.md, Operations).';
COMMENT ON FUNCTION lineq.cancel(uuid, text, text) IS
    'Cancels an unfinished execution and its descendants (docs/sql-api.md, Operations).';
COMMENT ON FUNCTION lineq.get_execution(uuid) IS 'One execution; LQ002 when there is none.';
COMMENT ON FUNCTION lineq.list_executions(jsonb, text[], jsonb, text[], text, uuid, uuid, uuid,
    timestamptz, timestamptz, integer, timestamptz, uuid) IS
    'Executions matching every filter given, oldest first, keyset-paged (docs/sql-api.md, Operations).';

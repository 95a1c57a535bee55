-- An execution's history in SQL, a notification when an execution finishes, and lists newest
-- first (docs/sql-api.md, Operations).

-- A one-line reading of an error payload: its message where there is one, else the JSON.
CREATE FUNCTION lineq._describe_error(p_error jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_error IS NULL THEN
        RETURN NULL;
    ELSIF jsonb_typeof(p_error -> 'message') = 'string' THEN
        RETURN p_error ->> 'message';
    ELSIF jsonb_typeof(p_error) = 'object' AND p_error -> 'error' <> 'null'::jsonb THEN
        IF jsonb_typeof(p_error -> 'step') = 'string' THEN
            RETURN format('step %s failed: %s', p_error ->> 'step',
                          lineq._describe_error(p_error -> 'error'));
        END IF;
        RETURN lineq._describe_error(p_error -> 'error');
    ELSIF jsonb_typeof(p_error) = 'string' THEN
        RETURN p_error #>> '{}';
    END IF;
    RETURN p_error::text;
END
$$;

-- One change in an execution's life read from one of its events: NULL for events that change
-- nothing a user follows (the worker's step_result report, action events).
CREATE FUNCTION lineq._history_entry(
    p_execution lineq.executions, p_event_type text, p_payload jsonb, p_step text,
    p_attempt integer,
    OUT kind text, OUT status text, OUT step text, OUT step_status text, OUT version bigint,
    OUT tags_before jsonb, OUT tags_after jsonb, OUT cause text
)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_attempt text := coalesce(' attempt ' || p_attempt, '');
    v_error jsonb := nullif(p_payload -> 'error', 'null'::jsonb);
BEGIN
    kind := 'status';
    CASE p_event_type
    WHEN 'execution_started' THEN
        status := 'pending';
        cause := CASE
            WHEN p_execution.parent_execution_id IS NOT NULL AND p_execution.parent_step IS NOT NULL
                THEN format('spawned by execution %s (step %s)', p_execution.parent_execution_id,
                            p_execution.parent_step)
            WHEN p_execution.parent_execution_id IS NOT NULL
                THEN format('spawned by execution %s', p_execution.parent_execution_id)
            ELSE 'submitted' END;
    WHEN 'execution_completed' THEN
        status := 'completed';
        cause := 'every step completed';
    WHEN 'execution_failed' THEN
        status := 'failed';
        cause := coalesce(lineq._describe_error(v_error), 'a step failed');
    WHEN 'execution_cancelled' THEN
        status := 'cancelled';
        cause := coalesce(p_payload ->> 'reason', p_payload ->> 'cause', 'cancelled');
    WHEN 'tags_changed' THEN
        kind := 'tags';
        version := (p_payload ->> 'version')::bigint;
        tags_before := p_payload -> 'before';
        tags_after := p_payload -> 'after';
        cause := coalesce(p_payload ->> 'cause', '');
    WHEN 'step_result' THEN
        -- The worker's report is not a change of state; the orchestrator's step_* after it is.
        kind := NULL;
    ELSE
        IF p_event_type NOT LIKE 'step\_%' THEN
            kind := NULL;
            RETURN;
        END IF;
        kind := 'step';
        step := coalesce(p_step, p_payload ->> 'step');
        step_status := substr(p_event_type, 6);
        cause := CASE
            WHEN step_status = 'enqueued' AND coalesce(p_attempt, 1) > 1
                THEN format('step %s%s enqueued for a retry', coalesce(step, '?'), v_attempt)
            WHEN step_status = 'completed' AND p_payload ? 'worker_id'
                THEN format('step %s%s completed on %s', coalesce(step, '?'), v_attempt,
                            p_payload ->> 'worker_id')
            WHEN step_status IN ('failed', 'attempt_failed') AND v_error IS NOT NULL
                THEN format('step %s%s failed: %s', coalesce(step, '?'), v_attempt,
                            lineq._describe_error(v_error))
            WHEN step_status IN ('failed', 'attempt_failed')
                THEN format('step %s%s failed', coalesce(step, '?'), v_attempt)
            WHEN step_status = 'waiting'
                THEN format('step %s waits for its child executions', coalesce(step, '?'))
            ELSE format('step %s%s %s', coalesce(step, '?'), v_attempt, step_status) END;
    END CASE;
END
$$;

-- The history of an execution, oldest first: its status changes, its steps' changes (except
-- the worker's step_result report) and its tag changes. LQ002 when there is no such execution.
-- Runs with the caller's privileges: any role that reads lineq's tables may call it.
CREATE FUNCTION lineq.execution_history(p_execution_id uuid)
RETURNS TABLE (
    at timestamptz, kind text, event_id uuid, event_type text, status text, step text,
    step_status text, attempt integer, version bigint, tags_before jsonb, tags_after jsonb,
    cause text
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_execution lineq.executions;
BEGIN
    SELECT * INTO v_execution FROM lineq.executions x WHERE x.execution_id = p_execution_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('execution %s not found', p_execution_id),
            DETAIL = format('what=execution; id=%s', p_execution_id);
    END IF;
    RETURN QUERY
    SELECT e.created_at, h.kind, e.event_id, e.event_type, h.status, h.step, h.step_status,
           e.attempt, h.version, h.tags_before, h.tags_after, h.cause
    FROM lineq.events e
    LEFT JOIN lineq.steps s ON s.step_id = e.step_id
    CROSS JOIN LATERAL lineq._history_entry(v_execution, e.event_type, e.payload, s.name,
                                            e.attempt) h
    WHERE e.execution_id = p_execution_id AND h.kind IS NOT NULL
    ORDER BY e.created_at, e.event_id;
END
$$;

COMMENT ON FUNCTION lineq.execution_history(uuid) IS
    'Status, step and tag changes of one execution, oldest first (docs/sql-api.md, Operations).';

-- `lineq_finished`: the id of every execution that reaches completed, failed or cancelled, sent
-- on commit, whichever code finished it. A client waiting for an execution LISTENs, then reads
-- its status, then waits for its id. The WHEN clause is evaluated without calling the
-- function, so an update that finishes nothing costs nothing more.
CREATE FUNCTION lineq._notify_finished() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('lineq_finished', NEW.execution_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER executions_notify_finished
    AFTER UPDATE OF status ON lineq.executions
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION lineq._notify_finished();

-- Lists newest first: the list functions gain p_newest_first (the cursor then means "older
-- than the last row"). Dropped and made again: an added argument would be an overload, and a
-- call with the old arguments would be ambiguous.
DROP FUNCTION lineq.list_executions(jsonb, text[], jsonb, text[], text, uuid, uuid, uuid,
    timestamptz, timestamptz, integer, timestamptz, uuid);
DROP FUNCTION lineq.explain_list_executions(jsonb, text[], jsonb, text[], text, uuid, uuid, uuid,
    timestamptz, timestamptz, integer, timestamptz, uuid);
DROP FUNCTION lineq._list_executions_query(jsonb, text[], jsonb, text[], text, uuid, uuid, uuid,
    timestamptz, timestamptz, timestamptz, uuid);

-- The query of a list: only the conditions asked for, each value a parameter ($1 tags, $2
-- has_tags, $3 metadata, $4 statuses, $5 workflow, $6 parent, $7 root, $8 correlation id,
-- $9 since, $10 until, $11/$12 the cursor, $13 limit), written as `@>` containment and `?&` so
-- that the GIN indexes answer them, and planned for the values given (EXECUTE plans each time).
-- Only fixed text is added; no argument's value ever becomes part of the query.
CREATE FUNCTION lineq._list_executions_query(
    p_tags jsonb, p_has_tags text[], p_metadata jsonb, p_statuses text[], p_workflow text,
    p_parent_execution_id uuid, p_root_execution_id uuid, p_correlation_id uuid,
    p_since timestamptz, p_until timestamptz, p_after_created_at timestamptz,
    p_after_execution_id uuid, p_newest_first boolean
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
    IF p_newest_first THEN
        IF p_after_created_at IS NOT NULL THEN
            -- A row comparison, so executions_created_idx (created_at, execution_id) can seek.
            q := q || ' AND (created_at, execution_id) < ($11, $12)';
        END IF;
        RETURN q || ' ORDER BY created_at DESC, execution_id DESC LIMIT $13';
    END IF;
    IF p_after_created_at IS NOT NULL THEN
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
    p_after_created_at timestamptz, p_after_execution_id uuid, p_newest_first boolean
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
            p_after_execution_id, coalesce(p_newest_first, false))
        USING p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
              p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
              p_after_execution_id, p_limit::bigint;
END
$$;

-- Lists the executions that match every filter given, oldest first (created_at, then
-- execution_id) or, with p_newest_first, newest first; at most p_limit (1–1000). The next
-- page: pass the last row's created_at and execution_id as p_after_created_at and
-- p_after_execution_id.
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
    p_after_execution_id uuid DEFAULT NULL,
    p_newest_first boolean DEFAULT false
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
        p_after_execution_id, p_newest_first);
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
    p_after_execution_id uuid DEFAULT NULL,
    p_newest_first boolean DEFAULT false
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
            p_after_execution_id, coalesce(p_newest_first, false))
        INTO v_plan
        USING p_tags, p_has_tags, p_metadata, p_statuses, p_workflow, p_parent_execution_id,
              p_root_execution_id, p_correlation_id, p_since, p_until, p_after_created_at,
              p_after_execution_id, p_limit::bigint;
    RETURN v_plan::jsonb;
END
$$;

COMMENT ON FUNCTION lineq.list_executions(jsonb, text[], jsonb, text[], text, uuid, uuid, uuid,
    timestamptz, timestamptz, integer, timestamptz, uuid, boolean) IS
    'Executions matching every filter given, oldest or newest first, keyset-paged (docs/sql-api.md, Operations).';

-- The body of the list as the release before called it (13 arguments, oldest first), for its
-- processes during a rolling upgrade.
CREATE OR REPLACE FUNCTION lineq._list_executions(
    p_tags jsonb, p_has_tags text[], p_metadata jsonb, p_statuses text[], p_workflow text,
    p_parent_execution_id uuid, p_root_execution_id uuid, p_correlation_id uuid,
    p_since timestamptz, p_until timestamptz, p_limit integer,
    p_after_created_at timestamptz, p_after_execution_id uuid
) RETURNS SETOF lineq.executions
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM lineq._list_executions(p_tags, p_has_tags, p_metadata, p_statuses, p_workflow,
        p_parent_execution_id, p_root_execution_id, p_correlation_id, p_since, p_until, p_limit,
        p_after_created_at, p_after_execution_id, false)
$$;

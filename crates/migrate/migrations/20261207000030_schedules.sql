-- Schedules: executions started by a cron expression (docs/schedules.md).
--
-- A schedule is a row of lineq.schedules; an orchestrator fires it when its next_fire_at is
-- due. Cron expressions are evaluated in Rust (the orchestrator and the CLI compute next_fire_at
-- and pass it in); the SQL side checks what it can (the shape of the expression, the time zone
-- against pg_timezone_names, the target by a submit it rolls back) and keeps "due rows".
--
-- Firing is one transaction (lineq._fire_schedule): the due row locked FOR UPDATE SKIP LOCKED,
-- a row in lineq.schedule_fires whose primary key (schedule, occurrence) makes a second fire of
-- one occurrence impossible, a schedule_fired event (the root of the new execution's lineage),
-- the execution by lineq._create_executions, and the schedule moved on to its next occurrence.

CREATE TABLE lineq.schedules (
    schedule_id       uuid PRIMARY KEY,
    namespace         text NOT NULL,
    name              text NOT NULL,
    cron              text NOT NULL,
    timezone          text NOT NULL DEFAULT 'UTC',
    target            text NOT NULL,
    input             jsonb NOT NULL DEFAULT 'null'::jsonb,
    tags              jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(tags) = 'object'),
    -- what happens to occurrences missed while no orchestrator ran (docs/schedules.md)
    missed            text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch-up')),
    catch_up_max      integer CHECK (catch_up_max BETWEEN 1 AND 1000),
    paused            boolean NOT NULL DEFAULT false,
    -- the occurrence to fire next; NULL until an orchestrator has computed it
    next_fire_at      timestamptz,
    last_occurrence   timestamptz,
    last_fired_at     timestamptz,
    last_execution_id uuid,
    last_error        text,
    fired             bigint NOT NULL DEFAULT 0,
    skipped           bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (namespace, name),
    CHECK ((missed = 'catch-up') = (catch_up_max IS NOT NULL))
);

-- What the orchestrators' loop looks for: running schedules by due time.
CREATE INDEX schedules_due_idx ON lineq.schedules (next_fire_at NULLS FIRST) WHERE NOT paused;

COMMENT ON TABLE lineq.schedules IS
    'Cron schedules: each due occurrence is fired once by an orchestrator (docs/schedules.md).';

-- One row per fired occurrence: the key makes a double fire impossible.
CREATE TABLE lineq.schedule_fires (
    schedule_id  uuid NOT NULL REFERENCES lineq.schedules (schedule_id) ON DELETE CASCADE,
    occurrence   timestamptz NOT NULL,
    event_id     uuid NOT NULL,
    execution_id uuid NOT NULL,
    fired_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schedule_id, occurrence)
);

COMMENT ON TABLE lineq.schedule_fires IS
    'The occurrences a schedule fired, with their schedule_fired event and execution.';

-- LQ002 for a schedule that does not exist.
CREATE FUNCTION lineq._schedule_not_found(p_name text, p_namespace text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'LQ002',
        MESSAGE = format('schedule %s not found in namespace %s', p_name, p_namespace),
        DETAIL = format('what=schedule; id=%s', p_name);
END
$$;
REVOKE ALL ON FUNCTION lineq._schedule_not_found(text, text) FROM PUBLIC;

-- The checks of a schedule's name and namespace (LQ001 naming the field).
CREATE FUNCTION lineq._schedule_check_key(p_name text, p_namespace text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
        PERFORM lineq.invalid('name', format(
            'a schedule name is 1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'' (got %s)',
            coalesce(to_jsonb(left(p_name, 140))::text, 'NULL')));
    END IF;
    IF p_namespace IS NULL OR p_namespace !~ '^[a-z][a-z0-9_]{0,31}$' THEN
        PERFORM lineq.invalid('namespace', format(
            'a namespace is 1 to 32 characters of a-z, 0-9 and _, starting with a letter (got %s)',
            coalesce(to_jsonb(left(p_namespace, 40))::text, 'NULL')));
    END IF;
END
$$;
REVOKE ALL ON FUNCTION lineq._schedule_check_key(text, text) FROM PUBLIC;

-- Creates a schedule. Every field is checked and nothing is written on bad input (LQ001 naming
-- the field): the name (unique in its namespace), the cron expression's shape (5 fields, or 6
-- with seconds first, or @yearly/@annually/@monthly/@weekly/@daily/@hourly; the orchestrator's
-- parser has the last word), the time zone (a name in pg_timezone_names), missed ('skip' or
-- 'catch-up'), catch_up_max (1 to 1000, with 'catch-up' only), and target, input, namespace
-- and tags by the rules of lineq.submit: the request is submitted and rolled back, so a
-- schedule is only created when its first fire could be. p_next_fire_at is the first
-- occurrence as the caller computed it; NULL lets the next orchestrator compute it.
CREATE FUNCTION lineq.schedule_create(
    p_name text,
    p_cron text,
    p_target text,
    p_input jsonb DEFAULT 'null'::jsonb,
    p_namespace text DEFAULT 'default',
    p_timezone text DEFAULT 'UTC',
    p_tags jsonb DEFAULT '{}'::jsonb,
    p_missed text DEFAULT 'skip',
    p_catch_up_max integer DEFAULT NULL,
    p_next_fire_at timestamptz DEFAULT NULL
) RETURNS SETOF lineq.schedules
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $$
DECLARE
    v_fields text[];
    v_row lineq.schedules;
    v_state text;
    v_message text;
    v_column text;
BEGIN
    PERFORM lineq._schedule_check_key(p_name, p_namespace);
    IF p_cron IS NULL OR btrim(p_cron) = '' THEN
        PERFORM lineq.invalid('cron', 'it is required: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first');
    END IF;
    IF char_length(p_cron) > 256 THEN
        PERFORM lineq.invalid('cron', format('it is %s characters; the limit is 256', char_length(p_cron)));
    END IF;
    IF btrim(p_cron) !~* '^@(yearly|annually|monthly|weekly|daily|hourly)$' THEN
        v_fields := regexp_split_to_array(btrim(p_cron), '\s+');
        IF cardinality(v_fields) NOT IN (5, 6) THEN
            PERFORM lineq.invalid('cron', format(
                '%s has %s fields; a cron expression has 5 (minute hour day-of-month month day-of-week), or 6 with seconds first',
                to_jsonb(p_cron)::text, cardinality(v_fields)));
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(v_fields) f WHERE f !~ '^[0-9A-Za-z*/,?#-]+$') THEN
            PERFORM lineq.invalid('cron', format(
                '%s: field %s contains characters a cron field does not have',
                to_jsonb(p_cron)::text,
                (SELECT to_jsonb(f)::text FROM unnest(v_fields) f
                 WHERE f !~ '^[0-9A-Za-z*/,?#-]+$' LIMIT 1)));
        END IF;
    END IF;
    IF p_timezone IS NULL OR p_timezone = ''
       OR NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_timezone) THEN
        PERFORM lineq.invalid('timezone', format(
            'unknown time zone %s; use an IANA name such as UTC or Europe/Paris',
            coalesce(to_jsonb(left(p_timezone, 80))::text, 'NULL')));
    END IF;
    IF p_missed IS NULL OR p_missed NOT IN ('skip', 'catch-up') THEN
        PERFORM lineq.invalid('missed', format('it is skip or catch-up (got %s)',
                                               coalesce(to_jsonb(left(p_missed, 40))::text, 'NULL')));
    END IF;
    IF p_missed = 'catch-up' AND p_catch_up_max IS NULL THEN
        PERFORM lineq.invalid('catch_up_max', 'missed = catch-up needs the most missed occurrences to fire: 1 to 1000');
    END IF;
    IF p_missed = 'skip' AND p_catch_up_max IS NOT NULL THEN
        PERFORM lineq.invalid('catch_up_max', format('it applies to missed = catch-up only (got %s with skip)', p_catch_up_max));
    END IF;
    IF p_catch_up_max NOT BETWEEN 1 AND 1000 THEN
        PERFORM lineq.invalid('catch_up_max', format('it is 1 to 1000 (got %s)', p_catch_up_max));
    END IF;
    IF p_target IS NULL OR p_target = '' THEN
        PERFORM lineq.invalid('target', 'it is required: a registered workflow (NAME or NAME@VERSION) or a handler');
    END IF;
    IF jsonb_typeof(coalesce(p_tags, '{}'::jsonb)) <> 'object' THEN
        PERFORM lineq.invalid('tags', format('it must be a JSON object of string values (got %s)', jsonb_typeof(p_tags)));
    END IF;

    -- Target, input, namespace and tags by submit's own rules: submitted, then rolled back.
    BEGIN
        PERFORM 1 FROM lineq._create_executions(
            jsonb_build_array(jsonb_build_object(
                'target', p_target, 'input', coalesce(p_input, 'null'::jsonb),
                'namespace', p_namespace, 'tags', coalesce(p_tags, '{}'::jsonb))),
            'schedule', false);
        RAISE EXCEPTION USING ERRCODE = 'LQ900', MESSAGE = 'rolled back';
    EXCEPTION
        WHEN SQLSTATE 'LQ900' THEN NULL;
        WHEN SQLSTATE 'LQ002' THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            PERFORM lineq.invalid('target', format('%s: there is no such registered workflow (register it first, or name a handler)', v_message));
    END;

    INSERT INTO lineq.schedules AS s (schedule_id, namespace, name, cron, timezone, target,
        input, tags, missed, catch_up_max, next_fire_at)
    VALUES (lineq.uuid_v7(), p_namespace, p_name, btrim(p_cron), p_timezone, p_target,
            coalesce(p_input, 'null'::jsonb), coalesce(p_tags, '{}'::jsonb), p_missed,
            p_catch_up_max, p_next_fire_at)
    ON CONFLICT (namespace, name) DO NOTHING
    RETURNING s.* INTO v_row;
    IF v_row.schedule_id IS NULL THEN
        PERFORM lineq.invalid('name', format(
            'a schedule named %s already exists in namespace %s; delete it first or choose another name',
            to_jsonb(p_name)::text, p_namespace));
    END IF;
    -- Wakes the orchestrators' schedule loops (delivered on commit).
    PERFORM pg_notify('lineq_schedules', v_row.schedule_id::text);
    RETURN NEXT v_row;
END
$$;

-- Pauses a schedule: no occurrence fires until it is resumed. Pausing a paused one changes
-- nothing. Waits for a fire in progress, so no fire follows the pause's commit.
CREATE FUNCTION lineq.schedule_pause(p_name text, p_namespace text DEFAULT 'default')
RETURNS SETOF lineq.schedules
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pg_temp
AS $$
DECLARE
    v_row lineq.schedules;
BEGIN
    PERFORM lineq._schedule_check_key(p_name, p_namespace);
    UPDATE lineq.schedules s
    SET paused = true, updated_at = CASE WHEN s.paused THEN s.updated_at ELSE clock_timestamp() END
    WHERE s.namespace = p_namespace AND s.name = p_name
    RETURNING s.* INTO v_row;
    IF NOT FOUND THEN
        PERFORM lineq._schedule_not_found(p_name, p_namespace);
    END IF;
    RETURN NEXT v_row;
END
$$;

-- Resumes a paused schedule from now on: occurrences that fell while it was paused are not
-- fired. p_next_fire_at is the first occurrence after now as the caller computed it; NULL lets
-- the next orchestrator compute it. Resuming a running one changes nothing.
CREATE FUNCTION lineq.schedule_resume(p_name text, p_namespace text DEFAULT 'default',
                                      p_next_fire_at timestamptz DEFAULT NULL)
RETURNS SETOF lineq.schedules
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pg_temp
AS $$
DECLARE
    v_row lineq.schedules;
BEGIN
    PERFORM lineq._schedule_check_key(p_name, p_namespace);
    IF p_next_fire_at IS NOT NULL AND p_next_fire_at < clock_timestamp() - interval '1 minute' THEN
        PERFORM lineq.invalid('next_fire_at', format('%s is in the past; resuming fires from now on', p_next_fire_at));
    END IF;
    UPDATE lineq.schedules s
    SET paused = false, next_fire_at = p_next_fire_at, last_error = NULL,
        updated_at = clock_timestamp()
    WHERE s.namespace = p_namespace AND s.name = p_name AND s.paused
    RETURNING s.* INTO v_row;
    IF NOT FOUND THEN
        SELECT * INTO v_row FROM lineq.schedules s WHERE s.namespace = p_namespace AND s.name = p_name;
        IF NOT FOUND THEN
            PERFORM lineq._schedule_not_found(p_name, p_namespace);
        END IF;
    ELSE
        PERFORM pg_notify('lineq_schedules', v_row.schedule_id::text);
    END IF;
    RETURN NEXT v_row;
END
$$;

-- Deletes a schedule (and its record of fired occurrences; the executions it started stay).
-- Returns the deleted row.
CREATE FUNCTION lineq.schedule_delete(p_name text, p_namespace text DEFAULT 'default')
RETURNS SETOF lineq.schedules
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pg_temp
AS $$
DECLARE
    v_row lineq.schedules;
BEGIN
    PERFORM lineq._schedule_check_key(p_name, p_namespace);
    DELETE FROM lineq.schedules s
    WHERE s.namespace = p_namespace AND s.name = p_name
    RETURNING s.* INTO v_row;
    IF NOT FOUND THEN
        PERFORM lineq._schedule_not_found(p_name, p_namespace);
    END IF;
    RETURN NEXT v_row;
END
$$;

-- The schedules of a namespace (every namespace when NULL), by namespace and name. Runs with
-- the caller's privileges.
CREATE FUNCTION lineq.schedule_list(p_namespace text DEFAULT NULL)
RETURNS SETOF lineq.schedules
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM lineq.schedules s
    WHERE p_namespace IS NULL OR s.namespace = p_namespace
    ORDER BY s.namespace, s.name
$$;

-- One schedule; LQ002 when there is none. Runs with the caller's privileges.
CREATE FUNCTION lineq.schedule_get(p_name text, p_namespace text DEFAULT 'default')
RETURNS SETOF lineq.schedules
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row lineq.schedules;
BEGIN
    PERFORM lineq._schedule_check_key(p_name, p_namespace);
    SELECT * INTO v_row FROM lineq.schedules s WHERE s.namespace = p_namespace AND s.name = p_name;
    IF NOT FOUND THEN
        PERFORM lineq._schedule_not_found(p_name, p_namespace);
    END IF;
    RETURN NEXT v_row;
END
$$;

-- The orchestrator's claim: up to p_limit running schedules that are due (or have no
-- next_fire_at yet), locked for the caller's transaction; rows another orchestrator holds are
-- skipped.
CREATE FUNCTION lineq._schedules_due(p_limit integer DEFAULT 1)
RETURNS SETOF lineq.schedules
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM lineq.schedules s
    WHERE NOT s.paused AND (s.next_fire_at IS NULL OR s.next_fire_at <= clock_timestamp())
    ORDER BY s.next_fire_at NULLS FIRST
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
$$;
REVOKE ALL ON FUNCTION lineq._schedules_due(integer) FROM PUBLIC;

-- How long until the next running schedule is due (NULL when none is): the loop sleeps that
-- long unless woken.
CREATE FUNCTION lineq._schedules_next_due() RETURNS interval
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(coalesce(s.next_fire_at, '-infinity'::timestamptz)) - clock_timestamp()
    FROM lineq.schedules s WHERE NOT s.paused
$$;
REVOKE ALL ON FUNCTION lineq._schedules_next_due() FROM PUBLIC;

-- Fires one occurrence of a schedule the caller has locked (lineq._schedules_due), in the
-- caller's transaction: the schedule_fires row (a second fire of the occurrence fails on its
-- key), the schedule_fired event, the execution (lineq._create_executions, its lineage
-- starting at that event, with the schedule's tags), and next_fire_at moved to p_next_fire_at
-- (NULL: the expression has no later occurrence, and the schedule is paused). p_skipped missed
-- occurrences from p_skipped_from on were passed over by the missed-occurrence policy. Returns
-- the new execution's id.
CREATE FUNCTION lineq._fire_schedule(p_schedule_id uuid, p_occurrence timestamptz,
                                     p_next_fire_at timestamptz, p_skipped bigint,
                                     p_skipped_from timestamptz, p_node_name text)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, lineq, pgmq, pg_temp
AS $$
DECLARE
    s lineq.schedules;
    v_event uuid := lineq.uuid_v7();
    v_execution uuid := lineq.uuid_v7();
    v_correlation uuid := lineq.uuid_v7();
    v_node text := coalesce(nullif(p_node_name, ''), 'sql');
BEGIN
    SELECT * INTO s FROM lineq.schedules x WHERE x.schedule_id = p_schedule_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ002',
            MESSAGE = format('schedule %s not found', p_schedule_id),
            DETAIL = format('what=schedule; id=%s', p_schedule_id);
    END IF;
    IF s.paused THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('schedule %s is paused', s.name);
    END IF;
    IF p_occurrence IS NULL OR s.next_fire_at IS NULL OR p_occurrence < s.next_fire_at
       OR p_occurrence > clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ004',
            MESSAGE = format('occurrence %s of schedule %s is not due (next_fire_at %s)',
                             p_occurrence, s.name, s.next_fire_at);
    END IF;
    IF p_next_fire_at IS NOT NULL AND p_next_fire_at <= p_occurrence THEN
        PERFORM lineq.invalid('next_fire_at', format('%s is not after the occurrence %s',
                                                     p_next_fire_at, p_occurrence));
    END IF;

    INSERT INTO lineq.schedule_fires (schedule_id, occurrence, event_id, execution_id)
    VALUES (s.schedule_id, p_occurrence, v_event, v_execution);

    INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
        parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
        worker_id, attempt, trace_id, span_id, payload, created_at)
    VALUES (v_event, NULL, v_execution, NULL, NULL, v_execution, v_correlation,
            'schedule_fired', v_node, NULL, NULL, lineq.trace_id(v_correlation),
            lineq.span_id(v_event),
            jsonb_build_object('schedule', s.name, 'schedule_id', s.schedule_id,
                               'namespace', s.namespace, 'occurrence', p_occurrence,
                               'cron', s.cron, 'timezone', s.timezone,
                               'skipped', coalesce(p_skipped, 0),
                               'skipped_from', p_skipped_from),
            clock_timestamp());

    PERFORM 1 FROM lineq._create_executions(
        jsonb_build_array(jsonb_build_object(
            'target', s.target, 'input', s.input, 'namespace', s.namespace, 'tags', s.tags,
            'execution_id', v_execution, 'correlation_id', v_correlation,
            'parent_event_id', v_event)),
        v_node, true);

    UPDATE lineq.schedules x
    SET next_fire_at = p_next_fire_at,
        paused = x.paused OR p_next_fire_at IS NULL,
        last_occurrence = p_occurrence, last_fired_at = clock_timestamp(),
        last_execution_id = v_execution, last_error = NULL,
        fired = x.fired + 1, skipped = x.skipped + coalesce(p_skipped, 0),
        updated_at = clock_timestamp()
    WHERE x.schedule_id = s.schedule_id;
    RETURN v_execution;
END
$$;
REVOKE ALL ON FUNCTION lineq._fire_schedule(uuid, timestamptz, timestamptz, bigint, timestamptz, text) FROM PUBLIC;

-- Moves a schedule the caller has locked on without firing: its first next_fire_at (when it
-- has none), or past an occurrence that could not be fired (p_error says why, kept in
-- last_error; the occurrence is counted as skipped). p_pause pauses it (an expression the
-- orchestrator cannot evaluate, or one with no later occurrence).
CREATE FUNCTION lineq._schedule_advance(p_schedule_id uuid, p_expected timestamptz,
                                        p_next_fire_at timestamptz, p_error text,
                                        p_pause boolean)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH u AS (
        UPDATE lineq.schedules s
        SET next_fire_at = p_next_fire_at,
            paused = s.paused OR p_pause,
            last_error = coalesce(left(p_error, 2000), s.last_error),
            skipped = s.skipped + CASE WHEN p_error IS NOT NULL AND p_expected IS NOT NULL
                                       THEN 1 ELSE 0 END,
            updated_at = clock_timestamp()
        WHERE s.schedule_id = p_schedule_id
          AND s.next_fire_at IS NOT DISTINCT FROM p_expected
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;
REVOKE ALL ON FUNCTION lineq._schedule_advance(uuid, timestamptz, timestamptz, text, boolean) FROM PUBLIC;

-- The roles that may manage schedules are granted these by `lineq migrate --roles`.
REVOKE ALL ON FUNCTION lineq.schedule_create(text, text, text, jsonb, text, text, jsonb, text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq.schedule_pause(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq.schedule_resume(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION lineq.schedule_delete(text, text) FROM PUBLIC;

COMMENT ON FUNCTION lineq.schedule_create(text, text, text, jsonb, text, text, jsonb, text, integer, timestamptz) IS
    'Creates a cron schedule that starts an execution of a target at each occurrence (docs/schedules.md).';
COMMENT ON FUNCTION lineq.schedule_pause(text, text) IS 'Pauses a schedule: nothing fires until it is resumed.';
COMMENT ON FUNCTION lineq.schedule_resume(text, text, timestamptz) IS 'Resumes a paused schedule from now on.';
COMMENT ON FUNCTION lineq.schedule_delete(text, text) IS 'Deletes a schedule; the executions it started stay.';
COMMENT ON FUNCTION lineq.schedule_list(text) IS 'The schedules of a namespace, or of every namespace.';
COMMENT ON FUNCTION lineq.schedule_get(text, text) IS 'One schedule by namespace and name.';

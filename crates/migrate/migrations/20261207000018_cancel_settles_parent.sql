-- lineq.cancel from SQL ends any child execution, also the last one a step of a running parent
-- waits for: the parent is settled by an orchestrator, told by a `child_finished` message on the
-- results queue that commits with the cancellation (docs/sql-api.md, cancel).

CREATE OR REPLACE FUNCTION lineq._cancel(
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
    v_ending uuid;
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
    SELECT ev.event_id INTO v_latest FROM lineq.events ev
    WHERE ev.execution_id = p_execution_id ORDER BY ev.created_at DESC, ev.event_id DESC LIMIT 1;
    SELECT * INTO r FROM lineq._cancel_tree(p_execution_id, v_latest, v_reason, p_actor, true,
                                            p_write_events);
    v_ending := (SELECT (j ->> 'event_id')::uuid FROM jsonb_array_elements(r.events) j
                 WHERE j ->> 'event_type' = 'execution_cancelled' LIMIT 1);
    -- A step of a running parent waits for this execution: ending it may end that step, and
    -- what follows (the parent's retries, dependents, its own end) is the orchestrator's
    -- settling. It gets a `child_finished` message on the results queue, sent on commit with
    -- the cancellation.
    IF NOT p_caller_settles_parent AND t.parent_waits AND t.parent_step_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM lineq.steps ps
                   JOIN lineq.executions pe ON pe.execution_id = ps.execution_id
                   WHERE ps.step_id = t.parent_step_id AND ps.status = 'waiting'
                     AND pe.status IN ('pending', 'running')) THEN
        -- Its meta is the lineage of the child's cancellation, like every message's.
        INSERT INTO pgmq.q_lineq_results (vt, message)
        VALUES (clock_timestamp(), jsonb_build_object(
            'kind', 'child_finished', 'execution_id', p_execution_id,
            'ending_event_id', v_ending,
            'meta', jsonb_build_object(
                'correlation_id', t.correlation_id, 'parent_event_id', v_ending,
                'parent_execution_id', t.parent_execution_id,
                'root_execution_id', t.root_execution_id,
                'traceparent', lineq.traceparent(lineq._trace_correlation_id(p_execution_id), v_ending),
                'tracestate', '')));
        PERFORM pg_notify('lineq_results', 'lineq_results');
    END IF;
    RETURN QUERY SELECT p_execution_id, r.executions, r.steps, r.messages_deleted, r.cancelled,
        v_ending, r.events;
END
$$;

-- Run by tools/console-bench/fill.sh per batch: fills lineq.executions, steps and events with
-- copies :lo to :hi of the one real execution already in the database (an `echo` task run by a
-- real worker and orchestrator). Of every 100 copies: 3 pending, 1 running, 5 failed, 1
-- cancelled, 90 completed; 60 run `echo`, the rest `handler_0`..`handler_39`; 9 in 10 have
-- tags {customer: c0..c999, region: eu|us|ap|sa} (+ vip=yes for 1 in 100); half have metadata
-- {order: {id}}; every 20th is a child of the one before it.
\set ON_ERROR_STOP on
CREATE TEMP TABLE t_exec AS SELECT * FROM lineq.executions WHERE idempotency_key IS NULL AND tags = '{"customer": "acme"}' ORDER BY created_at LIMIT 1;
CREATE TEMP TABLE t_step AS SELECT s.* FROM lineq.steps s JOIN t_exec USING (execution_id);
CREATE TEMP TABLE t_ev AS SELECT ev.* FROM lineq.events ev JOIN t_exec USING (execution_id);
CREATE TEMP TABLE g AS
SELECT i,
       md5('e' || i)::uuid AS id,
       md5('s' || i)::uuid AS sid,
       now() - interval '1 day' + (i * interval '80 ms') AS at,
       CASE WHEN i % 100 < 3 THEN 'pending' WHEN i % 100 = 3 THEN 'running'
            WHEN i % 100 BETWEEN 4 AND 8 THEN 'failed' WHEN i % 100 = 9 THEN 'cancelled'
            ELSE 'completed' END AS status,
       CASE WHEN i % 100 < 60 THEN 'echo' ELSE 'handler_' || (i % 40) END AS wf,
       CASE WHEN i % 10 = 9 THEN '{}'::jsonb
            ELSE jsonb_build_object('customer', 'c' || (i % 1000),
                                    'region', (ARRAY['eu','us','ap','sa'])[1 + i % 4])
                 || CASE WHEN i % 100 = 0 THEN '{"vip":"yes"}'::jsonb ELSE '{}'::jsonb END END AS tags,
       CASE WHEN i % 2 = 0 THEN jsonb_build_object('order', jsonb_build_object('id', i::text))
            ELSE '{}'::jsonb END AS metadata,
       CASE WHEN i % 20 = 0 THEN md5('e' || (i - 1))::uuid END AS parent
FROM generate_series(:lo, :hi) i;
INSERT INTO lineq.executions (execution_id, workflow_name, workflow_version, namespace, status,
    input, output, error, correlation_id, parent_correlation_id, parent_execution_id,
    root_execution_id, parent_event_id, parent_step, tags, metadata, idempotency_key, priority,
    version, created_at, updated_at, finished_at, kind, parent_step_id, parent_waits)
SELECT g.id, g.wf, 1, t.namespace, g.status, jsonb_build_object('n', g.i),
       CASE WHEN g.status = 'completed' THEN jsonb_build_object('n', g.i) END,
       CASE WHEN g.status = 'failed' THEN '{"message":"boom"}'::jsonb END,
       md5('c' || g.i)::uuid, CASE WHEN g.parent IS NOT NULL THEN md5('c' || (g.i - 1))::uuid END,
       g.parent, coalesce(g.parent, g.id), NULL,
       CASE WHEN g.parent IS NOT NULL THEN 'echo' END, g.tags, g.metadata, NULL, 0, 1,
       g.at, g.at + interval '40 ms',
       CASE WHEN g.status IN ('completed','failed','cancelled') THEN g.at + interval '40 ms' END,
       t.kind, CASE WHEN g.parent IS NOT NULL THEN md5('s' || (g.i - 1))::uuid END, false
FROM g, t_exec t ORDER BY g.i;
INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
    depends_on, attempts, max_attempts, timeout_ms, input, output, error, msg_id, worker_id,
    created_at, updated_at, finished_at, retry, on_failure, params, position)
SELECT g.sid, g.id, s.name, g.wf, s.namespace, s.queue,
       CASE g.status WHEN 'pending' THEN 'enqueued' WHEN 'running' THEN 'enqueued' ELSE g.status END,
       s.depends_on, s.attempts, s.max_attempts, s.timeout_ms, jsonb_build_object('n', g.i),
       CASE WHEN g.status = 'completed' THEN jsonb_build_object('n', g.i) END,
       CASE WHEN g.status = 'failed' THEN '{"message":"boom"}'::jsonb END, s.msg_id, s.worker_id,
       g.at, g.at + interval '40 ms',
       CASE WHEN g.status IN ('completed','failed','cancelled') THEN g.at + interval '40 ms' END,
       s.retry, s.on_failure, s.params, s.position
FROM g, t_step s;
-- Every event of the template up to the state the copy is in (a pending copy stops after
-- step_enqueued, a finished one has all eight), ids derived from the copy's number.
INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id, parent_execution_id,
    root_execution_id, correlation_id, event_type, node_name, worker_id, attempt, trace_id,
    span_id, payload, created_at)
SELECT md5(g.i || ':' || ev.event_id)::uuid,
       CASE WHEN ev.parent_event_id IS NOT NULL THEN md5(g.i || ':' || ev.parent_event_id)::uuid END,
       g.id, CASE WHEN ev.step_id IS NOT NULL THEN g.sid END, g.parent, coalesce(g.parent, g.id),
       md5('c' || g.i)::uuid, ev.event_type, ev.node_name, ev.worker_id, ev.attempt,
       replace(md5('c' || g.i), '-', ''), ev.span_id,
       CASE WHEN ev.event_type = 'execution_completed' AND g.status <> 'completed'
            THEN jsonb_build_object('status', g.status) ELSE ev.payload END,
       g.at + (ev.created_at - t.created_at)
FROM g, t_ev ev, t_exec t
WHERE g.status NOT IN ('pending', 'running')
   OR ev.event_type IN ('execution_started', 'workflow_initialized', 'step_enqueued');

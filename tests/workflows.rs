//! Workflows with real worker processes: a diamond, a fan-out of 50, three levels of child
//! executions, retries, exhaustion, a timeout, cancellation with running children, a worker
//! killed mid-step and a poison message. Each asserts the final states AND the exact shape of
//! the event tree of the whole root execution (children included).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_core::event::EventRow;
use lineq_core::execution::{ExecutionStatus, get_execution, steps_of};
use lineq_orchestrator::workflow::store;
use lineq_orchestrator::workflow::{OnFailure, RetryPolicy, StepDefinition, WorkflowDefinition};
use lineq_testkit::*;

/// `t(kids…)` with kids sorted, as `tree_shape` renders.
fn n(t: &str, mut kids: Vec<String>) -> String {
    kids.sort();
    if kids.is_empty() {
        t.to_string()
    } else {
        format!("{t}({})", kids.join(","))
    }
}

/// An attempt that succeeded; `after` hangs off its `step_completed`.
fn ok_step(after: Vec<String>) -> String {
    n(
        "step_enqueued",
        vec![n(
            "action_started",
            vec![
                n("action_completed", vec![]),
                n("step_result", vec![n("step_completed", after)]),
            ],
        )],
    )
}

/// An attempt that failed and was retried; the retry's subtree hangs off `step_attempt_failed`.
fn retried(next: String) -> String {
    n(
        "step_enqueued",
        vec![n(
            "action_started",
            vec![
                n("action_failed", vec![]),
                n("step_result", vec![n("step_attempt_failed", vec![next])]),
            ],
        )],
    )
}

fn execution(first_step: String) -> String {
    n(
        "execution_started",
        vec![n("workflow_initialized", vec![first_step])],
    )
}

async fn tree_of_root(db: &TestDb, root: Uuid) -> (String, Vec<EventRow>) {
    let events: Vec<EventRow> = sqlx::query_as(
        r#"SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name AS step_name,
                  e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
                  e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
           FROM lineq.events e LEFT JOIN lineq.steps s ON s.step_id = e.step_id
           WHERE e.root_execution_id = $1 ORDER BY e.created_at, e.event_id"#,
    )
    .bind(root)
    .fetch_all(&db.pool)
    .await
    .expect("events");
    // And `lineq lineage check` agrees the tree is whole (archived messages' meta included).
    let report = lineq_read::lineage::check::check_root(&db.pool, root)
        .await
        .expect("lineage check");
    assert!(report.is_whole(), "lineage check of {root}: {report:?}");
    (tree_shape(&events), events)
}

/// A `step_enqueued` event (id, step, attempt, payload `msg_id`), its step row (`msg_id`,
/// `attempts`) and the archived message the payload names.
type EnqueuedMessage = (
    Uuid,
    Uuid,
    Option<i32>,
    i64,
    Option<i64>,
    i32,
    Option<Value>,
);

/// Every `step_enqueued` of the tree names (payload `msg_id`) the archived message that carried
/// its step: the message's step and parent event are the event's, and the step row records the
/// message of its latest attempt. Returns how many messages were checked.
async fn assert_messages_match_steps(db: &TestDb, root: Uuid) -> usize {
    let rows: Vec<EnqueuedMessage> = sqlx::query_as(
        r#"SELECT e.event_id, e.step_id, e.attempt, (e.payload->>'msg_id')::bigint,
                      s.msg_id, s.attempts, a.message
               FROM lineq.events e
               JOIN lineq.steps s ON s.step_id = e.step_id
               LEFT JOIN pgmq.a_lineq_steps_default a
                      ON a.msg_id = (e.payload->>'msg_id')::bigint
               WHERE e.root_execution_id = $1 AND e.event_type = 'step_enqueued'"#,
    )
    .bind(root)
    .fetch_all(&db.pool)
    .await
    .expect("step_enqueued events and their messages");
    for (event_id, step_id, attempt, msg_id, row_msg_id, attempts, message) in &rows {
        let m = message
            .as_ref()
            .unwrap_or_else(|| panic!("step_enqueued {event_id}: no archived message {msg_id}"));
        assert_eq!(m["step_id"], json!(step_id), "message {msg_id}");
        assert_eq!(
            m["meta"]["parent_event_id"],
            json!(event_id),
            "message {msg_id}"
        );
        if *attempt == Some(*attempts) {
            assert_eq!(
                *row_msg_id,
                Some(*msg_id),
                "step {step_id} records its message"
            );
        }
    }
    rows.len()
}

struct System {
    db: TestDb,
    procs: Vec<Proc>,
    client: Client,
}

impl System {
    async fn start(workers: &[&[&str]]) -> Self {
        let db = TestDb::new().await;
        let mut procs = vec![Proc::start(
            &db.url,
            "orchestrator",
            &["orchestrator", "--poll-interval-ms", "200"],
        )];
        for (i, extra) in workers.iter().enumerate() {
            let mut args = vec!["worker", "--poll-interval-ms", "200"];
            args.extend_from_slice(extra);
            procs.push(Proc::start(&db.url, &format!("worker{i}"), &args));
        }
        let client = Client::new(db.pool.clone());
        Self { db, procs, client }
    }

    async fn register(&self, wf: WorkflowDefinition) {
        store::register(&self.db.pool, &wf).await.expect("register");
    }

    async fn submit(&self, target: &str, input: Value) -> Uuid {
        self.client
            .submit(SubmitRequest::new(target).input(input))
            .await
            .expect("submit")
            .execution
            .execution_id
    }

    async fn finish(&self, ids: &[Uuid]) {
        wait_all_finished(&self.db.pool, ids, Duration::from_secs(60)).await;
    }

    async fn stop(mut self) {
        for p in self.procs.iter_mut().rev() {
            if p.is_running() {
                let status = p.terminate(Duration::from_secs(30));
                assert!(
                    status.success(),
                    "{} exited {status}: {}",
                    p.name,
                    p.log_text()
                );
            }
        }
        self.db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_fans_out_and_in() {
    let sys = System::start(&[&[], &[]]).await;
    sys.register(
        WorkflowDefinition::new("diamond")
            .step(StepDefinition::new("a", "echo"))
            .step(StepDefinition::new("b", "echo").depends_on(["a"]))
            .step(StepDefinition::new("c", "echo").depends_on(["a"]))
            .step(StepDefinition::new("d", "echo").depends_on(["b", "c"])),
    )
    .await;
    let id = sys.submit("diamond", json!({"order": 7})).await;
    sys.finish(&[id]).await;

    let e = get_execution(&sys.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed);
    assert_eq!(e.kind, "workflow");
    let out = e.output.expect("output");
    // Each step gets the execution input and its dependencies' outputs by name.
    assert_eq!(out["a"], json!({"input": {"order": 7}, "steps": {}}));
    assert_eq!(out["b"]["steps"]["a"], out["a"]);
    assert_eq!(out["d"]["steps"]["b"], out["b"]);
    assert_eq!(out["d"]["steps"]["c"], out["c"]);

    let (shape, events) = tree_of_root(&sys.db, id).await;
    let d = ok_step(vec![n("execution_completed", vec![])]);
    let expected = execution(ok_step(vec![ok_step(vec![d]), ok_step(vec![])]));
    assert_eq!(shape, expected);
    // d was enqueued by whichever of b and c finished last.
    let d_enq = events
        .iter()
        .find(|e| e.event_type == "step_enqueued" && e.step_name.as_deref() == Some("d"))
        .expect("d");
    let parent = events
        .iter()
        .find(|e| Some(e.event_id) == d_enq.parent_event_id)
        .expect("parent");
    assert_eq!(parent.event_type, "step_completed");
    assert!(matches!(parent.step_name.as_deref(), Some("b" | "c")));
    assert_eq!(assert_messages_match_steps(&sys.db, id).await, 4);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_of_fifty_parallel_steps_on_two_workers() {
    let sys = System::start(&[&["--concurrency", "10"], &["--concurrency", "10"]]).await;
    let mut wf = WorkflowDefinition::new("fanout").step(StepDefinition::new("start", "echo"));
    let names: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
    for name in &names {
        wf = wf.step(
            StepDefinition::new(name.clone(), "sleep")
                .depends_on(["start"])
                .params(json!({"ms": 20})),
        );
    }
    wf = wf.step(StepDefinition::new("join", "echo").depends_on(names.clone()));
    sys.register(wf).await;
    // `sleep` reads {"ms": N} at the top of its input; steps get {"input","steps","params"},
    // so give the execution input the same field.
    let id = sys.submit("fanout", json!({"ms": 20})).await;
    sys.finish(&[id]).await;

    let e = get_execution(&sys.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    let steps = steps_of(&sys.db.pool, id).await.expect("steps");
    assert_eq!(steps.len(), 52);
    let join = steps.iter().find(|s| s.name == "join").expect("join");
    let join_input = join.input.as_ref().expect("input");
    assert_eq!(
        join_input["steps"].as_object().expect("deps").len(),
        50,
        "fan-in sees all 50"
    );
    let workers: std::collections::HashSet<_> = steps
        .iter()
        .filter(|s| s.name.starts_with('p'))
        .filter_map(|s| s.worker_id.clone())
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the branches ran on both workers: {workers:?}"
    );

    let (shape, _) = tree_of_root(&sys.db, id).await;
    let mut branches = vec![ok_step(vec![ok_step(vec![n(
        "execution_completed",
        vec![],
    )])])];
    branches.extend((0..49).map(|_| ok_step(vec![])));
    assert_eq!(shape, execution(ok_step(branches)));
    // The 50 branches were sent by one statement: each message went to its own step.
    assert_eq!(assert_messages_match_steps(&sys.db, id).await, 52);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_levels_of_child_executions() {
    let sys = System::start(&[&[], &[]]).await;
    let leaf = json!({"children": [{"target": "echo", "input": {"deep": true}}], "wait": true});
    let mid = json!({"children": [{"target": "spawn", "input": leaf}], "wait": true});
    let top = json!({"children": [{"target": "spawn", "input": mid}], "wait": true});
    let root = sys.submit("spawn", top).await;
    sys.finish(&[root]).await;

    let r = get_execution(&sys.db.pool, root).await.expect("root");
    assert_eq!(r.status, ExecutionStatus::Completed, "{:?}", r.error);
    assert_eq!(
        r.output,
        Some(json!({"deep": true})),
        "each waiting step completes with its child's output"
    );

    // The chain root → c1 → c2 → c3, each linked to its parent.
    let mut chain = vec![r.clone()];
    for _ in 0..3 {
        let parent = chain.last().expect("parent").clone();
        let child_id: Uuid = sqlx::query_scalar(
            "SELECT execution_id FROM lineq.executions WHERE parent_execution_id = $1",
        )
        .bind(parent.execution_id)
        .fetch_one(&sys.db.pool)
        .await
        .expect("one child");
        let child = get_execution(&sys.db.pool, child_id).await.expect("child");
        assert_eq!(child.status, ExecutionStatus::Completed);
        assert_eq!(child.root_execution_id, root);
        assert_eq!(child.parent_correlation_id, Some(parent.correlation_id));
        assert_ne!(
            child.correlation_id, parent.correlation_id,
            "children get their own correlation id"
        );
        assert_eq!(child.parent_step.as_deref(), Some("spawn"));
        assert!(child.parent_waits);
        // Its first event hangs off the parent step's report.
        let (ptype, pexec): (String, Uuid) = sqlx::query_as(
            "SELECT p.event_type, p.execution_id FROM lineq.events c
             JOIN lineq.events p ON p.event_id = c.parent_event_id
             WHERE c.execution_id = $1 AND c.event_type = 'execution_started'",
        )
        .bind(child_id)
        .fetch_one(&sys.db.pool)
        .await
        .expect("parent of child's execution_started");
        assert_eq!(
            (ptype.as_str(), pexec),
            ("step_result", parent.execution_id)
        );
        chain.push(child);
    }
    assert_eq!(sys.db.count("lineq.executions").await, 4);

    let (shape, events) = tree_of_root(&sys.db, root).await;
    // Completion climbs back up: each child's end completes its parent's waiting step.
    let c1 = n("step_completed", vec![n("execution_completed", vec![])]);
    let e1 = n("execution_completed", vec![c1]);
    let c2 = n("step_completed", vec![e1]);
    let e2 = n("execution_completed", vec![c2]);
    let c3 = n("step_completed", vec![e2]);
    let e3 = n("execution_completed", vec![c3]);
    let waiting = |child: String| {
        n(
            "step_enqueued",
            vec![n(
                "action_started",
                vec![
                    n("action_completed", vec![]),
                    n("step_result", vec![n("step_waiting", vec![]), child]),
                ],
            )],
        )
    };
    let child3 = execution(ok_step(vec![e3]));
    let child2 = execution(waiting(child3));
    let child1 = execution(waiting(child2));
    assert_eq!(shape, execution(waiting(child1)));
    // One trace for the whole tree: every event carries the root's correlation id as trace id.
    let trace = r.correlation_id.simple().to_string();
    assert!(
        events
            .iter()
            .all(|e| e.trace_id.as_deref() == Some(trace.as_str()))
    );
    sys.stop().await;
}

fn flaky(name: &str, fail_attempts: i64, max_attempts: u32) -> WorkflowDefinition {
    WorkflowDefinition::new(name).step(
        StepDefinition::new("charge", "flaky")
            .retry(RetryPolicy {
                max_attempts,
                backoff_ms: 50,
                max_backoff_ms: 200,
                ..Default::default()
            })
            .params(json!({"fail_attempts": fail_attempts})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_success() {
    let sys = System::start(&[&[]]).await;
    sys.register(flaky("retry_ok", 2, 3)).await;
    let id = sys.submit("retry_ok", json!({"amount": 5})).await;
    sys.finish(&[id]).await;

    let e = get_execution(&sys.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    let step = &steps_of(&sys.db.pool, id).await.expect("steps")[0];
    assert_eq!((step.attempts, step.max_attempts), (3, 3));

    let (shape, events) = tree_of_root(&sys.db, id).await;
    let last = ok_step(vec![n("execution_completed", vec![])]);
    assert_eq!(shape, execution(retried(retried(last))));
    // Each retry's step_enqueued hangs off the failure and carries attempt and reason in meta.
    let retries: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.event_type == "step_enqueued" && e.attempt > Some(1))
        .collect();
    assert_eq!(retries.len(), 2);
    for r in retries {
        let parent = events
            .iter()
            .find(|e| Some(e.event_id) == r.parent_event_id)
            .expect("parent");
        assert_eq!(parent.event_type, "step_attempt_failed");
        assert_eq!(parent.attempt.map(|a| a + 1), r.attempt);
        // The retry's message stayed hidden for the backoff the failure announced.
        let delay_ms = parent.payload["delay_ms"].as_i64().expect("delay_ms");
        // Jitter draws from half the backoff to all of it (backoff_ms 50, doubling, max 200).
        assert!((25..=200).contains(&delay_ms), "delay_ms {delay_ms}");
        let started = events
            .iter()
            .find(|e| e.event_type == "action_started" && e.parent_event_id == Some(r.event_id))
            .expect("the retry started");
        let waited = (started.created_at - parent.created_at).num_milliseconds();
        assert!(
            waited >= delay_ms,
            "retry started after {waited} ms, before its {delay_ms} ms backoff"
        );
        let meta: Value = sqlx::query_scalar(
            "SELECT message->'meta' FROM pgmq.a_lineq_steps_default
             WHERE (message->'meta'->>'parent_event_id')::uuid = $1",
        )
        .bind(r.event_id)
        .fetch_one(&sys.db.pool)
        .await
        .expect("archived retry message");
        assert_eq!(meta["attempt"], json!(r.attempt));
        let reason = meta["retry_reason"].as_str().expect("reason");
        assert!(
            reason.starts_with("flaky:") && reason.contains("fails on purpose"),
            "{reason}"
        );
    }
    // Retries are sent with a delay, by the same statement that records them on the step.
    assert_eq!(assert_messages_match_steps(&sys.db, id).await, 3);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_exhaustion_fails_the_step_unless_it_may_continue() {
    let sys = System::start(&[&[]]).await;
    sys.register(flaky("retry_exhausted", 5, 2)).await;
    let mut cont = flaky("continue_on_failure", 5, 1);
    cont.steps[0].on_failure = OnFailure::Continue;
    cont = cont.step(StepDefinition::new("after", "echo").depends_on(["charge"]));
    sys.register(cont).await;
    let failed = sys.submit("retry_exhausted", json!(null)).await;
    let continued = sys.submit("continue_on_failure", json!(null)).await;
    sys.finish(&[failed, continued]).await;

    let e = get_execution(&sys.db.pool, failed)
        .await
        .expect("execution");
    assert_eq!(e.status, ExecutionStatus::Failed);
    let err = e.error.expect("error");
    assert_eq!(err["step"], "charge");
    assert_eq!(err["error"]["kind"], "flaky");
    let step = &steps_of(&sys.db.pool, failed).await.expect("steps")[0];
    assert_eq!(
        (step.status.to_string().as_str(), step.attempts),
        ("failed", 2)
    );
    let (shape, _) = tree_of_root(&sys.db, failed).await;
    let last = n(
        "step_enqueued",
        vec![n(
            "action_started",
            vec![
                n("action_failed", vec![]),
                n(
                    "step_result",
                    vec![n("step_failed", vec![n("execution_failed", vec![])])],
                ),
            ],
        )],
    );
    assert_eq!(shape, execution(retried(last)));

    let e = get_execution(&sys.db.pool, continued)
        .await
        .expect("execution");
    assert_eq!(
        e.status,
        ExecutionStatus::Completed,
        "on_failure: continue goes on"
    );
    let (shape, _) = tree_of_root(&sys.db, continued).await;
    let after = ok_step(vec![n("execution_completed", vec![])]);
    let charge = n(
        "step_enqueued",
        vec![n(
            "action_started",
            vec![
                n("action_failed", vec![]),
                n("step_result", vec![n("step_failed", vec![after])]),
            ],
        )],
    );
    assert_eq!(shape, execution(charge));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_fails_the_attempt() {
    let sys = System::start(&[&[]]).await;
    sys.register(
        WorkflowDefinition::new("slow").step(
            StepDefinition::new("nap", "sleep")
                .timeout_ms(300)
                .params(json!({"ms": 10_000})),
        ),
    )
    .await;
    let started = std::time::Instant::now();
    let id = sys.submit("slow", json!(null)).await;
    sys.finish(&[id]).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the handler was not cut short"
    );
    let e = get_execution(&sys.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(e.error.expect("error")["error"]["kind"], "timeout");
    let (shape, _) = tree_of_root(&sys.db, id).await;
    assert_eq!(shape, ONE_STEP_FAILED);
    sys.stop().await;
}

/// `lineq.cancel` from plain SQL, on the last child a step of a running parent waits for: the
/// child is cancelled at once, and an orchestrator settles the parent (told by the
/// `child_finished` message that commits with the cancellation): the waiting step fails with
/// `child_failed`, so the parent fails, its lineage whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waited_for_child_from_sql_settles_its_parent() {
    let sys = System::start(&[&["--concurrency", "4"]]).await;
    let input = json!({"children": [{"target": "sleep", "input": {"ms": 30_000}}], "wait": true});
    let root = sys.submit("spawn", input).await;
    let child: Uuid = eventually(Duration::from_secs(30), "the child running", || async {
        sqlx::query_scalar(
            "SELECT execution_id FROM lineq.events WHERE root_execution_id = $1
             AND execution_id <> $1 AND event_type = 'action_started'",
        )
        .bind(root)
        .fetch_optional(&sys.db.pool)
        .await
        .ok()?
    })
    .await;
    let (executions, cancelled): (i32, Vec<Uuid>) =
        sqlx::query_as("SELECT executions, cancelled FROM lineq.cancel($1, 'not needed')")
            .bind(child)
            .fetch_one(&sys.db.pool)
            .await
            .expect("cancel from SQL");
    assert_eq!((executions, cancelled), (1, vec![child]));
    sys.finish(&[root]).await;
    let (status, error): (String, Value) =
        sqlx::query_as("SELECT status, error FROM lineq.executions WHERE execution_id = $1")
            .bind(root)
            .fetch_one(&sys.db.pool)
            .await
            .expect("root");
    assert_eq!(status, "failed");
    assert_eq!(error["error"]["kind"], "child_failed", "{error}");
    let step_failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE execution_id = $1 AND event_type = 'step_failed'",
    )
    .bind(root)
    .fetch_one(&sys.db.pool)
    .await
    .expect("events");
    assert_eq!(step_failed, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_lineq_results")
        .fetch_one(&sys.db.pool)
        .await
        .expect("results queue");
    assert_eq!(left, 0, "the child_finished message was taken");
    let check = lineq(&sys.db.url, &["lineage", "check", &root.to_string()]);
    assert!(check.status.success(), "{}", stdout(&check));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_with_running_children() {
    let sys = System::start(&[&["--concurrency", "4"]]).await;
    let input = json!({"children": [
        {"target": "sleep", "input": {"ms": 30_000}},
        {"target": "sleep", "input": {"ms": 30_000}}
    ], "wait": true});
    let root = sys.submit("spawn", input).await;
    // Wait until both children's handlers are running.
    eventually(Duration::from_secs(30), "both children running", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lineq.events WHERE root_execution_id = $1
             AND execution_id <> $1 AND event_type = 'action_started'",
        )
        .bind(root)
        .fetch_one(&sys.db.pool)
        .await
        .ok()?;
        (n == 2).then_some(())
    })
    .await;

    let out = lineq(
        &sys.db.url,
        &["cancel", &root.to_string(), "--format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(report["executions"], 3, "the root and its two children");
    assert_eq!(
        report["steps"], 3,
        "the waiting spawn step and the two running sleeps"
    );
    let text = lineq(&sys.db.url, &["cancel", &root.to_string()]);
    assert_eq!(text.status.code(), Some(1), "cancelling twice is refused");
    assert!(stderr(&text).contains("already cancelled"));

    // The running handlers see their cancellation token and stop long before 30 s.
    eventually(Duration::from_secs(10), "handlers to stop", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lineq.events WHERE root_execution_id = $1
             AND event_type = 'action_failed' AND payload->'error'->>'kind' = 'cancelled'",
        )
        .bind(root)
        .fetch_one(&sys.db.pool)
        .await
        .ok()?;
        (n == 2).then_some(())
    })
    .await;
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM lineq.executions WHERE root_execution_id = $1")
            .bind(root)
            .fetch_all(&sys.db.pool)
            .await
            .expect("statuses");
    assert_eq!(statuses, vec!["cancelled"; 3]);

    let (shape, _) = tree_of_root(&sys.db, root).await;
    let cancelled = |kids: Vec<String>| n("execution_cancelled", kids);
    // A cancelled child's handler stopped; its message was gone, so no result was reported.
    let child = execution(n(
        "step_enqueued",
        vec![n("action_started", vec![n("action_failed", vec![])])],
    ));
    let root_cancel = cancelled(vec![
        n("step_cancelled", vec![]),
        cancelled(vec![n("step_cancelled", vec![])]),
        cancelled(vec![n("step_cancelled", vec![])]),
    ]);
    let spawn = n(
        "step_enqueued",
        vec![n(
            "action_started",
            vec![
                n("action_completed", vec![]),
                n(
                    "step_result",
                    vec![n("step_waiting", vec![root_cancel]), child.clone(), child],
                ),
            ],
        )],
    );
    assert_eq!(shape, execution(spawn));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_loses_nothing() {
    let sys = System::start(&[]).await;
    let mut sys = sys;
    let mut a = Proc::start(
        &sys.db.url,
        "worker-a",
        &[
            "worker",
            "--worker-id",
            "worker-a",
            "--visibility-timeout-secs",
            "2",
            "--poll-interval-ms",
            "200",
        ],
    );
    let id = sys.submit("sleep", json!({"ms": 1500})).await;
    eventually(
        Duration::from_secs(20),
        "worker-a to start the step",
        || async {
            let n = sys
                .db
                .count(&format!(
                    "lineq.events WHERE execution_id = '{id}' AND event_type = 'action_started'"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    a.kill();
    let b = Proc::start(
        &sys.db.url,
        "worker-b",
        &[
            "worker",
            "--worker-id",
            "worker-b",
            "--visibility-timeout-secs",
            "2",
            "--poll-interval-ms",
            "200",
        ],
    );
    sys.procs.push(b);
    sys.finish(&[id]).await;

    let e = get_execution(&sys.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed);
    let (shape, events) = tree_of_root(&sys.db, id).await;
    let first = n("action_started", vec![]);
    let second = n(
        "action_started",
        vec![
            n("action_completed", vec![]),
            n(
                "step_result",
                vec![n("step_completed", vec![n("execution_completed", vec![])])],
            ),
        ],
    );
    assert_eq!(shape, execution(n("step_enqueued", vec![first, second])));
    let starts: Vec<(Option<String>, Value, Option<i32>)> = events
        .iter()
        .filter(|e| e.event_type == "action_started")
        .map(|e| {
            (
                e.worker_id.clone(),
                e.payload["delivery"].clone(),
                e.attempt,
            )
        })
        .collect();
    assert_eq!(
        starts,
        vec![
            (Some("worker-a".into()), json!(1), Some(1)),
            (Some("worker-b".into()), json!(2), Some(1)),
        ],
        "the same attempt (same idempotency key), delivered twice"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_can_be_replayed() {
    let sys = System::start(&[]).await;
    let mut sys = sys;
    // A step that kills the worker running it, every time: the worker is its parent process.
    let killer = "poison=sh -c 'kill -9 $PPID; sleep 5'";
    let id = sys.submit("poison", json!({})).await;
    for round in 0..3 {
        let mut w = Proc::start(
            &sys.db.url,
            &format!("doomed{round}"),
            &[
                "worker",
                "--command",
                killer,
                "--visibility-timeout-secs",
                "1",
                "--max-deliveries",
                "2",
                "--poll-interval-ms",
                "200",
            ],
        );
        if round < 2 {
            let status = w.wait(Duration::from_secs(20));
            assert!(!status.success(), "the poison step killed the worker");
        } else {
            // The third delivery is refused and dead-lettered; this worker survives.
            eventually(Duration::from_secs(20), "a dead letter", || async {
                (sys.db.count("pgmq.q_lineq_dlq").await == 1).then_some(())
            })
            .await;
            assert!(w.is_running());
            w.terminate(Duration::from_secs(20));
        }
    }
    let letters = lineq(&sys.db.url, &["dlq", "list", "--format", "json"]);
    let letters: Value = serde_json::from_str(&stdout(&letters)).expect("json");
    let letter = &letters[0];
    assert_eq!(letter["source_queue"], "lineq_steps_default");
    assert!(
        letter["reason"]
            .as_str()
            .expect("reason")
            .contains("delivered 3 times"),
        "{letter}"
    );
    assert_eq!(
        get_execution(&sys.db.pool, id).await.expect("e").status,
        ExecutionStatus::Pending,
        "a dead-lettered step waits for a replay instead of failing the execution"
    );

    // Deploy a fixed handler, then replay.
    let fixed = Proc::start(
        &sys.db.url,
        "fixed",
        &[
            "worker",
            "--command",
            "poison=cat",
            "--poll-interval-ms",
            "200",
        ],
    );
    sys.procs.push(fixed);
    let dl = letter["msg_id"].as_i64().expect("id").to_string();
    let shown = lineq(&sys.db.url, &["dlq", "show", &dl]);
    assert!(stdout(&shown).contains("delivered 3 times"));
    let replay = lineq(&sys.db.url, &["dlq", "replay", &dl]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    sys.finish(&[id]).await;
    assert_eq!(
        get_execution(&sys.db.pool, id).await.expect("e").status,
        ExecutionStatus::Completed
    );
    assert_eq!(sys.db.count("pgmq.q_lineq_dlq").await, 0);

    let (shape, _) = tree_of_root(&sys.db, id).await;
    let completed = n(
        "action_started",
        vec![
            n("action_completed", vec![]),
            n(
                "step_result",
                vec![n("step_completed", vec![n("execution_completed", vec![])])],
            ),
        ],
    );
    let enqueued = n(
        "step_enqueued",
        vec![
            n("action_started", vec![]),
            n("action_started", vec![]),
            n("message_dead_lettered", vec![n("message_replayed", vec![])]),
            completed,
        ],
    );
    assert_eq!(shape, execution(enqueued));
    sys.stop().await;
}

//! Lineage against a real PostgreSQL: the SQL functions (`lineq.event_ancestors`,
//! `event_descendants`, `execution_tree`, `lineage`, `correlation`, `lineage_messages`, the
//! `lineage_edges` view), `lineq lineage` in every format, `lineq lineage check` on whole trees
//! and on trees broken on purpose, the recipes of docs/lineage.md, and the plan of the
//! deepest-ancestors query on a 10,000-event chain.
//!
//! Trees come from real runs (`lineq orchestrator` and `lineq worker` processes): one-step
//! executions, and a registered workflow with fan-out, a retry and three levels of child
//! executions. One test also hangs hand-built child executions (three levels deep, one with a
//! retried step) under a real run, so the expected output of every function can be written
//! out literally.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_core::event::{EventRow, events_of_execution};
use lineq_core::trace_context::TraceContext;
use lineq_orchestrator::workflow::store;
use lineq_orchestrator::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition};
use lineq_read::lineage::{self, Fault, Target};
use lineq_testkit::*;

// ---------------------------------------------------------------------------------------------
// A real run with hand-built children
// ---------------------------------------------------------------------------------------------

/// Real roots A (echo), E (echo, same correlation id as A) and F (fail); under A, hand-built
/// children B → C → D (each spawned by its parent's `action_started`) and B2 (spawned by A's
/// `action_started` too, its step failing once and retried).
struct World {
    db: TestDb,
    procs: Vec<Proc>,
    a: Uuid,
    a_corr: Uuid,
    e: Uuid,
    f: Uuid,
    /// label ("A", "B", ...) -> execution id
    ex: HashMap<&'static str, Uuid>,
    /// (execution label, event label) -> event id; event labels are event types, `#2` for the
    /// retry's events.
    ev: HashMap<(&'static str, String), Uuid>,
    /// event id -> "X label"
    names: HashMap<Uuid, String>,
    /// execution label -> its correlation id
    corr: HashMap<&'static str, Uuid>,
}

impl World {
    fn x(&self, label: &str) -> Uuid {
        self.ex[label]
    }

    fn e(&self, exec: &'static str, label: &str) -> Uuid {
        *self
            .ev
            .get(&(exec, label.to_string()))
            .unwrap_or_else(|| panic!("no event {exec} {label}"))
    }

    fn name(&self, event_id: Uuid) -> String {
        self.names
            .get(&event_id)
            .cloned()
            .unwrap_or_else(|| format!("? {event_id}"))
    }

    async fn stop(mut self) {
        for p in self.procs.iter_mut().rev() {
            let status = p.terminate(Duration::from_secs(30));
            assert!(
                status.success(),
                "{} exited {status}: {}",
                p.name,
                p.log_text()
            );
        }
        self.db.drop_db().await;
    }
}

/// Where a hand-built child hangs.
struct Parent {
    execution_id: Uuid,
    correlation_id: Uuid,
    spawn_event: Uuid,
    step: String,
}

/// A hand-built event: (label, parent label or `None` for the spawning event, attempt, worker).
type Planned = (
    &'static str,
    Option<&'static str>,
    Option<i32>,
    Option<&'static str>,
);

/// One hand-built execution: row, step row and events, shaped like a real one-step run
/// (`retry`: the first attempt fails and a second one completes).
async fn hand_built(
    pool: &PgPool,
    label: &'static str,
    parent: &Parent,
    root: Uuid,
    trace_corr: Uuid,
    retry: bool,
    clock: &mut DateTime<Utc>,
) -> (Uuid, Uuid, Vec<(String, Uuid)>) {
    let execution_id = Uuid::now_v7();
    let correlation_id = Uuid::now_v7();
    let step_id = Uuid::now_v7();
    let step = format!("step_{}", label.to_lowercase());
    let created = *clock;
    sqlx::query(
        r#"
        INSERT INTO lineq.executions (execution_id, workflow_name, namespace, status, input, output,
            correlation_id, parent_correlation_id, parent_execution_id, root_execution_id,
            parent_event_id, parent_step, created_at, updated_at, finished_at)
        VALUES ($1, $2, 'default', 'completed', '{}', '{}', $3, $4, $5, $6, $7, $8, $9, $9,
                $9 + interval '20 ms')
        "#,
    )
    .bind(execution_id)
    .bind(format!("wf_{label}"))
    .bind(correlation_id)
    .bind(parent.correlation_id)
    .bind(parent.execution_id)
    .bind(root)
    .bind(parent.spawn_event)
    .bind(&parent.step)
    .bind(created)
    .execute(pool)
    .await
    .expect("insert execution");
    sqlx::query(
        r#"
        INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
            attempts, max_attempts, created_at)
        VALUES ($1, $2, $3, 'echo', 'default', 'lineq_steps_default', 'completed', $4, $4, $5)
        "#,
    )
    .bind(step_id)
    .bind(execution_id)
    .bind(&step)
    .bind(if retry { 2 } else { 1 })
    .bind(created)
    .execute(pool)
    .await
    .expect("insert step");

    let mut plan: Vec<Planned> = vec![
        ("execution_started", None, None, None),
        (
            "workflow_initialized",
            Some("execution_started"),
            None,
            None,
        ),
        ("step_enqueued", Some("workflow_initialized"), Some(1), None),
        ("action_started", Some("step_enqueued"), Some(1), Some("w1")),
    ];
    if retry {
        plan.extend([
            ("action_failed", Some("action_started"), Some(1), Some("w1")),
            ("step_result", Some("action_started"), Some(1), Some("w1")),
            ("step_attempt_failed", Some("step_result"), Some(1), None),
            (
                "step_enqueued#2",
                Some("step_attempt_failed"),
                Some(2),
                None,
            ),
            (
                "action_started#2",
                Some("step_enqueued#2"),
                Some(2),
                Some("w2"),
            ),
            (
                "action_completed#2",
                Some("action_started#2"),
                Some(2),
                Some("w2"),
            ),
            (
                "step_result#2",
                Some("action_started#2"),
                Some(2),
                Some("w2"),
            ),
            ("step_completed#2", Some("step_result#2"), Some(2), None),
            ("execution_completed", Some("step_completed#2"), None, None),
        ]);
    } else {
        plan.extend([
            (
                "action_completed",
                Some("action_started"),
                Some(1),
                Some("w1"),
            ),
            ("step_result", Some("action_started"), Some(1), Some("w1")),
            ("step_completed", Some("step_result"), Some(1), None),
            ("execution_completed", Some("step_completed"), None, None),
        ]);
    }
    let mut ids: HashMap<&str, Uuid> = HashMap::new();
    let mut out = Vec::new();
    for (name, parent_label, attempt, worker) in plan {
        let event_id = Uuid::now_v7();
        let parent_event = match parent_label {
            None => parent.spawn_event,
            Some(p) => ids[p],
        };
        let event_type = name.split('#').next().expect("type");
        let tc = TraceContext::for_event(trace_corr, event_id);
        *clock += chrono::Duration::milliseconds(1);
        sqlx::query(
            r#"
            INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
                parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
                worker_id, attempt, trace_id, span_id, payload, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'test', $9, $10, $11, $12, $13, $14)
            "#,
        )
        .bind(event_id)
        .bind(parent_event)
        .bind(execution_id)
        .bind(attempt.map(|_| step_id))
        .bind(parent.execution_id)
        .bind(root)
        .bind(correlation_id)
        .bind(event_type)
        .bind(worker.map(|w| format!("{w}-{}", label.to_lowercase())))
        .bind(attempt)
        .bind(tc.trace_id_hex())
        .bind(tc.span_id_hex())
        .bind(if event_type.ends_with("failed") {
            json!({ "step": step, "error": { "kind": "handler_error", "message": "boom" } })
        } else {
            json!({ "step": step })
        })
        .bind(*clock)
        .execute(pool)
        .await
        .expect("insert event");
        ids.insert(name, event_id);
        out.push((name.to_string(), event_id));
    }
    (execution_id, correlation_id, out)
}

async fn world() -> World {
    let db = TestDb::new().await;
    let procs = vec![
        Proc::start(&db.url, "orchestrator", &["orchestrator"]),
        Proc::start(&db.url, "worker", &["worker"]),
    ];
    let client = Client::new(db.pool.clone());
    let a_corr = Uuid::now_v7();
    let submit = |req: SubmitRequest| {
        let client = client.clone();
        async move {
            client
                .submit(req)
                .await
                .expect("submit")
                .execution
                .execution_id
        }
    };
    let a = submit(
        SubmitRequest::new("echo")
            .input(json!({"a": 1}))
            .correlation_id(a_corr),
    )
    .await;
    let e = submit(
        SubmitRequest::new("echo")
            .input(json!({"e": 1}))
            .correlation_id(a_corr),
    )
    .await;
    let f = submit(SubmitRequest::new("fail").input(json!({"message": "boom"}))).await;
    wait_all_finished(&db.pool, &[a, e, f], Duration::from_secs(60)).await;

    let mut w = World {
        db,
        procs,
        a,
        a_corr,
        e,
        f,
        ex: HashMap::new(),
        ev: HashMap::new(),
        names: HashMap::new(),
        corr: HashMap::new(),
    };
    for (label, id) in [("A", a), ("E", e), ("F", f)] {
        w.ex.insert(label, id);
        let events = events_of_execution(&w.db.pool, id).await.expect("events");
        w.corr.insert(label, events[0].correlation_id);
        for ev in events {
            w.names
                .insert(ev.event_id, format!("{label} {}", ev.event_type));
            w.ev.insert((label, ev.event_type.clone()), ev.event_id);
        }
    }

    // One at a time: each child hangs off events of the one built before it.
    let mut clock = Utc::now();
    for (label, parent_label, retry) in [
        ("B", "A", false),
        ("C", "B", false),
        ("D", "C", false),
        ("B2", "A", true),
    ] {
        let parent = Parent {
            execution_id: w.ex[parent_label],
            correlation_id: w.corr[parent_label],
            spawn_event: w.e(parent_label, "action_started"),
            step: if parent_label == "A" {
                "echo".to_string()
            } else {
                format!("step_{}", parent_label.to_lowercase())
            },
        };
        let (id, corr, events) =
            hand_built(&w.db.pool, label, &parent, a, a_corr, retry, &mut clock).await;
        w.ex.insert(label, id);
        w.corr.insert(label, corr);
        for (name, ev) in events {
            w.names.insert(ev, format!("{label} {name}"));
            w.ev.insert((label, name), ev);
        }
    }
    w
}

/// `depth X label` per row of `lineq.lineage`.
async fn lineage_lines(w: &World, execution_id: Uuid) -> Vec<String> {
    let rows = lineage::lineage_events(&w.db.pool, execution_id)
        .await
        .expect("lineage");
    for r in &rows {
        let path = r.path.as_ref().expect("path");
        assert_eq!(path.len(), r.depth.expect("depth") as usize + 1);
        assert_eq!(path.last(), Some(&r.event.event_id));
        if path.len() > 1 {
            assert_eq!(Some(path[path.len() - 2]), r.event.parent_event_id);
        }
    }
    rows.iter()
        .map(|r| format!("{} {}", r.depth.expect("depth"), w.name(r.event.event_id)))
        .collect()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

const A_ONE_STEP: &str = "
    0 A execution_started
    1 A workflow_initialized
    2 A step_enqueued
    3 A action_started
    4 A action_completed
    4 A step_result
    5 A step_completed
    6 A execution_completed";

const B_C_D: &str = "
    4 B execution_started
    5 B workflow_initialized
    6 B step_enqueued
    7 B action_started
    8 B action_completed
    8 B step_result
    9 B step_completed
    10 B execution_completed
    8 C execution_started
    9 C workflow_initialized
    10 C step_enqueued
    11 C action_started
    12 C action_completed
    12 C step_result
    13 C step_completed
    14 C execution_completed
    12 D execution_started
    13 D workflow_initialized
    14 D step_enqueued
    15 D action_started
    16 D action_completed
    16 D step_result
    17 D step_completed
    18 D execution_completed";

const B2: &str = "
    4 B2 execution_started
    5 B2 workflow_initialized
    6 B2 step_enqueued
    7 B2 action_started
    8 B2 action_failed
    8 B2 step_result
    9 B2 step_attempt_failed
    10 B2 step_enqueued#2
    11 B2 action_started#2
    12 B2 action_completed#2
    12 B2 step_result#2
    13 B2 step_completed#2
    14 B2 execution_completed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_returns_the_exact_tree() {
    let w = world().await;
    let pool = &w.db.pool;
    let label_of: HashMap<Uuid, &str> = w.ex.iter().map(|(l, id)| (*id, *l)).collect();

    // lineage: every event of A and its descendants, depth first.
    let expected = lines(&format!("{A_ONE_STEP}{B_C_D}{B2}"));
    assert_eq!(lineage_lines(&w, w.a).await, expected);
    // ... of a child: depths restart at its first event.
    let expected_c: Vec<String> = lines(B_C_D)
        .into_iter()
        .skip(8)
        .map(|l| {
            let (d, rest) = l.split_once(' ').expect("depth");
            format!("{} {rest}", d.parse::<i32>().expect("int") - 8)
        })
        .collect();
    assert_eq!(lineage_lines(&w, w.x("C")).await, expected_c);
    let rows = lineage::lineage_events(pool, w.a).await.expect("lineage");
    let by_exec_depth: Vec<(String, i32)> = rows
        .iter()
        .filter(|r| r.event.event_type == "execution_started")
        .map(|r| {
            (
                label_of[&r.event.execution_id].to_string(),
                r.execution_depth,
            )
        })
        .collect();
    assert_eq!(
        by_exec_depth,
        [("A", 0), ("B", 1), ("C", 2), ("D", 3), ("B2", 1)]
            .map(|(l, d)| (l.to_string(), d))
            .to_vec()
    );
    let b2_retry = rows
        .iter()
        .find(|r| r.event.event_id == w.e("B2", "action_started#2"))
        .expect("retry");
    assert_eq!(
        (
            b2_retry.workflow_name.as_str(),
            b2_retry.event.step_name.as_deref(),
            b2_retry.event.attempt,
            b2_retry.event.worker_id.as_deref()
        ),
        ("wf_B2", Some("step_b2"), Some(2), Some("w2-b2"))
    );

    // execution_tree
    let tree: Vec<(i32, &str, Vec<&str>)> = lineage::execution_tree(pool, w.a)
        .await
        .expect("execution_tree")
        .iter()
        .map(|t| {
            (
                t.depth,
                label_of[&t.execution_id],
                t.path.iter().map(|p| label_of[p]).collect(),
            )
        })
        .collect();
    assert_eq!(
        tree,
        vec![
            (0, "A", vec!["A"]),
            (1, "B", vec!["A", "B"]),
            (2, "C", vec!["A", "B", "C"]),
            (3, "D", vec!["A", "B", "C", "D"]),
            (1, "B2", vec!["A", "B2"]),
        ]
    );
    let sub: Vec<(i32, &str)> = lineage::execution_tree(pool, w.x("C"))
        .await
        .expect("execution_tree")
        .iter()
        .map(|t| (t.depth, label_of[&t.execution_id]))
        .collect();
    assert_eq!(sub, vec![(0, "C"), (1, "D")]);
    let b = lineage::execution_tree(pool, w.x("B")).await.expect("tree");
    assert_eq!(
        (
            b[0].parent_event_id,
            b[0].parent_step.as_deref(),
            b[0].status.as_str()
        ),
        (Some(w.e("A", "action_started")), Some("echo"), "completed")
    );

    // correlation: A and E carry it; the children have their own.
    let corr: Vec<(i32, &str)> = lineage::correlation(pool, w.a_corr)
        .await
        .expect("correlation")
        .iter()
        .map(|t| (t.depth, label_of[&t.execution_id]))
        .collect();
    assert_eq!(
        corr,
        vec![(0, "A"), (1, "B"), (2, "C"), (3, "D"), (1, "B2"), (0, "E")]
    );
    let corr_b: Vec<(i32, &str)> = lineage::correlation(pool, w.corr["B"])
        .await
        .expect("correlation")
        .iter()
        .map(|t| (t.depth, label_of[&t.execution_id]))
        .collect();
    assert_eq!(corr_b, vec![(0, "B"), (1, "C"), (2, "D")]);

    // event_ancestors: from D's last event up to A's first, nearest first.
    let up: Vec<(i32, String)> = lineage::ancestors(pool, w.e("D", "execution_completed"))
        .await
        .expect("ancestors")
        .iter()
        .map(|a| (a.distance, w.name(a.event.event_id)))
        .collect();
    let expected_up = [
        "D execution_completed",
        "D step_completed",
        "D step_result",
        "D action_started",
        "D step_enqueued",
        "D workflow_initialized",
        "D execution_started",
        "C action_started",
        "C step_enqueued",
        "C workflow_initialized",
        "C execution_started",
        "B action_started",
        "B step_enqueued",
        "B workflow_initialized",
        "B execution_started",
        "A action_started",
        "A step_enqueued",
        "A workflow_initialized",
        "A execution_started",
    ];
    assert_eq!(
        up,
        expected_up
            .iter()
            .enumerate()
            .map(|(i, n)| (i as i32, n.to_string()))
            .collect::<Vec<_>>()
    );
    // The retry's claim goes up through the failure that scheduled it.
    let retry_up: Vec<String> = lineage::ancestors(pool, w.e("B2", "action_started#2"))
        .await
        .expect("ancestors")
        .iter()
        .take(5)
        .map(|a| w.name(a.event.event_id))
        .collect();
    assert_eq!(
        retry_up,
        [
            "B2 action_started#2",
            "B2 step_enqueued#2",
            "B2 step_attempt_failed",
            "B2 step_result",
            "B2 action_started"
        ]
    );

    // event_descendants: everything B's claim caused, across C and D.
    let down = lineage::descendants(pool, w.e("B", "action_started"))
        .await
        .expect("descendants");
    let got: Vec<String> = down
        .iter()
        .map(|d| format!("{} {}", d.depth, w.name(d.event.event_id)))
        .collect();
    let expected_down: Vec<String> = lines(B_C_D)
        .into_iter()
        .skip(3)
        .map(|l| {
            let (d, rest) = l.split_once(' ').expect("depth");
            format!("{} {rest}", d.parse::<i32>().expect("int") - 7)
        })
        .collect();
    assert_eq!(got, expected_down);
    let last = down.last().expect("rows");
    assert_eq!(
        last.path
            .iter()
            .map(|p| w.name(*p))
            .collect::<Vec<_>>()
            .first()
            .map(String::as_str),
        Some("B action_started")
    );
    assert_eq!(last.path.len(), 12);

    // lineage_edges: every event but the root has one incoming edge; executions and spawns.
    let edges: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM lineq.lineage_edges WHERE root_execution_id = $1
         GROUP BY kind ORDER BY kind",
    )
    .bind(w.a)
    .fetch_all(pool)
    .await
    .expect("edges");
    assert_eq!(
        edges,
        vec![
            ("event".to_string(), 8 + 8 + 8 + 8 + 13 - 1),
            ("execution".to_string(), 4),
            ("spawned".to_string(), 4)
        ]
    );
    let spawned: (Uuid, String) = sqlx::query_as(
        "SELECT parent_id, child_label FROM lineq.lineage_edges
         WHERE kind = 'spawned' AND child_id = $1",
    )
    .bind(w.x("B"))
    .fetch_one(pool)
    .await
    .expect("spawn edge");
    assert_eq!(spawned, (w.e("A", "action_started"), "wf_B".to_string()));

    // lineage_messages: A's step message, naming the event that sent it (its result message
    // was deleted once applied).
    type Row = (String, String, String, Option<Uuid>, Option<Uuid>);
    let msgs: Vec<Row> = lineage::messages(pool, w.a)
        .await
        .expect("messages")
        .into_iter()
        .map(|m| {
            (
                m.queue_name,
                m.state,
                m.kind,
                m.parent_event_id,
                m.execution_id,
            )
        })
        .collect();
    assert_eq!(
        msgs,
        vec![(
            "lineq_steps_default".into(),
            "archived".into(),
            "step".into(),
            Some(w.e("A", "step_enqueued")),
            Some(w.a)
        ),]
    );

    // The nested tree: children under the event that spawned them, three levels deep.
    let t = lineage::execution_lineage(pool, w.a).await.expect("tree");
    assert_eq!((t.execution_count, t.event_count), (5, 45));
    assert_eq!(t.executions.len(), 1);
    let root = &t.executions[0];
    assert_eq!(root.events.len(), 1);
    let claim = &root.events[0].children[0].children[0].children[0];
    assert_eq!(claim.event_id, w.e("A", "action_started"));
    let spawned: Vec<&str> = claim
        .executions
        .iter()
        .map(|x| label_of[&x.execution_id])
        .collect();
    assert_eq!(spawned, ["B", "B2"]);
    let c = &claim.executions[0].events[0].children[0].children[0].children[0].executions[0];
    let d = &c.events[0].children[0].children[0].children[0].executions[0];
    assert_eq!(
        (
            label_of[&c.execution_id],
            c.depth,
            label_of[&d.execution_id],
            d.depth
        ),
        ("C", 2, "D", 3)
    );
    assert_eq!(d.events[0].parent_execution, Some(w.x("C")));
    assert_eq!(t.events().len(), 45);

    // An event's tree: the way down to it, then everything it caused.
    let t = lineage::lineage(pool, w.e("C", "action_started"))
        .await
        .expect("event tree");
    assert!(
        matches!(t.target, Target::Event { execution_id, root_execution_id, .. }
        if execution_id == w.x("C") && root_execution_id == w.a)
    );
    let names: HashSet<String> = t.events().iter().map(|e| w.name(e.event_id)).collect();
    assert_eq!(names.len(), 4 + 4 + 3 + 5 + 8);
    assert!(names.contains("A execution_started") && names.contains("D execution_completed"));
    assert!(!names.contains("B2 execution_started") && !names.contains("A step_result"));

    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// lineage check
// ---------------------------------------------------------------------------------------------

/// Runs `lineq lineage check ID` and returns (exit code, stdout).
fn cli_check(w: &World, id: Uuid) -> (i32, String) {
    let out = lineq(&w.db.url, &["lineage", "check", &id.to_string()]);
    (out.status.code().unwrap_or(-1), stdout(&out))
}

async fn faults_of(w: &World, id: Uuid) -> Vec<Fault> {
    lineage::check(&w.db.pool, id).await.expect("check").faults
}

/// Asserts that the library names exactly `expected` and the CLI exits 1 printing each.
async fn assert_faults(w: &World, what: &str, expected: Vec<Fault>) {
    assert_eq!(faults_of(w, w.a).await, expected, "{what}");
    let (code, out) = cli_check(w, w.a);
    assert_eq!(code, 1, "{what}: lineage check must fail\n{out}");
    for f in &expected {
        assert!(
            out.contains(&format!("FAULT {f}")),
            "{what}: output names {f}\n{out}"
        );
    }
    assert_eq!(
        out.matches("FAULT ").count(),
        expected.len(),
        "{what}\n{out}"
    );
}

async fn assert_whole(w: &World, what: &str) {
    let report = lineage::check(&w.db.pool, w.a).await.expect("check");
    assert_eq!(report.faults, vec![], "{what}");
    assert_eq!(
        (
            report.roots.clone(),
            report.executions,
            report.events,
            report.messages
        ),
        (vec![w.a], 5, 45, 1),
        "{what}"
    );
    let (code, out) = cli_check(w, w.a);
    assert_eq!(code, 0, "{what}: {out}");
    assert!(out.contains("whole:"), "{out}");
}

/// Deletes an event, returning it as JSON so it can be put back exactly.
async fn delete_event(pool: &PgPool, id: Uuid) -> Value {
    sqlx::query_scalar("DELETE FROM lineq.events e WHERE event_id = $1 RETURNING to_jsonb(e)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("delete event")
}

async fn restore_event(pool: &PgPool, row: Value) {
    sqlx::query(
        "INSERT INTO lineq.events SELECT * FROM jsonb_populate_record(NULL::lineq.events, $1)",
    )
    .bind(row)
    .execute(pool)
    .await
    .expect("restore event");
}

/// Sets an event's parent, returning the old one.
async fn set_parent(pool: &PgPool, id: Uuid, parent: Option<Uuid>) -> Option<Uuid> {
    let old: Option<Uuid> =
        sqlx::query_scalar("SELECT parent_event_id FROM lineq.events WHERE event_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("old parent");
    sqlx::query("UPDATE lineq.events SET parent_event_id = $2 WHERE event_id = $1")
        .bind(id)
        .bind(parent)
        .execute(pool)
        .await
        .expect("set parent");
    old
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_check_passes_and_names_every_fault() {
    let w = world().await;
    let pool = w.db.pool.clone();
    let pool = &pool;
    assert_whole(&w, "as built").await;
    for id in [w.e, w.f] {
        let (code, out) = cli_check(&w, id);
        assert_eq!(code, 0, "{out}");
    }
    // By correlation id: the trees of both roots carrying it.
    let report = lineage::check(pool, w.a_corr).await.expect("check");
    assert_eq!(
        (report.roots.len(), report.faults.len(), report.events),
        (2, 0, 53)
    );
    // By event id: the tree of its root.
    let report = lineage::check(pool, w.e("D", "step_result"))
        .await
        .expect("check");
    assert_eq!((report.roots.clone(), report.events), (vec![w.a], 45));

    let msgs = lineage::messages(pool, w.a).await.expect("messages");
    let step_msg = msgs.iter().find(|m| m.kind == "step").expect("step msg");

    // 1. A real event deleted: its child loses its parent.
    let sr = w.e("A", "step_result");
    let saved = delete_event(pool, sr).await;
    assert_faults(
        &w,
        "deleted step_result",
        vec![Fault::MissingParent {
            event_id: w.e("A", "step_completed"),
            event_type: "step_completed".into(),
            execution_id: w.a,
            parent_event_id: sr,
        }],
    )
    .await;
    restore_event(pool, saved).await;
    assert_whole(&w, "step_result restored").await;

    // 1b. The event that sent a message deleted: its child and the message lose their parent.
    let enq = w.e("A", "step_enqueued");
    let saved = delete_event(pool, enq).await;
    assert_faults(
        &w,
        "deleted step_enqueued",
        vec![
            Fault::MissingParent {
                event_id: w.e("A", "action_started"),
                event_type: "action_started".into(),
                execution_id: w.a,
                parent_event_id: enq,
            },
            Fault::MessageParentMissing {
                queue: "lineq_steps_default".into(),
                msg_id: step_msg.msg_id,
                state: "archived".into(),
                parent_event_id: enq,
            },
        ],
    )
    .await;
    restore_event(pool, saved).await;
    assert_whole(&w, "step_enqueued restored").await;

    // 2. A grandchild's first event deleted.
    let d_start = w.e("D", "execution_started");
    let saved = delete_event(pool, d_start).await;
    assert_faults(
        &w,
        "deleted child execution_started",
        vec![
            Fault::MissingParent {
                event_id: w.e("D", "workflow_initialized"),
                event_type: "workflow_initialized".into(),
                execution_id: w.x("D"),
                parent_event_id: d_start,
            },
            Fault::SpawnMismatch {
                execution_id: w.x("D"),
                spawned_by: w.e("C", "action_started"),
                event_id: Some(w.e("D", "workflow_initialized")),
                parent_event_id: Some(d_start),
            },
        ],
    )
    .await;
    restore_event(pool, saved).await;

    // 3. A parent that does not exist.
    let nowhere = Uuid::now_v7();
    let old = set_parent(pool, w.e("C", "step_completed"), Some(nowhere)).await;
    assert_faults(
        &w,
        "parent does not exist",
        vec![Fault::MissingParent {
            event_id: w.e("C", "step_completed"),
            event_type: "step_completed".into(),
            execution_id: w.x("C"),
            parent_event_id: nowhere,
        }],
    )
    .await;
    set_parent(pool, w.e("C", "step_completed"), old).await;

    // 4. A wrong parent inside the tree: B2 hung under C instead of A.
    let old = set_parent(
        pool,
        w.e("B2", "execution_started"),
        Some(w.e("C", "action_started")),
    )
    .await;
    assert_faults(
        &w,
        "child under an unrelated execution",
        vec![
            Fault::ParentInUnrelatedExecution {
                event_id: w.e("B2", "execution_started"),
                event_type: "execution_started".into(),
                execution_id: w.x("B2"),
                parent_event_id: w.e("C", "action_started"),
                parent_execution_id: w.x("C"),
            },
            Fault::SpawnMismatch {
                execution_id: w.x("B2"),
                spawned_by: w.e("A", "action_started"),
                event_id: Some(w.e("B2", "execution_started")),
                parent_event_id: Some(w.e("C", "action_started")),
            },
        ],
    )
    .await;
    set_parent(pool, w.e("B2", "execution_started"), old).await;

    // 5. A wrong parent in another root's tree.
    let foreign = w.e("E", "step_result");
    let old = set_parent(pool, w.e("B", "step_completed"), Some(foreign)).await;
    assert_faults(
        &w,
        "parent in another tree",
        vec![Fault::ParentInOtherTree {
            event_id: w.e("B", "step_completed"),
            event_type: "step_completed".into(),
            execution_id: w.x("B"),
            parent_event_id: foreign,
            parent_root_execution_id: w.e,
        }],
    )
    .await;
    set_parent(pool, w.e("B", "step_completed"), old).await;

    // 6. A cycle: A's claim hung under its own step_completed. The claim also no longer hangs
    //    off the event its message names.
    let old = set_parent(
        pool,
        w.e("A", "action_started"),
        Some(w.e("A", "step_completed")),
    )
    .await;
    assert_faults(
        &w,
        "cycle",
        vec![
            Fault::Cycle {
                event_ids: vec![
                    w.e("A", "action_started"),
                    w.e("A", "step_completed"),
                    w.e("A", "step_result"),
                ],
            },
            Fault::MessageConsumerMismatch {
                queue: "lineq_steps_default".into(),
                msg_id: step_msg.msg_id,
                event_id: w.e("A", "action_started"),
                event_type: "action_started".into(),
                meta_parent_event_id: w.e("A", "step_enqueued"),
                event_parent_event_id: Some(w.e("A", "step_completed")),
            },
        ],
    )
    .await;
    // The functions still terminate on the loop and list each event once.
    let up = lineage::ancestors(pool, w.e("D", "execution_completed"))
        .await
        .expect("ancestors on a loop");
    let ids: HashSet<Uuid> = up.iter().map(|a| a.event.event_id).collect();
    assert_eq!(ids.len(), up.len(), "each ancestor once");
    assert_eq!(
        up.last().map(|a| w.name(a.event.event_id)).as_deref(),
        Some("A step_result")
    );
    let lineage_rows = lineage::lineage_events(pool, w.a).await.expect("lineage");
    assert_eq!(lineage_rows.len(), 45, "every event still listed");
    assert_eq!(
        lineage_rows.iter().filter(|r| r.depth.is_none()).count(),
        45 - 3,
        "only the top three are reachable"
    );
    let t = lineage::execution_lineage(pool, w.a).await.expect("tree");
    assert_eq!(t.events().len(), 45, "the tree shows every event once");
    set_parent(pool, w.e("A", "action_started"), old).await;
    assert_whole(&w, "cycle undone").await;

    // 7. An archived message's meta changed.
    let bogus = Uuid::now_v7();
    sqlx::query(
        "UPDATE pgmq.a_lineq_steps_default
         SET message = jsonb_set(message, '{meta,correlation_id}', to_jsonb($2::text))
         WHERE msg_id = $1",
    )
    .bind(step_msg.msg_id)
    .bind(bogus.to_string())
    .execute(pool)
    .await
    .expect("tamper");
    assert_faults(
        &w,
        "tampered meta",
        vec![Fault::MessageMetaMismatch {
            queue: "lineq_steps_default".into(),
            msg_id: step_msg.msg_id,
            state: "archived".into(),
            event_id: w.e("A", "step_enqueued"),
            field: "meta.correlation_id".into(),
            in_message: bogus.to_string(),
            in_event: w.a_corr.to_string(),
        }],
    )
    .await;
    sqlx::query(
        "UPDATE pgmq.a_lineq_steps_default
         SET message = jsonb_set(message, '{meta,correlation_id}', to_jsonb($2::text))
         WHERE msg_id = $1",
    )
    .bind(step_msg.msg_id)
    .bind(w.a_corr.to_string())
    .execute(pool)
    .await
    .expect("untamper");

    // 8. The root's first event deleted.
    let a_start = w.e("A", "execution_started");
    let saved = delete_event(pool, a_start).await;
    assert_faults(
        &w,
        "no root",
        vec![
            Fault::NoRoot {
                root_execution_id: w.a,
            },
            Fault::MissingParent {
                event_id: w.e("A", "workflow_initialized"),
                event_type: "workflow_initialized".into(),
                execution_id: w.a,
                parent_event_id: a_start,
            },
        ],
    )
    .await;
    restore_event(pool, saved).await;

    // 9. An event that does not carry its execution's correlation id.
    let ac = w.e("C", "action_completed");
    sqlx::query("UPDATE lineq.events SET correlation_id = $2 WHERE event_id = $1")
        .bind(ac)
        .bind(bogus)
        .execute(pool)
        .await
        .expect("tamper event");
    assert_faults(
        &w,
        "event field",
        vec![Fault::EventFieldMismatch {
            event_id: ac,
            event_type: "action_completed".into(),
            field: "correlation_id".into(),
            expected: w.corr["C"].to_string(),
            found: bogus.to_string(),
        }],
    )
    .await;
    sqlx::query("UPDATE lineq.events SET correlation_id = $2 WHERE event_id = $1")
        .bind(ac)
        .bind(w.corr["C"])
        .execute(pool)
        .await
        .expect("untamper event");

    assert_whole(&w, "everything restored").await;
    // JSON for scripts: the same report, exit 0.
    let out = lineq(
        &w.db.url,
        &["lineage", "check", &w.a.to_string(), "--format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["faults"], json!([]));
    assert_eq!(report["events"], json!(45));
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// lineq lineage
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineq_lineage_draws_the_tree_in_every_format() {
    let w = world().await;
    let a = w.a.to_string();

    // Text: execution headers, nested under the event that spawned them.
    let out = lineq(&w.db.url, &["lineage", &a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = |label: &str| {
        text.lines()
            .find(|l| l.contains(&format!("execution {}", w.x(label))))
            .unwrap_or_else(|| panic!("{label} header in\n{text}"))
            .to_string()
    };
    assert!(header("A").starts_with("▸ execution"), "{text}");
    // each level is indented further than its parent
    let indent = |l: String| l.find('▸').expect("marker");
    let (ia, ib, ic, id, ib2) = (
        indent(header("A")),
        indent(header("B")),
        indent(header("C")),
        indent(header("D")),
        indent(header("B2")),
    );
    assert!(ia < ib && ib < ic && ic < id && ib == ib2, "{text}");
    assert!(header("B").contains("wf_B  [completed]"), "{text}");
    assert!(
        text.contains("action_started  step=step_b2 attempt=2 worker=w2-b2"),
        "{text}"
    );
    assert!(text.contains("error=\"boom\""), "{text}");
    assert!(
        text.trim_end().ends_with("5 executions, 45 events"),
        "{text}"
    );

    // JSON: exactly what the API serves.
    let out = lineq(&w.db.url, &["lineage", &a, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_slice(&out.stdout).expect("json");
    let api = serde_json::to_value(
        lineage::execution_lineage(&w.db.pool, w.a)
            .await
            .expect("tree"),
    )
    .expect("serialize");
    assert_eq!(cli, api);
    assert_eq!(cli["target"], json!({"kind": "execution", "id": w.a}));

    // DOT and Mermaid: one box per execution, one edge per parent link.
    let out = lineq(&w.db.url, &["lineage", &a, "--graph", "dot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert_eq!(dot.matches("subgraph cluster_").count(), 5);
    assert_eq!(dot.matches(" -> ").count(), 44);
    let spawn_edge = format!(
        "e{} -> e{};",
        w.e("A", "action_started").simple(),
        w.e("B", "execution_started").simple()
    );
    assert!(dot.contains(&spawn_edge), "{dot}");
    let out = lineq(&w.db.url, &["lineage", &a, "--graph", "mermaid"]);
    let mermaid = stdout(&out);
    assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
    assert_eq!(mermaid.matches("subgraph ").count(), 5);
    assert_eq!(mermaid.matches(" --> ").count(), 44);
    // The issue's spelling, `--format dot|mermaid`, draws the same pictures.
    let same = lineq(&w.db.url, &["lineage", &a, "--format", "dot"]);
    assert!(same.status.success(), "{}", stderr(&same));
    assert_eq!(stdout(&same), dot);
    assert_eq!(
        stdout(&lineq(&w.db.url, &["lineage", &a, "--format=mermaid"])),
        mermaid
    );
    // Other commands still only know text and json.
    let wrong = lineq(&w.db.url, &["get", &a, "--format", "dot"]);
    assert_eq!(wrong.status.code(), Some(2));

    // An event id and a correlation id.
    let out = lineq(
        &w.db.url,
        &[
            "lineage",
            &w.e("C", "action_started").to_string(),
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["target"]["kind"], "event");
    assert_eq!(v["event_count"], json!(24));
    let out = lineq(
        &w.db.url,
        &["lineage", &w.a_corr.to_string(), "--format", "json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["target"]["kind"], "correlation");
    let tops: Vec<&Value> = v["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .map(|x| &x["execution_id"])
        .collect();
    assert_eq!(tops, vec![&json!(w.a), &json!(w.e)]);
    assert_eq!(v["event_count"], json!(45 + 8));

    // Unknown ids exit 3, malformed ones 2, and nothing is printed on stdout.
    let out = lineq(&w.db.url, &["lineage", &Uuid::now_v7().to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = lineq(
        &w.db.url,
        &["lineage", "check", &Uuid::now_v7().to_string()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = lineq(&w.db.url, &["lineage", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// docs/lineage.md
// ---------------------------------------------------------------------------------------------

/// (heading, SQL) of every ```sql block in the document, under the heading above it.
fn recipes(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match &mut block {
            Some(sql) if line.trim_start().starts_with("```") => {
                out.push((heading.clone(), std::mem::take(sql)));
                block = None;
            }
            Some(sql) => {
                sql.push_str(line);
                sql.push('\n');
            }
            None if line.trim() == "```sql" => block = Some(String::new()),
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().into(),
            None => {}
        }
    }
    out
}

/// psql's `:'name'` substitution: the value as a quoted literal.
fn substitute(sql: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = sql.to_string();
    for (k, v) in vars {
        out = out.replace(&format!(":'{k}'"), &format!("'{}'", v.replace('\'', "''")));
    }
    assert!(!out.contains(":'"), "unknown psql variable in\n{sql}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_recipes_run() {
    let w = world().await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lineage.md"))
        .expect("docs/lineage.md");
    let vars: HashMap<&str, String> = HashMap::from([
        ("execution_id", w.a.to_string()),
        ("root_execution_id", w.a.to_string()),
        ("step", "echo".to_string()),
        ("correlation_id", w.a_corr.to_string()),
    ]);
    let recipes = recipes(&doc);
    let mut rows_by_heading: HashMap<String, Vec<Value>> = HashMap::new();
    for (heading, sql) in &recipes {
        let sql = substitute(sql, &vars);
        let body = sql.trim().trim_end_matches(';');
        // Each recipe is one statement; aggregating its rows keeps their order.
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]') FROM ({body}) r"
        ))
        .fetch_one(&w.db.pool)
        .await
        .unwrap_or_else(|e| panic!("recipe {heading:?} failed: {e}\n{sql}"));
        rows_by_heading
            .entry(heading.clone())
            .or_default()
            .extend(rows.as_array().expect("rows").iter().cloned());
    }
    let rows = |h: &str| {
        rows_by_heading
            .get(h)
            .unwrap_or_else(|| panic!("no recipe under {h:?}"))
    };
    let col = |h: &str, c: &str| -> Vec<Value> { rows(h).iter().map(|r| r[c].clone()).collect() };

    assert_eq!(
        col("Why did this step run?", "event_type"),
        [
            "action_started",
            "step_enqueued",
            "workflow_initialized",
            "execution_started"
        ]
        .map(|s| json!(s))
        .to_vec()
    );
    assert_eq!(
        col("What did this execution spawn?", "execution_id"),
        ["B", "C", "D", "B2"].map(|l| json!(w.x(l))).to_vec()
    );
    assert_eq!(rows("The whole tree, drawn").len(), 45);
    assert_eq!(
        col("Every failure under a root", "event_type"),
        [json!("action_failed"), json!("step_attempt_failed")]
    );
    assert_eq!(
        col("Every failure under a root", "error"),
        [json!("boom"), json!("boom")]
    );
    let slowest = rows("The slowest step per workflow");
    let workflows: HashSet<&str> = slowest
        .iter()
        .filter_map(|r| r["workflow_name"].as_str())
        .collect();
    assert!(
        ["echo", "fail", "wf_B", "wf_B2"]
            .iter()
            .all(|wf| workflows.contains(wf)),
        "{slowest:?}"
    );
    let workers = col("Which worker handled each attempt", "worker_id");
    assert_eq!(workers.len(), 6, "A, B, C, D and both attempts of B2");
    assert!(workers.contains(&json!("w2-b2")));
    let messages = rows("Queue messages and their meta, next to the events they produced");
    // A's step message (its result was deleted once applied) and the plain-PGMQ variant's one
    // step message
    let produced: Vec<&Value> = messages.iter().map(|r| &r["produced"]).collect();
    assert_eq!(
        produced,
        vec![&json!("action_started"), &json!("action_started")]
    );
    assert_eq!(messages[0]["correlation_matches"], json!(true));
    assert_eq!(
        col("Everything under a correlation id", "execution_id"),
        ["A", "B", "C", "D", "B2", "E"]
            .map(|l| json!(w.x(l)))
            .to_vec()
    );
    assert_eq!(recipes.len(), 9, "every recipe was run");
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A real workflow: fan-out, a retry, three levels of child executions
// ---------------------------------------------------------------------------------------------

/// Ancestors by following `parent_event_id` in memory: the oracle for `event_ancestors`.
fn walk_up(by_id: &HashMap<Uuid, &EventRow>, from: Uuid) -> Vec<Uuid> {
    let mut out = vec![from];
    let mut cur = by_id[&from].parent_event_id;
    while let Some(p) = cur {
        out.push(p);
        cur = by_id.get(&p).and_then(|e| e.parent_event_id);
    }
    out
}

/// Depth-first from `top`, children in id order: the oracle for descendants and lineage.
fn walk_down(
    children: &HashMap<Uuid, Vec<Uuid>>,
    top: Uuid,
    depth: i32,
    path: &mut Vec<Uuid>,
    out: &mut Vec<(i32, Vec<Uuid>)>,
) {
    path.push(top);
    out.push((depth, path.clone()));
    let mut kids = children.get(&top).cloned().unwrap_or_default();
    kids.sort();
    for k in kids {
        walk_down(children, k, depth + 1, path, out);
    }
    path.pop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_workflow_with_fan_out_retries_and_three_levels_of_children() {
    let db = TestDb::new().await;
    let procs = vec![
        Proc::start(&db.url, "orchestrator", &["orchestrator"]),
        Proc::start(&db.url, "worker1", &["worker", "--concurrency", "4"]),
        Proc::start(&db.url, "worker2", &["worker", "--concurrency", "4"]),
    ];
    store::register(
        &db.pool,
        &WorkflowDefinition::new("pipeline")
            .step(StepDefinition::new("fetch", "echo"))
            .step(
                StepDefinition::new("charge", "flaky")
                    .depends_on(["fetch"])
                    .retry(RetryPolicy {
                        max_attempts: 3,
                        backoff_ms: 20,
                        max_backoff_ms: 100,
                        ..Default::default()
                    })
                    .params(json!({"fail_attempts": 1})),
            )
            .step(StepDefinition::new("kids", "spawn").depends_on(["fetch"]))
            .step(StepDefinition::new("done", "echo").depends_on(["charge", "kids"])),
    )
    .await
    .expect("register");
    let leaf = json!({"children": [{"target": "echo", "input": {"leaf": true}}], "wait": true});
    let mid = json!({"children": [{"target": "spawn", "input": leaf}], "wait": true});
    let input = json!({"children": [{"target": "spawn", "input": mid},
                                    {"target": "echo", "input": {"sibling": true}}],
                       "wait": true});
    let root = Client::new(db.pool.clone())
        .submit(SubmitRequest::new("pipeline").input(input))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[root], Duration::from_secs(60)).await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM lineq.executions WHERE execution_id = $1")
            .bind(root)
            .fetch_one(&db.pool)
            .await
            .expect("status");
    assert_eq!(status, "completed");

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
    tree_shape(&events); // one root, every parent present, no cycle
    assert!(events.iter().any(|e| e.event_type == "step_attempt_failed"));
    let by_id: HashMap<Uuid, &EventRow> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for e in &events {
        if let Some(p) = e.parent_event_id {
            children.entry(p).or_default().push(e.event_id);
        }
    }
    let executions: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT execution_id, parent_execution_id FROM lineq.executions
         WHERE root_execution_id = $1",
    )
    .bind(root)
    .fetch_all(&db.pool)
    .await
    .expect("executions");
    assert_eq!(executions.len(), 5, "root, spawn, spawn, echo, echo");

    // execution_tree, against the parent links.
    let mut exec_children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (x, p) in &executions {
        if let Some(p) = p {
            exec_children.entry(*p).or_default().push(*x);
        }
    }
    let mut expected = Vec::new();
    walk_down(&exec_children, root, 0, &mut Vec::new(), &mut expected);
    let got: Vec<(i32, Vec<Uuid>)> = lineage::execution_tree(&db.pool, root)
        .await
        .expect("tree")
        .into_iter()
        .map(|t| (t.depth, t.path))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.iter().map(|(d, _)| *d).max(), Some(3), "three levels");

    // lineage, against a depth-first walk of the parent links.
    let top = events
        .iter()
        .find(|e| e.parent_event_id.is_none())
        .expect("root event")
        .event_id;
    let mut expected = Vec::new();
    walk_down(&children, top, 0, &mut Vec::new(), &mut expected);
    let got: Vec<(i32, Vec<Uuid>)> = lineage::lineage_events(&db.pool, root)
        .await
        .expect("lineage")
        .into_iter()
        .map(|r| (r.depth.expect("depth"), r.path.expect("path")))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), events.len());

    // event_ancestors of every event, against walking up.
    for e in &events {
        let got: Vec<Uuid> = lineage::ancestors(&db.pool, e.event_id)
            .await
            .expect("ancestors")
            .into_iter()
            .map(|a| a.event.event_id)
            .collect();
        assert_eq!(got, walk_up(&by_id, e.event_id), "{}", e.event_type);
    }
    // event_descendants of every event of the root execution, against walking down.
    for e in events.iter().filter(|e| e.execution_id == root) {
        let mut expected = Vec::new();
        walk_down(&children, e.event_id, 0, &mut Vec::new(), &mut expected);
        let got: Vec<(i32, Vec<Uuid>)> = lineage::descendants(&db.pool, e.event_id)
            .await
            .expect("descendants")
            .into_iter()
            .map(|d| (d.depth, d.path))
            .collect();
        assert_eq!(got, expected, "{}", e.event_type);
    }

    // The whole tree checks, and breaking it is noticed: the deepest echo's step_result gone.
    let report = lineage::check(&db.pool, root).await.expect("check");
    assert_eq!(report.faults, vec![], "a real run is whole");
    assert_eq!(report.events, events.len());
    let out = lineq(&db.url, &["lineage", "check", &root.to_string()]);
    assert!(out.status.success(), "{}", stdout(&out));
    let deepest = lineage::execution_tree(&db.pool, root)
        .await
        .expect("tree")
        .into_iter()
        .find(|t| t.depth == 3)
        .expect("level 3");
    let victim = events
        .iter()
        .find(|e| e.execution_id == deepest.execution_id && e.event_type == "step_result")
        .expect("step_result");
    let orphan = events
        .iter()
        .find(|e| e.parent_event_id == Some(victim.event_id) && e.event_type == "step_completed")
        .expect("its step_completed");
    sqlx::query("DELETE FROM lineq.events WHERE event_id = $1")
        .bind(victim.event_id)
        .execute(&db.pool)
        .await
        .expect("delete");
    let faults = lineage::check(&db.pool, root).await.expect("check").faults;
    assert!(
        faults.contains(&Fault::MissingParent {
            event_id: orphan.event_id,
            event_type: "step_completed".into(),
            execution_id: deepest.execution_id,
            parent_event_id: victim.event_id,
        }),
        "{faults:?}"
    );
    let out = lineq(&db.url, &["lineage", "check", &root.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&victim.event_id.to_string()));

    for mut p in procs.into_iter().rev() {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{} exited {status}: {}",
            p.name,
            p.log_text()
        );
    }
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------------
// The plan of the deep queries
// ---------------------------------------------------------------------------------------------

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, with whether it is inside a Recursive Union.
fn plan_nodes(plan: &Value) -> Vec<(Value, bool)> {
    fn walk(node: &Value, in_recursion: bool, out: &mut Vec<(Value, bool)>) {
        let recursive = in_recursion || node["Node Type"] == "Recursive Union";
        out.push((node.clone(), in_recursion));
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, recursive, out);
        }
    }
    let mut out = Vec::new();
    walk(&plan[0]["Plan"], false, &mut out);
    out
}

/// The plan of the query inside `lineq.<function>(uuid)`, for `id`. The function itself is
/// planned as one Function Scan (a function with a pinned `search_path` is never inlined), so
/// its body is explained, with its parameter bound.
async fn explain_function(pool: &PgPool, function: &str, id: Uuid) -> Value {
    let (body, param): (String, String) = sqlx::query_as(
        "SELECT p.prosrc, p.proargnames[1] FROM pg_proc p
         WHERE p.pronamespace = 'lineq'::regnamespace AND p.proname = $1",
    )
    .bind(function)
    .fetch_one(pool)
    .await
    .expect("function body");
    let sql = body.replace(&param, "$1");
    sqlx::query_scalar::<_, Value>(&format!("EXPLAIN (FORMAT JSON) {sql}"))
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("explain")
}

fn assert_indexed(plan: &Value, index: &str, what: &str) {
    let nodes = plan_nodes(plan);
    let seq_on_events: Vec<&Value> = nodes
        .iter()
        .filter(|(n, _)| n["Node Type"] == "Seq Scan" && n["Relation Name"] == "events")
        .map(|(n, _)| n)
        .collect();
    assert!(
        seq_on_events.is_empty(),
        "{what}: Seq Scan on events in {plan:#}"
    );
    assert!(
        // A Bitmap Index Scan names only the index (its Bitmap Heap Scan names the table).
        nodes.iter().any(|(n, in_recursion)| *in_recursion
            && n["Index Name"] == index
            && (n["Relation Name"] == "events" || n["Node Type"] == "Bitmap Index Scan")),
        "{what}: no scan of {index} inside the recursion in {plan:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_ancestors_use_the_indexes() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    // A chain of 10,000 events (the worst case: one level per event), among 30,000 events of
    // 10,000 small trees, so the table is not one chain and its statistics are realistic.
    sqlx::query(
        r#"
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, root_execution_id,
            correlation_id, event_type, node_name, created_at)
        SELECT md5('chain' || i)::uuid,
               CASE WHEN i > 1 THEN md5('chain' || (i - 1))::uuid END,
               md5('chain')::uuid, md5('chain')::uuid, md5('chain')::uuid, 'synthetic', 'test',
               now() + make_interval(secs => i * 0.000001)
        FROM generate_series(1, 10000) AS i
        UNION ALL
        SELECT md5('noise' || i)::uuid,
               CASE WHEN i % 3 <> 0 THEN md5('noise' || (i - i % 3))::uuid END,
               md5('x' || (i / 3))::uuid, md5('x' || (i / 3))::uuid, md5('x' || (i / 3))::uuid,
               'synthetic', 'test', now()
        FROM generate_series(0, 29999) AS i
        "#,
    )
    .execute(pool)
    .await
    .expect("insert");
    sqlx::query("ANALYZE lineq.events")
        .execute(pool)
        .await
        .expect("analyze");
    let deepest: Uuid = sqlx::query_scalar("SELECT md5('chain10000')::uuid")
        .fetch_one(pool)
        .await
        .expect("id");

    let plan = explain_function(pool, "event_ancestors", deepest).await;
    assert_indexed(&plan, "events_pkey", "event_ancestors");
    let up = lineage::ancestors(pool, deepest).await.expect("ancestors");
    assert_eq!(up.len(), 10_000);
    assert!(up.iter().enumerate().all(|(i, a)| a.distance == i as i32));
    assert_eq!(up.last().and_then(|a| a.event.parent_event_id), None);

    let small_root: Uuid = sqlx::query_scalar("SELECT md5('noise0')::uuid")
        .fetch_one(pool)
        .await
        .expect("id");
    let plan = explain_function(pool, "event_descendants", small_root).await;
    assert_indexed(&plan, "events_parent_idx", "event_descendants");
    assert_eq!(
        lineage::descendants(pool, small_root)
            .await
            .expect("descendants")
            .len(),
        3
    );

    // The benchmark the timing lives in: it works, and leaves nothing behind.
    let before = db.count("lineq.events").await;
    let bench = lineage::bench_ancestors(pool, 10_000, 2)
        .await
        .expect("bench");
    assert_eq!((bench.depth, bench.rows, bench.runs), (10_000, 10_000, 2));
    assert_eq!(db.count("lineq.events").await, before);
    db.drop_db().await;
}

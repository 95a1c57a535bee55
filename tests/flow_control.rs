//! Flow control with real processes (docs/flow-control.md): concurrency limits by key and their
//! fairness under two orchestrators and three workers, delayed starts and the wake-up at
//! visibility, priorities, rate limits, cancelling what waits, and bad input.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use lineq::{Client, ConcurrencyLimit, RateLimit, RatePer, SubmitRequest};
use lineq_core::execution::{ExecutionStatus, StepStatus, get_execution, steps_of};
use lineq_orchestrator::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition, store};
use lineq_read::lineage;
use lineq_testkit::*;

/// When an attempt ran: `(start, end)`.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// `(execution, step, start, end)` of every attempt: `action_started` to the orchestrator's
/// end of that step (completed or failed), from the events.
async fn attempts(db: &TestDb) -> Vec<(Uuid, Uuid, DateTime<Utc>, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT s.execution_id, s.step_id, s.created_at,
                (SELECT min(e.created_at) FROM lineq.events e
                 WHERE e.step_id = s.step_id AND e.attempt = s.attempt
                   AND e.event_type IN ('step_completed', 'step_failed', 'step_attempt_failed'))
         FROM lineq.events s
         WHERE s.event_type = 'action_started'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("attempts")
}

/// Waits until `n` workers have registered (each listens for wake-ups before it registers).
async fn workers_listening(db: &TestDb, n: i64) {
    eventually(
        Duration::from_secs(30),
        "the workers to register",
        || async { (db.count("lineq.workers WHERE stopped_at IS NULL").await >= n).then_some(()) },
    )
    .await;
}

/// The most intervals open at once.
fn max_overlap(intervals: &[Interval]) -> usize {
    let mut points: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (s, e) in intervals {
        points.push((*s, 1));
        points.push((*e, -1));
    }
    // At equal times an end comes before a start: a slot freed then taken is not two at once.
    points.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in points {
        open += d;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

async fn finished_at(db: &TestDb, id: Uuid) -> DateTime<Utc> {
    get_execution(&db.pool, id)
        .await
        .expect("execution")
        .finished_at
        .expect("finished")
}

async fn assert_lineage_whole(db: &TestDb, id: Uuid) {
    let report = lineage::check(&db.pool, id).await.expect("lineage check");
    assert!(
        report.faults.is_empty(),
        "lineage of {id}: {:?}",
        report.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_limit_steps_per_key_run_and_a_short_line_is_not_starved() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // Three customers: 400, 90 and 10 executions, submitted in that order (the long line first,
    // so without fairness the short one would finish last), at most 2 at a time per customer.
    let mut by_key: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for (customer, n) in [("big", 400), ("mid", 90), ("small", 10)] {
        let reqs: Vec<SubmitRequest> = (0..n)
            .map(|i| {
                SubmitRequest::new("sleep")
                    .input(json!({"ms": 20, "i": i}))
                    .tag("customer", customer)
                    .concurrency(ConcurrencyLimit::new("tags.customer", 2))
            })
            .collect();
        let ids = client
            .submit_many(reqs)
            .await
            .expect("submit")
            .into_iter()
            .map(|s| s.execution.execution_id)
            .collect();
        by_key.insert(customer, ids);
    }
    // Nothing runs yet, and each key has sent only its limit.
    let throttled = db.count("lineq.steps WHERE status = 'throttled'").await;
    assert_eq!(throttled, 500 - 6, "all but 2 per key wait");
    let started = Instant::now();
    let t0: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .expect("now");
    let _o1 = Proc::start(&db.url, "orchestrator-1", &["orchestrator"]);
    let _o2 = Proc::start(&db.url, "orchestrator-2", &["orchestrator"]);
    let _w: Vec<Proc> = (1..=3)
        .map(|i| {
            Proc::start(
                &db.url,
                &format!("worker-{i}"),
                &["worker", "--concurrency", "4"],
            )
        })
        .collect();
    let all: Vec<Uuid> = by_key.values().flatten().copied().collect();
    wait_all_finished(&db.pool, &all, Duration::from_secs(240)).await;
    eprintln!("500 executions in {:?}", started.elapsed());
    for id in &all {
        assert_eq!(
            get_execution(&db.pool, *id).await.expect("e").status,
            ExecutionStatus::Completed
        );
    }

    // At most 2 running at once per key, from the events.
    let key_of: HashMap<Uuid, &str> = by_key
        .iter()
        .flat_map(|(k, ids)| ids.iter().map(move |id| (*id, *k)))
        .collect();
    let mut per_key: HashMap<&str, Vec<Interval>> = HashMap::new();
    for (exec, _, start, end) in attempts(&db).await {
        per_key.entry(key_of[&exec]).or_default().push((start, end));
    }
    for (key, intervals) in &per_key {
        let most = max_overlap(intervals);
        eprintln!(
            "key {key}: {} attempts, at most {most} at once",
            intervals.len()
        );
        assert!(most <= 2, "key {key} ran {most} steps at once");
    }
    assert_eq!(
        max_overlap(&per_key["big"]),
        2,
        "the limit is used, not just respected"
    );
    assert_eq!(
        db.count("lineq.flow_holders").await,
        0,
        "every slot is free"
    );
    assert_eq!(db.count("lineq.flow_waiting").await, 0);

    // The short line finishes long before the long one (times from the fleet's start).
    let mut last = HashMap::new();
    for (key, ids) in &by_key {
        let mut latest = t0;
        for id in ids {
            latest = latest.max(finished_at(&db, *id).await);
        }
        last.insert(*key, (latest - t0).num_milliseconds());
    }
    let ratio = last["small"] as f64 / last["big"] as f64;
    eprintln!(
        "last finish after the fleet started: small {} ms, mid {} ms, big {} ms; small/big = {ratio:.3}",
        last["small"], last["mid"], last["big"]
    );
    assert!(
        ratio < 0.25,
        "the 10 finished at {ratio:.3} of the 400's time"
    );
    assert!(last["mid"] < last["big"]);

    // Each wait is part of the lineage: whole, through step_throttled.
    for id in [by_key["small"][9], by_key["big"][399]] {
        assert_lineage_whole(&db, id).await;
        let shape: Vec<String> = sqlx::query_scalar(
            "SELECT event_type FROM lineq.events WHERE execution_id = $1 ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .expect("events");
        assert_eq!(shape[2], "step_throttled", "{shape:?}");
        assert_eq!(shape[3], "step_enqueued", "{shape:?}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_execution_starts_at_its_time_and_not_before() {
    let db = TestDb::new().await;
    let _o = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    // A long poll interval: only the wake-up at visibility starts it on time.
    let _w = Proc::start(&db.url, "worker", &["worker", "--poll-interval-ms", "5000"]);
    workers_listening(&db, 1).await;
    let client = Client::new(db.pool.clone());
    let delayed = client
        .submit(SubmitRequest::new("echo").delay(Duration::from_millis(1500)))
        .await
        .expect("submit")
        .execution;
    let at = Utc::now() + chrono::Duration::milliseconds(2500);
    let scheduled = client
        .submit(SubmitRequest::new("echo").run_at(at))
        .await
        .expect("submit")
        .execution;
    wait_all_finished(
        &db.pool,
        &[delayed.execution_id, scheduled.execution_id],
        Duration::from_secs(30),
    )
    .await;
    for (e, due) in [
        (
            &delayed,
            delayed.created_at + chrono::Duration::milliseconds(1500),
        ),
        (&scheduled, at),
    ] {
        let started: DateTime<Utc> = sqlx::query_scalar(
            "SELECT created_at FROM lineq.events WHERE execution_id = $1 AND event_type = 'action_started'",
        )
        .bind(e.execution_id)
        .fetch_one(&db.pool)
        .await
        .expect("started");
        let late = (started - due).num_milliseconds();
        eprintln!("started {late} ms after its time");
        assert!(late >= 0, "started {} ms early", -late);
        assert!(late < 1000, "started {late} ms late (the poll is 5000)");
        assert_lineage_whole(&db, e.execution_id).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_a_short_backoff_starts_well_before_the_next_poll() {
    let db = TestDb::new().await;
    let mut step = StepDefinition::new("flaky", "flaky");
    step.retry = RetryPolicy {
        max_attempts: 3,
        backoff_ms: 50,
        jitter: false,
        ..RetryPolicy::default()
    };
    store::register(&db.pool, &WorkflowDefinition::new("flaky_once").step(step))
        .await
        .expect("register");
    let _o = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let _w = Proc::start(&db.url, "worker", &["worker", "--poll-interval-ms", "5000"]);
    workers_listening(&db, 1).await;
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("flaky_once").input(json!({"fail_attempts": 1})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let (enqueued, started): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT (SELECT created_at FROM lineq.events WHERE execution_id = $1 AND attempt = 2
                 AND event_type = 'step_enqueued'),
                (SELECT created_at FROM lineq.events WHERE execution_id = $1 AND attempt = 2
                 AND event_type = 'action_started')",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("attempt 2");
    let after = (started - enqueued).num_milliseconds();
    eprintln!("the retry started {after} ms after it was sent (backoff 50 ms, poll 5000 ms)");
    assert!(after >= 50, "before its backoff: {after} ms");
    assert!(after < 1500, "{after} ms: it waited for a poll");
    assert_eq!(
        get_execution(&db.pool, id).await.expect("e").status,
        ExecutionStatus::Completed
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_delayed_or_throttled_execution_runs_nothing_and_frees_the_line() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let delayed = client
        .submit(SubmitRequest::new("echo").delay(Duration::from_secs(2)))
        .await
        .expect("submit")
        .execution
        .execution_id;
    // A keyed one that holds its key's only slot, and one behind it.
    let keyed: Vec<Uuid> = client
        .submit_many(
            (0..2)
                .map(|i| {
                    SubmitRequest::new("sleep")
                        .input(json!({"ms": 300, "i": i}))
                        .concurrency(ConcurrencyLimit::new("solo", 1))
                })
                .collect(),
        )
        .await
        .expect("submit")
        .into_iter()
        .map(|s| s.execution.execution_id)
        .collect();
    let steps = steps_of(&db.pool, keyed[1]).await.expect("steps");
    assert_eq!(steps[0].status, StepStatus::Throttled);
    let out = lineq(&db.url, &["get", &keyed[1].to_string()]);
    assert!(
        stdout(&out)
            .contains("waiting: step sleep waits for a slot of key solo (at most 1 at once)"),
        "{}",
        stdout(&out)
    );

    for id in [delayed, keyed[1]] {
        let out = lineq(&db.url, &["cancel", &id.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        db.count("lineq.flow_waiting").await,
        0,
        "left its key's line"
    );
    let _o = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let _w = Proc::start(&db.url, "worker", &["worker"]);
    wait_all_finished(&db.pool, &[keyed[0]], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in [delayed, keyed[1]] {
        assert_eq!(
            get_execution(&db.pool, id).await.expect("e").status,
            ExecutionStatus::Cancelled
        );
        let ran = db
            .count(&format!(
                "lineq.events WHERE execution_id = '{id}' AND event_type = 'action_started'"
            ))
            .await;
        assert_eq!(ran, 0, "{id} never ran");
        assert_lineage_whole(&db, id).await;
    }
    assert_eq!(db.count("pgmq.q_lineq_steps_default").await, 0);
    assert_eq!(db.count("lineq.flow_holders").await, 0);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_backlog_high_priority_executions_submitted_last_finish_first() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let low: Vec<Uuid> = client
        .submit_many(
            (0..40)
                .map(|i| SubmitRequest::new("sleep").input(json!({"ms": 30, "i": i})))
                .collect(),
        )
        .await
        .expect("submit")
        .into_iter()
        .map(|s| s.execution.execution_id)
        .collect();
    let high: Vec<Uuid> = client
        .submit_many(
            (0..5)
                .map(|i| {
                    SubmitRequest::new("sleep")
                        .input(json!({"ms": 30, "high": i}))
                        .priority(10)
                })
                .collect(),
        )
        .await
        .expect("submit")
        .into_iter()
        .map(|s| s.execution.execution_id)
        .collect();
    let _o = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    // One at a time, so the claim order is the run order.
    let _w = Proc::start(
        &db.url,
        "worker",
        &["worker", "--concurrency", "1", "--batch-size", "1"],
    );
    let all: Vec<Uuid> = low.iter().chain(&high).copied().collect();
    wait_all_finished(&db.pool, &all, Duration::from_secs(120)).await;
    let mut order: Vec<(DateTime<Utc>, bool)> = Vec::new();
    for id in &all {
        order.push((finished_at(&db, *id).await, high.contains(id)));
    }
    order.sort();
    let places: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, (_, h))| *h)
        .map(|(i, _)| i)
        .collect();
    eprintln!("high-priority executions finished at places {places:?} of 45");
    assert!(
        places.iter().all(|p| *p < 10),
        "submitted last, they finished at {places:?}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_caps_the_starts_in_every_window() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let _o = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let _w = Proc::start(&db.url, "worker", &["worker", "--concurrency", "8"]);
    workers_listening(&db, 1).await;
    // Submitted early in a window of the database's clock, so the first window's starts
    // cannot spill into the next one by the claim's few milliseconds.
    eventually(Duration::from_secs(5), "the start of a second", || async {
        let ms: f64 = sqlx::query_scalar(
            "SELECT (extract(milliseconds FROM clock_timestamp()) % 1000)::float8",
        )
        .fetch_one(&db.pool)
        .await
        .expect("clock");
        (ms < 300.0).then_some(())
    })
    .await;
    let ids: Vec<Uuid> = client
        .submit_many(
            (0..12)
                .map(|i| {
                    SubmitRequest::new("echo")
                        .input(json!({"i": i}))
                        .rate_limit(RateLimit::new("api", 3, RatePer::Second))
                })
                .collect(),
        )
        .await
        .expect("submit")
        .into_iter()
        .map(|s| s.execution.execution_id)
        .collect();
    // Within the first window: 3 sent, 9 waiting for the next ones.
    let waiting: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, steps FROM lineq.steps_waiting() ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("steps_waiting");
    assert!(
        waiting.contains(&("rate_limited".to_string(), 9)),
        "{waiting:?}"
    );
    let out = lineq(&db.url, &["get", &ids[11].to_string()]);
    assert!(
        stdout(&out).contains("waits for the rate of key api (3 per second)"),
        "{}",
        stdout(&out)
    );
    wait_all_finished(&db.pool, &ids, Duration::from_secs(60)).await;
    let starts: Vec<i64> = sqlx::query_scalar(
        "SELECT floor(extract(epoch FROM created_at))::bigint FROM lineq.events
         WHERE event_type = 'action_started' ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
    .expect("starts");
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &starts {
        *per_second.entry(*s).or_default() += 1;
    }
    eprintln!("starts per second: {per_second:?}");
    assert_eq!(starts.len(), 12);
    assert!(
        per_second.values().all(|n| *n <= 3),
        "more than 3 starts in a second: {per_second:?}"
    );
    assert!(
        per_second.len() >= 4,
        "12 starts at 3 a second take 4 windows"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flow_input_names_the_field_and_writes_nothing() {
    let db = TestDb::new().await;
    let cases: [(serde_json::Value, &str, &str); 9] = [
        (
            json!({"target": "echo", "concurrency": {"key": "k", "limit": 0}}),
            "concurrency.limit",
            "from 1 to 100000 (got 0)",
        ),
        (
            json!({"target": "echo", "concurrency": {"key": "tags.customer", "limit": 2}}),
            "concurrency.key",
            "\"tags.customer\" names nothing in this execution",
        ),
        (
            json!({"target": "echo", "metadata": {"a": 1},
                   "rate_limit": {"key": "metadata.region", "limit": 5}}),
            "rate_limit.key",
            "\"metadata.region\" names nothing",
        ),
        (
            json!({"target": "echo", "rate_limit": {"key": "api", "limit": 5, "per": "hour"}}),
            "rate_limit.per",
            "\"second\" or \"minute\"",
        ),
        (
            json!({"target": "echo", "run_at": "tomorrow"}),
            "run_at",
            "not an RFC 3339 timestamp",
        ),
        (
            json!({"target": "echo", "run_at": "2026-02-30T10:00:00Z"}),
            "run_at",
            "not an RFC 3339 timestamp",
        ),
        (
            json!({"target": "echo", "delay_ms": -5}),
            "delay_ms",
            "at least 0 (got -5)",
        ),
        (
            json!({"target": "echo", "delay_ms": 5, "run_at": "2026-01-01T00:00:00Z"}),
            "run_at",
            "not both",
        ),
        (
            json!({"target": "echo", "tags": {"customer": "a"},
                   "concurrency": {"key": "tags.customer", "limit": 2},
                   "rate_limit": {"key": "api", "limit": 2}}),
            "rate_limit.key",
            "one flow key",
        ),
    ];
    let before = db.written().await;
    for (req, field, reason) in cases {
        // A good request first: the bad one fails the whole batch.
        let batch = json!([{"target": "echo"}, req]);
        let err = sqlx::query("SELECT * FROM lineq.submit_many($1)")
            .bind(&batch)
            .execute(&db.pool)
            .await
            .expect_err("refused");
        let db_err = err.as_database_error().expect("database error");
        assert_eq!(db_err.code().as_deref(), Some("LQ001"), "{req}");
        let msg = db_err.message();
        assert!(
            msg.starts_with(&format!("{field}: request 1: ")) && msg.contains(reason),
            "{req}: {msg}"
        );
    }
    assert_eq!(db.written().await, before, "nothing written");
    assert_eq!(db.count("lineq.flow_keys").await, 0);

    // The CLI says the same.
    let out = lineq(
        &db.url,
        &["submit", "echo", "--concurrency", "tags.customer=2"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("concurrency.key"), "{}", stderr(&out));
    let out = lineq(&db.url, &["submit", "echo", "--delay=-5s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("delay"), "{}", stderr(&out));
    assert_eq!(db.written().await, before, "nothing written");
    db.drop_db().await;
}

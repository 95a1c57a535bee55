//! Tags and metadata as users rely on them: every list filter alone and combined against real
//! rows, paging, index use on 100,000 executions, injection attempts, reserved prefixes,
//! concurrent tag changes, history, and the same through the `lineq` command.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use lineq::{Client, Error, SubmitRequest};
use lineq_core::execution::ExecutionStatus;
use lineq_core::tags::Tags;
use lineq_orchestrator::tags::TagChange;
use lineq_read::history::HistoryKind;
use lineq_read::query::{ExecutionFilter, explain_list_executions, list_executions};
use lineq_testkit::*;

/// Every item of every page, following cursors with a small page size so paging is exercised.
async fn all_ids(client: &Client, filter: ExecutionFilter) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut f = filter.limit(2);
    for _ in 0..100 {
        let page = client.list(&f).await.expect("list");
        assert!(page.items.len() <= 2);
        out.extend(page.items.iter().map(|e| e.execution_id));
        match page.next_cursor {
            Some(c) => f = f.cursor(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn set_created(db: &TestDb, id: Uuid, t: DateTime<Utc>) {
    sqlx::query("UPDATE lineq.executions SET created_at = $2 WHERE execution_id = $1")
        .bind(id)
        .bind(t)
        .execute(&db.pool)
        .await
        .expect("set created_at");
}

async fn set_status(db: &TestDb, id: Uuid, status: &str) {
    sqlx::query("UPDATE lineq.executions SET status = $2 WHERE execution_id = $1")
        .bind(id)
        .bind(status)
        .execute(&db.pool)
        .await
        .expect("set status");
}

async fn tags_changed_events(db: &TestDb, id: Uuid) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload FROM lineq.events WHERE execution_id = $1 AND event_type = 'tags_changed'
         ORDER BY created_at, event_id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .expect("events")
}

#[tokio::test]
async fn every_filter_alone_and_combined_against_real_rows() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let submit = |req: SubmitRequest| {
        let client = client.clone();
        async move { client.submit(req).await.expect("submit").execution }
    };
    let e1 = submit(
        SubmitRequest::new("echo")
            .tag("customer", "acme")
            .tag("region", "us-west")
            .metadata(json!({"order": {"id": "12345", "total": 10}, "channel": "web"})),
    )
    .await;
    let e2 = submit(
        SubmitRequest::new("sleep")
            .tag("customer", "acme")
            .tag("region", "eu")
            .metadata(json!({"order": {"id": "777"}})),
    )
    .await;
    let e3 = submit(
        SubmitRequest::new("echo")
            .tag("customer", "globex")
            .tag("tier", "gold")
            .metadata(json!({"channel": "web", "items": ["a", "b"]})),
    )
    .await;
    let e4 = submit(SubmitRequest::new("fail")).await;
    let c1 = submit(
        SubmitRequest::new("echo")
            .parent(e1.execution_id)
            .tag("customer", "acme"),
    )
    .await;
    let g1 = submit(SubmitRequest::new("echo").parent(c1.execution_id)).await;
    let corr = Uuid::now_v7();
    let e5 = submit(SubmitRequest::new("echo").correlation_id(corr)).await;
    let (e1, e2, e3, e4, c1, g1, e5) = (
        e1.execution_id,
        e2.execution_id,
        e3.execution_id,
        e4.execution_id,
        c1.execution_id,
        g1.execution_id,
        e5.execution_id,
    );
    // Fixed times: a minute apart, and two rows sharing one so the id breaks the tie.
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let at = |m: i64| t0 + chrono::Duration::minutes(m);
    for (id, m) in [
        (e1, 1),
        (e2, 2),
        (e3, 3),
        (e4, 4),
        (c1, 5),
        (g1, 6),
        (e5, 6),
    ] {
        set_created(&db, id, at(m)).await;
    }
    let (g1_first, g1_second) = if g1 < e5 { (g1, e5) } else { (e5, g1) };
    set_status(&db, e2, "completed").await;
    set_status(&db, e3, "failed").await;
    set_status(&db, e4, "running").await;

    let all = vec![e1, e2, e3, e4, c1, g1_first, g1_second];
    let f = ExecutionFilter::new;
    let cases: Vec<(&str, ExecutionFilter, Vec<Uuid>)> = vec![
        ("none", f(), all.clone()),
        ("tag", f().tag("customer", "acme"), vec![e1, e2, c1]),
        (
            "two tags",
            f().tag("customer", "acme").tag("region", "us-west"),
            vec![e1],
        ),
        ("tag no match", f().tag("customer", "nobody"), vec![]),
        ("has_tag", f().has_tag("region"), vec![e1, e2]),
        ("has_tag two", f().has_tag("region").has_tag("tier"), vec![]),
        ("has_tag tier", f().has_tag("tier"), vec![e3]),
        (
            "metadata nested",
            f().metadata(json!({"order": {"id": "12345"}})),
            vec![e1],
        ),
        (
            "metadata top",
            f().metadata(json!({"channel": "web"})),
            vec![e1, e3],
        ),
        (
            "metadata array element",
            f().metadata(json!({"items": ["b"]})),
            vec![e3],
        ),
        ("metadata empty", f().metadata(json!({})), all.clone()),
        ("status", f().status(ExecutionStatus::Completed), vec![e2]),
        (
            "statuses",
            f().status(ExecutionStatus::Completed)
                .status(ExecutionStatus::Failed),
            vec![e2, e3],
        ),
        (
            "pending",
            f().status(ExecutionStatus::Pending),
            vec![e1, c1, g1_first, g1_second],
        ),
        ("workflow", f().workflow("sleep"), vec![e2]),
        ("parent", f().parent(e1), vec![c1]),
        ("parent of grandchild", f().parent(c1), vec![g1]),
        ("root", f().root(e1), vec![e1, c1, g1]),
        ("correlation", f().correlation_id(corr), vec![e5]),
        ("since", f().since(at(5)), vec![c1, g1_first, g1_second]),
        ("until", f().until(at(2)), vec![e1]),
        ("range", f().since(at(2)).until(at(4)), vec![e2, e3]),
        (
            "tag+status+metadata",
            f().tag("customer", "acme")
                .status(ExecutionStatus::Pending)
                .metadata(json!({"channel": "web"})),
            vec![e1],
        ),
        (
            "root+has_tag",
            f().root(e1).has_tag("customer"),
            vec![e1, c1],
        ),
        (
            "tag+workflow+range",
            f().tag("customer", "acme")
                .workflow("echo")
                .since(at(1))
                .until(at(6)),
            vec![e1, c1],
        ),
        (
            "contradiction",
            f().tag("customer", "acme").status(ExecutionStatus::Failed),
            vec![],
        ),
    ];
    for (name, filter, expected) in cases {
        // Through pages of 2 and in one page: the same rows in the same order.
        let paged = all_ids(&client, filter.clone()).await;
        assert_eq!(paged, expected, "{name} (paged)");
        let one = list_executions(&db.pool, &filter.clone().limit(1000))
            .await
            .expect("list");
        assert_eq!(
            one.items.iter().map(|e| e.execution_id).collect::<Vec<_>>(),
            expected,
            "{name}"
        );
        assert_eq!(one.next_cursor, None, "{name}");
    }

    // A cursor continues exactly after its row, ties included.
    let first = client
        .list(&ExecutionFilter::new().limit(6))
        .await
        .expect("list");
    assert_eq!(first.items.len(), 6);
    let rest = client
        .list(&ExecutionFilter::new().cursor(first.next_cursor.clone().expect("more")))
        .await
        .expect("list");
    assert_eq!(
        rest.items
            .iter()
            .map(|e| e.execution_id)
            .collect::<Vec<_>>(),
        vec![g1_second]
    );
    db.drop_db().await;
}

/// Collects (node type, index name, relation name) of every node of an EXPLAIN (FORMAT JSON).
fn plan_nodes(plan: &Value, out: &mut Vec<(String, Option<String>, Option<String>)>) {
    match plan {
        Value::Array(a) => a.iter().for_each(|v| plan_nodes(v, out)),
        Value::Object(o) => {
            if let Some(t) = o.get("Node Type").and_then(Value::as_str) {
                out.push((
                    t.to_string(),
                    o.get("Index Name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    o.get("Relation Name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                ));
            }
            o.values().for_each(|v| plan_nodes(v, out));
        }
        _ => {}
    }
}

#[tokio::test]
async fn tag_and_metadata_filters_use_their_gin_indexes_on_100k_executions() {
    let db = TestDb::new().await;
    let started = Instant::now();
    sqlx::query(
        r#"
        INSERT INTO lineq.executions (execution_id, workflow_name, namespace, status, input,
            correlation_id, root_execution_id, tags, metadata, created_at)
        SELECT s.id, 'wf' || (s.i % 10), 'default',
               (ARRAY['pending','running','completed','failed','cancelled'])[1 + s.i % 5],
               'null'::jsonb, gen_random_uuid(), s.id,
               jsonb_build_object('customer', 'c' || (s.i % 5000), 'region', 'r' || (s.i % 7))
                 || CASE WHEN s.i % 2000 = 0 THEN '{"vip": "yes"}'::jsonb ELSE '{}'::jsonb END,
               jsonb_build_object('order', jsonb_build_object('id', s.i::text), 'channel', 'web'),
               timestamptz '2026-01-01' + make_interval(secs => s.i)
        FROM (SELECT i, gen_random_uuid() AS id FROM generate_series(1, 100000) AS i) AS s
        "#,
    )
    .execute(&db.pool)
    .await
    .expect("insert 100,000 executions");
    sqlx::query("ANALYZE lineq.executions")
        .execute(&db.pool)
        .await
        .expect("analyze");
    eprintln!(
        "inserted and analyzed 100,000 executions in {:?}",
        started.elapsed()
    );

    let tag_indexes = ["executions_tags_idx", "executions_tags_keys_idx"];
    let cases: Vec<(&str, ExecutionFilter, &[&str], usize)> = vec![
        (
            "tag",
            ExecutionFilter::new().tag("customer", "c42"),
            &tag_indexes,
            20,
        ),
        (
            "two tags",
            ExecutionFilter::new()
                .tag("customer", "c42")
                .tag("region", "r0"),
            &tag_indexes,
            // i ≡ 42 (mod 5000) and i ≡ 0 (mod 7)
            (1..=100_000)
                .filter(|i| i % 5000 == 42 && i % 7 == 0)
                .count(),
        ),
        (
            "has_tag",
            ExecutionFilter::new().has_tag("vip"),
            &["executions_tags_keys_idx"],
            50,
        ),
        (
            "metadata",
            ExecutionFilter::new().metadata(json!({"order": {"id": "4242"}})),
            &["executions_metadata_idx"],
            1,
        ),
        (
            "tag + metadata + status",
            ExecutionFilter::new()
                .tag("customer", "c4242")
                .metadata(json!({"order": {"id": "4242"}}))
                .status(ExecutionStatus::Failed),
            &[
                "executions_tags_idx",
                "executions_tags_keys_idx",
                "executions_metadata_idx",
            ],
            // 4242 % 5 == 2 -> 'completed', so no row is failed
            0,
        ),
    ];
    for (name, filter, wanted, expected_rows) in cases {
        let plan = explain_list_executions(&db.pool, &filter.clone().limit(1000))
            .await
            .expect("explain");
        let mut nodes = Vec::new();
        plan_nodes(&plan, &mut nodes);
        eprintln!("{name}: {nodes:?}");
        assert!(
            nodes.iter().any(|(t, idx, _)| t == "Bitmap Index Scan"
                && idx.as_deref().is_some_and(|i| wanted.contains(&i))),
            "{name}: no Bitmap Index Scan on {wanted:?}: {plan:#}"
        );
        assert!(
            !nodes
                .iter()
                .any(|(t, _, rel)| t == "Seq Scan" && rel.as_deref() == Some("executions")),
            "{name}: Seq Scan on executions: {plan:#}"
        );
        let t = Instant::now();
        let page = list_executions(&db.pool, &filter.limit(1000))
            .await
            .expect("list");
        eprintln!("{name}: {} rows in {:?}", page.items.len(), t.elapsed());
        assert_eq!(page.items.len(), expected_rows, "{name}");
    }
    db.drop_db().await;
}

const EVIL: &[&str] = &[
    "' OR '1'='1",
    "x'; DROP TABLE lineq.executions; --",
    "\") OR 1=1 --",
    "acme' UNION SELECT * FROM lineq.events --",
    "$1",
    "?",
    "%",
    "_",
    "\\",
    "'; SELECT pg_sleep(10); --",
    "{\"a\":1}",
    "ünïcödé ☃",
];

#[tokio::test]
async fn injection_attempts_are_only_ever_data() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // Rows whose values are the attack strings themselves: only exact matches may come back.
    let mut by_value = Vec::new();
    for (i, evil) in EVIL.iter().enumerate() {
        let e = client
            .submit(
                SubmitRequest::new("echo")
                    .tag("probe", *evil)
                    .metadata(json!({ "probe": evil, "n": i })),
            )
            .await
            .expect("submit")
            .execution;
        by_value.push((*evil, e.execution_id));
    }
    let plain = client
        .submit(SubmitRequest::new("echo").tag("probe", "plain"))
        .await
        .expect("submit")
        .execution
        .execution_id;
    let before = db.written().await;

    for &(evil, id) in &by_value {
        let found = all_ids(&client, ExecutionFilter::new().tag("probe", evil)).await;
        assert_eq!(found, vec![id], "tag value {evil:?}");
        let found = all_ids(
            &client,
            ExecutionFilter::new().metadata(json!({ "probe": evil })),
        )
        .await;
        assert_eq!(found, vec![id], "metadata value {evil:?}");
        let found = all_ids(&client, ExecutionFilter::new().workflow(evil)).await;
        assert!(found.is_empty(), "workflow {evil:?}");
        let found = all_ids(
            &client,
            ExecutionFilter::new().metadata(json!({ evil: "x" })),
        )
        .await;
        assert!(found.is_empty(), "metadata key {evil:?}");
        // Keys and cursors have a shape: anything else is refused, naming the field.
        let key_shaped = evil
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        for (field, filter) in [
            ("tag", ExecutionFilter::new().tag(evil, "x")),
            ("has_tag", ExecutionFilter::new().has_tag(evil)),
            ("cursor", ExecutionFilter::new().cursor(evil)),
        ] {
            match client.list(&filter).await {
                Ok(page) if key_shaped && field != "cursor" => assert!(page.items.is_empty()),
                Err(Error::Validation(v)) => assert_eq!(v.field, field, "{evil:?}"),
                other => panic!("{field} {evil:?}: expected a validation error, got {other:?}"),
            }
        }
        // The CLI passes them through the same way.
        let tag_arg = format!("probe={evil}");
        let out = lineq(&db.url, &["list", "--tag", &tag_arg, "--format", "json"]);
        assert!(out.status.success(), "{evil:?}: {}", stderr(&out));
        let page: Value = serde_json::from_str(&stdout(&out)).expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{evil:?}");
        assert_eq!(page["items"][0]["execution_id"], json!(id.to_string()));
        let out = lineq(&db.url, &["list", "--workflow", evil, "--format", "json"]);
        assert!(out.status.success(), "{evil:?}: {}", stderr(&out));
        let out = lineq(&db.url, &["list", "--has-tag", evil]);
        if key_shaped {
            assert!(out.status.success(), "{evil:?}: {}", stderr(&out));
        } else {
            assert_eq!(out.status.code(), Some(2), "{evil:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("invalid has_tag"), "{}", stderr(&out));
        }
    }
    assert_eq!(db.written().await, before, "a filter wrote something");
    assert_eq!(
        all_ids(&client, ExecutionFilter::new().tag("probe", "plain")).await,
        vec![plain]
    );
    // Still all there: nothing was dropped, nothing slept.
    assert_eq!(db.count("lineq.executions").await, EVIL.len() as i64 + 1);
    db.drop_db().await;
}

#[tokio::test]
async fn reserved_prefixes_and_limits_are_refused_and_change_nothing() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    for (req, field) in [
        (SubmitRequest::new("echo").tag("lineq_owner", "x"), "tags"),
        (SubmitRequest::new("echo").tag("_private", "x"), "tags"),
        (
            SubmitRequest::new("echo").metadata(json!({"_lineq_trace": 1})),
            "metadata",
        ),
    ] {
        match client.submit(req).await {
            Err(Error::Validation(v)) => assert_eq!(v.field, field),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }
    assert_eq!(db.written().await, (0, 0, 0, 0));

    let e = client
        .submit(SubmitRequest::new("echo").tag("customer", "acme"))
        .await
        .expect("submit")
        .execution;
    let written = db.written().await;
    let change = |set: &[(&str, &str)], remove: &[&str]| TagChange {
        set: tags(set),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    };
    let too_many: Vec<(String, String)> = (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let long_value = "v".repeat(257);
    for (c, needle) in [
        (change(&[("lineq_x", "1")], &[]), "reserved prefix"),
        (change(&[("_x", "1")], &[]), "reserved prefix"),
        (change(&[], &["lineq_x"]), "reserved prefix"),
        (change(&[("Bad", "1")], &[]), "contains 'B'"),
        (change(&[("k", &long_value)], &[]), "the limit is 256"),
        (change(&[("k", "a\nb")], &[]), "newline"),
        (change(&too_many, &[]), "21 tags; the limit is 20"),
        (change(&[("k", "1")], &["k"]), "both set and removed"),
        (change(&[], &[]), "nothing to change"),
    ] {
        match client.update_tags(e.execution_id, &c, None, "test").await {
            Err(Error::Validation(v)) => {
                assert_eq!(v.field, "tags");
                assert!(v.to_string().contains(needle), "{v} lacks {needle:?}");
            }
            other => panic!("{c:?}: expected a validation error, got {other:?}"),
        }
    }
    let after = client.execution(e.execution_id).await.expect("get");
    assert_eq!(after.version, e.version);
    assert_eq!(after.tags, json!({"customer": "acme"}));
    assert_eq!(
        db.written().await,
        written,
        "a refused change wrote something"
    );

    // The CLI: exit code 2, the field named, nothing written.
    let id = e.execution_id.to_string();
    for (args, needle) in [
        (vec!["tag", &id, "lineq_owner=me"], "invalid tags"),
        (vec!["tag", &id, "novalue"], "expected KEY=VALUE"),
        (vec!["untag", &id, "_x"], "reserved prefix"),
        (vec!["submit", "echo", "--tag", "_x=1"], "invalid tags"),
        (
            vec!["submit", "echo", "--tag", "a=1", "--tag", "a=2"],
            "given twice",
        ),
        (
            vec!["submit", "echo", "--metadata", "{\"_lineq_x\":1}"],
            "invalid metadata",
        ),
        (
            vec!["submit", "echo", "--metadata", "[1]"],
            "invalid metadata",
        ),
        (
            vec!["submit", "echo", "--metadata", "{nope"],
            "not valid JSON",
        ),
        (vec!["list", "--limit", "0"], "invalid limit"),
        (vec!["list", "--limit", "1001"], "1 to 1000"),
        (vec!["list", "--since", "yesterday"], "invalid since"),
        (
            vec!["list", "--until", "2026-13-01T00:00:00Z"],
            "invalid until",
        ),
        (vec!["list", "--status", "bogus"], "invalid status"),
        (vec!["list", "--cursor", "junk"], "invalid cursor"),
        (vec!["list", "--metadata", "[1]"], "invalid metadata"),
        (vec!["list", "--tag", "k"], "expected KEY=VALUE"),
        (vec!["list", "--parent", "nope"], "invalid parent"),
        (vec!["history", "nope"], "invalid execution_id"),
    ] {
        let out = lineq(&db.url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            stderr(&out)
        );
        assert_eq!(db.written().await, written, "{args:?} wrote something");
    }
    let missing = lineq(&db.url, &["tag", &Uuid::now_v7().to_string(), "a=b"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_changes_never_lose_one_silently() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let e = client
        .submit(SubmitRequest::new("echo").tag("customer", "acme"))
        .await
        .expect("submit")
        .execution;
    let id = e.execution_id;
    const N: usize = 8;

    // 1. Everyone names the version they read: exactly one wins, the rest get a conflict.
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            let v = e.version;
            tokio::spawn(async move {
                let c = TagChange {
                    set: tags(&[(&format!("racer{i}"), "won")]),
                    remove: vec![],
                };
                client.update_tags(id, &c, Some(v), "race").await
            })
        })
        .collect();
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("join") {
            Ok(_) => won.push(i),
            Err(Error::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, e.version);
                assert_eq!(actual, e.version + 1);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one guarded change wins");
    let now = client.execution(id).await.expect("get");
    assert_eq!(now.version, e.version + 1);
    assert_eq!(
        now.tags,
        json!({"customer": "acme", format!("racer{}", won[0]): "won"})
    );

    // 2. Without a version, each change applies to the current tags: all of them land.
    let base = now.version;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let c = TagChange {
                    set: tags(&[(&format!("free{i}"), "x")]),
                    remove: vec![],
                };
                client.update_tags(id, &c, None, "free").await
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for t in tasks {
        versions.insert(t.await.expect("join").expect("update").version);
    }
    assert_eq!(
        versions,
        (base + 1..=base + N as i64).collect::<BTreeSet<_>>(),
        "each change got a version of its own"
    );
    let now = client.execution(id).await.expect("get");
    for i in 0..N {
        assert_eq!(now.tags[format!("free{i}")], json!("x"), "free{i} was lost");
    }

    // 3. Read-then-update with retry on conflict (what a careful client does): all land.
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let c = TagChange {
                    set: Tags::new(),
                    remove: vec![format!("free{i}")],
                };
                for _ in 0..100 {
                    let v = client.execution(id).await?.version;
                    match client.update_tags(id, &c, Some(v), "retry").await {
                        Err(Error::Conflict { .. }) => continue,
                        other => return other,
                    }
                }
                panic!("no progress after 100 tries");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("update");
    }
    let now = client.execution(id).await.expect("get");
    assert_eq!(
        now.tags,
        json!({"customer": "acme", format!("racer{}", won[0]): "won"})
    );
    assert_eq!(now.version, base + 2 * N as i64);

    // Every version has its event, and the events chain: each `before` is the previous `after`.
    let events = tags_changed_events(&db, id).await;
    assert_eq!(events.len(), 1 + 2 * N);
    let mut sorted = events.clone();
    sorted.sort_by_key(|p| p["version"].as_i64());
    let mut prev = json!({"customer": "acme"});
    for (k, p) in sorted.iter().enumerate() {
        assert_eq!(p["version"], json!(e.version + 1 + k as i64));
        assert_eq!(p["before"], prev, "event of version {}", p["version"]);
        prev = p["after"].clone();
    }
    assert_eq!(prev, now.tags);
    // Each is the child of the execution's execution_started.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events t
         WHERE t.execution_id = $1 AND t.event_type = 'tags_changed'
           AND t.parent_event_id IS DISTINCT FROM (
               SELECT s.event_id FROM lineq.events s
               WHERE s.execution_id = $1 AND s.event_type = 'execution_started')",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(orphans, 0);

    // 4. Concurrent `lineq tag` processes: each either lands or fails loudly with a conflict.
    let before = client.execution(id).await.expect("get");
    let url = db.url.clone();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            let id = id.to_string();
            std::thread::spawn(move || lineq(&url, &["tag", &id, &format!("cli{i}=yes")]))
        })
        .collect();
    let outs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let now = client.execution(id).await.expect("get");
    let mut landed = 0i64;
    for (i, out) in outs.iter().enumerate() {
        let key = format!("cli{i}");
        if out.status.success() {
            landed += 1;
            assert_eq!(
                now.tags[&key],
                json!("yes"),
                "cli{i} succeeded but was lost"
            );
        } else {
            assert_eq!(out.status.code(), Some(4), "{}", stderr(out));
            assert!(stderr(out).contains("conflict"), "{}", stderr(out));
            assert!(now.tags.get(&key).is_none(), "cli{i} failed but landed");
        }
    }
    assert!(landed >= 1);
    assert_eq!(now.version, before.version + landed);
    db.drop_db().await;
}

#[tokio::test]
async fn tags_change_only_while_pending_and_stale_versions_conflict() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let e = client
        .submit(SubmitRequest::new("echo"))
        .await
        .expect("submit")
        .execution;
    let id = e.execution_id.to_string();

    // The CLI with --expect-version: the right one lands, a stale one is a conflict (exit 1).
    let v = e.version.to_string();
    let ok = lineq(
        &db.url,
        &[
            "tag",
            &id,
            "customer=acme",
            "region=us",
            "--expect-version",
            &v,
            "--format",
            "json",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out: Value = serde_json::from_str(&stdout(&ok)).expect("json");
    assert_eq!(out["version"], json!(e.version + 1));
    assert_eq!(out["tags"], json!({"customer": "acme", "region": "us"}));
    let stale = lineq(&db.url, &["untag", &id, "region", "--expect-version", &v]);
    assert_eq!(stale.status.code(), Some(4), "{}", stderr(&stale));
    assert!(
        stderr(&stale).contains(&format!(
            "is at version {}, not {}",
            e.version + 1,
            e.version
        )),
        "{}",
        stderr(&stale)
    );
    let ok = lineq(&db.url, &["untag", &id, "region", "--cause", "ticket 42"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("tags {customer=acme}"),
        "{}",
        stdout(&ok)
    );
    // Setting what is already there changes nothing and writes nothing.
    let events = tags_changed_events(&db, e.execution_id).await.len();
    let same = lineq(&db.url, &["tag", &id, "customer=acme"]);
    assert!(same.status.success(), "{}", stderr(&same));
    assert_eq!(tags_changed_events(&db, e.execution_id).await.len(), events);

    // Once it runs, tags are fixed.
    set_status(&db, e.execution_id, "running").await;
    let c = TagChange {
        set: tags(&[("late", "yes")]),
        remove: vec![],
    };
    match client.update_tags(e.execution_id, &c, None, "late").await {
        Err(Error::InvalidState(m)) => assert!(m.contains("only while it is pending"), "{m}"),
        other => panic!("expected InvalidState, got {other:?}"),
    }
    let out = lineq(&db.url, &["tag", &id, "late=yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is running"), "{}", stderr(&out));
    let now = client.execution(e.execution_id).await.expect("get");
    assert_eq!(now.tags, json!({"customer": "acme"}));
    assert_eq!(now.version, e.version + 2);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_status_step_and_tag_changes_with_causes() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // Submitted through the CLI with tags and metadata, as a user would.
    let out = lineq(
        &db.url,
        &[
            "submit",
            "echo",
            "--input",
            "{\"x\":1}",
            "--tag",
            "customer=acme",
            "--tag",
            "region=us-west",
            "--metadata",
            r#"{"order":{"id":"12345"}}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = Uuid::parse_str(stdout(&out).trim()).expect("id");
    let e = client.execution(id).await.expect("get");
    assert_eq!(e.tags, json!({"customer": "acme", "region": "us-west"}));
    assert_eq!(e.metadata, json!({"order": {"id": "12345"}}));
    // Found by the user's own words.
    let found = lineq(
        &db.url,
        &[
            "list",
            "--tag",
            "customer=acme",
            "--tag",
            "region=us-west",
            "--metadata",
            r#"{"order":{"id":"12345"}}"#,
        ],
    );
    assert!(found.status.success(), "{}", stderr(&found));
    assert!(
        stdout(&found).contains(&id.to_string()),
        "{}",
        stdout(&found)
    );
    assert!(
        stdout(&found).contains("customer=acme,region=us-west"),
        "{}",
        stdout(&found)
    );

    let sid = id.to_string();
    let out = lineq(&db.url, &["tag", &sid, "tier=gold", "--cause", "upsell"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = lineq(&db.url, &["untag", &sid, "region"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    orchestrator.terminate(Duration::from_secs(10));
    worker.terminate(Duration::from_secs(40));

    let h = client.history(id).await.expect("history");
    let lines: Vec<String> = h
        .iter()
        .map(|e| match e.kind {
            HistoryKind::Status => format!("status {}", e.status.as_deref().unwrap_or("?")),
            HistoryKind::Step => format!(
                "step {} {}",
                e.step.as_deref().unwrap_or("?"),
                e.step_status.as_deref().unwrap_or("?")
            ),
            HistoryKind::Tags => format!("tags v{}", e.version.unwrap_or(0)),
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "status pending",
            "step echo enqueued",
            &format!("tags v{}", e.version + 1),
            &format!("tags v{}", e.version + 2),
            "step echo completed",
            "status completed",
        ],
        "{h:#?}"
    );
    assert_eq!(h[0].cause, "submitted");
    assert_eq!(h[2].cause, "upsell");
    assert_eq!(
        h[2].tags_before,
        Some(json!({"customer": "acme", "region": "us-west"}))
    );
    assert_eq!(
        h[2].tags_after,
        Some(json!({"customer": "acme", "region": "us-west", "tier": "gold"}))
    );
    assert_eq!(h[3].cause, "lineq untag");
    assert_eq!(
        h[3].tags_after,
        Some(json!({"customer": "acme", "tier": "gold"}))
    );
    assert!(h.windows(2).all(|w| w[0].at <= w[1].at), "time order");

    // The CLI shows the same, as JSON and as text.
    let out = lineq(&db.url, &["history", &sid, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(cli, serde_json::to_value(&h).expect("json"));
    let out = lineq(&db.url, &["history", &sid]);
    let text = stdout(&out);
    assert!(text.contains("upsell"), "{text}");
    assert!(
        text.contains(
            "{customer=acme, region=us-west} -> {customer=acme, region=us-west, tier=gold}"
        ),
        "{text}"
    );
    assert!(text.contains("completed"), "{text}");

    // Finished: tags are fixed now.
    let out = lineq(&db.url, &["tag", &sid, "late=yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is completed"), "{}", stderr(&out));
    let missing = lineq(&db.url, &["history", &Uuid::now_v7().to_string()]);
    assert_eq!(missing.status.code(), Some(3));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_builder_submits_tags_metadata_and_an_explicit_parent() {
    let db = TestDb::new().await;
    let client = lineq::Client::new(db.pool.clone());
    let parent = client.submit("echo").send().await.expect("parent");
    let child = client
        .submit("process_order")
        .input(json!({"order": 12345}))
        .tag("customer", "acme")
        .tag("region", "us-west")
        .metadata(json!({"order": {"id": "12345"}}))
        .parent(parent.execution.execution_id)
        .send()
        .await
        .expect("submit");
    let e = child.execution;
    assert_eq!(e.tags, json!({"customer": "acme", "region": "us-west"}));
    assert_eq!(e.metadata, json!({"order": {"id": "12345"}}));
    assert_eq!(e.parent_execution_id, Some(parent.execution.execution_id));
    assert_eq!(e.root_execution_id, parent.execution.execution_id);
    assert_eq!(
        e.parent_correlation_id,
        Some(parent.execution.correlation_id)
    );
    // The explicit parent must exist; nothing is written otherwise.
    let before = db.count("lineq.executions").await;
    let err = client
        .submit("echo")
        .parent(uuid::Uuid::now_v7())
        .await
        .expect_err("unknown parent");
    assert!(
        err.is_invalid_input() && err.to_string().contains("parent"),
        "{err}"
    );
    assert_eq!(db.count("lineq.executions").await, before);
    db.drop_db().await;
}

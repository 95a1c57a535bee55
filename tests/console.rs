//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! fantoccini) against a real `lineq serve`, `lineq orchestrator` and `lineq worker`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them these
//! tests fail, never skip: a console nobody opened in a browser is not tested.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};
use uuid::Uuid;

use lineq_testkit::{Proc, TestDb, eventually, wait_all_finished};

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn chromium_binary() -> String {
    std::env::var("LINEQ_TEST_CHROMIUM").unwrap_or_else(|_| {
        [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/usr/bin/chromium")
        .to_string()
    })
}

fn start_driver() -> Driver {
    let bin = std::env::var("LINEQ_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let browser = chromium_binary();
    assert!(
        std::path::Path::new(&browser).exists(),
        "the console tests need Chromium at {browser} (apt-get install chromium chromium-driver; or set LINEQ_TEST_CHROMIUM)"
    );
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the console tests need chromedriver ({bin}: {e}); apt-get install chromium chromium-driver, or set LINEQ_TEST_CHROMEDRIVER"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium_binary(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// Starts `lineq serve` on a free port; returns it with its base URL.
async fn serve(db: &TestDb, token: Option<&str>) -> (Proc, String) {
    let token = token.map(str::to_string);
    let server = Proc::start_with(
        &db.url,
        "console-serve",
        &["serve", "--addr", "127.0.0.1:0"],
        |c| {
            if let Some(t) = token {
                c.env("LINEQ_API_TOKEN", t);
            }
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let base = loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on ").nth(1) {
            break rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (server, base)
}

/// Payloads that would set `window.__pwned` if any of them ran.
const HOSTILE: &[&str] = &[
    "<script>window.__pwned=1</script>",
    "\"><img src=x onerror=\"window.__pwned=1\">",
    "'><svg onload='window.__pwned=1'>",
    "javascript:window.__pwned=1",
];

async fn assert_no_script_ran(b: &Browser, page: &str) {
    let v = b
        .execute("return typeof window.__pwned;", vec![])
        .await
        .expect("execute");
    assert_eq!(
        v,
        json!("undefined"),
        "a hostile value ran as script on {page}"
    );
}

async fn rows(b: &Browser, css: &str) -> usize {
    b.find_all(Locator::Css(css)).await.expect("find_all").len()
}

async fn ids_of(b: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for r in b.find_all(Locator::Css("tr.exec-row")).await.expect("rows") {
        out.push(r.attr("data-id").await.expect("attr").expect("data-id"));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let driver = start_driver();
    let db = TestDb::new().await;
    let _orch = Proc::start(&db.url, "console-orchestrator", &["orchestrator"]);
    let _worker = Proc::start(&db.url, "console-worker", &["worker", "--concurrency", "4"]);
    let (server, base) = serve(&db, None).await;
    let client = lineq::Client::new(db.pool.clone());

    // Executions to find: three tagged team=a, two team=b, one hostile.
    let mut team_a = Vec::new();
    let mut all = Vec::new();
    for i in 0..5 {
        let team = if i < 3 { "a" } else { "b" };
        let s = client
            .submit("echo")
            .input(json!({ "n": i }))
            .tag("team", team)
            .send()
            .await
            .expect("submit");
        if team == "a" {
            team_a.push(s.execution.execution_id.to_string());
        }
        all.push(s.execution.execution_id);
    }
    team_a.sort();
    let big = "<script>window.__pwned=1</script>".repeat(64 * 1024 / 33 + 1);
    let hostile = client
        .submit("echo")
        .input(json!({ "payloads": HOSTILE, "big": big, "url": "javascript:window.__pwned=1" }))
        .tag("evil", HOSTILE[0])
        .tag("quote", HOSTILE[1])
        .tag("team", "c")
        .metadata(json!({ "link": "javascript:window.__pwned=1", "html": HOSTILE[2] }))
        .send()
        .await
        .expect("submit hostile");
    all.push(hostile.execution.execution_id);
    wait_all_finished(&db.pool, &all, Duration::from_secs(30)).await;

    let b = browser(&driver).await;

    // Every page opens, and no hostile value runs anywhere.
    for (path, heading) in [
        ("/", "Executions"),
        ("/fleet", "Fleet"),
        ("/workflows", "Workflows"),
        ("/dead-letters", "Dead letters"),
    ] {
        b.goto(&format!("{base}{path}")).await.expect("goto");
        let h1 = b
            .find(Locator::Css("h1"))
            .await
            .expect("h1")
            .text()
            .await
            .expect("text");
        assert_eq!(h1, heading, "{path}");
        assert_no_script_ran(&b, path).await;
    }
    // The fleet shows the worker alive, and the chart counts what finished.
    b.goto(&format!("{base}/fleet")).await.expect("fleet");
    assert!(rows(&b, "tr.worker-row[data-state=alive]").await >= 1);
    let total = b
        .find(Locator::Id("finished-total"))
        .await
        .expect("total")
        .text()
        .await
        .expect("text");
    assert!(total.starts_with(&format!("{} ", all.len())), "{total}");

    // Filter by a tag through the form: exactly the matching executions.
    b.goto(&format!("{base}/")).await.expect("goto");
    b.find(Locator::Css("input[name=tag]"))
        .await
        .expect("tag input")
        .send_keys("team=a")
        .await
        .expect("type");
    b.find(Locator::Css("form.filters button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait()
        .for_element(Locator::Css("tr.exec-row"))
        .await
        .expect("rows");
    assert_eq!(ids_of(&b).await, team_a);
    let url = b.current_url().await.expect("url");
    assert!(
        url.as_str().contains("tag=team%3Da"),
        "the filter is in the URL: {url}"
    );
    // Has-tag and status filters from the URL.
    b.goto(&format!("{base}/?has_tag=evil&status=completed"))
        .await
        .expect("goto");
    assert_eq!(
        ids_of(&b).await,
        vec![hostile.execution.execution_id.to_string()]
    );

    // Hostile values are shown as text.
    let tags = b
        .find(Locator::Css("tr.exec-row td.tags"))
        .await
        .expect("tags")
        .text()
        .await
        .expect("text");
    assert!(tags.contains(HOSTILE[0]), "{tags}");
    assert!(tags.contains(HOSTILE[1]), "{tags}");
    b.goto(&format!(
        "{base}/executions/{}",
        hostile.execution.execution_id
    ))
    .await
    .expect("goto");
    let source = b.source().await.expect("source");
    assert!(
        !source.contains("<script>window"),
        "an unescaped script tag in the page"
    );
    assert!(
        !source.contains("href=\"javascript:"),
        "a javascript: link in the page"
    );
    let pres: Vec<String> = {
        let mut v = Vec::new();
        for p in b.find_all(Locator::Css("pre.json")).await.expect("pre") {
            v.push(p.text().await.expect("text"));
        }
        v
    };
    assert!(
        pres.iter()
            .any(|t| t.contains("javascript:window.__pwned=1")),
        "metadata shown"
    );
    assert!(
        pres.iter()
            .any(|t| t.len() > 64 * 1024 && t.contains("<script>window.__pwned=1</script>")),
        "the 64 KiB input shown as text"
    );
    assert_no_script_ran(&b, "the hostile execution").await;

    // An execution's timeline has one row per event of its tree.
    let one = all[0];
    b.goto(&format!("{base}/executions/{one}"))
        .await
        .expect("goto");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.events WHERE root_execution_id = $1")
            .bind(one)
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert!(events >= 8, "{events}");
    assert_eq!(rows(&b, ".timeline .tl-event").await as i64, events);
    assert_eq!(
        rows(&b, "svg.dag g.dag-step[data-state=completed]").await,
        1
    );

    // Cancel a running execution: the confirmation page, the browser's confirm, then cancelled.
    let sleeper = client
        .submit("sleep")
        .input(json!({ "ms": 600_000 }))
        .send()
        .await
        .expect("submit sleep");
    b.goto(&format!(
        "{base}/executions/{}",
        sleeper.execution.execution_id
    ))
    .await
    .expect("goto");
    b.find(Locator::Id("cancel-link"))
        .await
        .expect("cancel link")
        .click()
        .await
        .expect("click");
    b.find(Locator::Id("confirm-cancel"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    b.accept_alert().await.expect("the confirm dialog");
    b.wait()
        .for_element(Locator::Css("p.notice.ok"))
        .await
        .expect("notice");
    let status = b
        .find(Locator::Css("#status"))
        .await
        .expect("status")
        .text()
        .await
        .expect("text");
    assert_eq!(status, "cancelled");
    let e = client
        .execution(sleeper.execution.execution_id)
        .await
        .expect("execution");
    assert_eq!(e.status.as_str(), "cancelled");

    // A dead letter (a malformed step message), replayed from its page.
    sqlx::query("SELECT pgmq.send('lineq_steps_default', '{\"not\": \"a step\"}'::jsonb)")
        .execute(&db.pool)
        .await
        .expect("send garbage");
    let dead: i64 = eventually(Duration::from_secs(30), "a dead letter", || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT min(msg_id) FROM pgmq.q_lineq_dlq")
                .fetch_one(&pool)
                .await
                .ok()
        }
    })
    .await;
    b.goto(&format!("{base}/dead-letters")).await.expect("goto");
    let row = b
        .find(Locator::Css(&format!("tr.dl-row[data-id='{dead}']")))
        .await
        .expect("the dead letter's row");
    let reason = row
        .find(Locator::Css("td.reason"))
        .await
        .expect("reason")
        .text()
        .await
        .expect("text");
    assert!(!reason.is_empty());
    row.find(Locator::Css("button.replay"))
        .await
        .expect("replay")
        .click()
        .await
        .expect("click");
    b.accept_alert().await.expect("the confirm dialog");
    b.wait()
        .for_element(Locator::Id("replayed"))
        .await
        .expect("replayed notice");
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_lineq_dlq WHERE msg_id = $1")
        .bind(dead)
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(still, 0, "the replayed letter left the dead-letter queue");
    let replayed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE event_type = 'message_replayed'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert!(replayed <= 1);

    // A POST without the CSRF token is refused and changes nothing.
    let other = client
        .submit("sleep")
        .input(json!({ "ms": 600_000 }))
        .send()
        .await
        .expect("submit");
    let res = b
        .execute(
            "return fetch('/executions/' + arguments[0] + '/cancel', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=forged'}).then(r => r.status);",
            vec![json!(other.execution.execution_id.to_string())],
        )
        .await
        .expect("fetch");
    assert_eq!(res, json!(403));
    assert_ne!(
        client
            .execution(other.execution.execution_id)
            .await
            .expect("get")
            .status
            .as_str(),
        "cancelled"
    );
    lineq_orchestrator::cancel::cancel(&db.pool, other.execution.execution_id, "test done")
        .await
        .expect("cancel");

    b.close().await.expect("close");
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_console_asks_for_it_once() {
    let driver = start_driver();
    let db = TestDb::new().await;
    let token = format!("console-test-{}", Uuid::now_v7().simple());
    let (server, base) = serve(&db, Some(&token)).await;
    let b = browser(&driver).await;

    b.goto(&format!("{base}/fleet")).await.expect("goto");
    let url = b.current_url().await.expect("url");
    assert!(url.path() == "/login", "{url}");
    b.find(Locator::Id("token"))
        .await
        .expect("field")
        .send_keys("not-the-token-at-all")
        .await
        .expect("type");
    b.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait()
        .for_element(Locator::Id("login-failed"))
        .await
        .expect("refused");
    b.find(Locator::Id("token"))
        .await
        .expect("field")
        .send_keys(&token)
        .await
        .expect("type");
    b.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait()
        .for_element(Locator::Css("table.executions"))
        .await
        .expect("the executions page");
    // The cookie is HttpOnly: no script reads the token.
    let cookies = b
        .execute("return document.cookie;", vec![])
        .await
        .expect("cookie");
    assert!(
        !cookies.as_str().unwrap_or_default().contains(&token),
        "{cookies}"
    );
    assert!(
        !b.source().await.expect("source").contains(&token),
        "the token in a page"
    );
    // Pages now open without asking again.
    b.goto(&format!("{base}/fleet")).await.expect("goto");
    assert_eq!(b.current_url().await.expect("url").path(), "/fleet");
    // The REST API still wants the bearer header, not the cookie.
    let status = b
        .execute("return fetch('/v1/workers').then(r => r.status);", vec![])
        .await
        .expect("fetch");
    assert_eq!(status, json!(401));
    // Log out: back to the login page.
    b.find(Locator::Css("form.logout button"))
        .await
        .expect("logout")
        .click()
        .await
        .expect("click");
    b.wait()
        .for_element(Locator::Id("token"))
        .await
        .expect("login again");

    b.close().await.expect("close");
    drop(server);
    let _: Value = json!(null);
    db.drop_db().await;
}

/// The number of events of executions `ids` (all of them, every event type).
async fn events_of(db: &TestDb, ids: &[Uuid]) -> usize {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.events WHERE execution_id = ANY($1)")
            .bind(ids)
            .fetch_one(&db.pool)
            .await
            .expect("count events");
    usize::try_from(n).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_nests_a_child_execution_under_its_parent() {
    let driver = start_driver();
    let db = TestDb::new().await;
    let _orch = Proc::start(&db.url, "console-orchestrator", &["orchestrator"]);
    let _worker = Proc::start(&db.url, "console-worker", &["worker", "--concurrency", "4"]);
    let (server, base) = serve(&db, None).await;
    let client = lineq::Client::new(db.pool.clone());

    // A step that spawns a child execution and waits for it (the built-in `spawn` handler).
    let parent = client
        .submit("spawn")
        .input(
            json!({"children": [{"target": "echo", "input": {"from": "the child"}}], "wait": true}),
        )
        .send()
        .await
        .expect("submit")
        .execution
        .execution_id;
    let child: Uuid = eventually(Duration::from_secs(30), "the child execution", || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar(
                "SELECT execution_id FROM lineq.executions WHERE parent_execution_id = $1",
            )
            .bind(parent)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
        }
    })
    .await;
    wait_all_finished(&db.pool, &[parent, child], Duration::from_secs(30)).await;

    let b = browser(&driver).await;
    b.goto(&format!("{base}/executions/{parent}"))
        .await
        .expect("goto");
    let parent_css = format!("details.tl-exec[data-execution='{parent}']");
    let child_css = format!("{parent_css} details.tl-exec[data-execution='{child}']");

    // Every event of the tree is a row, the child's rows inside the child's node, which is
    // nested inside the parent's.
    let parent_events = events_of(&db, &[parent]).await;
    let child_events = events_of(&db, &[child]).await;
    assert!(
        parent_events >= 8 && child_events >= 8,
        "{parent_events} {child_events}"
    );
    assert_eq!(
        rows(&b, ".timeline .tl-event").await,
        parent_events + child_events
    );
    assert_eq!(
        rows(&b, &format!("{parent_css} .tl-event")).await,
        parent_events + child_events
    );
    assert_eq!(
        rows(&b, &format!("{child_css} .tl-event")).await,
        child_events,
        "the child's rows are inside its node"
    );
    let child_types: Vec<String> = {
        let mut v = Vec::new();
        for e in b
            .find_all(Locator::Css(&format!("{child_css} .tl-event")))
            .await
            .expect("rows")
        {
            v.push(
                e.attr("data-event-type")
                    .await
                    .expect("attr")
                    .unwrap_or_default(),
            );
        }
        v
    };
    assert!(
        child_types.iter().any(|t| t == "execution_started"),
        "{child_types:?}"
    );
    assert!(
        child_types.iter().any(|t| t == "execution_completed"),
        "{child_types:?}"
    );
    // Indented: the child's rows are deeper than the parent's first row.
    let first_class = b
        .find(Locator::Css(&format!("{parent_css} > .tl-event")))
        .await
        .expect("the parent's first row")
        .attr("class")
        .await
        .expect("class")
        .unwrap_or_default();
    assert!(first_class.split(' ').any(|c| c == "d0"), "{first_class}");
    for e in b
        .find_all(Locator::Css(&format!("{child_css} .tl-event")))
        .await
        .expect("rows")
    {
        let class = e.attr("class").await.expect("class").unwrap_or_default();
        assert!(
            !class.split(' ').any(|c| c == "d0"),
            "a child row at depth 0: {class}"
        );
    }
    let summary = b
        .find(Locator::Css(&format!("{child_css} > summary")))
        .await
        .expect("the child's summary")
        .text()
        .await
        .expect("text");
    assert!(summary.starts_with("child execution"), "{summary}");
    let link = b
        .find(Locator::Css(&format!("{child_css} > summary a")))
        .await
        .expect("the child's link")
        .attr("href")
        .await
        .expect("href")
        .unwrap_or_default();
    assert_eq!(link, format!("/executions/{child}"));

    // Expandable: collapsing the child hides its rows and only its rows; expanding shows them.
    let child_rows_shown = |b: Browser, css: String| async move {
        let mut shown = 0;
        for e in b.find_all(Locator::Css(&css)).await.expect("rows") {
            if e.is_displayed().await.expect("displayed") {
                shown += 1;
            }
        }
        shown
    };
    let rows_css = format!("{child_css} .tl-event");
    assert_eq!(
        child_rows_shown(b.clone(), rows_css.clone()).await,
        child_events
    );
    let toggle = "document.querySelector(arguments[0]).click(); return document.querySelector(arguments[1]).open;";
    let summary_css = format!("{child_css} > summary");
    let open = b
        .execute(toggle, vec![json!(summary_css), json!(child_css)])
        .await
        .expect("collapse");
    assert_eq!(open, json!(false));
    assert_eq!(child_rows_shown(b.clone(), rows_css.clone()).await, 0);
    assert_eq!(
        child_rows_shown(b.clone(), format!("{parent_css} .tl-event")).await,
        parent_events,
        "the parent's rows stay"
    );
    let open = b
        .execute(toggle, vec![json!(summary_css), json!(child_css)])
        .await
        .expect("expand");
    assert_eq!(open, json!(true));
    assert_eq!(child_rows_shown(b.clone(), rows_css).await, child_events);

    // The counts by status are over all executions, whatever the filter, and say so.
    b.goto(&format!("{base}/?parent={parent}"))
        .await
        .expect("goto children");
    assert_eq!(ids_of(&b).await, vec![child.to_string()]);
    let completed = b
        .find(Locator::Css("div.counts a[data-status=completed] span.n"))
        .await
        .expect("the completed count")
        .text()
        .await
        .expect("text");
    assert_eq!(
        completed, "2",
        "the parent and the child, not only the filtered child"
    );
    let scope = b
        .find(Locator::Id("counts-scope"))
        .await
        .expect("what the counts cover")
        .text()
        .await
        .expect("text");
    assert_eq!(scope, "counts: all executions, whatever the filter");

    // The child's own page shows its own events, its parent linked.
    b.goto(&format!("{base}/executions/{child}"))
        .await
        .expect("goto child");
    assert_eq!(rows(&b, ".timeline .tl-event").await, child_events);
    assert_eq!(
        rows(&b, &format!("dl.facts a[href='/executions/{parent}']")).await,
        2,
        "the parent and root links"
    );
    assert_no_script_ran(&b, "the child's page").await;

    b.close().await.expect("close");
    drop(server);
    db.drop_db().await;
}

//! `lineq dev` as a real process: it starts, the console answers, a submit runs, SIGINT stops
//! it and its PostgreSQL, and a restart on the same data directory keeps the executions.

use std::process::Command;
use std::time::{Duration, Instant};

use lineq_testkit::{Proc, lineq, status_and_body, stdout};

/// Waits for `lineq dev` to print its console and database lines.
fn started(p: &mut Proc) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = p.log_text();
        let console = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("console"))
            .map(|s| s.trim().trim_end_matches('/').to_string());
        let db = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("database"))
            .map(|s| s.trim().to_string());
        if let (Some(c), Some(d)) = (console, db) {
            return (c, d);
        }
        assert!(p.is_running(), "lineq dev exited: {log}");
        assert!(Instant::now() < deadline, "lineq dev did not start: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    status_and_body(&text)
}

fn interrupt(p: &mut Proc) {
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(p.child.id().to_string())
        .status();
    let status = p.wait(Duration::from_secs(60));
    assert!(status.success(), "{status:?}: {}", p.log_text());
}

#[test]
fn lineq_dev_runs_everything_and_keeps_its_data() {
    let dir =
        std::env::temp_dir().join(format!("lineq-dev-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    // The server may run as the postgres user (when the tests run as root): it must reach it.
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
    let data = dir.join("pg");
    let data_arg = data.to_string_lossy().into_owned();
    let args = [
        "dev",
        "--data-dir",
        data_arg.as_str(),
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];

    let mut dev = Proc::start("", "dev", &args);
    let (console, db) = started(&mut dev);
    let (code, body) = get(&format!("{console}/"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("<h1>Executions</h1>"), "{body}");
    let out = lineq(
        &db,
        &["submit", "echo", "--input", r#"{"kept":true}"#, "--wait"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let id = text.split_whitespace().next().expect("an id").to_string();
    assert!(text.contains("completed"), "{text}");
    let (code, body) = get(&format!("{console}/executions/{id}"));
    assert_eq!(code, 200);
    assert!(body.contains("completed"), "{body}");

    interrupt(&mut dev);
    assert!(
        !data.join("data").join("postmaster.pid").exists(),
        "PostgreSQL still running after lineq dev stopped: {}",
        dev.log_text()
    );

    // Again on the same directory: the execution is still there.
    let mut again = Proc::start("", "dev-again", &args);
    let (console, db) = started(&mut again);
    let out = lineq(&db, &["get", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("completed"));
    let (code, _) = get(&format!("{console}/executions/{id}"));
    assert_eq!(code, 200);
    interrupt(&mut again);
    let _ = std::fs::remove_dir_all(&dir);
}

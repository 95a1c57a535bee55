//! Text rendering of executions and their events.

use std::collections::HashMap;
use std::fmt::Write;

use uuid::Uuid;

use lineq_core::event::EventRow;
use lineq_core::execution::{Execution, Step};

/// An execution and its steps, for people.
/// A `step_throttled` event's reason and key (`reason=concurrency_limit key=… limit=2`).
pub fn throttled(event_type: &str, payload: &serde_json::Value) -> Option<String> {
    if event_type != "step_throttled" {
        return None;
    }
    let mut s = String::new();
    for f in ["reason", "key", "limit", "rate", "per", "until"] {
        match payload.get(f) {
            Some(serde_json::Value::String(v)) => {
                let _ = write!(s, "{}{f}={v}", if s.is_empty() { "" } else { " " });
            }
            Some(v) if !v.is_null() => {
                let _ = write!(s, "{}{f}={v}", if s.is_empty() { "" } else { " " });
            }
            _ => {}
        }
    }
    Some(s)
}

/// Why a throttled step waits, in words.
pub fn waiting(w: &lineq_core::execution::WaitingStep) -> String {
    let mut s = match w.reason.as_str() {
        "concurrency_limit" => format!(
            "waits for a slot of key {} (at most {} at once)",
            w.key,
            w.limit.map_or_else(|| "?".into(), |l| l.to_string())
        ),
        "rate_limited" => format!(
            "waits for the rate of key {} ({} per {})",
            w.key,
            w.rate.map_or_else(|| "?".into(), |l| l.to_string()),
            w.per.as_deref().unwrap_or("second")
        ),
        _ => format!("waits for its delay (key {})", w.key),
    };
    let _ = write!(s, " since {}", w.since.to_rfc3339());
    if let Some(u) = w.until {
        let _ = write!(s, ", until {}", u.to_rfc3339());
    }
    s
}

pub fn execution(e: &Execution, steps: &[Step]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "execution   {}", e.execution_id);
    let _ = writeln!(s, "workflow    {} v{}", e.workflow_name, e.workflow_version);
    let _ = writeln!(s, "status      {}", e.status);
    let _ = writeln!(s, "namespace   {}", e.namespace);
    let _ = writeln!(s, "correlation {}", e.correlation_id);
    if let Some(p) = e.parent_execution_id {
        let _ = writeln!(s, "parent      {p}");
    }
    let _ = writeln!(s, "root        {}", e.root_execution_id);
    if let Some(k) = &e.idempotency_key {
        let _ = writeln!(s, "idem. key   {k}");
    }
    let _ = writeln!(s, "created     {}", e.created_at.to_rfc3339());
    if let Some(f) = e.finished_at {
        let ms = (f - e.created_at).num_milliseconds();
        let _ = writeln!(s, "finished    {} ({ms} ms)", f.to_rfc3339());
    }
    let _ = writeln!(s, "input       {}", e.input);
    if let Some(o) = &e.output {
        let _ = writeln!(s, "output      {o}");
    }
    if let Some(err) = &e.error {
        let _ = writeln!(s, "error       {err}");
    }
    let _ = writeln!(s, "steps:");
    for st in steps {
        let _ = writeln!(
            s,
            "  {:<20} {:<10} handler={} attempts={}/{} worker={}",
            st.name,
            st.status.to_string(),
            st.handler,
            st.attempts,
            st.max_attempts,
            st.worker_id.as_deref().unwrap_or("-")
        );
    }
    s
}

/// One line per event, oldest first, each with its parent.
pub fn event_list(events: &[EventRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<30} {:<22} {:<14} {:>3}  {:<36}  {:<36}  WORKER",
        "TIME", "EVENT", "STEP", "ATT", "EVENT ID", "PARENT EVENT ID"
    );
    for e in events {
        let _ = writeln!(
            s,
            "{:<30} {:<22} {:<14} {:>3}  {:<36}  {:<36}  {}",
            e.created_at.to_rfc3339(),
            e.event_type,
            e.step_name.as_deref().unwrap_or("-"),
            e.attempt.map_or("-".to_string(), |a| a.to_string()),
            e.event_id,
            e.parent_event_id.map_or("-".to_string(), |p| p.to_string()),
            e.worker_id.as_deref().unwrap_or("-"),
        );
    }
    s
}

/// The events as a tree: each under its parent, children in time order. Events whose parent is
/// not among them (a root, or a child execution's first event) start their own tree.
pub fn event_tree(events: &[EventRow]) -> String {
    let ids: HashMap<Uuid, &EventRow> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut children: HashMap<Uuid, Vec<&EventRow>> = HashMap::new();
    let mut roots = Vec::new();
    for e in events {
        match e.parent_event_id.filter(|p| ids.contains_key(p)) {
            Some(p) => children.entry(p).or_default().push(e),
            None => roots.push(e),
        }
    }
    let start = events.first().map(|e| e.created_at);
    let mut s = String::new();
    for (i, r) in roots.iter().enumerate() {
        draw(&mut s, r, &children, "", i + 1 == roots.len(), true, start);
    }
    s
}

fn draw(
    s: &mut String,
    e: &EventRow,
    children: &HashMap<Uuid, Vec<&EventRow>>,
    prefix: &str,
    last: bool,
    top: bool,
    start: Option<chrono::DateTime<chrono::Utc>>,
) {
    let branch = if top {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let mut line = format!("{prefix}{branch}{}", e.event_type);
    if let Some(step) = &e.step_name {
        let _ = write!(line, "  step={step}");
    }
    if let Some(a) = e.attempt {
        let _ = write!(line, " attempt={a}");
    }
    if let Some(w) = &e.worker_id {
        let _ = write!(line, " worker={w}");
    }
    if let Some(why) = throttled(&e.event_type, &e.payload) {
        let _ = write!(line, " {why}");
    }
    if let Some(err) = e.payload.get("error").filter(|v| !v.is_null()) {
        let msg = err
            .get("message")
            .or_else(|| err.get("error").and_then(|x| x.get("message")))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        let _ = write!(line, " error={msg:?}");
    }
    if let Some(t0) = start {
        let _ = write!(line, "  +{}ms", (e.created_at - t0).num_milliseconds());
    }
    let _ = writeln!(s, "{line}");
    let kids = children.get(&e.event_id).map(Vec::as_slice).unwrap_or(&[]);
    let next_prefix = if top {
        prefix.to_string()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    for (i, k) in kids.iter().enumerate() {
        draw(
            s,
            k,
            children,
            &next_prefix,
            i + 1 == kids.len(),
            false,
            start,
        );
    }
}

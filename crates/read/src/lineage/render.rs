//! Drawing a [`LineageTree`] as a picture: Graphviz DOT (`dot -Tsvg`) or Mermaid (renders in
//! GitHub, GitLab and most Markdown viewers). Each execution is a box (cluster / subgraph)
//! holding its events; edges go from every parent event to its child events, so the edge into a
//! child execution's box starts at the event that spawned it, and the edge out of it (a step
//! that waited for its children) ends at the event its parent execution continued with.

use std::collections::HashSet;
use std::fmt::Write;

use super::tree::{EventNode, ExecutionNode, LineageTree};

/// Node ids must be identifiers in both languages: the event id's hex digits, prefixed.
fn node_id(e: &EventNode) -> String {
    format!("e{}", e.event_id.simple())
}

fn cluster_id(x: &ExecutionNode) -> String {
    format!("x{}", x.execution_id.simple())
}

fn short(id: &uuid::Uuid) -> String {
    // The tail of a UUIDv7 is random, so it tells ids apart; the head is only the time.
    let s = id.simple().to_string();
    s[s.len() - 8..].to_string()
}

/// The text inside an event's box: type, then step/attempt/worker when present.
fn event_label(e: &EventNode) -> Vec<String> {
    let mut lines = vec![e.event_type.clone()];
    let mut detail = Vec::new();
    if let Some(s) = &e.step {
        detail.push(s.clone());
    }
    if let Some(a) = e.attempt {
        detail.push(format!("#{a}"));
    }
    if let Some(w) = &e.worker_id {
        detail.push(format!("@{w}"));
    }
    if !detail.is_empty() {
        lines.push(detail.join(" "));
    }
    if let Some(ms) = e.duration_ms {
        lines.push(format!("+{ms} ms"));
    }
    lines
}

fn execution_label(x: &ExecutionNode) -> String {
    let mut s = format!(
        "{} [{}] {}",
        x.workflow_name,
        x.status,
        short(&x.execution_id)
    );
    if let Some(ms) = x.duration_ms {
        let _ = write!(s, " {ms} ms");
    }
    s
}

/// Parent -> child for every event whose parent is drawn too, in tree order.
fn edges(tree: &LineageTree) -> Vec<(String, String)> {
    let events = tree.events();
    let drawn: HashSet<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    events
        .iter()
        .filter_map(|e| {
            let p = e.parent_event_id.filter(|p| drawn.contains(p))?;
            Some((format!("e{}", p.simple()), node_id(e)))
        })
        .collect()
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The tree as a Graphviz digraph.
pub fn to_dot(tree: &LineageTree) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph lineage {{");
    let _ = writeln!(s, "  rankdir=TB;");
    let _ = writeln!(
        s,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"Helvetica\", fontsize=10];"
    );
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=9];");
    for x in &tree.executions {
        dot_execution(&mut s, x, 1);
    }
    for (from, to) in edges(tree) {
        let _ = writeln!(s, "  {from} -> {to};");
    }
    let _ = writeln!(s, "}}");
    s
}

fn dot_execution(s: &mut String, x: &ExecutionNode, indent: usize) {
    let pad = "  ".repeat(indent);
    let _ = writeln!(s, "{pad}subgraph cluster_{} {{", cluster_id(x));
    let _ = writeln!(s, "{pad}  label=\"{}\";", dot_escape(&execution_label(x)));
    let _ = writeln!(s, "{pad}  style=rounded; color=\"#888888\";");
    // A cluster may only hold its own events; child executions are clusters of their own, and
    // the edges between them are drawn after all clusters.
    let mut nested = Vec::new();
    for e in &x.events {
        dot_event(s, e, indent + 1, &mut nested);
    }
    let _ = writeln!(s, "{pad}}}");
    for c in nested.into_iter().chain(x.executions.iter()) {
        dot_execution(s, c, indent);
    }
}

fn dot_event<'a>(
    s: &mut String,
    e: &'a EventNode,
    indent: usize,
    nested: &mut Vec<&'a ExecutionNode>,
) {
    let pad = "  ".repeat(indent);
    let fill = if e.event_type.contains("failed") || e.event_type.contains("dead_letter") {
        "#f8d7da"
    } else if e.event_type.contains("completed") {
        "#d4edda"
    } else {
        "white"
    };
    let _ = writeln!(
        s,
        "{pad}{} [label=\"{}\", fillcolor=\"{fill}\"];",
        node_id(e),
        dot_escape(&event_label(e).join("\\n"))
    );
    for c in &e.children {
        dot_event(s, c, indent, nested);
    }
    nested.extend(e.executions.iter());
}

fn mermaid_escape(s: &str) -> String {
    // Mermaid labels are quoted; quotes and angle brackets use its entity codes.
    s.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// The tree as a Mermaid flowchart.
pub fn to_mermaid(tree: &LineageTree) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "flowchart TD");
    for x in &tree.executions {
        mermaid_execution(&mut s, x, 1);
    }
    for (from, to) in edges(tree) {
        let _ = writeln!(s, "  {from} --> {to}");
    }
    s
}

fn mermaid_execution(s: &mut String, x: &ExecutionNode, indent: usize) {
    let pad = "  ".repeat(indent);
    let _ = writeln!(
        s,
        "{pad}subgraph {}[\"{}\"]",
        cluster_id(x),
        mermaid_escape(&execution_label(x))
    );
    let mut nested = Vec::new();
    for e in &x.events {
        mermaid_event(s, e, indent + 1, &mut nested);
    }
    let _ = writeln!(s, "{pad}end");
    for c in nested.into_iter().chain(x.executions.iter()) {
        mermaid_execution(s, c, indent);
    }
}

fn mermaid_event<'a>(
    s: &mut String,
    e: &'a EventNode,
    indent: usize,
    nested: &mut Vec<&'a ExecutionNode>,
) {
    let pad = "  ".repeat(indent);
    let _ = writeln!(
        s,
        "{pad}{}[\"{}\"]",
        node_id(e),
        event_label(e)
            .iter()
            .map(|l| mermaid_escape(l))
            .collect::<Vec<_>>()
            .join("<br/>")
    );
    for c in &e.children {
        mermaid_event(s, c, indent, nested);
    }
    nested.extend(e.executions.iter());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::Target;
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    fn event(
        id: u128,
        parent: Option<u128>,
        kind: &str,
        children: Vec<EventNode>,
        executions: Vec<ExecutionNode>,
    ) -> EventNode {
        EventNode {
            event_id: Uuid::from_u128(id),
            parent_event_id: parent.map(Uuid::from_u128),
            parent_event_type: None,
            parent_execution: None,
            event_type: kind.into(),
            execution_id: Uuid::from_u128(1),
            step_id: None,
            step: Some("say \"hi\"".into()),
            attempt: Some(1),
            worker_id: None,
            node_name: "n".into(),
            created_at: Utc::now(),
            duration_ms: None,
            payload: json!({}),
            children,
            executions,
        }
    }

    fn exec(id: u128, events: Vec<EventNode>) -> ExecutionNode {
        ExecutionNode {
            execution_id: Uuid::from_u128(id),
            workflow_name: "wf".into(),
            status: "completed".into(),
            parent_execution_id: None,
            root_execution_id: Uuid::from_u128(1),
            correlation_id: Uuid::from_u128(9),
            parent_event_id: None,
            parent_step: None,
            depth: 0,
            created_at: None,
            finished_at: None,
            duration_ms: None,
            events,
            executions: vec![],
        }
    }

    fn sample() -> LineageTree {
        let child = exec(
            2,
            vec![event(20, Some(10), "execution_started", vec![], vec![])],
        );
        LineageTree {
            target: Target::Execution {
                id: Uuid::from_u128(1),
            },
            execution_count: 2,
            event_count: 3,
            executions: vec![exec(
                1,
                vec![event(
                    10,
                    None,
                    "execution_started",
                    vec![event(11, Some(10), "step_completed", vec![], vec![])],
                    vec![child],
                )],
            )],
        }
    }

    #[test]
    fn dot_has_clusters_nodes_and_edges() {
        let d = to_dot(&sample());
        assert!(d.starts_with("digraph lineage {"));
        assert_eq!(d.matches("subgraph cluster_").count(), 2);
        let e10 = format!("e{}", Uuid::from_u128(10).simple());
        let e11 = format!("e{}", Uuid::from_u128(11).simple());
        let e20 = format!("e{}", Uuid::from_u128(20).simple());
        assert!(d.contains(&format!("{e10} -> {e11};")));
        assert!(d.contains(&format!("{e10} -> {e20};")));
        assert!(d.contains("say \\\"hi\\\""), "quotes escaped: {d}");
    }

    #[test]
    fn mermaid_has_subgraphs_nodes_and_edges() {
        let m = to_mermaid(&sample());
        assert!(m.starts_with("flowchart TD\n"));
        assert_eq!(m.matches("subgraph ").count(), 2);
        assert_eq!(m.matches(" --> ").count(), 2);
        assert!(
            m.contains("execution_started<br/>say #quot;hi#quot; #1"),
            "{m}"
        );
    }
}

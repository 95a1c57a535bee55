//! The nested lineage tree: executions containing their events, each event containing the
//! events it caused in the same execution and the child executions it spawned.
//!
//! This is the shape `lineq lineage` draws and the REST API returns. It is built from flat rows
//! (any set of executions and events) and never assumes the rows are sound: an event whose
//! parent is missing starts its own branch, events on a corrupted loop are still shown once,
//! and an event whose execution row is missing gets a placeholder execution. `lineq lineage
//! check` says what is wrong; this only has to show everything.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use lineq_core::event::EventRow;

use super::{Target, TreeExecution};

/// A lineage tree, ready to print or to serve as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LineageTree {
    /// What was asked for.
    pub target: Target,
    /// How many executions the tree holds.
    pub execution_count: usize,
    /// How many events the tree holds.
    pub event_count: usize,
    /// The topmost executions (one, unless a correlation id spans several roots).
    pub executions: Vec<ExecutionNode>,
}

/// An execution and its events.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionNode {
    /// The execution.
    pub execution_id: Uuid,
    /// Its workflow (`?` when its row is missing).
    pub workflow_name: String,
    /// Its status (`unknown` when its row is missing).
    pub status: String,
    /// Its parent execution.
    pub parent_execution_id: Option<Uuid>,
    /// The root of its tree.
    pub root_execution_id: Uuid,
    /// Its correlation id.
    pub correlation_id: Uuid,
    /// The event that spawned it.
    pub parent_event_id: Option<Uuid>,
    /// The step that spawned it.
    pub parent_step: Option<String>,
    /// How deep it is nested in this tree (0 at the top).
    pub depth: usize,
    /// When it was submitted.
    pub created_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// From submission to finish, once finished.
    pub duration_ms: Option<i64>,
    /// Its top events: normally just `execution_started`; also any event whose parent is
    /// missing (a broken tree), so nothing is hidden.
    pub events: Vec<EventNode>,
    /// Child executions whose spawning event is not in this tree (for an event it is nested
    /// under that event instead).
    pub executions: Vec<ExecutionNode>,
}

/// An event and what it caused.
#[derive(Debug, Clone, Serialize)]
pub struct EventNode {
    /// The event.
    pub event_id: Uuid,
    /// Its parent.
    pub parent_event_id: Option<Uuid>,
    /// Its parent's type, when the parent is in the tree.
    pub parent_event_type: Option<String>,
    /// Its parent's execution, when that is another execution: the parent execution for a
    /// child's first event, a child execution for a step that waited for its children (such an
    /// event is listed at the top of its own execution, and this says where it came from).
    pub parent_execution: Option<Uuid>,
    /// What happened.
    pub event_type: String,
    /// The execution that wrote it.
    pub execution_id: Uuid,
    /// Its step.
    pub step_id: Option<Uuid>,
    /// Its step's name.
    pub step: Option<String>,
    /// Its attempt.
    pub attempt: Option<i32>,
    /// The worker that wrote it.
    pub worker_id: Option<String>,
    /// The machine that wrote it.
    pub node_name: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Time from its parent event to it: how long that hop took (queue wait for
    /// `action_started`, the handler's run for `action_completed`, ...). `None` at a top.
    pub duration_ms: Option<i64>,
    /// Its details.
    pub payload: Value,
    /// Events it caused in the same execution, oldest first.
    pub children: Vec<EventNode>,
    /// Child executions it spawned, oldest first.
    pub executions: Vec<ExecutionNode>,
}

/// What is known about an execution: its row, or a placeholder when only its events exist.
struct ExecInfo {
    row: Option<TreeExecution>,
    id: Uuid,
    root: Uuid,
    correlation: Uuid,
    parent: Option<Uuid>,
}

struct Builder {
    events: Vec<EventRow>,
    event_idx: HashMap<Uuid, usize>,
    execs: Vec<ExecInfo>,
    /// Same-execution children of an event.
    children: HashMap<Uuid, Vec<usize>>,
    /// Top events of an execution.
    tops: HashMap<Uuid, Vec<usize>>,
    /// Executions nested under an event.
    anchored: HashMap<Uuid, Vec<usize>>,
    /// Executions nested directly under an execution.
    under: HashMap<Uuid, Vec<usize>>,
    seen_events: HashSet<Uuid>,
    seen_execs: HashSet<Uuid>,
}

/// Builds the nested tree of `target` from flat rows.
#[expect(
    clippy::too_many_lines,
    reason = "one pass that links events, steps and executions into the tree"
)]
pub(crate) fn build(
    target: Target,
    executions: Vec<TreeExecution>,
    events: Vec<EventRow>,
) -> LineageTree {
    let mut events = events;
    events.sort_by_key(|e| (e.created_at, e.event_id));
    let mut seen = HashSet::new();
    events.retain(|e| seen.insert(e.event_id));
    let event_idx: HashMap<Uuid, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id, i))
        .collect();

    let mut rows = executions;
    rows.sort_by_key(|x| (x.created_at, x.execution_id));
    let mut execs: Vec<ExecInfo> = Vec::with_capacity(rows.len());
    let mut known_execs = HashSet::new();
    for r in rows {
        if known_execs.insert(r.execution_id) {
            execs.push(ExecInfo {
                id: r.execution_id,
                root: r.root_execution_id,
                correlation: r.correlation_id,
                parent: r.parent_execution_id,
                row: Some(r),
            });
        }
    }
    // An event whose execution row is missing still gets a (placeholder) execution.
    for e in &events {
        if known_execs.insert(e.execution_id) {
            execs.push(ExecInfo {
                row: None,
                id: e.execution_id,
                root: e.root_execution_id,
                correlation: e.correlation_id,
                parent: e.parent_execution_id,
            });
        }
    }

    let mut children: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut tops: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let same_exec_parent = e
            .parent_event_id
            .and_then(|p| event_idx.get(&p))
            .filter(|&&p| events[p].execution_id == e.execution_id && p != i);
        match (same_exec_parent, e.parent_event_id) {
            (Some(_), Some(p)) => children.entry(p).or_default().push(i),
            _ => tops.entry(e.execution_id).or_default().push(i),
        }
    }

    let mut anchored: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut under: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (xi, x) in execs.iter().enumerate() {
        // Nested under the event that spawned it, as recorded on its row. Without a row (only
        // its events are known), under the parent of its first event that is in its parent
        // execution. Not under just any event of another execution: a step that waited for
        // children continues from the child's last event, which must not nest the parent
        // inside its own child.
        let in_exec = |ev: Uuid, exec: Uuid| {
            event_idx
                .get(&ev)
                .is_some_and(|&i| events[i].execution_id == exec)
        };
        let anchor = match &x.row {
            Some(r) => r
                .parent_event_id
                .filter(|&p| event_idx.contains_key(&p) && !in_exec(p, x.id)),
            None => x.parent.and_then(|px| {
                tops.get(&x.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|&i| events[i].parent_event_id)
                    .find(|&p| in_exec(p, px))
            }),
        };
        match (
            anchor,
            x.parent.filter(|p| *p != x.id && known_execs.contains(p)),
        ) {
            (Some(ev), _) => anchored.entry(ev).or_default().push(xi),
            (None, Some(p)) => under.entry(p).or_default().push(xi),
            (None, None) => roots.push(xi),
        }
    }

    let mut b = Builder {
        events,
        event_idx,
        execs,
        children,
        tops,
        anchored,
        under,
        seen_events: HashSet::new(),
        seen_execs: HashSet::new(),
    };
    let mut out: Vec<ExecutionNode> = roots.iter().filter_map(|&xi| b.exec(xi, 0)).collect();

    // Whatever no root reached sits on a loop (events whose parents go round, or an execution
    // nested under its own descendant): show it anyway, once. Events first, in their own
    // execution's node, so executions spawned from them nest as usual; then executions not
    // reached at all, as extra tops; then events of those.
    b.attach_unseen_events(&mut out);
    for xi in 0..b.execs.len() {
        if !b.seen_execs.contains(&b.execs[xi].id) {
            if let Some(node) = b.exec(xi, 0) {
                out.push(node);
            }
        }
    }
    b.attach_unseen_events(&mut out);

    LineageTree {
        target,
        execution_count: b.execs.len(),
        event_count: b.events.len(),
        executions: out,
    }
}

fn find_exec(nodes: &mut [ExecutionNode], id: Uuid) -> Option<&mut ExecutionNode> {
    for n in nodes.iter_mut() {
        if n.execution_id == id {
            return Some(n);
        }
        if let Some(found) = find_exec(&mut n.executions, id) {
            return Some(found);
        }
        if let Some(found) = find_exec_in_events(&mut n.events, id) {
            return Some(found);
        }
    }
    None
}

fn find_exec_in_events(nodes: &mut [EventNode], id: Uuid) -> Option<&mut ExecutionNode> {
    for n in nodes.iter_mut() {
        if let Some(found) = find_exec(&mut n.executions, id) {
            return Some(found);
        }
        if let Some(found) = find_exec_in_events(&mut n.children, id) {
            return Some(found);
        }
    }
    None
}

impl Builder {
    fn attach_unseen_events(&mut self, out: &mut [ExecutionNode]) {
        for i in 0..self.events.len() {
            let e = &self.events[i];
            if self.seen_events.contains(&e.event_id) {
                continue;
            }
            let exec_id = e.execution_id;
            // Only where its execution is already shown; otherwise a later pass shows it.
            if find_exec(out, exec_id).is_none() {
                continue;
            }
            if let Some(node) = self.event(i) {
                if let Some(x) = find_exec(out, exec_id) {
                    x.events.push(node);
                }
            }
        }
    }

    fn exec(&mut self, xi: usize, depth: usize) -> Option<ExecutionNode> {
        let id = self.execs[xi].id;
        if !self.seen_execs.insert(id) {
            return None;
        }
        let tops = self.tops.get(&id).cloned().unwrap_or_default();
        let events: Vec<EventNode> = tops
            .into_iter()
            .filter_map(|i| self.event_at(i, depth))
            .collect();
        let nested = self.under.get(&id).cloned().unwrap_or_default();
        let executions: Vec<ExecutionNode> = nested
            .into_iter()
            .filter_map(|c| self.exec(c, depth + 1))
            .collect();
        let x = &self.execs[xi];
        let row = x.row.as_ref();
        Some(ExecutionNode {
            execution_id: id,
            workflow_name: row.map_or_else(|| "?".to_string(), |r| r.workflow_name.clone()),
            status: row.map_or_else(|| "unknown".to_string(), |r| r.status.clone()),
            parent_execution_id: x.parent,
            root_execution_id: x.root,
            correlation_id: x.correlation,
            parent_event_id: row.and_then(|r| r.parent_event_id),
            parent_step: row.and_then(|r| r.parent_step.clone()),
            depth,
            created_at: row.map(|r| r.created_at),
            finished_at: row.and_then(|r| r.finished_at),
            duration_ms: row
                .and_then(|r| r.finished_at.map(|f| (f - r.created_at).num_milliseconds())),
            events,
            executions,
        })
    }

    /// An event outside any execution node's recursion (a loop): its execution's depth is not
    /// known here, so its child executions start at depth 1.
    fn event(&mut self, i: usize) -> Option<EventNode> {
        self.event_at(i, 0)
    }

    fn event_at(&mut self, i: usize, exec_depth: usize) -> Option<EventNode> {
        let id = self.events[i].event_id;
        if !self.seen_events.insert(id) {
            return None;
        }
        let kids = self.children.get(&id).cloned().unwrap_or_default();
        let children: Vec<EventNode> = kids
            .into_iter()
            .filter_map(|k| self.event_at(k, exec_depth))
            .collect();
        let spawned = self.anchored.get(&id).cloned().unwrap_or_default();
        let executions: Vec<ExecutionNode> = spawned
            .into_iter()
            .filter_map(|x| self.exec(x, exec_depth + 1))
            .collect();
        let e = &self.events[i];
        let parent = e
            .parent_event_id
            .and_then(|p| self.event_idx.get(&p))
            .map(|&p| &self.events[p]);
        Some(EventNode {
            event_id: e.event_id,
            parent_event_id: e.parent_event_id,
            parent_event_type: parent.map(|p| p.event_type.clone()),
            parent_execution: parent
                .map(|p| p.execution_id)
                .filter(|x| *x != e.execution_id),
            event_type: e.event_type.clone(),
            execution_id: e.execution_id,
            step_id: e.step_id,
            step: e.step_name.clone(),
            attempt: e.attempt,
            worker_id: e.worker_id.clone(),
            node_name: e.node_name.clone(),
            created_at: e.created_at,
            duration_ms: parent.map(|p| (e.created_at - p.created_at).num_milliseconds()),
            payload: e.payload.clone(),
            children,
            executions,
        })
    }
}

impl LineageTree {
    /// Every event node, depth first (executions in order, each event before what it caused).
    pub fn events(&self) -> Vec<&EventNode> {
        fn walk_exec<'a>(x: &'a ExecutionNode, out: &mut Vec<&'a EventNode>) {
            for e in &x.events {
                walk_event(e, out);
            }
            for c in &x.executions {
                walk_exec(c, out);
            }
        }
        fn walk_event<'a>(e: &'a EventNode, out: &mut Vec<&'a EventNode>) {
            out.push(e);
            for c in &e.children {
                walk_event(c, out);
            }
            for x in &e.executions {
                walk_exec(x, out);
            }
        }
        let mut out = Vec::with_capacity(self.event_count);
        for x in &self.executions {
            walk_exec(x, &mut out);
        }
        out
    }

    /// Every execution node, depth first.
    pub fn all_executions(&self) -> Vec<&ExecutionNode> {
        fn walk_exec<'a>(x: &'a ExecutionNode, out: &mut Vec<&'a ExecutionNode>) {
            out.push(x);
            for e in &x.events {
                walk_event(e, out);
            }
            for c in &x.executions {
                walk_exec(c, out);
            }
        }
        fn walk_event<'a>(e: &'a EventNode, out: &mut Vec<&'a ExecutionNode>) {
            for c in &e.children {
                walk_event(c, out);
            }
            for x in &e.executions {
                walk_exec(x, out);
            }
        }
        let mut out = Vec::with_capacity(self.execution_count);
        for x in &self.executions {
            walk_exec(x, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn ev(id: u128, parent: Option<u128>, exec: u128, kind: &str, t: i64) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(id),
            parent_event_id: parent.map(Uuid::from_u128),
            execution_id: Uuid::from_u128(exec),
            step_id: None,
            step_name: None,
            parent_execution_id: None,
            root_execution_id: Uuid::from_u128(1000),
            correlation_id: Uuid::from_u128(5000),
            event_type: kind.to_string(),
            node_name: "n".into(),
            worker_id: None,
            attempt: None,
            trace_id: None,
            span_id: None,
            payload: json!({}),
            created_at: Utc.timestamp_millis_opt(1_700_000_000_000 + t).unwrap(),
        }
    }

    fn ex(id: u128, parent: Option<u128>, parent_event: Option<u128>, t: i64) -> TreeExecution {
        TreeExecution {
            depth: 0,
            path: vec![],
            execution_id: Uuid::from_u128(id),
            parent_execution_id: parent.map(Uuid::from_u128),
            root_execution_id: Uuid::from_u128(1000),
            correlation_id: Uuid::from_u128(5000),
            parent_correlation_id: None,
            parent_event_id: parent_event.map(Uuid::from_u128),
            parent_step: None,
            workflow_name: format!("wf{id}"),
            workflow_version: 1,
            namespace: "default".into(),
            status: "completed".into(),
            created_at: Utc.timestamp_millis_opt(1_700_000_000_000 + t).unwrap(),
            finished_at: None,
        }
    }

    fn shape(t: &LineageTree) -> String {
        fn x(n: &ExecutionNode) -> String {
            let mut parts: Vec<String> = n.events.iter().map(e).collect();
            parts.extend(n.executions.iter().map(x));
            format!("[{}:{}]", n.workflow_name, parts.join(","))
        }
        fn e(n: &EventNode) -> String {
            let mut parts: Vec<String> = n.children.iter().map(e).collect();
            parts.extend(n.executions.iter().map(x));
            if parts.is_empty() {
                n.event_type.clone()
            } else {
                format!("{}({})", n.event_type, parts.join(","))
            }
        }
        t.executions.iter().map(x).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn nests_child_executions_under_their_spawning_event() {
        let target = Target::Execution {
            id: Uuid::from_u128(1000),
        };
        let t = build(
            target,
            vec![ex(1000, None, None, 0), ex(2000, Some(1000), Some(3), 5)],
            vec![
                ev(1, None, 1000, "a", 0),
                ev(2, Some(1), 1000, "b", 1),
                ev(3, Some(2), 1000, "c", 2),
                ev(4, Some(3), 2000, "child_start", 6),
                ev(5, Some(4), 2000, "child_end", 7),
                ev(6, Some(2), 1000, "d", 8),
            ],
        );
        assert_eq!(
            shape(&t),
            "[wf1000:a(b(c([wf2000:child_start(child_end)]),d))]"
        );
        assert_eq!(t.event_count, 6);
        assert_eq!(t.execution_count, 2);
        let child = &t.executions[0].events[0].children[0].children[0].executions[0];
        assert_eq!(child.depth, 1);
        assert_eq!(child.events[0].duration_ms, Some(4));
    }

    #[test]
    fn a_step_resumed_by_its_child_stays_in_its_own_execution() {
        let target = Target::Execution {
            id: Uuid::from_u128(1000),
        };
        let mut child_events = vec![
            ev(4, Some(3), 2000, "child_start", 4),
            ev(5, Some(4), 2000, "child_end", 5),
        ];
        for e in &mut child_events {
            e.parent_execution_id = Some(Uuid::from_u128(1000));
        }
        let mut events = vec![
            ev(1, None, 1000, "start", 0),
            ev(2, Some(1), 1000, "step", 1),
            ev(3, Some(2), 1000, "spawn", 2),
            ev(6, Some(5), 1000, "step_completed", 6),
            ev(7, Some(6), 1000, "end", 7),
        ];
        events.extend(child_events);
        let t = build(
            target,
            vec![ex(1000, None, None, 0), ex(2000, Some(1000), Some(3), 3)],
            events,
        );
        assert_eq!(
            shape(&t),
            "[wf1000:start(step(spawn([wf2000:child_start(child_end)]))),step_completed(end)]"
        );
        let resumed = &t.executions[0].events[1];
        assert_eq!(resumed.parent_execution, Some(Uuid::from_u128(2000)));
        assert_eq!(resumed.parent_event_type.as_deref(), Some("child_end"));
    }

    #[test]
    fn shows_broken_trees_whole() {
        let target = Target::Execution {
            id: Uuid::from_u128(1000),
        };
        // 3's parent is missing; 4 and 5 point at each other; 7 belongs to an unknown execution.
        let t = build(
            target,
            vec![ex(1000, None, None, 0)],
            vec![
                ev(1, None, 1000, "root", 0),
                ev(2, Some(1), 1000, "ok", 1),
                ev(3, Some(99), 1000, "orphan", 2),
                ev(4, Some(5), 1000, "loop_a", 3),
                ev(5, Some(4), 1000, "loop_b", 4),
                {
                    let mut stray = ev(7, Some(2), 3000, "stray", 5);
                    stray.parent_execution_id = Some(Uuid::from_u128(1000));
                    stray
                },
            ],
        );
        assert_eq!(t.event_count, 6);
        assert_eq!(t.events().len(), 6, "every event shown once");
        assert_eq!(
            shape(&t),
            "[wf1000:root(ok([?:stray])),orphan,loop_a(loop_b)]"
        );
    }
}

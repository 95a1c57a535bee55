//! `lineq lineage check`: proves that a root execution's lineage is whole, or names what is
//! wrong.
//!
//! A tree is whole when:
//!
//! - it has one root: the root execution's `execution_started` (or, for an execution a schedule
//!   started, its `schedule_fired`) is its only event without a parent;
//! - every parent is present, and in the same root tree;
//! - no event is its own ancestor (no cycles);
//! - an event's parent is in its own execution, its parent execution (the way into a child) or a
//!   child execution (the way back out of one, for a step that waited for its children), and
//!   every child execution hangs off the event recorded as having spawned it;
//! - every event carries its execution's correlation, parent and root ids, and every execution
//!   of the tree names the tree's root;
//! - the `meta` of every queue message of the tree equals the event it came from
//!   (`meta.parent_event_id`): same execution, correlation, parent and root execution, and a
//!   `traceparent` naming that event's trace and span; and every event a worker wrote on
//!   consuming a message (it names the message's queue and id in its payload) hangs off that
//!   same event.
//!
//! Event types are not interpreted beyond the root being an `execution_started` or a
//! `schedule_fired`, so new kinds of events need no change here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::EventRow;
use lineq_core::message::Meta;
use lineq_core::trace_context::TraceContext;

use super::{LineageMessage, Target, TreeExecution, resolve};

/// One thing wrong with a lineage tree. Every variant names the event, execution or message at
/// fault, so it can be looked at with `lineq events` or `lineq.event_ancestors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// The root execution's `execution_started` is not there (or has a parent).
    NoRoot {
        /// The root execution.
        root_execution_id: Uuid,
    },
    /// An event other than the root has no parent.
    ExtraRoot {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// Its execution.
        execution_id: Uuid,
    },
    /// An event's parent does not exist.
    MissingParent {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// Its execution.
        execution_id: Uuid,
        /// The parent it names.
        parent_event_id: Uuid,
    },
    /// An event's parent belongs to another root's tree.
    ParentInOtherTree {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// Its execution.
        execution_id: Uuid,
        /// The parent it names.
        parent_event_id: Uuid,
        /// The root of the tree the parent belongs to.
        parent_root_execution_id: Uuid,
    },
    /// An event's parent is in an execution that is neither its own nor its parent execution.
    ParentInUnrelatedExecution {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// Its execution.
        execution_id: Uuid,
        /// The parent it names.
        parent_event_id: Uuid,
        /// The parent's execution.
        parent_execution_id: Uuid,
    },
    /// Events whose parents go round in a loop (each listed once, in loop order).
    Cycle {
        /// The events on the loop.
        event_ids: Vec<Uuid>,
    },
    /// No event of a child execution hangs off the event recorded as having spawned it
    /// (`executions.parent_event_id`).
    SpawnMismatch {
        /// The child execution.
        execution_id: Uuid,
        /// The spawning event on the execution row.
        spawned_by: Uuid,
        /// The child's event that enters it from elsewhere (or its first event).
        event_id: Option<Uuid>,
        /// That event's parent.
        parent_event_id: Option<Uuid>,
    },
    /// An event names an execution that does not exist.
    UnknownExecution {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// The execution it names.
        execution_id: Uuid,
    },
    /// An event's lineage column differs from its execution's.
    EventFieldMismatch {
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// The column.
        field: String,
        /// The execution's value.
        expected: String,
        /// The event's value.
        found: String,
    },
    /// An execution of the tree names another root, or its parent disagrees with it.
    ExecutionFieldMismatch {
        /// The execution.
        execution_id: Uuid,
        /// The column.
        field: String,
        /// What it should be.
        expected: String,
        /// What it is.
        found: String,
    },
    /// An execution of the tree has no events at all.
    ExecutionWithoutEvents {
        /// The execution.
        execution_id: Uuid,
    },
    /// A message's `meta` cannot be read.
    MessageMetaMalformed {
        /// The queue.
        queue: String,
        /// The message id.
        msg_id: i64,
        /// `queued` or `archived`.
        state: String,
        /// What is wrong.
        reason: String,
    },
    /// A message's `meta.parent_event_id` names no event.
    MessageParentMissing {
        /// The queue.
        queue: String,
        /// The message id.
        msg_id: i64,
        /// `queued` or `archived`.
        state: String,
        /// The event it names.
        parent_event_id: Uuid,
    },
    /// A message's `meta` (or `execution_id`) differs from the event it came from.
    MessageMetaMismatch {
        /// The queue.
        queue: String,
        /// The message id.
        msg_id: i64,
        /// `queued` or `archived`.
        state: String,
        /// The event (`meta.parent_event_id`).
        event_id: Uuid,
        /// The field, e.g. `meta.correlation_id`.
        field: String,
        /// The message's value.
        in_message: String,
        /// The event's value.
        in_event: String,
    },
    /// An event a worker wrote on consuming a message does not hang off the message's
    /// `meta.parent_event_id`.
    MessageConsumerMismatch {
        /// The queue.
        queue: String,
        /// The message id.
        msg_id: i64,
        /// The consumer's event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// `meta.parent_event_id`.
        meta_parent_event_id: Uuid,
        /// The event's parent.
        event_parent_event_id: Option<Uuid>,
    },
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "null".to_string(), T::to_string)
}

impl fmt::Display for Fault {
    #[expect(clippy::too_many_lines, reason = "one message per fault kind")]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::NoRoot { root_execution_id } => write!(
                f,
                "no root: execution {root_execution_id} has no parentless execution_started or schedule_fired"
            ),
            Fault::ExtraRoot {
                event_id,
                event_type,
                execution_id,
            } => write!(
                f,
                "extra root: event {event_id} ({event_type}, execution {execution_id}) has no parent"
            ),
            Fault::MissingParent {
                event_id,
                event_type,
                execution_id,
                parent_event_id,
            } => write!(
                f,
                "missing parent: event {event_id} ({event_type}, execution {execution_id}) has parent {parent_event_id}, which does not exist"
            ),
            Fault::ParentInOtherTree {
                event_id,
                event_type,
                execution_id,
                parent_event_id,
                parent_root_execution_id,
            } => write!(
                f,
                "parent in another tree: event {event_id} ({event_type}, execution {execution_id}) has parent {parent_event_id}, which belongs to root {parent_root_execution_id}"
            ),
            Fault::ParentInUnrelatedExecution {
                event_id,
                event_type,
                execution_id,
                parent_event_id,
                parent_execution_id,
            } => write!(
                f,
                "parent in unrelated execution: event {event_id} ({event_type}, execution {execution_id}) has parent {parent_event_id} of execution {parent_execution_id}, which is neither its own nor its parent execution"
            ),
            Fault::Cycle { event_ids } => write!(
                f,
                "cycle: events {} are each other's ancestors",
                event_ids
                    .iter()
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
            Fault::SpawnMismatch {
                execution_id,
                spawned_by,
                event_id,
                parent_event_id,
            } => write!(
                f,
                "spawn mismatch: execution {execution_id} was spawned by event {spawned_by}, but no event of it hangs off that (it is entered by event {}, whose parent is {})",
                opt(event_id),
                opt(parent_event_id)
            ),
            Fault::UnknownExecution {
                event_id,
                event_type,
                execution_id,
            } => write!(
                f,
                "unknown execution: event {event_id} ({event_type}) names execution {execution_id}, which does not exist"
            ),
            Fault::EventFieldMismatch {
                event_id,
                event_type,
                field,
                expected,
                found,
            } => write!(
                f,
                "event field mismatch: event {event_id} ({event_type}) has {field} {found}, its execution has {expected}"
            ),
            Fault::ExecutionFieldMismatch {
                execution_id,
                field,
                expected,
                found,
            } => write!(
                f,
                "execution field mismatch: execution {execution_id} has {field} {found}, expected {expected}"
            ),
            Fault::ExecutionWithoutEvents { execution_id } => {
                write!(f, "execution without events: execution {execution_id}")
            }
            Fault::MessageMetaMalformed {
                queue,
                msg_id,
                state,
                reason,
            } => write!(
                f,
                "malformed meta: {state} message {msg_id} in {queue}: {reason}"
            ),
            Fault::MessageParentMissing {
                queue,
                msg_id,
                state,
                parent_event_id,
            } => write!(
                f,
                "message parent missing: {state} message {msg_id} in {queue} has meta.parent_event_id {parent_event_id}, which does not exist"
            ),
            Fault::MessageMetaMismatch {
                queue,
                msg_id,
                state,
                event_id,
                field,
                in_message,
                in_event,
            } => write!(
                f,
                "message meta mismatch: {state} message {msg_id} in {queue} has {field} {in_message}, its event {event_id} has {in_event}"
            ),
            Fault::MessageConsumerMismatch {
                queue,
                msg_id,
                event_id,
                event_type,
                meta_parent_event_id,
                event_parent_event_id,
            } => write!(
                f,
                "message consumer mismatch: event {event_id} ({event_type}) consumed message {msg_id} in {queue} but has parent {}, not meta.parent_event_id {meta_parent_event_id}",
                opt(event_parent_event_id)
            ),
        }
    }
}

/// What `lineq lineage check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// What was asked for.
    pub target: Target,
    /// The root executions whose trees were checked.
    pub roots: Vec<Uuid>,
    /// Executions checked.
    pub executions: usize,
    /// Events checked.
    pub events: usize,
    /// Step and result messages checked (queued and archived).
    pub messages: usize,
    /// Dead letters found in the trees (not faults: a dead letter is lineq refusing a bad
    /// message, which is the lineage working).
    pub dead_letters: usize,
    /// Everything wrong; empty when the trees are whole.
    pub faults: Vec<Fault>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_whole(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Checks the whole tree(s) of whatever `id` names: for an execution or an event, the tree of
/// its root; for a correlation id, the tree of every root it reaches.
pub async fn check(pool: &PgPool, id: Uuid) -> Result<CheckReport> {
    let target = resolve(pool, id).await?;
    let roots: Vec<Uuid> = match target {
        Target::Execution { id } => {
            sqlx::query_scalar(
                "SELECT root_execution_id FROM lineq.executions WHERE execution_id = $1",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
        Target::Event {
            root_execution_id, ..
        } => vec![root_execution_id],
        Target::Correlation { id } => {
            sqlx::query_scalar(
                "SELECT DISTINCT root_execution_id FROM lineq.correlation($1) ORDER BY 1",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
    };
    let mut report = CheckReport {
        target,
        roots: roots.clone(),
        executions: 0,
        events: 0,
        messages: 0,
        dead_letters: 0,
        faults: Vec::new(),
    };
    for root in roots {
        let r = check_root(pool, root).await?;
        report.executions += r.executions;
        report.events += r.events;
        report.messages += r.messages;
        report.dead_letters += r.dead_letters;
        report.faults.extend(r.faults);
    }
    Ok(report)
}

/// Checks the tree of one root execution.
#[expect(
    clippy::too_many_lines,
    reason = "the reads of one check, in the order the report lists them"
)]
pub async fn check_root(pool: &PgPool, root: Uuid) -> Result<CheckReport> {
    // The tree's executions: those below the root by parent links, and those that claim the
    // root (a wrong parent link must not hide an execution from the check).
    let mut executions = super::execution_tree(pool, root).await?;
    let tree_ids: HashSet<Uuid> = executions.iter().map(|x| x.execution_id).collect();
    let below: Vec<Uuid> = tree_ids.iter().copied().collect();
    let claimers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT execution_id FROM lineq.executions
         WHERE root_execution_id = $1 AND NOT (execution_id = ANY($2))",
    )
    .bind(root)
    .bind(&below)
    .fetch_all(pool)
    .await?;
    executions.extend(super::executions_by_id(pool, &claimers).await?);
    let exec_ids: Vec<Uuid> = executions.iter().map(|x| x.execution_id).collect();
    let events = sqlx::query_as::<_, EventRow>(
        r#"
        SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name AS step_name,
               e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
               e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
        FROM lineq.events e
        LEFT JOIN lineq.steps s ON s.step_id = e.step_id
        WHERE e.root_execution_id = $1 OR e.execution_id = ANY($2)
        ORDER BY e.created_at, e.event_id
        "#,
    )
    .bind(root)
    .bind(&exec_ids)
    .fetch_all(pool)
    .await?;
    let messages = super::messages(pool, root).await?;

    // Events outside the tree that the tree points at (parents, message parents), and
    // executions that its events name but that are not in it.
    let in_tree: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let outside: Vec<Uuid> = events
        .iter()
        .filter_map(|e| e.parent_event_id)
        .chain(messages.iter().filter_map(|m| m.parent_event_id))
        .filter(|p| !in_tree.contains(p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let foreign: Vec<EventRow> = sqlx::query_as::<_, EventRow>(
        r#"
        SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, NULL::text AS step_name,
               e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
               e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
        FROM lineq.events e WHERE e.event_id = ANY($1)
        "#,
    )
    .bind(&outside)
    .fetch_all(pool)
    .await?;
    let known: HashSet<Uuid> = executions.iter().map(|x| x.execution_id).collect();
    let stray: Vec<Uuid> = events
        .iter()
        .map(|e| e.execution_id)
        .filter(|x| !known.contains(x))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut all_execs: HashMap<Uuid, TreeExecution> = executions
        .into_iter()
        .map(|x| (x.execution_id, x))
        .collect();
    if !stray.is_empty() {
        for x in super::executions_by_id(pool, &stray).await? {
            all_execs.insert(x.execution_id, x);
        }
    }

    let input = Input {
        root,
        tree_ids: &tree_ids,
        executions: &all_execs,
        events: &events,
        foreign: &foreign,
        messages: &messages,
    };
    Ok(CheckReport {
        target: Target::Execution { id: root },
        roots: vec![root],
        executions: known.len(),
        events: events.len(),
        messages: messages.iter().filter(|m| m.kind != "dead_letter").count(),
        dead_letters: messages.iter().filter(|m| m.kind == "dead_letter").count(),
        faults: faults(&input),
    })
}

/// Everything one root's check looks at, already read.
struct Input<'a> {
    root: Uuid,
    /// Executions below the root by parent links.
    tree_ids: &'a HashSet<Uuid>,
    /// Executions of the tree, and any other execution its events name.
    executions: &'a HashMap<Uuid, TreeExecution>,
    /// The tree's events, oldest first.
    events: &'a [EventRow],
    /// Events outside the tree that it points at.
    foreign: &'a [EventRow],
    /// The tree's queue messages.
    messages: &'a [LineageMessage],
}

/// The event types that may begin a root execution's tree: its `execution_started`, or the
/// `schedule_fired` of the schedule that started it (which its `execution_started` then hangs
/// off).
const ROOT_EVENT_TYPES: [&str; 2] = ["execution_started", "schedule_fired"];

/// The pure part of the check: rows in, faults out.
#[expect(
    clippy::too_many_lines,
    reason = "every lineage rule, one after the other, as docs/lineage.md lists them"
)]
fn faults(input: &Input<'_>) -> Vec<Fault> {
    let mut out = Vec::new();
    let by_id: HashMap<Uuid, &EventRow> = input.events.iter().map(|e| (e.event_id, e)).collect();
    let foreign: HashMap<Uuid, &EventRow> = input.foreign.iter().map(|e| (e.event_id, e)).collect();

    check_executions(input, &mut out);

    // One root.
    let parentless: Vec<&EventRow> = input
        .events
        .iter()
        .filter(|e| e.parent_event_id.is_none())
        .collect();
    let root_event = parentless
        .iter()
        .find(|e| e.execution_id == input.root && ROOT_EVENT_TYPES.contains(&e.event_type.as_str()))
        .map(|e| e.event_id);
    if root_event.is_none() {
        out.push(Fault::NoRoot {
            root_execution_id: input.root,
        });
    }
    for e in &parentless {
        if Some(e.event_id) != root_event {
            out.push(Fault::ExtraRoot {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                execution_id: e.execution_id,
            });
        }
    }

    // Every parent present, in the tree, and in the right execution.
    for e in input.events {
        let Some(p) = e.parent_event_id else { continue };
        if let Some(parent) = by_id.get(&p) {
            if parent.execution_id != e.execution_id {
                check_cross_execution(input, e, parent, &mut out);
            }
        } else if let Some(parent) = foreign.get(&p) {
            out.push(Fault::ParentInOtherTree {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                execution_id: e.execution_id,
                parent_event_id: p,
                parent_root_execution_id: parent.root_execution_id,
            });
        } else {
            out.push(Fault::MissingParent {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                execution_id: e.execution_id,
                parent_event_id: p,
            });
        }
    }

    check_spawns(input, &mut out);

    for cycle in cycles(input.events, &by_id) {
        out.push(Fault::Cycle { event_ids: cycle });
    }

    // Every event carries its execution's lineage.
    for e in input.events {
        let Some(x) = input.executions.get(&e.execution_id) else {
            out.push(Fault::UnknownExecution {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                execution_id: e.execution_id,
            });
            continue;
        };
        let mut field = |name: &str, expected: String, found: String| {
            if expected != found {
                out.push(Fault::EventFieldMismatch {
                    event_id: e.event_id,
                    event_type: e.event_type.clone(),
                    field: name.to_string(),
                    expected,
                    found,
                });
            }
        };
        field(
            "root_execution_id",
            x.root_execution_id.to_string(),
            e.root_execution_id.to_string(),
        );
        field(
            "correlation_id",
            x.correlation_id.to_string(),
            e.correlation_id.to_string(),
        );
        field(
            "parent_execution_id",
            opt(&x.parent_execution_id),
            opt(&e.parent_execution_id),
        );
    }

    check_messages(input, &by_id, &foreign, &mut out);
    out
}

fn check_executions(input: &Input<'_>, out: &mut Vec<Fault>) {
    let with_events: HashSet<Uuid> = input.events.iter().map(|e| e.execution_id).collect();
    let mut execs: Vec<&TreeExecution> = input
        .executions
        .values()
        .filter(|x| input.tree_ids.contains(&x.execution_id) || x.root_execution_id == input.root)
        .collect();
    execs.sort_by_key(|x| (x.created_at, x.execution_id));
    for x in execs {
        if x.root_execution_id != input.root {
            out.push(Fault::ExecutionFieldMismatch {
                execution_id: x.execution_id,
                field: "root_execution_id".into(),
                expected: input.root.to_string(),
                found: x.root_execution_id.to_string(),
            });
        }
        if !input.tree_ids.contains(&x.execution_id) {
            out.push(Fault::ExecutionFieldMismatch {
                execution_id: x.execution_id,
                field: "parent_execution_id".into(),
                expected: format!("an execution under root {}", input.root),
                found: opt(&x.parent_execution_id),
            });
        }
        if let Some(parent) = x.parent_execution_id.and_then(|p| input.executions.get(&p)) {
            if x.parent_correlation_id != Some(parent.correlation_id) {
                out.push(Fault::ExecutionFieldMismatch {
                    execution_id: x.execution_id,
                    field: "parent_correlation_id".into(),
                    expected: parent.correlation_id.to_string(),
                    found: opt(&x.parent_correlation_id),
                });
            }
        }
        if !with_events.contains(&x.execution_id) {
            out.push(Fault::ExecutionWithoutEvents {
                execution_id: x.execution_id,
            });
        }
    }
}

/// An event whose parent is in another execution of the tree. Two links cross executions: into
/// a child (its `execution_started` hangs off the event that spawned it, and later events may
/// hang off its parent's, e.g. a cancellation), and back out of one (a step that waited for its
/// children continues from the event that ended the last of them). Anything else is a wrong
/// parent.
fn check_cross_execution(input: &Input<'_>, e: &EventRow, parent: &EventRow, out: &mut Vec<Fault>) {
    let own_parent = input
        .executions
        .get(&e.execution_id)
        .and_then(|x| x.parent_execution_id);
    let parents_parent = input
        .executions
        .get(&parent.execution_id)
        .and_then(|x| x.parent_execution_id);
    if own_parent != Some(parent.execution_id) && parents_parent != Some(e.execution_id) {
        out.push(Fault::ParentInUnrelatedExecution {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            execution_id: e.execution_id,
            parent_event_id: parent.event_id,
            parent_execution_id: parent.execution_id,
        });
    }
}

/// Every child execution hangs off the event recorded as having spawned it
/// (`executions.parent_event_id`): some event of the child has it as parent.
fn check_spawns(input: &Input<'_>, out: &mut Vec<Fault>) {
    let mut entered: HashMap<Uuid, Vec<&EventRow>> = HashMap::new();
    let by_id: HashMap<Uuid, &EventRow> = input.events.iter().map(|e| (e.event_id, e)).collect();
    for e in input.events {
        let from_parent_exec = e
            .parent_event_id
            .and_then(|p| by_id.get(&p))
            .is_some_and(|p| p.execution_id != e.execution_id);
        if from_parent_exec {
            entered.entry(e.execution_id).or_default().push(e);
        }
    }
    let mut execs: Vec<&TreeExecution> = input
        .executions
        .values()
        .filter(|x| input.tree_ids.contains(&x.execution_id))
        .collect();
    execs.sort_by_key(|x| (x.created_at, x.execution_id));
    for x in execs {
        let Some(spawned_by) = x.parent_event_id else {
            continue;
        };
        let entries = entered
            .get(&x.execution_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if entries
            .iter()
            .any(|e| e.parent_event_id == Some(spawned_by))
        {
            continue;
        }
        // A root started by a schedule: spawned by its own `schedule_fired`, which its
        // `execution_started` hangs off.
        let fired_itself = x.parent_execution_id.is_none()
            && by_id.get(&spawned_by).is_some_and(|f| {
                f.execution_id == x.execution_id && f.event_type == "schedule_fired"
            })
            && input.events.iter().any(|e| {
                e.execution_id == x.execution_id
                    && e.parent_event_id == Some(spawned_by)
                    && e.event_type == "execution_started"
            });
        if fired_itself {
            continue;
        }
        // Name the event that enters the child instead, if there is one: its parent is wrong.
        let first = input
            .events
            .iter()
            .find(|e| e.execution_id == x.execution_id);
        let entry = entries.first().copied().or(first);
        out.push(Fault::SpawnMismatch {
            execution_id: x.execution_id,
            spawned_by,
            event_id: entry.map(|e| e.event_id),
            parent_event_id: entry.and_then(|e| e.parent_event_id),
        });
    }
}

/// The loops among `events`' parent links, each once, starting from its oldest member.
fn cycles(events: &[EventRow], by_id: &HashMap<Uuid, &EventRow>) -> Vec<Vec<Uuid>> {
    // 0 = not yet walked, 1 = on the current walk, 2 = done.
    let mut state: HashMap<Uuid, u8> = HashMap::with_capacity(events.len());
    let mut found = Vec::new();
    for start in events {
        if state.contains_key(&start.event_id) {
            continue;
        }
        let mut walk = Vec::new();
        let mut cur = Some(start.event_id);
        while let Some(id) = cur {
            match state.get(&id) {
                Some(1) => {
                    // Back on this walk: everything from `id` on is the loop.
                    let at = walk.iter().position(|w| *w == id).unwrap_or(0);
                    let mut members = walk[at..].to_vec();
                    let oldest = members
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, m)| by_id.get(*m).map(|e| (e.created_at, e.event_id)))
                        .map_or(0, |(i, _)| i);
                    members.rotate_left(oldest);
                    found.push(members);
                    break;
                }
                Some(_) => break,
                None => {}
            }
            state.insert(id, 1);
            walk.push(id);
            cur = by_id.get(&id).and_then(|e| e.parent_event_id);
            if cur.is_some_and(|p| !by_id.contains_key(&p)) {
                break;
            }
        }
        for id in walk {
            state.insert(id, 2);
        }
    }
    found
}

#[expect(
    clippy::too_many_lines,
    reason = "every rule a message must keep, one after the other"
)]
fn check_messages(
    input: &Input<'_>,
    by_id: &HashMap<Uuid, &EventRow>,
    foreign: &HashMap<Uuid, &EventRow>,
    out: &mut Vec<Fault>,
) {
    // Consumers name the message they consumed: (queue, msg_id) in their payload.
    let mut consumers: HashMap<(&str, i64), Vec<&EventRow>> = HashMap::new();
    for e in input.events.iter().filter(|e| e.worker_id.is_some()) {
        if let (Some(q), Some(id)) = (
            e.payload.get("queue").and_then(Value::as_str),
            e.payload.get("msg_id").and_then(Value::as_i64),
        ) {
            consumers.entry((q, id)).or_default().push(e);
        }
    }

    for m in input.messages.iter().filter(|m| m.kind != "dead_letter") {
        let malformed = |reason: String| Fault::MessageMetaMalformed {
            queue: m.queue_name.clone(),
            msg_id: m.msg_id,
            state: m.state.clone(),
            reason,
        };
        let meta: Meta = match m.meta.as_ref().filter(|v| v.is_object()) {
            None => {
                out.push(malformed("the message has no meta object".into()));
                continue;
            }
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(meta) => meta,
                Err(e) => {
                    out.push(malformed(e.to_string()));
                    continue;
                }
            },
        };
        let Some(event) = by_id
            .get(&meta.parent_event_id)
            .or_else(|| foreign.get(&meta.parent_event_id))
        else {
            out.push(Fault::MessageParentMissing {
                queue: m.queue_name.clone(),
                msg_id: m.msg_id,
                state: m.state.clone(),
                parent_event_id: meta.parent_event_id,
            });
            continue;
        };
        let mut field = |name: &str, in_message: String, in_event: String| {
            if in_message != in_event {
                out.push(Fault::MessageMetaMismatch {
                    queue: m.queue_name.clone(),
                    msg_id: m.msg_id,
                    state: m.state.clone(),
                    event_id: event.event_id,
                    field: name.to_string(),
                    in_message,
                    in_event,
                });
            }
        };
        let body_execution = m
            .message
            .as_ref()
            .and_then(|b| b.get("execution_id"))
            .map_or_else(|| "null".to_string(), json_text);
        field(
            "execution_id",
            body_execution,
            event.execution_id.to_string(),
        );
        field(
            "meta.correlation_id",
            meta.correlation_id.to_string(),
            event.correlation_id.to_string(),
        );
        field(
            "meta.root_execution_id",
            meta.root_execution_id.to_string(),
            event.root_execution_id.to_string(),
        );
        field(
            "meta.parent_execution_id",
            opt(&meta.parent_execution_id),
            opt(&event.parent_execution_id),
        );
        match TraceContext::parse(&meta.traceparent) {
            Ok(tc) => {
                field(
                    "meta.traceparent trace id",
                    tc.trace_id_hex(),
                    opt(&event.trace_id),
                );
                field(
                    "meta.traceparent span id",
                    tc.span_id_hex(),
                    opt(&event.span_id),
                );
            }
            Err(e) => out.push(malformed(format!("meta.traceparent: {e}"))),
        }

        for c in consumers
            .get(&(m.queue_name.as_str(), m.msg_id))
            .into_iter()
            .flatten()
        {
            if c.event_id != event.event_id && c.parent_event_id != Some(meta.parent_event_id) {
                out.push(Fault::MessageConsumerMismatch {
                    queue: m.queue_name.clone(),
                    msg_id: m.msg_id,
                    event_id: c.event_id,
                    event_type: c.event_type.clone(),
                    meta_parent_event_id: meta.parent_event_id,
                    event_parent_event_id: c.parent_event_id,
                });
            }
        }
    }
}

/// A JSON value as the text a UUID column would print: strings without quotes.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn ev(id: u128, parent: Option<u128>, exec: u128, kind: &str) -> EventRow {
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
            created_at: Utc
                .timestamp_millis_opt(1_700_000_000_000 + id as i64)
                .unwrap(),
        }
    }

    fn root_exec() -> TreeExecution {
        TreeExecution {
            depth: 0,
            path: vec![Uuid::from_u128(1000)],
            execution_id: Uuid::from_u128(1000),
            parent_execution_id: None,
            root_execution_id: Uuid::from_u128(1000),
            correlation_id: Uuid::from_u128(5000),
            parent_correlation_id: None,
            parent_event_id: None,
            parent_step: None,
            workflow_name: "wf".into(),
            workflow_version: 1,
            namespace: "default".into(),
            status: "completed".into(),
            created_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            finished_at: None,
        }
    }

    fn run(events: Vec<EventRow>) -> Vec<Fault> {
        let tree_ids: HashSet<Uuid> = [Uuid::from_u128(1000)].into();
        let executions: HashMap<Uuid, TreeExecution> =
            [(Uuid::from_u128(1000), root_exec())].into();
        faults(&Input {
            root: Uuid::from_u128(1000),
            tree_ids: &tree_ids,
            executions: &executions,
            events: &events,
            foreign: &[],
            messages: &[],
        })
    }

    /// An execution a schedule started: `schedule_fired` is the root, its `execution_started`
    /// hangs off it, and the execution row names it as what spawned it.
    #[test]
    fn a_schedule_fired_root_is_whole_and_only_as_the_first_event() {
        let tree_ids: HashSet<Uuid> = [Uuid::from_u128(1000)].into();
        let mut x = root_exec();
        x.parent_event_id = Some(Uuid::from_u128(1));
        let executions: HashMap<Uuid, TreeExecution> = [(Uuid::from_u128(1000), x)].into();
        let check = |events: Vec<EventRow>| {
            faults(&Input {
                root: Uuid::from_u128(1000),
                tree_ids: &tree_ids,
                executions: &executions,
                events: &events,
                foreign: &[],
                messages: &[],
            })
        };
        let whole = check(vec![
            ev(1, None, 1000, "schedule_fired"),
            ev(2, Some(1), 1000, "execution_started"),
            ev(3, Some(2), 1000, "workflow_initialized"),
        ]);
        assert_eq!(whole, vec![]);
        // An execution_started that does not hang off the schedule_fired is a second root, and
        // the spawn recorded on the row is not followed.
        let f = check(vec![
            ev(1, None, 1000, "schedule_fired"),
            ev(2, None, 1000, "execution_started"),
        ]);
        assert!(
            f.iter().any(|f| matches!(f, Fault::ExtraRoot { event_type, .. } if event_type == "execution_started")),
            "{f:?}"
        );
        assert!(
            f.iter().any(|f| matches!(f, Fault::SpawnMismatch { .. })),
            "{f:?}"
        );
    }

    #[test]
    fn a_sound_chain_has_no_faults() {
        let f = run(vec![
            ev(1, None, 1000, "execution_started"),
            ev(2, Some(1), 1000, "workflow_initialized"),
            ev(3, Some(2), 1000, "step_enqueued"),
        ]);
        assert_eq!(f, vec![]);
    }

    #[test]
    fn names_missing_parents_extra_roots_and_cycles() {
        let f = run(vec![
            ev(1, None, 1000, "execution_started"),
            ev(2, Some(99), 1000, "workflow_initialized"),
            ev(3, None, 1000, "step_enqueued"),
            ev(4, Some(6), 1000, "a"),
            ev(5, Some(4), 1000, "b"),
            ev(6, Some(5), 1000, "c"),
            ev(7, Some(6), 1000, "d"),
        ]);
        assert_eq!(
            f,
            vec![
                Fault::ExtraRoot {
                    event_id: Uuid::from_u128(3),
                    event_type: "step_enqueued".into(),
                    execution_id: Uuid::from_u128(1000),
                },
                Fault::MissingParent {
                    event_id: Uuid::from_u128(2),
                    event_type: "workflow_initialized".into(),
                    execution_id: Uuid::from_u128(1000),
                    parent_event_id: Uuid::from_u128(99),
                },
                Fault::Cycle {
                    event_ids: vec![4, 6, 5].into_iter().map(Uuid::from_u128).collect(),
                },
            ]
        );
        assert!(f[2].to_string().starts_with("cycle: events "));
    }

    #[test]
    fn cross_execution_links_into_and_out_of_children_only() {
        let child = TreeExecution {
            execution_id: Uuid::from_u128(2000),
            parent_execution_id: Some(Uuid::from_u128(1000)),
            parent_correlation_id: Some(Uuid::from_u128(5000)),
            parent_event_id: Some(Uuid::from_u128(3)),
            ..root_exec()
        };
        let sibling = TreeExecution {
            execution_id: Uuid::from_u128(3000),
            parent_execution_id: Some(Uuid::from_u128(1000)),
            parent_correlation_id: Some(Uuid::from_u128(5000)),
            parent_event_id: Some(Uuid::from_u128(3)),
            ..root_exec()
        };
        let tree_ids: HashSet<Uuid> = [1000, 2000, 3000].map(Uuid::from_u128).into();
        let executions: HashMap<Uuid, TreeExecution> = [root_exec(), child, sibling]
            .into_iter()
            .map(|x| (x.execution_id, x))
            .collect();
        let in_child = |id, parent, exec, kind| {
            let mut e = ev(id, parent, exec, kind);
            e.parent_execution_id = Some(Uuid::from_u128(1000));
            e
        };
        let events = vec![
            ev(1, None, 1000, "execution_started"),
            ev(3, Some(1), 1000, "step_result"),
            in_child(4, Some(3), 2000, "execution_started"),
            in_child(5, Some(4), 2000, "execution_completed"),
            // back out of the child: fine
            ev(6, Some(5), 1000, "step_completed"),
            // the sibling enters from its spawning event: fine; then hangs off the other child
            in_child(7, Some(3), 3000, "execution_started"),
            in_child(8, Some(5), 3000, "execution_completed"),
        ];
        let f = faults(&Input {
            root: Uuid::from_u128(1000),
            tree_ids: &tree_ids,
            executions: &executions,
            events: &events,
            foreign: &[],
            messages: &[],
        });
        assert_eq!(
            f,
            vec![Fault::ParentInUnrelatedExecution {
                event_id: Uuid::from_u128(8),
                event_type: "execution_completed".into(),
                execution_id: Uuid::from_u128(3000),
                parent_event_id: Uuid::from_u128(5),
                parent_execution_id: Uuid::from_u128(2000),
            }]
        );
    }

    #[test]
    fn a_self_loop_and_no_root() {
        let f = run(vec![ev(1, Some(1), 1000, "execution_started")]);
        assert_eq!(
            f,
            vec![
                Fault::NoRoot {
                    root_execution_id: Uuid::from_u128(1000)
                },
                Fault::Cycle {
                    event_ids: vec![Uuid::from_u128(1)]
                },
            ]
        );
    }
}

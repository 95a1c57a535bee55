//! An event tree's shape as one comparable string.

use uuid::Uuid;

/// Asserts that `events` form exactly one tree — one event without a parent, every other
/// parent present, no cycles — and returns its shape: `type(child,child)` with children sorted,
/// so a test can compare the whole shape in one assertion.
pub fn tree_shape(events: &[lineq_core::event::EventRow]) -> String {
    use std::collections::HashMap;
    let by_id: HashMap<Uuid, &lineq_core::event::EventRow> =
        events.iter().map(|e| (e.event_id, e)).collect();
    assert_eq!(by_id.len(), events.len(), "duplicate event ids");
    let roots: Vec<_> = events
        .iter()
        .filter(|e| e.parent_event_id.is_none())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "exactly one root event expected, got {:?}",
        roots.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let mut children: HashMap<Uuid, Vec<&lineq_core::event::EventRow>> = HashMap::new();
    for e in events {
        if let Some(p) = e.parent_event_id {
            assert!(
                by_id.contains_key(&p),
                "{} {} has parent {p}, which is not in the tree",
                e.event_type,
                e.event_id
            );
            children.entry(p).or_default().push(e);
        }
    }
    fn shape(
        e: &lineq_core::event::EventRow,
        children: &HashMap<Uuid, Vec<&lineq_core::event::EventRow>>,
        seen: &mut usize,
    ) -> String {
        *seen += 1;
        let mut kids: Vec<String> = children
            .get(&e.event_id)
            .map(|v| v.iter().map(|k| shape(k, children, seen)).collect())
            .unwrap_or_default();
        kids.sort();
        if kids.is_empty() {
            e.event_type.clone()
        } else {
            format!("{}({})", e.event_type, kids.join(","))
        }
    }
    let mut seen = 0;
    let s = shape(roots[0], &children, &mut seen);
    assert_eq!(
        seen,
        events.len(),
        "some events are not reachable from the root (a cycle)"
    );
    s
}

/// The shape of a one-step execution that completed on its first attempt.
pub const ONE_STEP_COMPLETED: &str = "execution_started(workflow_initialized(step_enqueued(action_started(action_completed,step_result(step_completed(execution_completed))))))";
/// The shape of a one-step execution whose only attempt failed.
pub const ONE_STEP_FAILED: &str = "execution_started(workflow_initialized(step_enqueued(action_started(action_failed,step_result(step_failed(execution_failed))))))";

//! What a batch's rows mean, decided without the database: whether a reported result still
//! applies, what it makes of its step (completed, waiting for children, retried after a
//! backoff, failed for good), what an execution's steps make of it (failed, completed, started,
//! which steps became ready by fan-out and fan-in), and what a waiting step's finished children
//! make of it. The callers (result processing, settling) read the rows, call these, and write
//! the decisions with guarded SQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use lineq_core::execution::{ExecutionStatus, StepStatus};
use lineq_core::message::{Outcome, ResultMessage};

use crate::enqueue::step_input;
use crate::state::{ExecState, StepRow};
use crate::workflow::RetryPolicy;

/// A reported result, as the rows its batch locked see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Triage {
    /// Its step or execution does not exist: dead-lettered.
    Unknown,
    /// A duplicate, an attempt the step no longer waits for, or a result for an execution that
    /// has ended (cancelled, say): deleted, and changes nothing.
    Stale,
    /// Its step waits for exactly this attempt: applied.
    Fresh,
}

/// Triages each of `results` (in order): only the first result for a step that waits for that
/// attempt, of an execution that has not ended, is fresh.
pub(crate) fn triage(
    results: &[&ResultMessage],
    steps: &HashMap<Uuid, StepRow>,
    execs: &HashMap<Uuid, ExecState>,
) -> Vec<Triage> {
    let mut seen = HashSet::new();
    results
        .iter()
        .map(|r| {
            let (Some(step), Some(exec)) = (steps.get(&r.step_id), execs.get(&r.execution_id))
            else {
                return Triage::Unknown;
            };
            let fresh = step.execution_id == r.execution_id
                && step.status == StepStatus::Enqueued
                && step.attempts == r.attempt
                && !exec.is_terminal()
                && seen.insert(r.step_id);
            if fresh { Triage::Fresh } else { Triage::Stale }
        })
        .collect()
}

/// What a fresh result makes of its step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepDecision {
    /// The handler finished. With `waits`, the step waits for children it started; otherwise
    /// it is completed.
    Complete { waits: bool },
    /// The attempt failed and the policy allows another: attempt `attempt` is sent after
    /// `delay`, with `reason`.
    Retry {
        attempt: i32,
        delay: Duration,
        reason: String,
    },
    /// Failed for good: attempts exhausted, or an error the policy does not retry.
    Fail,
}

impl StepDecision {
    /// The step's status once the decision is written.
    pub(crate) fn status(&self) -> StepStatus {
        match self {
            Self::Complete { waits: true } => StepStatus::Waiting,
            Self::Complete { waits: false } => StepStatus::Completed,
            Self::Retry { .. } => StepStatus::Enqueued,
            Self::Fail => StepStatus::Failed,
        }
    }
}

/// What result `r` (fresh, its children already checked) makes of `step`.
pub(crate) fn decide_step(step: &StepRow, r: &ResultMessage) -> StepDecision {
    match r.outcome {
        Outcome::Completed => StepDecision::Complete {
            waits: r.children.iter().any(|c| c.wait),
        },
        Outcome::Failed => {
            let policy: RetryPolicy =
                serde_json::from_value(step.retry.clone()).unwrap_or_default();
            let (kind, retryable, message) = r.error.as_ref().map_or(("unknown", true, ""), |e| {
                (e.kind.as_str(), e.retryable, e.message.as_str())
            });
            if step.attempts < step.max_attempts && policy.allows(kind, retryable) {
                StepDecision::Retry {
                    attempt: r.attempt + 1,
                    delay: policy.delay_after(r.attempt),
                    reason: format!("{kind}: {message}"),
                }
            } else {
                StepDecision::Fail
            }
        }
    }
}

/// A step whose dependencies are all done.
#[derive(Debug, Clone)]
pub(crate) struct Ready<'a> {
    pub step: &'a StepRow,
    /// Its handler's input ([`step_input`]).
    pub input: Value,
    /// The event that made it ready: the outcome of the dependency that finished last in this
    /// transaction, or else the execution's latest.
    pub parent_event: Uuid,
}

/// What an execution's steps make of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// A step failed for good and its failure fails the execution.
    Fail { error: Value },
    /// Every step is done.
    Complete { output: Value },
    /// A pending execution that goes on: it is running now.
    Start,
    /// Nothing changes in the execution's own state.
    Stay,
}

/// An execution's verdict and the steps it makes ready.
#[derive(Debug, Clone)]
pub(crate) struct Settlement<'a> {
    pub verdict: Verdict,
    pub ready: Vec<Ready<'a>>,
}

/// Whether a failed step lets its execution go on (`on_failure: continue`).
fn continues(s: &StepRow) -> bool {
    s.on_failure == "continue"
}

/// Settles `exec` from its `steps` (each current): fails it when a step failed for good whose
/// failure fails it, else makes ready the pending steps whose dependencies are all done
/// (completed, or failed with `on_failure: continue`), except those in `already` (made ready
/// earlier in this transaction), and completes it when every step is done.
///
/// `step_event` maps steps changed in this transaction to their outcome events, `last_event` is
/// the execution's latest event in it: the causes of what becomes ready. An ended execution
/// stays as it is.
pub(crate) fn settle_execution<'a>(
    exec: &ExecState,
    steps: &'a [StepRow],
    already: &HashSet<Uuid>,
    step_event: &HashMap<Uuid, Uuid>,
    last_event: Option<Uuid>,
) -> Settlement<'a> {
    let stay = |verdict| Settlement {
        verdict,
        ready: Vec::new(),
    };
    if exec.is_terminal() {
        return stay(Verdict::Stay);
    }
    if let Some(failed) = steps
        .iter()
        .find(|s| s.status == StepStatus::Failed && !continues(s))
    {
        let error = json!({ "step": failed.name, "error": failed.error });
        return stay(Verdict::Fail { error });
    }
    let ready = ready_steps(exec, steps, already, step_event, last_event);
    let all_done = !steps.is_empty()
        && steps.iter().all(|s| {
            !ready.iter().any(|r| r.step.step_id == s.step_id)
                && !already.contains(&s.step_id)
                && s.status.is_terminal()
        });
    let verdict = if all_done {
        Verdict::Complete {
            output: execution_output(exec, steps),
        }
    } else if exec.status == ExecutionStatus::Pending {
        Verdict::Start
    } else {
        Verdict::Stay
    };
    Settlement { verdict, ready }
}

/// The pending steps of `steps` (not in `already`) whose dependencies are all done, with the
/// dependencies' outputs as input (fan-out: one done step readies many; fan-in: a step waits
/// for all it depends on).
fn ready_steps<'a>(
    exec: &ExecState,
    steps: &'a [StepRow],
    already: &HashSet<Uuid>,
    step_event: &HashMap<Uuid, Uuid>,
    last_event: Option<Uuid>,
) -> Vec<Ready<'a>> {
    let done: HashMap<&str, &StepRow> = steps
        .iter()
        .filter(|s| {
            s.status == StepStatus::Completed || (s.status == StepStatus::Failed && continues(s))
        })
        .map(|s| (s.name.as_str(), s))
        .collect();
    let by_name: HashMap<&str, &StepRow> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut ready = Vec::new();
    for s in steps
        .iter()
        .filter(|s| s.status == StepStatus::Pending && !already.contains(&s.step_id))
    {
        if !s.depends_on.iter().all(|d| done.contains_key(d.as_str())) {
            continue;
        }
        // The dependency that finished last (UUIDv7 ids grow with time) made it ready.
        let ready_by = s
            .depends_on
            .iter()
            .filter_map(|d| by_name.get(d.as_str()))
            .filter_map(|d| step_event.get(&d.step_id))
            .max()
            .copied()
            .or(last_event);
        let Some(parent_event) = ready_by else {
            continue;
        };
        let deps: BTreeMap<String, Value> = s
            .depends_on
            .iter()
            .filter_map(|d| done.get(d.as_str()))
            .map(|d| (d.name.clone(), d.output.clone().unwrap_or(Value::Null)))
            .collect();
        ready.push(Ready {
            step: s,
            input: step_input(&exec.kind, &exec.input, s.params.as_ref(), &deps),
            parent_event,
        });
    }
    ready
}

/// A completed execution's output: a one-step task's is its step's, a workflow's is every
/// step's by name.
fn execution_output(exec: &ExecState, steps: &[StepRow]) -> Value {
    if exec.kind == "task" && steps.len() == 1 {
        steps[0].output.clone().unwrap_or(Value::Null)
    } else {
        Value::Object(
            steps
                .iter()
                .map(|s| (s.name.clone(), s.output.clone().unwrap_or(Value::Null)))
                .collect::<Map<String, Value>>(),
        )
    }
}

/// A child execution a step waits for, as its parent's settling reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WaitedChild {
    pub execution_id: Uuid,
    pub status: ExecutionStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
}

/// How a waiting step ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepEnd {
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
}

/// What the children a step waits for (in creation order) make of it: nothing while one is
/// unfinished; else failed with the first that did not complete, or completed with their
/// output (one child: its output; several: an array).
pub(crate) fn waiting_step_end(children: &[WaitedChild]) -> Option<StepEnd> {
    if children.iter().any(|c| !c.status.is_terminal()) {
        return None;
    }
    if let Some(c) = children
        .iter()
        .find(|c| c.status != ExecutionStatus::Completed)
    {
        return Some(StepEnd {
            status: StepStatus::Failed,
            output: None,
            error: Some(json!({
                "kind": "child_failed",
                "message": format!("child execution {} {}", c.execution_id, c.status),
                "retryable": false,
                "child_execution_id": c.execution_id,
                "child_error": c.error,
            })),
        });
    }
    let mut outputs: Vec<Value> = children
        .iter()
        .map(|c| c.output.clone().unwrap_or(Value::Null))
        .collect();
    let output = if outputs.len() == 1 {
        outputs.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(outputs)
    };
    Some(StepEnd {
        status: StepStatus::Completed,
        output: Some(output),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lineq_core::message::{ChildRequest, Meta, StepError};
    use proptest::prelude::*;

    fn exec(status: ExecutionStatus) -> ExecState {
        let id = Uuid::now_v7();
        ExecState {
            execution_id: id,
            status,
            kind: "workflow".into(),
            namespace: "default".into(),
            input: json!({"order": 7}),
            correlation_id: id,
            parent_execution_id: None,
            root_execution_id: id,
            trace_correlation_id: id,
            parent_step_id: None,
            parent_waits: false,
            workflow_name: "wf".into(),
            tags: json!({}),
            metadata: json!({}),
            parent_step: None,
        }
    }

    fn step(exec: &ExecState, name: &str, status: StepStatus, deps: &[&str]) -> StepRow {
        StepRow {
            step_id: Uuid::now_v7(),
            execution_id: exec.execution_id,
            name: name.into(),
            handler: "h".into(),
            queue: "lineq_steps_default".into(),
            status,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            attempts: 1,
            max_attempts: 1,
            timeout_ms: None,
            retry: json!({}),
            on_failure: "fail".into(),
            params: None,
            input: None,
            output: (status == StepStatus::Completed).then(|| json!(name)),
            error: (status == StepStatus::Failed).then(|| json!({"kind": "boom"})),
            msg_id: None,
            flow: None,
            priority: 0,
        }
    }

    fn result(s: &StepRow, attempt: i32, outcome: Outcome) -> ResultMessage {
        ResultMessage {
            step_id: s.step_id,
            execution_id: s.execution_id,
            step: s.name.clone(),
            attempt,
            worker_id: "w-1".into(),
            outcome,
            output: None,
            error: (outcome == Outcome::Failed).then(|| StepError::new("handler_error", "no")),
            children: Vec::new(),
            started_event_id: None,
            meta: Meta {
                correlation_id: s.execution_id,
                parent_event_id: Uuid::now_v7(),
                parent_execution_id: None,
                root_execution_id: s.execution_id,
                traceparent: String::new(),
                tracestate: String::new(),
                attempt: None,
                retry_reason: None,
            },
        }
    }

    fn rows(
        e: &ExecState,
        steps: &[&StepRow],
    ) -> (HashMap<Uuid, StepRow>, HashMap<Uuid, ExecState>) {
        (
            steps.iter().map(|s| (s.step_id, (*s).clone())).collect(),
            HashMap::from([(e.execution_id, e.clone())]),
        )
    }

    #[test]
    fn only_the_first_result_for_the_awaited_attempt_is_fresh() {
        let e = exec(ExecutionStatus::Running);
        let mut s = step(&e, "a", StepStatus::Enqueued, &[]);
        s.attempts = 2;
        let done = step(&e, "b", StepStatus::Completed, &[]);
        let (steps, execs) = rows(&e, &[&s, &done]);
        let current = result(&s, 2, Outcome::Completed);
        let duplicate = result(&s, 2, Outcome::Failed);
        let old_attempt = result(&s, 1, Outcome::Failed);
        let after_done = result(&done, 1, Outcome::Completed);
        let mut unknown = result(&s, 2, Outcome::Completed);
        unknown.step_id = Uuid::now_v7();
        let batch = [&current, &duplicate, &old_attempt, &after_done, &unknown];
        assert_eq!(
            triage(&batch, &steps, &execs),
            [
                Triage::Fresh,
                Triage::Stale,
                Triage::Stale,
                Triage::Stale,
                Triage::Unknown
            ]
        );
    }

    #[test]
    fn a_result_for_a_step_of_another_execution_or_an_unknown_execution_is_not_applied() {
        let e = exec(ExecutionStatus::Running);
        let s = step(&e, "a", StepStatus::Enqueued, &[]);
        let (steps, execs) = rows(&e, &[&s]);
        let mut elsewhere = result(&s, 1, Outcome::Completed);
        let other = exec(ExecutionStatus::Running);
        elsewhere.execution_id = other.execution_id;
        assert_eq!(triage(&[&elsewhere], &steps, &execs), [Triage::Unknown]);
        let mut execs = execs;
        execs.insert(other.execution_id, other);
        assert_eq!(triage(&[&elsewhere], &steps, &execs), [Triage::Stale]);
    }

    #[test]
    fn a_result_for_an_ended_execution_changes_nothing() {
        for status in [
            ExecutionStatus::Cancelled,
            ExecutionStatus::Failed,
            ExecutionStatus::Completed,
        ] {
            let e = exec(status);
            let s = step(&e, "a", StepStatus::Enqueued, &[]);
            let (steps, execs) = rows(&e, &[&s]);
            let r = result(&s, 1, Outcome::Completed);
            assert_eq!(triage(&[&r], &steps, &execs), [Triage::Stale], "{status}");
        }
    }

    #[test]
    fn a_completed_result_completes_or_waits_for_the_children_it_waits_for() {
        let e = exec(ExecutionStatus::Running);
        let s = step(&e, "a", StepStatus::Enqueued, &[]);
        let mut r = result(&s, 1, Outcome::Completed);
        assert_eq!(decide_step(&s, &r), StepDecision::Complete { waits: false });
        r.children.push(ChildRequest::new("child", json!({})));
        assert_eq!(decide_step(&s, &r).status(), StepStatus::Completed);
        let mut waited = ChildRequest::new("child", json!({}));
        waited.wait = true;
        r.children.push(waited);
        assert_eq!(decide_step(&s, &r), StepDecision::Complete { waits: true });
        assert_eq!(decide_step(&s, &r).status(), StepStatus::Waiting);
    }

    #[test]
    fn a_failure_is_retried_while_attempts_are_left_after_the_policys_backoff() {
        let e = exec(ExecutionStatus::Running);
        let mut s = step(&e, "a", StepStatus::Enqueued, &[]);
        s.max_attempts = 3;
        s.retry = json!({"max_attempts": 3, "backoff_ms": 500, "multiplier": 2.0,
                         "jitter": false});
        s.attempts = 2;
        let r = result(&s, 2, Outcome::Failed);
        let d = decide_step(&s, &r);
        assert_eq!(
            d,
            StepDecision::Retry {
                attempt: 3,
                delay: Duration::from_millis(1000),
                reason: "handler_error: no".into()
            }
        );
        assert_eq!(d.status(), StepStatus::Enqueued);
        s.attempts = 3;
        let r = result(&s, 3, Outcome::Failed);
        assert_eq!(decide_step(&s, &r), StepDecision::Fail);
        assert_eq!(StepDecision::Fail.status(), StepStatus::Failed);
    }

    #[test]
    fn a_failure_the_policy_does_not_retry_fails_at_once() {
        let e = exec(ExecutionStatus::Running);
        let mut s = step(&e, "a", StepStatus::Enqueued, &[]);
        s.max_attempts = 5;
        let mut r = result(&s, 1, Outcome::Failed);
        r.error = Some(StepError::new("bad_input", "no").permanent());
        assert_eq!(decide_step(&s, &r), StepDecision::Fail);
        // Retryable, but not among the kinds the policy retries.
        s.retry = json!({"max_attempts": 5, "retry_on": ["timeout"]});
        r.error = Some(StepError::new("handler_error", "no"));
        assert_eq!(decide_step(&s, &r), StepDecision::Fail);
        r.error = Some(StepError::new("timeout", "slow"));
        assert!(matches!(decide_step(&s, &r), StepDecision::Retry { .. }));
    }

    fn settle_of<'a>(e: &ExecState, steps: &'a [StepRow]) -> Settlement<'a> {
        settle_execution(
            e,
            steps,
            &HashSet::new(),
            &HashMap::new(),
            Some(Uuid::now_v7()),
        )
    }

    fn ready_names(s: &Settlement<'_>) -> Vec<String> {
        s.ready.iter().map(|r| r.step.name.clone()).collect()
    }

    #[test]
    fn fan_in_waits_for_every_dependency() {
        let e = exec(ExecutionStatus::Running);
        let steps = vec![
            step(&e, "a", StepStatus::Completed, &[]),
            step(&e, "b", StepStatus::Enqueued, &[]),
            step(&e, "join", StepStatus::Pending, &["a", "b"]),
        ];
        let s = settle_of(&e, &steps);
        assert!(s.ready.is_empty());
        assert_eq!(s.verdict, Verdict::Stay);

        let mut steps = steps;
        steps[1].status = StepStatus::Completed;
        steps[1].output = Some(json!("b"));
        let a_event = Uuid::now_v7();
        let b_event = Uuid::now_v7();
        let events = HashMap::from([(steps[0].step_id, a_event), (steps[1].step_id, b_event)]);
        let s = settle_execution(&e, &steps, &HashSet::new(), &events, None);
        assert_eq!(ready_names(&s), ["join"]);
        // The dependency that finished last made it ready.
        assert_eq!(s.ready[0].parent_event, b_event);
        assert_eq!(
            s.ready[0].input,
            json!({"input": {"order": 7}, "steps": {"a": "a", "b": "b"}})
        );
        assert_eq!(s.verdict, Verdict::Stay);
    }

    #[test]
    fn fan_out_readies_every_dependent_once() {
        let e = exec(ExecutionStatus::Pending);
        let steps = vec![
            step(&e, "a", StepStatus::Completed, &[]),
            step(&e, "b", StepStatus::Pending, &["a"]),
            step(&e, "c", StepStatus::Pending, &["a"]),
        ];
        let s = settle_of(&e, &steps);
        assert_eq!(ready_names(&s), ["b", "c"]);
        assert_eq!(s.verdict, Verdict::Start);
        // Made ready earlier in the transaction: not again.
        let already = HashSet::from([steps[1].step_id]);
        let s = settle_execution(&e, &steps, &already, &HashMap::new(), Some(Uuid::now_v7()));
        assert_eq!(ready_names(&s), ["c"]);
        // Without a cause to name, nothing is made ready.
        let s = settle_execution(&e, &steps, &HashSet::new(), &HashMap::new(), None);
        assert!(s.ready.is_empty());
    }

    #[test]
    fn a_step_that_failed_with_on_failure_continue_counts_as_done() {
        let e = exec(ExecutionStatus::Running);
        let mut failed = step(&e, "a", StepStatus::Failed, &[]);
        failed.on_failure = "continue".into();
        let steps = vec![failed, step(&e, "b", StepStatus::Pending, &["a"])];
        let s = settle_of(&e, &steps);
        assert_eq!(ready_names(&s), ["b"]);
        assert_eq!(
            s.ready[0].input,
            json!({"input": {"order": 7}, "steps": {"a": null}})
        );
        let mut steps = steps;
        steps[1].status = StepStatus::Completed;
        steps[1].output = Some(json!(2));
        assert_eq!(
            settle_of(&e, &steps).verdict,
            Verdict::Complete {
                output: json!({"a": null, "b": 2})
            }
        );
    }

    #[test]
    fn an_execution_completes_when_every_step_is_done() {
        let mut e = exec(ExecutionStatus::Running);
        let steps = vec![
            step(&e, "a", StepStatus::Completed, &[]),
            step(&e, "b", StepStatus::Completed, &["a"]),
        ];
        assert_eq!(
            settle_of(&e, &steps).verdict,
            Verdict::Complete {
                output: json!({"a": "a", "b": "b"})
            }
        );
        e.kind = "task".into();
        assert_eq!(
            settle_of(&e, &steps[..1]).verdict,
            Verdict::Complete { output: json!("a") }
        );
        // A step made ready earlier in this transaction is not done yet.
        let already = HashSet::from([steps[1].step_id]);
        let s = settle_execution(&e, &steps, &already, &HashMap::new(), None);
        assert_eq!(s.verdict, Verdict::Stay);
        // Nor is one waiting for its children.
        let mut waiting = steps.clone();
        waiting[1].status = StepStatus::Waiting;
        assert_eq!(settle_of(&e, &waiting).verdict, Verdict::Stay);
    }

    #[test]
    fn a_step_failed_for_good_fails_the_execution() {
        let e = exec(ExecutionStatus::Running);
        let steps = vec![
            step(&e, "a", StepStatus::Failed, &[]),
            step(&e, "b", StepStatus::Enqueued, &[]),
            step(&e, "c", StepStatus::Pending, &["b"]),
        ];
        let s = settle_of(&e, &steps);
        assert_eq!(
            s.verdict,
            Verdict::Fail {
                error: json!({"step": "a", "error": {"kind": "boom"}})
            }
        );
        assert!(s.ready.is_empty());
    }

    #[test]
    fn an_ended_execution_is_left_as_it_is() {
        let e = exec(ExecutionStatus::Cancelled);
        let steps = vec![
            step(&e, "a", StepStatus::Failed, &[]),
            step(&e, "b", StepStatus::Pending, &[]),
        ];
        let s = settle_of(&e, &steps);
        assert_eq!(s.verdict, Verdict::Stay);
        assert!(s.ready.is_empty());
    }

    fn child(status: ExecutionStatus, output: Value) -> WaitedChild {
        WaitedChild {
            execution_id: Uuid::now_v7(),
            status,
            output: Some(output),
            error: (status == ExecutionStatus::Failed).then(|| json!("why")),
        }
    }

    #[test]
    fn a_waiting_step_ends_when_its_last_child_ends() {
        let one = [child(ExecutionStatus::Completed, json!(1))];
        let end = waiting_step_end(&one).expect("ended");
        assert_eq!(
            (end.status, end.output),
            (StepStatus::Completed, Some(json!(1)))
        );
        let mut two = vec![
            child(ExecutionStatus::Completed, json!(1)),
            child(ExecutionStatus::Running, json!(null)),
        ];
        assert_eq!(waiting_step_end(&two), None);
        two[1] = child(ExecutionStatus::Completed, json!(2));
        let end = waiting_step_end(&two).expect("ended");
        assert_eq!(end.output, Some(json!([1, 2])));
        two[0] = child(ExecutionStatus::Failed, json!(null));
        two.push(child(ExecutionStatus::Cancelled, json!(null)));
        let end = waiting_step_end(&two).expect("ended");
        assert_eq!(end.status, StepStatus::Failed);
        assert_eq!(end.output, None);
        let error = end.error.expect("an error");
        assert_eq!(error["kind"], "child_failed");
        assert_eq!(error["child_execution_id"], json!(two[0].execution_id));
        assert_eq!(error["child_error"], "why");
    }

    const STEP_STATES: [StepStatus; 7] = [
        StepStatus::Pending,
        StepStatus::Enqueued,
        StepStatus::Throttled,
        StepStatus::Waiting,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Cancelled,
    ];

    proptest! {
        /// An execution ends iff one of its steps failed for good (it fails) or every step is
        /// terminal (it completes); what it makes ready is pending with every dependency done.
        #[test]
        fn an_execution_ends_iff_every_step_is_terminal_or_one_failed_for_good(
            states in prop::collection::vec(
                (0..STEP_STATES.len(), any::<bool>(), any::<u8>()),
                1..8,
            ),
            pending in any::<bool>(),
        ) {
            let e = exec(if pending { ExecutionStatus::Pending } else { ExecutionStatus::Running });
            let names: Vec<String> = (0..states.len()).map(|i| format!("s{i}")).collect();
            let steps: Vec<StepRow> = states
                .iter()
                .enumerate()
                .map(|(i, (state, cont, deps))| {
                    // Each step may depend on any earlier one (bits of `deps`).
                    let deps: Vec<&str> = (0..i)
                        .filter(|j| deps & (1 << (j % 8)) != 0)
                        .map(|j| names[j].as_str())
                        .collect();
                    let mut s = step(&e, &names[i], STEP_STATES[*state], &deps);
                    if *cont {
                        s.on_failure = "continue".into();
                    }
                    s
                })
                .collect();
            let s = settle_of(&e, &steps);
            let failed = steps.iter().any(|s| s.status == StepStatus::Failed && !continues(s));
            let terminal = steps.iter().all(|s| s.status.is_terminal());
            prop_assert_eq!(matches!(s.verdict, Verdict::Fail { .. }), failed);
            prop_assert_eq!(matches!(s.verdict, Verdict::Complete { .. }), !failed && terminal);
            prop_assert_eq!(
                matches!(s.verdict, Verdict::Start),
                !failed && !terminal && pending
            );
            for r in &s.ready {
                prop_assert_eq!(r.step.status, StepStatus::Pending);
                for d in &r.step.depends_on {
                    let d = steps.iter().find(|s| &s.name == d).expect("a dependency");
                    prop_assert!(
                        d.status == StepStatus::Completed
                            || (d.status == StepStatus::Failed && continues(d))
                    );
                }
            }
        }
    }
}

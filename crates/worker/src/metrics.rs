//! The worker's Prometheus counters and histograms, through the `metrics` facade: without a
//! recorder installed (a library user who exports nothing) every call is a no-op.
//!
//! Labels are bounded: `namespace` (the one the worker serves) and `handler`, which is a
//! registered handler's name or `unknown` — a message may name any handler, and a label value
//! taken from outside could grow the series without bound.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::handler::Handlers;

/// Steps claimed (`action_started` recorded), every delivery.
pub const STEPS_CLAIMED: &str = "lineq_worker_steps_claimed_total";
/// Steps whose handler succeeded.
pub const STEPS_COMPLETED: &str = "lineq_worker_steps_completed_total";
/// Steps whose handler failed (error, panic, timeout, unknown handler).
pub const STEPS_FAILED: &str = "lineq_worker_steps_failed_total";
/// Claims of a retry (attempt > 1).
pub const STEPS_RETRIED: &str = "lineq_worker_steps_retried_total";
/// Handler run time, from the claim to the outcome.
pub const STEP_DURATION: &str = "lineq_worker_step_duration_seconds";
/// From the message's send to its first claim: the time a step waited for a worker.
pub const PICKUP_LATENCY: &str = "lineq_worker_pickup_latency_seconds";

/// The label for `handler`: its name when this worker serves it, else `unknown`.
pub(crate) fn handler_label(handlers: &Handlers, handler: &str) -> String {
    if handlers.get(handler).is_some() {
        handler.to_string()
    } else {
        "unknown".to_string()
    }
}

/// Counts a claim; `enqueued_at` gives the pickup latency of a first delivery (a redelivery's
/// wait includes the previous worker's run, which is not what the histogram is for).
pub(crate) fn claimed(
    namespace: &str,
    handler: &str,
    attempt: i32,
    delivery: i32,
    enqueued_at: DateTime<Utc>,
    claimed_at: SystemTime,
) {
    let labels = [
        ("namespace", namespace.to_string()),
        ("handler", handler.to_string()),
    ];
    metrics::counter!(STEPS_CLAIMED, &labels).increment(1);
    if attempt > 1 {
        metrics::counter!(STEPS_RETRIED, &labels).increment(1);
    }
    if delivery <= 1 {
        let claimed_at: DateTime<Utc> = claimed_at.into();
        let wait = (claimed_at - enqueued_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        metrics::histogram!(PICKUP_LATENCY, &labels).record(wait.as_secs_f64());
    }
}

/// Counts an outcome and its duration.
pub(crate) fn finished(namespace: &str, handler: &str, ok: bool, duration: Duration) {
    let labels = [
        ("namespace", namespace.to_string()),
        ("handler", handler.to_string()),
    ];
    let name = if ok { STEPS_COMPLETED } else { STEPS_FAILED };
    metrics::counter!(name, &labels).increment(1);
    metrics::histogram!(STEP_DURATION, &labels).record(duration.as_secs_f64());
}

//! The schedule loop every orchestrator runs: it fires each due occurrence exactly once across
//! the fleet.
//!
//! One transaction per occurrence: the due schedule row is locked (`FOR UPDATE SKIP LOCKED`, so
//! orchestrators never wait for each other), the plan is computed here from the cron expression
//! and the database's clock, and `lineq._fire_schedule` writes the fire, its `schedule_fired`
//! event and the execution and moves `next_fire_at` on, all or nothing. An orchestrator killed
//! mid-fire leaves nothing: its transaction is rolled back and the row is free for the next
//! one. The key of `lineq.schedule_fires` (schedule, occurrence) refuses a second fire of an
//! occurrence even if this logic were wrong.
//!
//! Between fires the loop sleeps until the next schedule is due (at most
//! [`ScheduleLoop::max_sleep`]), and wakes at once when a schedule is created or resumed
//! (`NOTIFY lineq_schedules`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use lineq_core::error::{Error, Result};

use super::{COLUMNS, Schedule, WAKE_CHANNEL};

/// How long to wait before looking again when a due schedule is held by another orchestrator.
const HELD_RETRY: Duration = Duration::from_millis(50);
/// Fires per [`ScheduleLoop::fire_due`] call before it returns (so shutdown is noticed during
/// a long catch-up).
const MAX_PER_ROUND: usize = 1000;

/// What one look at the due schedules did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was due (or every due schedule is held by another orchestrator).
    Idle,
    /// An occurrence fired and started an execution.
    Fired {
        /// The schedule.
        schedule_id: Uuid,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// The execution it started.
        execution_id: Uuid,
    },
    /// The schedule was moved on without firing: its first occurrence computed, or an
    /// occurrence that could not fire passed over (the reason is in its `last_error`).
    Advanced {
        /// The schedule.
        schedule_id: Uuid,
    },
}

/// Fires due schedules until told to stop.
#[derive(Debug, Clone)]
pub struct ScheduleLoop {
    pool: PgPool,
    node_name: String,
    max_sleep: Duration,
}

impl ScheduleLoop {
    /// A loop on `pool`, writing `node_name` on its events.
    pub fn new(pool: PgPool, node_name: impl Into<String>) -> Self {
        Self {
            pool,
            node_name: node_name.into(),
            max_sleep: Duration::from_secs(30),
        }
    }

    /// The longest sleep between looks when nothing wakes the loop (default 30 s): a bound on
    /// how late a fire can be if a notification is lost.
    pub fn max_sleep(mut self, d: Duration) -> Self {
        self.max_sleep = d;
        self
    }

    /// Runs until `shutdown`; a fire in progress finishes first.
    pub async fn run(&self, shutdown: CancellationToken) {
        let wake = listen(&self.pool, shutdown.child_token()).await;
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let wait = match self.fire_due().await {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.until_next_due().await
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "firing schedules failed; retrying");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    b
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fires every occurrence that is due now (at most [`MAX_PER_ROUND`]); returns what it
    /// did, in order.
    pub async fn fire_due(&self) -> Result<Vec<Outcome>> {
        let mut done = Vec::new();
        while done.len() < MAX_PER_ROUND {
            match self.fire_one().await? {
                Outcome::Idle => break,
                o => done.push(o),
            }
        }
        Ok(done)
    }

    /// How long to sleep: until the next running schedule is due, [`HELD_RETRY`] when one is
    /// due but held by another orchestrator, at most `max_sleep`.
    async fn until_next_due(&self) -> Duration {
        let secs: Option<f64> = match sqlx::query_scalar(
            "SELECT extract(epoch FROM lineq._schedules_next_due())::float8",
        )
        .fetch_one(&self.pool)
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when the next schedule is due");
                return Duration::from_secs(1).min(self.max_sleep);
            }
        };
        match secs {
            None => self.max_sleep,
            Some(s) if s <= 0.0 => HELD_RETRY,
            // A millisecond late rather than early: the row is due when the database says so.
            Some(s) => Duration::from_secs_f64(s + 0.001).min(self.max_sleep),
        }
    }

    /// Fires (or moves on) one due schedule, in one transaction.
    #[expect(
        clippy::too_many_lines,
        reason = "one occurrence's transaction, statement by statement, as its guarantees are argued"
    )]
    pub async fn fire_one(&self) -> Result<Outcome> {
        let mut tx = self.pool.begin().await?;
        let Some(s) = sqlx::query_as::<_, Schedule>(&format!(
            "SELECT {COLUMNS} FROM lineq._schedules_due(1)"
        ))
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Outcome::Idle);
        };
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let advance = |expected: Option<DateTime<Utc>>,
                       next: Option<DateTime<Utc>>,
                       error: Option<String>,
                       pause: bool| {
            sqlx::query("SELECT lineq._schedule_advance($1, $2, $3, $4, $5)")
                .bind(s.schedule_id)
                .bind(expected)
                .bind(next)
                .bind(error)
                .bind(pause)
        };

        // A row lineq cannot evaluate (written by another tool): paused, with the reason.
        let (expr, policy) = match (s.expression(), s.missed_policy()) {
            (Ok(e), Ok(p)) => (e, p),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(schedule = %s.name, namespace = %s.namespace, error = %e,
                    "pausing a schedule that cannot be evaluated");
                advance(s.next_fire_at, None, Some(e.to_string()), true)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Outcome::Advanced {
                    schedule_id: s.schedule_id,
                });
            }
        };

        let Some(due) = s.next_fire_at else {
            // New or resumed without a computed time: its first occurrence after now.
            let next = expr.next_after(now);
            let error = next
                .is_none()
                .then(|| "the cron expression names no future time".to_string());
            advance(None, next, error, next.is_none())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Outcome::Advanced {
                schedule_id: s.schedule_id,
            });
        };

        let plan = expr.plan(due, now, policy);
        let mut fire = sqlx::Connection::begin(&mut *tx).await?; // a savepoint
        let fired: std::result::Result<Uuid, Error> =
            sqlx::query_scalar("SELECT lineq._fire_schedule($1, $2, $3, $4, $5, $6)")
                .bind(s.schedule_id)
                .bind(plan.occurrence)
                .bind(plan.next)
                .bind(plan.skipped as i64)
                .bind(plan.skipped_from)
                .bind(&self.node_name)
                .fetch_one(&mut *fire)
                .await
                .map_err(Error::from);
        match fired {
            Ok(execution_id) => {
                fire.commit().await?;
                tx.commit().await?;
                tracing::info!(schedule = %s.name, namespace = %s.namespace,
                    occurrence = %plan.occurrence, skipped = plan.skipped, %execution_id,
                    "schedule fired");
                Ok(Outcome::Fired {
                    schedule_id: s.schedule_id,
                    occurrence: plan.occurrence,
                    execution_id,
                })
            }
            // lineq refused the execution (its workflow or namespace is gone, ...): this
            // occurrence cannot fire; say why on the schedule and go on to the next one.
            Err(e) if refusal(&e) => {
                fire.rollback().await?;
                tracing::warn!(schedule = %s.name, namespace = %s.namespace,
                    occurrence = %plan.occurrence, error = %e, "a schedule's occurrence could not fire");
                let why = format!("occurrence {}: {e}", plan.occurrence.to_rfc3339());
                advance(Some(due), plan.next, Some(why), plan.next.is_none())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Outcome::Advanced {
                    schedule_id: s.schedule_id,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// lineq's own refusals (class LQ), as opposed to a failure of the database or the
/// connection, which is retried.
fn refusal(e: &Error) -> bool {
    e.is_invalid_input()
        || matches!(
            e,
            Error::NotFound { .. } | Error::InvalidState(_) | Error::Conflict { .. }
        )
}

/// Wake-ups on [`WAKE_CHANNEL`]. Without a listener (a role that may not LISTEN, a dropped
/// connection) the loop still looks at least every `max_sleep`.
async fn listen(pool: &PgPool, shutdown: CancellationToken) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "schedule wake-ups unavailable; polling");
            return notify;
        }
    };
    if let Err(e) = listener.listen(WAKE_CHANNEL).await {
        tracing::warn!(error = %e, "schedule wake-ups unavailable; polling");
        return notify;
    }
    let n = notify.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(_)) => n.notify_one(),
                // Reconnected: anything sent meanwhile was missed, so look now.
                Ok(None) => n.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "schedule wake-up listener failed; polling until it reconnects");
                    n.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    notify
}

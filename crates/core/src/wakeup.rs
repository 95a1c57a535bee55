//! Waking consumers when a message arrives. A background task `LISTEN`s on the channel of each
//! queue it consumes ([`crate::queue::wake_channel`]); consumers wait for a wake-up or a poll
//! interval, whichever comes first, so a missed notification (e.g. across a reconnect) costs at
//! most one interval.
//!
//! A message sent with a delay is not visible when its notification arrives. Its sender also
//! notifies `<queue>@<epoch milliseconds>` (the time it becomes visible), and the listener wakes
//! its consumers again at that time, so a delayed start or a retry's backoff ends with a claim
//! within milliseconds instead of at the next poll. (The time is the database's clock; hosts
//! are expected to keep theirs in sync, and a late or early timer costs at most one poll.)

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::queue::{LEGACY_WAKE_CHANNEL, wake_channel};
use crate::validation::QueueName;

/// Wake-ups for a set of queues.
#[derive(Debug, Clone)]
pub struct Wakeup {
    notify: Arc<Notify>,
}

impl Wakeup {
    /// Starts listening for messages sent to any of `queues`, until `shutdown`.
    pub async fn listen(
        pool: &PgPool,
        queues: Vec<QueueName>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let notify = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all(queues.iter().map(wake_channel).chain([LEGACY_WAKE_CHANNEL]))
            .await?;
        let names: Vec<String> = queues.iter().map(|q| q.as_str().to_string()).collect();
        let n = notify.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    // The payload names the queue on both channels.
                    Ok(Some(note)) if names.iter().any(|q| q == note.payload()) => n.notify_one(),
                    Ok(Some(note)) => {
                        if let Some(at) = visible_at(note.payload(), &names) {
                            wake_at(n.clone(), at);
                        }
                    }
                    // The connection dropped and will be re-established on the next call;
                    // anything sent meanwhile was missed, so look now.
                    Ok(None) => n.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "wake-up listener failed; polling until it reconnects");
                        n.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { notify })
    }

    /// A wake-up that only ever fires by polling (for tests and for roles without LISTEN).
    pub fn polling_only() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
        }
    }

    /// Waits for a wake-up, at most `poll_interval`.
    pub async fn wait(&self, poll_interval: Duration) {
        let _ = tokio::time::timeout(poll_interval, self.notify.notified()).await;
    }

    /// Wakes the waiter now (e.g. when capacity frees up).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// The time a delayed message of one of `queues` becomes visible, from a `<queue>@<epoch ms>`
/// payload.
fn visible_at(payload: &str, queues: &[String]) -> Option<i64> {
    let (queue, ms) = payload.split_once('@')?;
    if !queues.iter().any(|q| q == queue) {
        return None;
    }
    ms.parse::<i64>().ok()
}

/// Wakes a waiter at `at_ms` (milliseconds since the epoch), at once if that has passed.
fn wake_at(notify: Arc<Notify>, at_ms: i64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // A day at most: a longer delay is found by polling well before it is due.
    let wait = Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0));
    if wait > Duration::from_secs(86_400) {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        notify.notify_one();
    });
}

#[cfg(test)]
mod tests {
    use super::visible_at;

    #[test]
    fn delayed_payloads_name_their_queue_and_time() {
        let queues = vec!["lineq_steps_default".to_string()];
        assert_eq!(
            visible_at("lineq_steps_default@1765000000123", &queues),
            Some(1_765_000_000_123)
        );
        assert_eq!(visible_at("lineq_steps_other@1", &queues), None);
        assert_eq!(visible_at("lineq_steps_default", &queues), None);
        assert_eq!(visible_at("lineq_steps_default@soon", &queues), None);
    }
}

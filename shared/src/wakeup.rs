//! Waking consumers when a message arrives. A background task `LISTEN`s on the channel of each
//! queue it consumes ([`crate::queue::wake_channel`]); consumers wait for a wake-up or a poll
//! interval, whichever comes first, so a missed notification (e.g. across a reconnect) costs at
//! most one interval.

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
                    Ok(Some(_)) => {}
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

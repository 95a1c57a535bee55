//! Waiting for what real processes do in their own time, with a deadline.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// Polls `check` until it returns `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every listed execution is in a terminal state.
pub async fn wait_all_finished(pool: &PgPool, ids: &[Uuid], within: Duration) {
    let ids = ids.to_vec();
    eventually(within, "executions to finish", || {
        let ids = ids.clone();
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM lineq.executions WHERE execution_id = ANY($1)
                 AND status NOT IN ('completed', 'failed', 'cancelled')",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .ok()?;
            (left == 0).then_some(())
        }
    })
    .await
}

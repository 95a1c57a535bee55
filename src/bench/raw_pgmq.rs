//! The reference: raw PGMQ on the same database, 100-message batches, two consumers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use sqlx::PgPool;

use lineq_core::queue;
use lineq_core::validation::QueueName;

use super::{BenchConfig, bar, cost};

const QUEUE: &str = "lineq_bench_raw";
const BATCH: usize = 100;

/// Runs the reference once: messages per second through send_batch → read_batch →
/// delete_batch, and what each message cost.
pub async fn run(pool: &PgPool, cfg: &BenchConfig) -> anyhow::Result<cost::Measured> {
    let q = QueueName::new(QUEUE)?;
    {
        let mut conn = pool.acquire().await?;
        queue::ensure_queue(&mut conn, &q).await?;
        // The reference is PGMQ as it ships: without the room lineq leaves on its queues'
        // pages for the row versions reads write (with it, raw PGMQ writes 670 bytes of WAL a
        // message instead of 780, at the same rate: docs/benchmarks.md, "Throughput").
        sqlx::query(&format!(
            "ALTER TABLE {} RESET (fillfactor)",
            queue::live_table(&q)
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query("SELECT pgmq.purge_queue($1)")
            .bind(QUEUE)
            .execute(&mut *conn)
            .await?;
    }
    let total = cfg.executions;
    let pb = bar(cfg, total as u64, "raw PGMQ reference");
    let consumed = Arc::new(AtomicUsize::new(0));
    let mark = cost::Mark::now(pool).await?;
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let pool = pool.clone();
        let consumed = consumed.clone();
        let pb = pb.clone();
        consumers.push(tokio::spawn(async move {
            while consumed.load(Ordering::Relaxed) < total {
                let ids: Vec<i64> = sqlx::query_scalar("SELECT msg_id FROM pgmq.read($1, 30, $2)")
                    .bind(QUEUE)
                    .bind(BATCH as i32)
                    .fetch_all(&pool)
                    .await?;
                if ids.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                sqlx::query("SELECT pgmq.delete($1, $2::bigint[])")
                    .bind(QUEUE)
                    .bind(&ids)
                    .execute(&pool)
                    .await?;
                consumed.fetch_add(ids.len(), Ordering::Relaxed);
                pb.inc(ids.len() as u64);
            }
            anyhow::Ok(())
        }));
    }
    let body = json!({"step_id": "00000000-0000-0000-0000-000000000000", "input": null});
    let batch: Vec<serde_json::Value> = vec![body; BATCH];
    let mut sent = 0;
    while sent < total {
        let n = BATCH.min(total - sent);
        sqlx::query("SELECT pgmq.send_batch($1, $2::jsonb[])")
            .bind(QUEUE)
            .bind(&batch[..n])
            .execute(pool)
            .await?;
        sent += n;
    }
    for c in consumers {
        c.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cost = mark.per_unit_since(pool, total).await?;
    pb.finish_and_clear();
    Ok(cost::Measured {
        per_second: total as f64 / secs,
        cost,
    })
}

//! The Fleet page (`GET /fleet`): the workers (alive, silent, stopped), lineq's queues (depth,
//! oldest message age) and the executions finished per minute over the last hour.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use maud::html;

use lineq_read::{query, workers};

use super::layout::{self, Nav};
use super::{ConsoleState, PageResult};

/// `GET /fleet`.
pub async fn page(State(state): State<ConsoleState>, headers: HeaderMap) -> PageResult {
    let workers =
        workers::list_workers(state.reads.pool(), true, state.options.silent_after).await?;
    let queues = workers::queue_metrics(state.reads.pool()).await?;
    let minutes = query::finished_per_minute(state.reads.pool(), 60).await?;
    let logout_token = state.token.as_ref().map(|_| state.csrf.token(&headers));
    let total: i64 = minutes.iter().map(|(_, a, b, c)| a + b + c).sum();
    let body = html! {
        h1 { "Fleet" }
        div #live data-refresh="5" {
            h2 { "Executions finished per minute, last hour" }
            p.legend {
                span { span.sw.sw-completed {} "completed" }
                span { span.sw.sw-failed {} "failed" }
                span { span.sw.sw-cancelled {} "cancelled" }
                span.muted #finished-total { (total) " in the hour" }
            }
            (super::svg::finished_chart(&minutes))
            h2 { "Workers" }
            table.workers {
                thead { tr { th { "Worker" } th { "State" } th { "Host" } th { "Namespaces" } th { "Handlers" } th { "Language" } th { "Version" } th { "Last heartbeat" } th { "Started" } } }
                tbody {
                    @for w in &workers {
                        tr.worker-row data-state=(w.state.as_str()) {
                            td { code { (layout::clip(&w.worker_id, 40)) } }
                            td { (layout::status(w.state.as_str())) }
                            td { (w.host) span.muted { " pid " (w.pid) } }
                            td { (w.namespaces.join(", ")) }
                            td { (layout::clip(&w.handlers.join(", "), 120)) }
                            td { (w.language) }
                            td { (w.version) }
                            td { (layout::time(&w.last_heartbeat_at)) span.muted { " (" (format!("{:.0}", w.silent_for_secs)) " s ago)" } }
                            td { (layout::time(&w.started_at)) }
                        }
                    }
                    @if workers.is_empty() { tr { td colspan="9" { span.muted { "No worker has registered." } } } }
                }
            }
            h2 { "Queues" }
            table.queues {
                thead { tr { th { "Queue" } th { "Depth" } th { "Oldest message" } } }
                tbody {
                    @for q in &queues {
                        tr.queue-row {
                            td { code { (q.queue_name) } }
                            td { (q.queue_length) }
                            td { @if let Some(a) = q.oldest_msg_age_sec { (layout::duration_ms(i64::from(a) * 1000)) } @else { span.muted { "—" } } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Fleet", Nav::Fleet, logout_token.as_deref(), body).into_response())
}

//! The Dead letters page (`GET /dead-letters`): each letter's reason, body and execution, with a
//! replay button (`POST /dead-letters/{id}/replay`).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use maud::html;

use lineq_orchestrator::dead_letters;

use super::execution::check_csrf;
use super::layout::{self, Nav, csrf_field};
use super::{ConsoleState, PageError, PageResult};

/// How many letters the page shows (oldest first).
pub const SHOWN: i64 = 200;

/// `GET /dead-letters`.
pub async fn page(
    State(state): State<ConsoleState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> PageResult {
    let letters = dead_letters::list(state.reads.pool(), SHOWN).await?;
    let csrf = state.csrf.token(&headers);
    let logout = state.token.as_ref().map(|_| csrf.as_str());
    let replayed = q.get("replayed").and_then(|v| v.parse::<i64>().ok());
    let body = html! {
        h1 { "Dead letters" }
        @if let Some(n) = replayed { p.notice.ok #replayed { "Dead letter " (n) " was sent back to its queue." } }
        p.muted { "Messages that could not be processed: malformed, or delivered too often without an outcome. The oldest " (SHOWN) " are shown; " code { "lineq dlq list" } " and " code { "GET /v1/dead-letters" } " list them too." }
        div #live data-refresh="10" {
            table.dead-letters {
                thead { tr { th { "Id" } th { "Dead-lettered" } th { "From" } th { "Reads" } th { "Reason" } th { "Execution" } th { "Body" } th {} } }
                tbody {
                    @for l in &letters {
                        @let exec = crate::rest::dead_letters::execution_of(&l.message);
                        tr.dl-row data-id=(l.msg_id) {
                            td { (l.msg_id) }
                            td { (layout::time(&l.dead_lettered_at)) }
                            td { code { (l.source_queue) } @if let Some(m) = l.source_msg_id { " #" (m) } }
                            td { @if let Some(r) = l.read_ct { (r) } }
                            td.reason { (layout::clip(&l.reason, 200)) }
                            td { @if let Some(e) = exec { (layout::execution_link(&e)) } @else { span.muted { "—" } } }
                            td {
                                details {
                                    summary { "body" }
                                    @if let Some(why) = &l.message_unparsed { p.muted { (why) } }
                                    (layout::json(&l.message))
                                }
                            }
                            td {
                                form method="post" action={"/dead-letters/" (l.msg_id) "/replay"} data-confirm="Send this message back to its queue?" {
                                    (csrf_field(&csrf))
                                    button.replay type="submit" { "Replay" }
                                }
                            }
                        }
                    }
                    @if letters.is_empty() { tr { td colspan="8" { span.muted { "No dead letters." } } } }
                }
            }
        }
    };
    Ok(layout::page("Dead letters", Nav::DeadLetters, logout, body).into_response())
}

/// `POST /dead-letters/{id}/replay`.
pub async fn replay(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let id: i64 = id
        .parse()
        .map_err(|_| PageError::new(StatusCode::NOT_FOUND, "no such dead letter"))?;
    let r = dead_letters::replay(&state.write, id).await?;
    Ok(Redirect::to(&format!("/dead-letters?replayed={}", r.dead_letter)).into_response())
}

//! The Executions page (`GET /`): the executions matching the filters in the URL, newest first,
//! a page at a time, with the counts by status; it refreshes itself while open.
//!
//! The filters are the REST API's (`GET /v1/executions`), read by the same function
//! ([`crate::rest::executions::filter_from_query`]), so a console URL and an API URL with the same
//! query find the same executions.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use maud::{Markup, html};

use lineq_read::query::{self, ExecutionFilter, list_executions};

use super::layout::{self, Nav, enc};
use super::{ConsoleState, PageResult};

/// Counts by status stop at this many (shown as "10000+").
pub const COUNT_CAP: i64 = 10_000;

const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// The query without empty parameters (an empty form field means "no filter").
fn non_empty(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

fn to_query(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `GET /`.
pub async fn page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let pairs = non_empty(query.as_deref().unwrap_or_default());
    let filter = crate::rest::executions::filter_from_query(&to_query(&pairs)).map(|mut f| {
        f.newest_first = true;
        f
    });
    let counts = query::count_by_status(state.reads.pool(), COUNT_CAP).await?;
    let result = match &filter {
        Ok(f) => Some(list(&state, f).await?),
        Err(_) => None,
    };
    let csrf = state.token.as_ref().map(|_| state.csrf.token(&headers));
    let without = |key: &str| -> Vec<(String, String)> {
        pairs
            .iter()
            .filter(|(k, _)| k != key && k != "cursor")
            .cloned()
            .collect()
    };
    let current_status: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str())
        .collect();
    let body = html! {
        h1 { "Executions" }
        div.counts {
            a href={"/?" (to_query(&without("status")))} class=@if current_status.is_empty() { "current" } @else { "" } { "all" }
            @for s in STATUSES {
                @let n = counts.iter().find(|(st, _)| st.as_str() == s).map_or(0, |(_, n)| *n);
                @let q = [without("status"), vec![("status".to_string(), s.to_string())]].concat();
                a href={"/?" (to_query(&q))} data-status=(s) class=@if current_status == [s] { "current" } @else { "" } {
                    (layout::status(s))
                    span.n { (n) @if n >= COUNT_CAP { "+" } }
                }
            }
            // Counts of the filtered executions would not be index-bounded (docs/console.md).
            span.muted #counts-scope { "counts: all executions, whatever the filter" }
        }
        (filters_form(&pairs))
        @match &filter {
            Err(e) => { p.notice.error { "Filter not understood: " (e.detail.message) } }
            Ok(f) => {
                @if let Some((items, next)) = &result {
                    (live_table(f, items, next.as_deref(), &pairs))
                }
            }
        }
    };
    let status = if filter.is_err() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        layout::page("Executions", Nav::Executions, csrf.as_deref(), body),
    )
        .into_response())
}

async fn list(
    state: &ConsoleState,
    f: &ExecutionFilter,
) -> Result<(Vec<lineq_core::execution::Execution>, Option<String>), super::PageError> {
    let page = list_executions(state.reads.pool(), f).await?;
    Ok((page.items, page.next_cursor))
}

fn filters_form(pairs: &[(String, String)]) -> Markup {
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let tags: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    let has: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "has_tag")
        .map(|(_, v)| v.as_str())
        .collect();
    let status = one("status");
    html! {
        form.filters method="get" action="/" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s) selected[status == s] { (s) }
                    }
                }
            }
            label { "Handler or workflow" input type="text" name="workflow" value=(one("workflow")); }
            @for t in &tags {
                label { "Tag (key=value)" input type="text" name="tag" value=(t); }
            }
            label { "Tag (key=value)" input type="text" name="tag" placeholder="customer=acme"; }
            @for t in &has {
                label { "Has tag" input type="text" name="has_tag" value=(t); }
            }
            label { "Has tag (key)" input type="text" name="has_tag" placeholder="region"; }
            label { "Metadata contains (JSON)" input type="text" name="metadata" value=(one("metadata")) placeholder="{\"order\":{\"id\":\"1\"}}"; }
            label { "Parent execution" input type="text" name="parent" value=(one("parent")); }
            label { "Root execution" input type="text" name="root" value=(one("root")); }
            label { "Correlation id" input type="text" name="correlation_id" value=(one("correlation_id")); }
            label { "Created since (RFC 3339)" input type="text" name="since" value=(one("since")) placeholder="2026-01-01T00:00:00Z"; }
            label { "Created until (RFC 3339)" input type="text" name="until" value=(one("until")); }
            div.actions {
                button type="submit" { "Filter" }
                a href="/" { "Clear" }
            }
        }
    }
}

fn live_table(
    f: &ExecutionFilter,
    items: &[lineq_core::execution::Execution],
    next: Option<&str>,
    pairs: &[(String, String)],
) -> Markup {
    let first_page = f.cursor.is_none();
    let next_q = next.map(|c| {
        let mut q: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "cursor")
            .cloned()
            .collect();
        q.push(("cursor".into(), c.to_string()));
        to_query(&q)
    });
    html! {
        div.refresh hidden {
            label { input #auto-refresh type="checkbox" checked hidden; " auto refresh every 5 s" }
        }
        div #live data-refresh=(if first_page { "5" } else { "0" }) {
            table.executions {
                thead { tr {
                    th { "Execution" } th { "Workflow" } th { "Status" } th { "Tags" }
                    th { "Created" } th { "Duration" } th { "Parent" }
                } }
                tbody {
                    @for e in items {
                        tr.exec-row data-id=(e.execution_id) {
                            td { (layout::execution_link(&e.execution_id)) }
                            td { a href={"/?workflow=" (enc(&e.workflow_name))} { (layout::clip(&e.workflow_name, 60)) } span.muted { "@" (e.workflow_version) } }
                            td { (layout::status(e.status.as_str())) }
                            td.tags { (layout::tags(&e.tags)) }
                            td { (layout::time(&e.created_at)) }
                            td { @if let Some(end) = e.finished_at { (layout::duration_ms((end - e.created_at).num_milliseconds())) } @else { span.muted { "—" } } }
                            td { @if let Some(p) = e.parent_execution_id { (layout::execution_link(&p)) } }
                        }
                    }
                    @if items.is_empty() {
                        tr { td colspan="7" { span.muted { "No execution matches." } } }
                    }
                }
            }
        }
        div.pager {
            @if !first_page {
                a href={"/?" (to_query(&pairs.iter().filter(|(k, _)| k != "cursor").cloned().collect::<Vec<_>>()))} { "« Newest" }
            }
            @if let Some(q) = next_q {
                a.next-page href={"/?" (q)} { "Older »" }
            }
        }
    }
}

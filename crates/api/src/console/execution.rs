//! The Execution page (`GET /executions/{id}`): its facts, input, output and error, the DAG
//! coloured by step state, the lineage as a timeline (every event of the execution and of its
//! descendants, indented under its parent, child executions nested), the history, and the
//! actions: cancel (after a confirmation page), tag and untag (with the version read, so a
//! change made meanwhile is shown as a conflict instead of being overwritten).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use uuid::Uuid;

use lineq_core::error::Error;
use lineq_core::execution::Execution;
use lineq_orchestrator::Client;
use lineq_read::lineage::tree::{EventNode, ExecutionNode};
use lineq_read::lineage::{self, LineageTree};

use super::layout::{self, Nav, csrf_field, enc};
use super::svg::{self, DagStep};
use super::{ConsoleState, PageError, PageResult};

/// The cause and reason recorded for changes made from the console.
pub const CAUSE: &str = "console";

fn parse_id(s: &str) -> Result<Uuid, PageError> {
    Uuid::try_parse(s).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "no such execution: the id is not a UUID",
        )
    })
}

/// What a redirect after an action says happened (fixed texts: nothing from the request is
/// echoed).
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "cancelled" => Some("Cancelled, with the executions below it that had not finished."),
        "tagged" => Some("Tag set."),
        "untagged" => Some("Tag removed."),
        _ => None,
    }
}

/// `GET /executions/{id}`.
#[expect(
    clippy::too_many_lines,
    reason = "one page's markup, top to bottom as the browser shows it"
)]
pub async fn page(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> PageResult {
    let id = parse_id(&id)?;
    // After one of the page's own actions (`done`), read on the primary so the change shows
    // even before a replica has replayed it; otherwise where the execution is found (the
    // primary when the replica does not have it yet).
    let (e, pool) = if q.contains_key("done") {
        let e = Client::new(state.write.clone()).execution(id).await?;
        (e, state.write.clone())
    } else {
        state
            .reads
            .or_primary(|pool| async move { Client::new(pool).execution(id).await })
            .await?
    };
    let client = Client::new(pool.clone());
    let steps = client.steps(id).await?;
    let tree = lineage::execution_lineage(&pool, id).await?;
    let history = client.history(id).await?;
    let root_correlation = if e.root_execution_id == e.execution_id {
        e.correlation_id
    } else {
        client
            .execution(e.root_execution_id)
            .await
            .map_or(e.correlation_id, |r| r.correlation_id)
    };
    let trace_id = lineq_core::telemetry::trace_id_hex(root_correlation);
    let jaeger = state
        .options
        .jaeger_url
        .as_deref()
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| format!("{u}/trace/{trace_id}"));
    let csrf = state.csrf.token(&headers);
    let logout = state.token.as_ref().map(|_| csrf.as_str());
    let dag: Vec<DagStep> = steps
        .iter()
        .map(|s| DagStep {
            name: s.name.clone(),
            handler: s.handler.clone(),
            depends_on: s.depends_on.clone(),
            state: Some(s.status.as_str().to_string()),
        })
        .collect();
    let finished = e.finished_at.is_some();
    let body = html! {
        h1 { "Execution " code { (e.execution_id) } " " (layout::status(e.status.as_str())) }
        @if let Some(n) = notice(q.get("done").map(String::as_str)) { p.notice.ok { (n) } }
        div #live data-refresh=(if finished { "0" } else { "3" }) {
            div.grid2 {
                dl.facts {
                    dt { "Workflow" }
                    dd { a href={"/workflows/" (enc(&e.workflow_name)) "?version=" (e.workflow_version)} { (e.workflow_name) "@" (e.workflow_version) } " " span.muted { "(" (e.kind) ")" } }
                    dt { "Status" } dd #status { (layout::status(e.status.as_str())) }
                    dt { "Namespace" } dd { (e.namespace) }
                    dt { "Correlation id" } dd { a href={"/?correlation_id=" (e.correlation_id)} { code { (e.correlation_id) } } }
                    dt { "Parent" } dd { @if let Some(p) = e.parent_execution_id { (layout::execution_link(&p)) @if let Some(s) = &e.parent_step { " step " code { (s) } } } @else { span.muted { "none (a root)" } } }
                    dt { "Root" } dd { @if e.root_execution_id == e.execution_id { span.muted { "itself" } } @else { (layout::execution_link(&e.root_execution_id)) } " · " a href={"/?root=" (e.root_execution_id)} { "the whole tree" } }
                    dt { "Children" } dd { a href={"/?parent=" (e.execution_id)} { "list them" } }
                    dt { "Created" } dd { (layout::time(&e.created_at)) }
                    dt { "Finished" } dd { (layout::opt_time(e.finished_at.as_ref())) @if let Some(f) = e.finished_at { " (" (layout::duration_ms((f - e.created_at).num_milliseconds())) ")" } }
                    dt { "Version" } dd #version { (e.version) }
                    dt { "Tags" } dd #tags { (layout::tags(&e.tags)) }
                }
                div {
                    h2 { "Actions" }
                    div.actions {
                        @if !finished {
                            a.button.danger #cancel-link href={"/executions/" (e.execution_id) "/cancel"} { "Cancel…" }
                        }
                        @if let Some(url) = &jaeger {
                            a.button href=(url) rel="noopener noreferrer" target="_blank" { "Open in Jaeger" }
                        }
                    }
                    p { "The same view in a terminal: " code { "lineq lineage " (e.execution_id) } }
                    p.muted { "Trace id " code { (trace_id) } }
                    (tag_forms(&e, &csrf))
                }
            }
            h2 { "Metadata" } (layout::json(&e.metadata))
            div.grid2 {
                div { h2 { "Input" } (layout::json(&e.input)) }
                div {
                    @if let Some(o) = &e.output { h2 { "Output" } (layout::json(o)) }
                    @if let Some(err) = &e.error { h2 { "Error" } div.error-json { (layout::json(err)) } }
                }
            }
            @if !dag.is_empty() {
                h2 { "Steps" }
                div.dag-wrap { (svg::dag(&dag)) }
            }
            h2 { "Lineage" }
            p.muted { (tree.event_count) " events in " (tree.execution_count) " execution(s)." }
            (timeline(&tree))
            h2 { "History" }
            table.history {
                thead { tr { th { "At" } th { "What" } th { "Step" } th { "Status" } th { "Version" } th { "Tags after" } th { "Cause" } } }
                tbody {
                    @for h in &history {
                        tr {
                            td { (layout::time(&h.at)) }
                            td { (h.event_type) }
                            td { @if let Some(s) = &h.step { code { (s) } } @if let Some(a) = h.attempt { " #" (a) } }
                            td { @if let Some(s) = h.status.as_deref().or(h.step_status.as_deref()) { (layout::status(s)) } }
                            td { @if let Some(v) = h.version { (v) } }
                            td { @if let Some(t) = &h.tags_after { (layout::tags(t)) } }
                            td { (layout::clip(&h.cause, 80)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Execution", Nav::Executions, logout, body).into_response())
}

fn tag_forms(e: &Execution, csrf: &str) -> Markup {
    let pending = e.status == lineq_core::execution::ExecutionStatus::Pending;
    html! {
        h2 { "Tags" }
        @if !pending { p.muted { "Tags change only while an execution is pending." } }
        @if let Some(obj) = e.tags.as_object() {
            @for (k, v) in obj {
                form.untag method="post" action={"/executions/" (e.execution_id) "/untag"} {
                    (csrf_field(csrf))
                    input type="hidden" name="key" value=(k);
                    input type="hidden" name="version" value=(e.version);
                    span.tag { span.tag-key { (k) } "=" span.tag-value { (v.as_str().map_or_else(|| v.to_string(), str::to_string)) } }
                    @if pending { " " button.secondary type="submit" title="Remove this tag" { "remove" } }
                }
            }
        }
        @if pending {
            form.tag-form.actions method="post" action={"/executions/" (e.execution_id) "/tags"} {
                (csrf_field(csrf))
                input type="hidden" name="version" value=(e.version);
                input type="text" name="key" placeholder="key" required;
                input type="text" name="value" placeholder="value" required;
                button type="submit" { "Set tag" }
            }
        }
    }
}

/// The lineage timeline: one `.tl-event` row per event of the tree.
fn timeline(tree: &LineageTree) -> Markup {
    let all = tree.events();
    let t0 = all.iter().map(|e| e.created_at).min();
    let t1 = all.iter().map(|e| e.created_at).max();
    let (t0, total) = match (t0, t1) {
        (Some(a), Some(b)) => (a, (b - a).num_milliseconds().max(1)),
        _ => (Utc::now(), 1),
    };
    html! {
        div.timeline {
            div.tl-head {
                span { "Event" } span { "Step" } span { "Worker" } span { "Attempt" } span { "Delivery" } span { "Took" } span { "When" }
            }
            @for x in &tree.executions { (execution_node(x, 0, t0, total, true)) }
        }
    }
}

fn execution_node(
    x: &ExecutionNode,
    depth: usize,
    t0: DateTime<Utc>,
    total: i64,
    top: bool,
) -> Markup {
    html! {
        details.tl-exec open id={"x-" (x.execution_id)} data-execution=(x.execution_id) {
            summary {
                @if top { "this execution " } @else { "child execution " }
                (layout::execution_link(&x.execution_id)) " "
                code { (x.workflow_name) } " " (layout::status(&x.status))
                @if let Some(d) = x.duration_ms { " · " (layout::duration_ms(d)) }
                @if let Some(s) = &x.parent_step { " · spawned by step " code { (s) } }
            }
            @for ev in &x.events { (event_node(ev, depth, t0, total)) }
            @for c in &x.executions { (execution_node(c, depth + 1, t0, total, false)) }
        }
    }
}

fn event_class(t: &str) -> &'static str {
    match t {
        "action_failed" | "step_failed" | "execution_failed" => "ev-failed",
        "message_dead_lettered" => "ev-dead",
        t if t.contains("retry") || t.contains("redeliver") => "ev-retry",
        _ => "ev-ok",
    }
}

fn event_node(ev: &EventNode, depth: usize, t0: DateTime<Utc>, total: i64) -> Markup {
    let depth_class = if depth > 8 {
        "dmax".to_string()
    } else {
        format!("d{depth}")
    };
    let at = (ev.created_at - t0).num_milliseconds();
    let took = ev.duration_ms.unwrap_or(0);
    let delivery = ev.payload.get("delivery").and_then(|v| v.as_i64());
    let class = event_class(&ev.event_type);
    html! {
        div class={"tl-event " (depth_class) " " (class)} data-event-id=(ev.event_id) data-event-type=(ev.event_type) {
            span.tl-name title=(ev.event_id) { span.tl-type { (ev.event_type) } }
            span { @if let Some(s) = &ev.step { code { (layout::clip(s, 20)) } } }
            span { @if let Some(w) = &ev.worker_id { (layout::clip(w, 24)) } @else { span.muted { (layout::clip(&ev.node_name, 24)) } } }
            span { @if let Some(a) = ev.attempt { (a) } }
            span { @if let Some(d) = delivery { (d) } }
            span { @if let Some(d) = ev.duration_ms { (layout::duration_ms(d)) } }
            span title={"+" (layout::duration_ms(at))} { (svg::bar(at - took, took, total, class == "ev-failed")) }
        }
        @for c in &ev.children { (event_node(c, depth + 1, t0, total)) }
        @for x in &ev.executions { (execution_node(x, depth + 1, t0, total, false)) }
    }
}

/// `GET /executions/{id}/cancel`: the confirmation.
pub async fn confirm_cancel(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let id = parse_id(&id)?;
    let (e, _) = state
        .reads
        .or_primary(|pool| async move { Client::new(pool).execution(id).await })
        .await?;
    let csrf = state.csrf.token(&headers);
    let logout = state.token.as_ref().map(|_| csrf.as_str());
    let body = html! {
        h1 { "Cancel execution " code { (e.execution_id) } "?" }
        p { (e.workflow_name) "@" (e.workflow_version) " is " (layout::status(e.status.as_str())) "." }
        p { "Cancelling stops it and every execution below it that has not finished; steps not yet taken by a worker are removed from their queues. This cannot be undone." }
        form.actions method="post" action={"/executions/" (e.execution_id) "/cancel"} data-confirm="Cancel this execution and its descendants?" {
            (csrf_field(&csrf))
            button.danger #confirm-cancel type="submit" { "Cancel the execution" }
            a href={"/executions/" (e.execution_id)} { "Keep it running" }
        }
    };
    Ok(layout::page("Cancel", Nav::Executions, logout, body).into_response())
}

/// Refuses a form without the session's CSRF token, or sent from another site.
pub fn check_csrf(
    state: &ConsoleState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), PageError> {
    let presented = form.get("csrf").map(String::as_str).unwrap_or_default();
    if state.csrf.check(headers, presented) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form is stale or came from another site (CSRF check failed); reload the page and try again",
        ))
    }
}

/// `POST /executions/{id}/cancel`.
pub async fn cancel(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let id = parse_id(&id)?;
    lineq_orchestrator::cancel::cancel(&state.write, id, "cancelled from the console").await?;
    Ok(Redirect::to(&format!("/executions/{id}?done=cancelled")).into_response())
}

fn version_of(form: &HashMap<String, String>) -> Result<i64, PageError> {
    form.get("version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "the form has no version"))
}

async fn change(
    state: &ConsoleState,
    id: Uuid,
    set: lineq_core::tags::Tags,
    remove: Vec<String>,
    version: i64,
    done: &str,
) -> PageResult {
    match lineq_orchestrator::tags::update_tags(&state.write, id, set, remove, Some(version), CAUSE)
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/executions/{id}?done={done}")).into_response()),
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            let body = html! {
                h1 { "Conflict: the execution changed meanwhile" }
                p.notice.conflict #conflict {
                    "You changed version " (expected) ", but the execution is now at version " (actual)
                    ": someone else changed it since you loaded the page. Nothing was written."
                }
                p { a href={"/executions/" (id)} { "Load it again" } " and make your change on what it is now." }
            };
            Ok((
                StatusCode::CONFLICT,
                layout::page("Conflict", Nav::Executions, None, body),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /executions/{id}/tags`: `key`, `value`, `version`.
pub async fn tag(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let id = parse_id(&id)?;
    let version = version_of(&form)?;
    let key = form.get("key").cloned().unwrap_or_default();
    let value = form.get("value").cloned().unwrap_or_default();
    let mut set = lineq_core::tags::Tags::new();
    set.insert(key, value);
    change(&state, id, set, Vec::new(), version, "tagged").await
}

/// `POST /executions/{id}/untag`: `key`, `version`.
pub async fn untag(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let id = parse_id(&id)?;
    let version = version_of(&form)?;
    let key = form.get("key").cloned().unwrap_or_default();
    change(
        &state,
        id,
        Default::default(),
        vec![key],
        version,
        "untagged",
    )
    .await
}

//! The Workflows pages: the registered definitions (`GET /workflows`) and one workflow's
//! versions, each with its DAG (`GET /workflows/{name}`, `?version=N` for one).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use maud::html;

use lineq_orchestrator::workflow::store;

use super::layout::{self, Nav, enc};
use super::svg::{self, DagStep};
use super::{ConsoleState, PageError, PageResult};

/// `GET /workflows`.
pub async fn list(State(state): State<ConsoleState>, headers: HeaderMap) -> PageResult {
    let all = store::list(state.reads.pool()).await?;
    let logout = state.token.as_ref().map(|_| state.csrf.token(&headers));
    let body = html! {
        h1 { "Workflows" }
        p.muted { "Registered with " code { "lineq workflow register FILE" } ". A one-step execution runs a handler and has no definition here." }
        table.workflows {
            thead { tr { th { "Name" } th { "Latest version" } th { "Versions" } th { "Steps" } th { "Registered" } th {} } }
            tbody {
                @for w in &all {
                    tr.workflow-row {
                        td { a href={"/workflows/" (enc(&w.name))} { (w.name) } }
                        td { (w.latest_version) }
                        td { (w.versions) }
                        td { (w.steps) }
                        td { (layout::time(&w.updated_at)) }
                        td { a href={"/?workflow=" (enc(&w.name))} { "executions" } }
                    }
                }
                @if all.is_empty() { tr { td colspan="6" { span.muted { "No workflow is registered." } } } }
            }
        }
    };
    Ok(layout::page("Workflows", Nav::Workflows, logout.as_deref(), body).into_response())
}

/// `GET /workflows/{name}`.
pub async fn page(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> PageResult {
    let versions = store::versions(state.reads.pool(), &name).await?;
    let only = q.get("version").and_then(|v| v.parse::<i32>().ok());
    let shown: Vec<_> = versions
        .iter()
        .filter(|v| only.is_none_or(|o| o == v.version))
        .collect();
    if shown.is_empty() {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            "no such workflow (or version); a one-step execution runs a handler, which has no definition",
        ));
    }
    let logout = state.token.as_ref().map(|_| state.csrf.token(&headers));
    let body = html! {
        h1 { "Workflow " code { (name) } }
        p { a href={"/?workflow=" (enc(&name))} { "Its executions" } @if only.is_some() { " · " a href={"/workflows/" (enc(&name))} { "all versions" } } }
        @for v in &shown {
            section.workflow-version data-version=(v.version) {
                h2 { "Version " (v.version) " " span.muted { "registered " (layout::time(&v.created_at)) } }
                (svg::dag(&v.definition.steps.iter().map(|s| DagStep {
                    name: s.name.clone(),
                    handler: s.handler.clone(),
                    depends_on: s.depends_on.clone(),
                    state: None,
                }).collect::<Vec<_>>()))
                details {
                    summary { "Definition" }
                    pre.json { (v.definition.to_yaml().unwrap_or_default()) }
                }
            }
        }
    };
    Ok(layout::page("Workflow", Nav::Workflows, logout.as_deref(), body).into_response())
}

//! The REST API's registered workflows and their versions (`/v1/workflows`).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use lineq_orchestrator::workflow;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// A registered workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSummaryView {
    /// Its name.
    pub name: String,
    /// Its newest version.
    pub latest_version: i32,
    /// How many versions are registered.
    pub versions: i64,
    /// Steps in the newest version.
    pub steps: usize,
    /// When the newest version was registered.
    pub updated_at: DateTime<Utc>,
}

/// The registered workflows.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    responses((status = 200, description = "The workflows", body = Vec<WorkflowSummaryView>))
)]
pub async fn workflows(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkflowSummaryView>>, ApiError> {
    let w = workflow::store::list(state.reads.pool()).await?;
    Ok(Json(
        w.into_iter()
            .map(|w| WorkflowSummaryView {
                name: w.name,
                latest_version: w.latest_version,
                versions: w.versions,
                steps: w.steps,
                updated_at: w.updated_at,
            })
            .collect(),
    ))
}

/// One version of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowVersionView {
    /// Its name.
    pub name: String,
    /// This version.
    pub version: i32,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The definition (as `lineq workflow register` takes it, in JSON).
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// Every version of a workflow, newest first.
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}",
    tag = "workflows",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Workflow name")),
    responses(
        (status = 200, description = "Its versions", body = Vec<WorkflowVersionView>),
        (status = 400, description = "Not a workflow name", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn workflow_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<WorkflowVersionView>>, ApiError> {
    lineq_core::validation::check_name("workflow", &name)?;
    // Just registered and not on the replica yet: the primary answers.
    let (v, _) = state
        .reads
        .or_primary(|pool| {
            let name = name.clone();
            async move {
                let v = workflow::store::versions(&pool, &name).await?;
                if v.is_empty() {
                    return Err(lineq_core::error::Error::NotFound {
                        what: "workflow",
                        id: name,
                    });
                }
                Ok(v)
            }
        })
        .await?;
    Ok(Json(
        v.into_iter()
            .map(|w| WorkflowVersionView {
                definition: serde_json::to_value(&w.definition).unwrap_or(Value::Null),
                name: w.name,
                version: w.version,
                created_at: w.created_at,
            })
            .collect(),
    ))
}

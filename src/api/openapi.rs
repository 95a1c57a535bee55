//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! response types' `ToSchema` derives, so it cannot drift from what the server does.

use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use super::executions;

/// The lineq REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lineq",
        description = "Submit executions, find them by tags, metadata, status, lineage and time, read their history, change their tags safely and cancel them."
    ),
    paths(
        executions::submit,
        executions::list,
        executions::get,
        executions::history,
        executions::patch_tags,
        executions::delete_tag,
        executions::cancel,
        executions::healthz,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "executions", description = "Executions: submit, find, inspect, label, cancel"),
        (name = "health", description = "Liveness"),
    )
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

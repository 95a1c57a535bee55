//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! response types' `ToSchema` derives, so it cannot drift from what the server does.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{executions, fleet};

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
        executions::lineage,
        executions::patch_tags,
        executions::delete_tag,
        executions::cancel,
        executions::healthz,
        fleet::workers,
        fleet::queues,
        fleet::dead_letters,
        fleet::dead_letter,
        fleet::replay,
        fleet::workflows,
        fleet::workflow_versions,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerToken),
    tags(
        (name = "executions", description = "Executions: submit, find, inspect, label, cancel"),
        (name = "fleet", description = "Workers and queues"),
        (name = "dead letters", description = "Messages that could not be processed; replay"),
        (name = "workflows", description = "Registered workflow definitions"),
        (name = "health", description = "Liveness"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token every operation but `/healthz` needs when the server has one.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's API token (--token-file or LINEQ_API_TOKEN). Required on every route but /healthz when the server has one, which it must when it listens beyond loopback; a missing or wrong token gets 401.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The document as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! response types' `ToSchema` derives, so it cannot drift from what the server does.
//!
//! The document a server serves describes that server: with a token, every operation but
//! `/healthz` requires the bearer token and may answer 401; without one (loopback only), none
//! does, and the document says so.

use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{dead_letters, executions, schedules, schemas, workers, workflows};

/// The lineq REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lineq",
        description = "Submit executions, find them by tags, metadata, status, lineage and time, read their history, change their tags safely and cancel them. 400 means a request breaks this document (its schemas, or a size limit its descriptions state); 422 means it follows the document but refers to something that does not exist or contradicts itself (each operation lists its cases)."
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
        workers::workers,
        workers::queues,
        dead_letters::dead_letters,
        dead_letters::dead_letter,
        dead_letters::replay,
        workflows::workflows,
        workflows::workflow_versions,
        schedules::list,
        schedules::create,
        schedules::get,
        schedules::delete,
        schedules::pause,
        schedules::resume,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&JsonValue),
    tags(
        (name = "executions", description = "Executions: submit, find, inspect, label, cancel"),
        (name = "fleet", description = "Workers and queues"),
        (name = "dead letters", description = "Messages that could not be processed; replay"),
        (name = "workflows", description = "Registered workflow definitions"),
        (name = "schedules", description = "Cron schedules that start executions"),
        (name = "health", description = "Liveness"),
    )
)]
pub struct ApiDoc;

/// Adds the `JsonValue` component that inputs and metadata values refer to.
struct JsonValue;

impl Modify for JsonValue {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(
            schemas::JSON_VALUE.to_string(),
            schemas::json_value_component(),
        );
    }
}

/// Declares the bearer token every operation but `/healthz` needs, and its 401.
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
                        "The server's API token (--token-file or LINEQ_API_TOKEN). Required on every route but /healthz; a missing or wrong token gets 401.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        let unauthorized: RefOr<utoipa::openapi::Response> = ResponseBuilder::new()
            .description("No valid bearer token")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if super::auth::OPEN_PATHS.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .insert("401".to_string(), unauthorized.clone());
            }
        }
    }
}

/// The document of a server: `with_token` when it requires a bearer token.
pub fn document(with_token: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if with_token {
        BearerToken.modify(&mut doc);
    }
    doc
}

/// The document as served at `/openapi.json`: [`document`], with the `metadata` filter of
/// `GET /v1/executions` declared as JSON text (`content`), which utoipa's parameters cannot say.
pub fn document_json(with_token: bool) -> serde_json::Value {
    let mut doc = serde_json::to_value(document(with_token))
        .expect("the OpenAPI document serializes: it is built from static annotations");
    let operations = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .filter_map(|(path, item)| Some((path.clone(), item.as_object_mut()?)))
        .flat_map(|(path, item)| {
            item.iter_mut()
                .map(move |(method, op)| (path.clone(), method.clone(), op))
        });
    for (path, method, op) in operations {
        let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
            continue;
        };
        for p in params {
            // A parameter travels as text: it can be absent, never JSON null.
            if let Some(types) = p.pointer_mut("/schema/type").and_then(|t| t.as_array_mut()) {
                types.retain(|t| t != "null");
            }
            if path == "/v1/executions" && method == "get" && p["name"] == "metadata" {
                if let Some(p) = p.as_object_mut() {
                    p.remove("schema");
                    p.insert(
                        "content".into(),
                        serde_json::json!({"application/json": {"schema": metadata_filter()}}),
                    );
                }
            }
        }
    }
    doc
}

/// The metadata filter: an object with no U+0000 anywhere (64 KiB at most, in the description).
fn metadata_filter() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "propertyNames": {"type": "string", "pattern": schemas::NO_NUL},
        "additionalProperties": {"$ref": format!("#/components/schemas/{}", schemas::JSON_VALUE)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_filter_is_json_content() {
        for with_token in [false, true] {
            let doc = document_json(with_token);
            let params = doc["paths"]["/v1/executions"]["get"]["parameters"]
                .as_array()
                .expect("parameters");
            let m = params
                .iter()
                .find(|p| p["name"] == "metadata")
                .expect("the metadata parameter");
            assert_eq!(m["content"]["application/json"]["schema"]["type"], "object");
            assert!(m.get("schema").is_none());
            assert_eq!(doc.get("security").is_some(), with_token);
        }
    }

    /// The patterns written in the handlers' annotations are the ones `schemas` names (and
    /// the server's checks are written against).
    #[test]
    fn annotated_patterns_are_the_named_ones() {
        let doc = document_json(false);
        let param = |path: &str, method: &str, name: &str| -> String {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} {name}"))["schema"]["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} {name}: no pattern"))
                .to_string()
        };
        let list = "/v1/executions";
        assert_eq!(param(list, "get", "cursor"), schemas::CURSOR);
        assert_eq!(param(list, "get", "workflow"), schemas::WORKFLOW_FILTER);
        let tags = "/v1/executions/{id}/tags";
        assert_eq!(param(tags, "patch", "If-Match"), schemas::IF_MATCH);
        let tag = "/v1/executions/{id}/tags/{key}";
        assert_eq!(param(tag, "delete", "If-Match"), schemas::IF_MATCH);
        assert_eq!(param(tag, "delete", "key"), schemas::TAG_KEY);
        assert_eq!(
            doc["components"]["schemas"]["SubmitBody"]["properties"]["target"]["pattern"],
            schemas::TARGET
        );
    }
}

//! JSON Schemas for the values whose rules the derives cannot state: tag maps, metadata, JSON
//! documents without U+0000 and the patterns of names, keys and headers. Each pattern is the
//! rule the server checks (in `lineq_core::tags`, `lineq_core::validation` and
//! `lineq_read::query`), so a request the document allows is one the server accepts,
//! apart from the few rules a schema cannot state (docs/rest.md, "How exact the document is").

use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};

/// The name of the component [`json_value`] refers to.
pub const JSON_VALUE: &str = "JsonValue";

/// No control character (Unicode category Cc, what Rust's `char::is_control` finds).
pub const NO_CONTROL: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";
/// No U+0000, which PostgreSQL's jsonb cannot store.
pub const NO_NUL: &str = r"^[^\u0000]*$";
/// A tag key that may be set: 1 to 64 of `a-z 0-9 - _`, not starting `lineq_` or `_`.
pub const TAG_KEY: &str = r"^(?!lineq_|_)[a-z0-9_-]{1,64}$";
/// A tag key in a filter: reserved prefixes allowed (lineq may set such tags itself).
pub const FILTER_TAG_KEY: &str = r"^[a-z0-9_-]{1,64}$";
/// A tag filter `KEY=VALUE`: the value at most 256 characters without newlines or U+0000.
pub const TAG_FILTER: &str = r"^[a-z0-9_-]{1,64}=[^\n\r\u0000]{0,256}$";
/// A workflow or handler to submit: a name of 1 to 128 letters, digits and `_ . : -`, with an
/// optional `@VERSION`.
pub const TARGET: &str = r"^[A-Za-z0-9_.:-]{1,128}(@[1-9][0-9]{0,8})?$";
/// A namespace: 1 to 32 of `a-z 0-9 _`, starting with a letter.
pub const NAMESPACE: &str = r"^[a-z][a-z0-9_]{0,31}$";
/// A workflow filter: 1 to 128 characters, no control characters.
pub const WORKFLOW_FILTER: &str = r"^[^\u0000-\u001f\u007f-\u009f]{1,128}$";
/// A page cursor as `next_cursor` gives it: microseconds since the epoch, `_`, a UUID as 32
/// hex digits.
pub const CURSOR: &str = r"^[0-9]{1,18}_[0-9a-fA-F]{32}$";
/// `If-Match`: `*`, a version (`3`) or its ETag (`"v3"`, `"3"`, `W/"v3"`).
pub const IF_MATCH: &str = r#"^(\*|[0-9]{1,18}|(W/)?"v?[0-9]{1,18}")$"#;

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// A reference to [`json_value_component`].
pub fn json_value() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(JSON_VALUE))
}

/// Any JSON value with no U+0000 in a string or key, at any depth.
pub fn json_value_component() -> RefOr<Schema> {
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(string(NO_NUL))
        .item(ArrayBuilder::new().items(json_value()))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property_names(Some(string(NO_NUL)))
                .additional_properties(Some(AdditionalProperties::RefOr(json_value()))),
        )
        .description(Some(
            "Any JSON value without the character U+0000 (PostgreSQL's jsonb cannot store it)",
        ))
        .into()
}

/// The tags of a submit or of a tag change: at most 20, keys by [`TAG_KEY`], values at most 256
/// characters without newlines or U+0000.
pub fn tags() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(20))
        .property_names(Some(string(TAG_KEY)))
        .additional_properties(Some(string(r"^[^\n\r\u0000]*$").max_length(Some(256))))
}

/// Submit tags (absent: none).
pub fn submit_tags() -> ObjectBuilder {
    tags().description(Some(
        "Labels: at most 20; keys 1–64 of `a-z 0-9 - _` (not starting `lineq_` or `_`), values at most 256 characters without newlines.",
    ))
}

/// Tags to set in a change.
pub fn set_tags() -> ObjectBuilder {
    tags().description(Some("Tags to add or overwrite."))
}

/// Tag keys to remove.
pub fn remove_keys() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(string(TAG_KEY))
        .description(Some("Tag keys to remove (absent keys are ignored)."))
}

/// Metadata: an object of at most 50 top-level keys, none starting `_lineq_`, no U+0000.
/// Its serialized size (64 KiB at most) is in the description: a schema cannot state it.
pub fn metadata() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(50))
        .property_names(Some(string(r"^(?!_lineq_)[^\u0000]*$")))
        .additional_properties(Some(AdditionalProperties::RefOr(json_value())))
        .description(Some(
            "Business attributes: a JSON object of at most 64 KiB serialized and 50 top-level keys (none starting `_lineq_`).",
        ))
        .into()
}

/// An optional string of at most `max` characters without control characters.
pub fn optional_text(max: usize, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(NO_CONTROL))
        .max_length(Some(max))
        .description(Some(description))
        .into()
}

/// An optional string matching `pattern`.
pub fn optional_pattern(pattern: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

/// A repeatable query parameter's values, each matching `pattern`.
pub fn repeated(pattern: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .items(string(pattern))
        .max_items(Some(20))
}

//! Tags and metadata: the business attributes users find executions by. Every rule names the
//! field and the limit.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::validation::ValidationError;

/// Most tags on one execution.
pub const MAX_TAGS: usize = 20;
/// Longest tag key.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Most top-level metadata keys.
pub const MAX_METADATA_KEYS: usize = 50;
/// Reserved tag key prefixes.
pub const RESERVED_TAG_PREFIXES: [&str; 2] = ["lineq_", "_"];
/// Reserved metadata key prefix.
pub const RESERVED_METADATA_PREFIX: &str = "_lineq_";

/// Tags: string keys to string values.
pub type Tags = BTreeMap<String, String>;

/// Checks one tag key: 1–64 characters of `a-z`, `0-9`, `-`, `_`, not reserved.
pub fn check_tag_key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty() || key.len() > MAX_TAG_KEY_LEN {
        return Err(ValidationError::new(
            "tags",
            format!(
                "tag key {key:?} is {} characters; a key is 1 to {MAX_TAG_KEY_LEN}",
                key.chars().count()
            ),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(ValidationError::new(
            "tags",
            format!("tag key {key:?} contains {c:?}; keys use a-z, 0-9, '-' and '_'"),
        ));
    }
    if let Some(p) = RESERVED_TAG_PREFIXES.iter().find(|p| key.starts_with(*p)) {
        return Err(ValidationError::new(
            "tags",
            format!("tag key {key:?} starts with the reserved prefix {p:?}"),
        ));
    }
    Ok(())
}

/// Checks one tag value: at most 256 characters, no newlines.
pub fn check_tag_value(key: &str, value: &str) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n > MAX_TAG_VALUE_LEN {
        return Err(ValidationError::new(
            "tags",
            format!("tag {key:?} value is {n} characters; the limit is {MAX_TAG_VALUE_LEN}"),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(
            "tags",
            format!("tag {key:?} value contains U+0000"),
        ));
    }
    if value.contains(['\n', '\r']) {
        return Err(ValidationError::new(
            "tags",
            format!("tag {key:?} value contains a newline"),
        ));
    }
    Ok(())
}

/// Checks a whole tag map: at most 20 tags, each valid.
pub fn check_tags(tags: &Tags) -> Result<(), ValidationError> {
    if tags.len() > MAX_TAGS {
        return Err(ValidationError::new(
            "tags",
            format!("{} tags; the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    for (k, v) in tags {
        check_tag_key(k)?;
        check_tag_value(k, v)?;
    }
    Ok(())
}

/// Parses `key=value` (as given to `--tag`).
pub fn parse_tag(s: &str) -> Result<(String, String), ValidationError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ValidationError::new("tags", format!("expected KEY=VALUE, got {s:?}")))?;
    check_tag_key(k)?;
    check_tag_value(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks metadata: a JSON object of at most 64 KiB serialized and 50 top-level keys, none
/// starting with `_lineq_`.
pub fn check_metadata(metadata: &Value) -> Result<(), ValidationError> {
    let Some(obj) = metadata.as_object() else {
        return Err(ValidationError::new("metadata", "it must be a JSON object"));
    };
    if obj.len() > MAX_METADATA_KEYS {
        return Err(ValidationError::new(
            "metadata",
            format!(
                "{} top-level keys; the limit is {MAX_METADATA_KEYS}",
                obj.len()
            ),
        ));
    }
    if let Some(k) = obj.keys().find(|k| k.starts_with(RESERVED_METADATA_PREFIX)) {
        return Err(ValidationError::new(
            "metadata",
            format!("key {k:?} starts with the reserved prefix {RESERVED_METADATA_PREFIX:?}"),
        ));
    }
    crate::validation::check_no_nul("metadata", metadata)?;
    crate::validation::check_json_size("metadata", metadata, MAX_METADATA_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tag_rules_at_and_past_the_limits() {
        assert!(check_tag_key(&"k".repeat(MAX_TAG_KEY_LEN)).is_ok());
        assert!(check_tag_key(&"k".repeat(MAX_TAG_KEY_LEN + 1)).is_err());
        assert!(check_tag_key("").is_err());
        assert!(check_tag_key("Customer").is_err());
        assert!(check_tag_key("lineq_x").is_err());
        assert!(check_tag_key("_x").is_err());
        assert!(check_tag_value("k", &"é".repeat(MAX_TAG_VALUE_LEN)).is_ok());
        assert!(check_tag_value("k", &"é".repeat(MAX_TAG_VALUE_LEN + 1)).is_err());
        assert!(check_tag_value("k", "a\nb").is_err());
        let many: Tags = (0..=MAX_TAGS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let e = check_tags(&many).unwrap_err();
        assert!(e.to_string().contains("21 tags; the limit is 20"), "{e}");
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_tag("nokv").is_err());
    }

    #[test]
    fn metadata_rules() {
        assert!(check_metadata(&json!({"order": {"id": "1"}})).is_ok());
        assert!(check_metadata(&json!([1])).is_err());
        assert!(check_metadata(&json!({"_lineq_x": 1})).is_err());
        let keys: serde_json::Map<String, Value> = (0..=MAX_METADATA_KEYS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(check_metadata(&Value::Object(keys)).is_err());
        let big = json!({"b": "x".repeat(MAX_METADATA_BYTES)});
        assert!(
            check_metadata(&big)
                .unwrap_err()
                .to_string()
                .contains("65536")
        );
    }
}

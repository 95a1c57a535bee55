//! Rules for names and sizes that come from outside. Every rule has a field name and a limit so
//! an error says exactly what was wrong; nothing is written when one fails.

use std::fmt;

/// The longest namespace. A namespace becomes part of a PGMQ table name (`pgmq.q_lineq_steps_<ns>`
/// and the archive index `archived_at_idx_lineq_steps_<ns>`), which PostgreSQL cuts at 63 bytes.
pub const MAX_NAMESPACE_LEN: usize = 32;
/// The longest handler or step name.
pub const MAX_NAME_LEN: usize = 128;
/// The longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// The largest execution input, serialized.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// The largest handler output, serialized.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// PGMQ's own limit on a queue name (63 minus the longest prefix it adds).
pub const MAX_QUEUE_NAME_LEN: usize = 47;

/// A rule broken by input: which field, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The field (or CLI flag) that broke the rule.
    pub field: std::borrow::Cow<'static, str>,
    /// The rule, with its limit, and what was given.
    pub reason: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field: std::borrow::Cow::Borrowed(field),
            reason: reason.into(),
        }
    }

    /// A new error for a field named at run time (by the database's SQL interface).
    pub fn named(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: std::borrow::Cow::Owned(field.into()),
            reason: reason.into(),
        }
    }
}

/// A worker-pool namespace: 1 to 32 characters of `a-z`, `0-9` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        let err = |why: &str| {
            ValidationError::new(
                "namespace",
                format!(
                    "{why}; a namespace is 1 to {MAX_NAMESPACE_LEN} characters of a-z, 0-9 and _, starting with a letter (got {name:?})"
                ),
            )
        };
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.len() > MAX_NAMESPACE_LEN {
            return Err(err(&format!("it is {} characters long", name.len())));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(err("it does not start with a lowercase letter"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(err(&format!("it contains {c:?}")));
        }
        Ok(Self(name.to_string()))
    }

    /// The namespace every worker and submission uses unless told otherwise.
    pub fn default_namespace() -> Self {
        Self("default".to_string())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PGMQ queue name, checked before PGMQ turns it into table names: 1 to 47 characters of
/// `a-z`, `0-9` and `_`, starting with a letter (PGMQ itself accepts uppercase, but folds it in
/// some places and not others, so lineq refuses it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let starts = name.starts_with(|c: char| c.is_ascii_lowercase());
        if name.is_empty() || name.len() > MAX_QUEUE_NAME_LEN || !ok_chars || !starts {
            return Err(ValidationError::new(
                "queue",
                format!(
                    "a queue name is 1 to {MAX_QUEUE_NAME_LEN} characters of a-z, 0-9 and _, starting with a letter (got {name:?})"
                ),
            ));
        }
        // Belt and braces: PGMQ's own check must agree, or PGMQ would refuse it later.
        pgmq::util::check_input(name).map_err(|e| ValidationError::new("queue", e.to_string()))?;
        Ok(Self(name.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a handler or step name: 1 to 128 characters of letters, digits and `_ . : -`.
pub fn check_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "a {field} is 1 to {MAX_NAME_LEN} characters of letters, digits, '_', '.', ':' and '-' (got {name:?})"
            ),
        ))
    }
}

/// Checks an idempotency key: 1 to 255 characters, no control characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ValidationError::new(
            "idempotency_key",
            format!(
                "it must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters (got {})",
                key.chars().count()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "idempotency_key",
            "it must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks that no string (or object key) in `value` contains U+0000, which PostgreSQL's jsonb
/// cannot store: refused here with the field named, instead of failing in the database.
pub fn check_no_nul(field: &'static str, value: &serde_json::Value) -> Result<(), ValidationError> {
    use serde_json::Value;
    let bad = |s: &str| s.contains('\0');
    let found = match value {
        Value::String(s) => bad(s),
        Value::Array(a) => return a.iter().try_for_each(|v| check_no_nul(field, v)),
        Value::Object(o) => {
            if o.keys().any(|k| bad(k)) {
                true
            } else {
                return o.values().try_for_each(|v| check_no_nul(field, v));
            }
        }
        _ => false,
    };
    if found {
        return Err(ValidationError::new(
            field,
            "it contains the character U+0000, which PostgreSQL cannot store",
        ));
    }
    Ok(())
}

/// Checks that a JSON document is at most `limit` bytes serialized, naming `field` when not.
pub fn check_json_size(
    field: &'static str,
    value: &serde_json::Value,
    limit: usize,
) -> Result<(), ValidationError> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(ValidationError::new(
            field,
            format!("it is {size} bytes serialized; the limit is {limit} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert!(Namespace::new("default").is_ok());
        assert!(Namespace::new("payments_eu2").is_ok());
        assert!(Namespace::new(&"a".repeat(MAX_NAMESPACE_LEN)).is_ok());
        for bad in [
            "",
            "Default",
            "9lives",
            "_x",
            "a-b",
            "x; drop table lineq.executions",
            "q\"x",
            "ünï",
        ] {
            let err = Namespace::new(bad).unwrap_err();
            assert_eq!(err.field, "namespace", "{bad}");
        }
        let long = Namespace::new(&"a".repeat(MAX_NAMESPACE_LEN + 1)).unwrap_err();
        assert!(long.reason.contains("33 characters long"), "{long}");
        assert!(long.reason.contains("1 to 32"), "{long}");
    }

    #[test]
    fn every_namespace_makes_a_valid_queue_name() {
        let ns = Namespace::new(&"z".repeat(MAX_NAMESPACE_LEN)).unwrap();
        let q = crate::queue::step_queue(&ns);
        assert!(q.as_str().len() <= MAX_QUEUE_NAME_LEN);
    }

    #[test]
    fn queue_names() {
        assert!(QueueName::new("lineq_results").is_ok());
        assert!(QueueName::new(&"a".repeat(MAX_QUEUE_NAME_LEN + 1)).is_err());
        assert!(QueueName::new("a;drop").is_err());
        assert!(QueueName::new("Upper").is_err());
    }

    #[test]
    fn names_and_keys() {
        assert!(check_name("handler", "payments.charge").is_ok());
        assert!(check_name("handler", "").is_err());
        assert!(check_name("handler", "rm -rf /").is_err());
        assert!(check_idempotency_key("order-1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a\nb").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn nul_is_refused() {
        assert!(check_no_nul("input", &serde_json::json!({"a": ["ok"]})).is_ok());
        assert!(check_no_nul("input", &serde_json::json!({"a": ["x\u{0}"]})).is_err());
        assert!(check_no_nul("input", &serde_json::json!({"k\u{0}": 1})).is_err());
    }

    #[test]
    fn json_size() {
        let v = serde_json::json!({"a": "x".repeat(100)});
        assert!(check_json_size("input", &v, 1000).is_ok());
        let e = check_json_size("input", &v, 10).unwrap_err();
        assert!(e.to_string().contains("input") && e.to_string().contains("limit is 10"));
    }
}

//! Property tests of the label rules at and past every limit: tag keys, values and counts,
//! metadata keys, size and reserved prefixes, tag changes, list filters, page sizes and cursors.
//! Each rule must accept everything up to its limit, refuse everything past it, and name the
//! field when it refuses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use lineq_core::tags::{
    MAX_METADATA_BYTES, MAX_METADATA_KEYS, MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN, MAX_TAGS, Tags,
    check_metadata, check_tag_key, check_tag_value, check_tags, parse_tag,
};
use lineq_orchestrator::tags::TagChange;
use lineq_read::query::{Cursor, ExecutionFilter, MAX_LIMIT, parse_tag_filter, parse_time};

/// Keys that follow every rule: 1–64 of `a-z 0-9 - _`, not starting `_` or `lineq_`.
fn valid_key() -> impl Strategy<Value = String> {
    "[a-z0-9-][a-z0-9_-]{0,63}".prop_filter("reserved", |k| !k.starts_with("lineq_"))
}

/// Values up to the limit, any characters but newlines and NUL.
fn valid_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        any::<char>().prop_filter("newline or NUL", |c| !matches!(c, '\n' | '\r' | '\0')),
        0..=MAX_TAG_VALUE_LEN,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn keys_up_to_the_limit_pass(key in valid_key()) {
        prop_assert!(check_tag_key(&key).is_ok(), "{key:?}");
    }

    #[test]
    fn keys_past_the_limit_fail(extra in 1usize..200, c in "[a-z]") {
        let key = c.repeat(MAX_TAG_KEY_LEN + extra);
        let e = check_tag_key(&key).unwrap_err();
        prop_assert_eq!(&e.field, "tags");
        prop_assert!(e.reason.contains("1 to 64"), "{}", e);
    }

    #[test]
    fn keys_with_any_other_character_fail(
        prefix in "[a-z]{0,10}",
        bad in any::<char>().prop_filter("allowed", |c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        }),
        suffix in "[a-z]{0,10}",
    ) {
        let key = format!("{prefix}{bad}{suffix}");
        if key.len() <= MAX_TAG_KEY_LEN {
            let e = check_tag_key(&key).unwrap_err();
            prop_assert_eq!(&e.field, "tags");
        } else {
            prop_assert!(check_tag_key(&key).is_err());
        }
    }

    #[test]
    fn reserved_prefixes_always_fail(rest in "[a-z0-9_-]{0,57}", lineq in any::<bool>()) {
        let key = if lineq { format!("lineq_{rest}") } else { format!("_{rest}") };
        let e = check_tag_key(&key).unwrap_err();
        prop_assert!(e.reason.contains("reserved prefix"), "{}", e);
        // Through `key=value`, a change and a whole map alike.
        let kv = format!("{key}=v");
        prop_assert!(parse_tag(&kv).is_err());
        let change = TagChange { set: Tags::from([(key.clone(), "v".into())]), remove: vec![] };
        prop_assert!(change.validate().is_err());
        let change = TagChange { set: Tags::new(), remove: vec![key.clone()] };
        prop_assert!(change.validate().is_err());
        prop_assert!(check_tags(&Tags::from([(key, "v".into())])).is_err());
    }

    #[test]
    fn values_up_to_the_limit_pass(value in valid_value()) {
        prop_assert!(check_tag_value("k", &value).is_ok());
        let (k, v) = parse_tag(&format!("k={value}")).unwrap();
        prop_assert_eq!(k, "k");
        prop_assert_eq!(v, value);
    }

    #[test]
    fn values_past_the_limit_fail(extra in 1usize..100, c in any::<char>().prop_filter("nl", |c| !matches!(c, '\n' | '\r'))) {
        let value: String = std::iter::repeat_n(c, MAX_TAG_VALUE_LEN + extra).collect();
        let e = check_tag_value("k", &value).unwrap_err();
        prop_assert_eq!(&e.field, "tags");
        prop_assert!(e.reason.contains("the limit is 256"), "{}", e);
    }

    #[test]
    fn values_with_newlines_fail(a in "[a-z]{0,100}", nl in prop::sample::select(vec!["\n", "\r", "\r\n"]), b in "[a-z]{0,100}") {
        let value = format!("{a}{nl}{b}");
        prop_assert!(check_tag_value("k", &value).is_err());
    }

    #[test]
    fn tag_counts_at_and_past_the_limit(n in 0usize..=2 * MAX_TAGS) {
        let tags: Tags = (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let r = check_tags(&tags);
        if n <= MAX_TAGS {
            prop_assert!(r.is_ok());
        } else {
            let e = r.unwrap_err();
            prop_assert_eq!(&e.field, "tags");
            let expected = format!("{n} tags; the limit is 20");
            prop_assert!(e.reason.contains(&expected), "{}", e);
        }
    }

    #[test]
    fn a_change_keeps_at_most_twenty_tags(
        existing in 0usize..=MAX_TAGS,
        added in 1usize..=MAX_TAGS,
    ) {
        let before: Tags = (0..existing).map(|i| (format!("old{i}"), "v".into())).collect();
        let change = TagChange {
            set: (0..added).map(|i| (format!("new{i}"), "v".into())).collect(),
            remove: vec![],
        };
        prop_assert!(change.validate().is_ok());
        let after = change.apply(&before);
        prop_assert_eq!(after.len(), existing + added);
        prop_assert_eq!(check_tags(&after).is_ok(), existing + added <= MAX_TAGS);
    }

    #[test]
    fn apply_then_remove_restores(
        before in proptest::collection::btree_map(valid_key(), "[a-z]{0,5}", 0..10),
        set in proptest::collection::btree_map(valid_key(), "[a-z]{0,5}", 1..5),
    ) {
        let fresh: BTreeMap<String, String> =
            set.into_iter().filter(|(k, _)| !before.contains_key(k)).collect();
        prop_assume!(!fresh.is_empty());
        let added = TagChange { set: fresh.clone(), remove: vec![] }.apply(&before);
        let removed = TagChange { set: Tags::new(), remove: fresh.keys().cloned().collect() }
            .apply(&added);
        prop_assert_eq!(removed, before);
    }

    #[test]
    fn metadata_keys_at_and_past_the_limit(n in 0usize..=2 * MAX_METADATA_KEYS) {
        let m: Map<String, Value> = (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
        let r = check_metadata(&Value::Object(m));
        if n <= MAX_METADATA_KEYS {
            prop_assert!(r.is_ok());
        } else {
            let e = r.unwrap_err();
            prop_assert_eq!(&e.field, "metadata");
            prop_assert!(e.reason.contains("the limit is 50"), "{}", e);
        }
    }

    #[test]
    fn metadata_size_at_and_past_the_limit(delta in -64i64..=64) {
        // {"b":"xxx…"} is 8 bytes plus the string.
        let len = usize::try_from(MAX_METADATA_BYTES as i64 - 8 + delta).unwrap();
        let m = json!({ "b": "x".repeat(len) });
        let size = serde_json::to_vec(&m).unwrap().len();
        let r = check_metadata(&m);
        if size <= MAX_METADATA_BYTES {
            prop_assert!(r.is_ok(), "{size}");
        } else {
            let e = r.unwrap_err();
            prop_assert_eq!(&e.field, "metadata");
            prop_assert!(e.reason.contains("65536"), "{}", e);
        }
    }

    #[test]
    fn metadata_reserved_prefix_fails(rest in "[a-z0-9_]{0,20}") {
        let mut m = Map::new();
        m.insert(format!("_lineq_{rest}"), json!(1));
        let e = check_metadata(&Value::Object(m)).unwrap_err();
        prop_assert_eq!(&e.field, "metadata");
        prop_assert!(e.reason.contains("reserved prefix"), "{}", e);
        // Only the exact prefix is reserved.
        let mut ok = Map::new();
        ok.insert(format!("lineq_{rest}"), json!(1));
        prop_assert!(check_metadata(&Value::Object(ok)).is_ok());
    }

    #[test]
    fn metadata_must_be_an_object(v in prop_oneof![
        Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".*".prop_map(|s| json!(s)),
        Just(json!([])), Just(json!([{"a": 1}])),
    ]) {
        prop_assert_eq!(check_metadata(&v).unwrap_err().field, "metadata");
        prop_assert_eq!(ExecutionFilter::new().metadata(v).validate().unwrap_err().field, "metadata");
    }

    #[test]
    fn page_sizes_at_and_past_the_limit(n in 0u32..=2 * MAX_LIMIT) {
        let r = ExecutionFilter::new().limit(n).validate();
        if (1..=MAX_LIMIT).contains(&n) {
            prop_assert!(r.is_ok());
        } else {
            let e = r.unwrap_err();
            prop_assert_eq!(&e.field, "limit");
            prop_assert!(e.reason.contains("1 to 1000"), "{}", e);
        }
    }

    #[test]
    fn filter_tag_counts_at_and_past_the_limit(n in 0usize..=2 * MAX_TAGS) {
        let mut f = ExecutionFilter::new();
        for i in 0..n {
            f = f.tag(format!("k{i}"), "v");
        }
        prop_assert_eq!(f.validate().is_ok(), n <= MAX_TAGS);
        let mut f = ExecutionFilter::new();
        for i in 0..n {
            f = f.has_tag(format!("k{i}"));
        }
        prop_assert_eq!(f.validate().is_ok(), n <= MAX_TAGS);
    }

    #[test]
    fn filter_values_are_checked_like_tags(key in valid_key(), value in valid_value()) {
        prop_assert!(ExecutionFilter::new().tag(key.clone(), value.clone()).validate().is_ok());
        let (k, v) = parse_tag_filter(&format!("{key}={value}")).unwrap();
        prop_assert_eq!((k, v), (key, value));
    }

    #[test]
    fn cursors_round_trip(micros in -62_135_596_800_000_000i64..=253_402_300_799_000_000, id in any::<u128>()) {
        let c = Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap(),
            execution_id: Uuid::from_u128(id),
        };
        let back: Cursor = c.to_string().parse().unwrap();
        prop_assert_eq!(back, c);
        prop_assert!(ExecutionFilter::new().cursor(c.to_string()).validate().is_ok());
    }

    #[test]
    fn garbage_cursors_and_times_are_refused_not_panics(s in ".{0,120}") {
        if let Err(e) = s.parse::<Cursor>() {
            prop_assert_eq!(&e.field, "cursor");
        }
        if let Err(e) = parse_time("since", &s) {
            prop_assert_eq!(&e.field, "since");
        }
    }
}

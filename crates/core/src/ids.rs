//! Identifiers. Every id lineq creates is a UUIDv7: time-ordered, so indexes stay compact and a
//! writer can know an event's id before it commits and put it into the next message.

use uuid::Uuid;

/// A fresh UUIDv7.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// True when `id` is a version-7 UUID.
pub fn is_v7(id: &Uuid) -> bool {
    id.get_version_num() == 7
}

/// The name of this machine, used as the `node_name` of events. Falls back to "unknown" where the
/// hostname cannot be read; it is informational only.
pub fn node_name() -> String {
    std::env::var("LINEQ_NODE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_v7_and_ordered() {
        let a = new_id();
        let b = new_id();
        assert!(is_v7(&a) && is_v7(&b));
        assert!(a < b, "UUIDv7 from one process must be monotonic");
        assert!(!is_v7(&Uuid::nil()));
    }
}

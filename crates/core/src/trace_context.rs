//! W3C trace context (`traceparent`), carried in every message's `meta`.
//!
//! One root execution is one trace, and its trace id is the root's correlation id read as 128
//! bits, so a correlation id alone is enough to open the trace. Span ids of lineq's own spans
//! are taken from the id of the event the span wrote (its random tail), so an event row and a
//! span point at each other without a lookup table.

use std::fmt;
use uuid::Uuid;

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id, never all zero.
    pub trace_id: [u8; 16],
    /// 8-byte span id, never all zero.
    pub span_id: [u8; 8],
    /// The sampled flag.
    pub sampled: bool,
}

/// A `traceparent` that is not of the W3C form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct TraceParentError {
    /// What was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TraceContext {
    /// The trace id for a root execution's correlation id.
    pub fn trace_id_for(correlation_id: Uuid) -> [u8; 16] {
        let bytes = *correlation_id.as_bytes();
        if bytes == [0; 16] {
            // The nil UUID is not a valid trace id; any fixed non-zero value keeps it derivable.
            let mut b = bytes;
            b[15] = 1;
            return b;
        }
        bytes
    }

    /// The span id lineq uses for the span that wrote `event_id`.
    pub fn span_id_for(event_id: Uuid) -> [u8; 8] {
        let b = event_id.as_bytes();
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[8..16]);
        if s == [0; 8] {
            s[7] = 1;
        }
        s
    }

    /// The context of the span that wrote `event_id`, in the trace of `root_correlation_id`.
    pub fn for_event(root_correlation_id: Uuid, event_id: Uuid) -> Self {
        Self {
            trace_id: Self::trace_id_for(root_correlation_id),
            span_id: Self::span_id_for(event_id),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header value.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let bad = |reason| TraceParentError {
            value: value.chars().take(80).collect(),
            reason,
        };
        let parts: Vec<&str> = value.trim().split('-').collect();
        if parts.len() < 4 {
            return Err(bad("expected version-traceid-spanid-flags"));
        }
        if parts[0].len() != 2 || parts[0] == "ff" {
            return Err(bad("bad version"));
        }
        if parts[0] == "00" && parts.len() != 4 {
            return Err(bad("version 00 has exactly four fields"));
        }
        let trace_id: [u8; 16] = decode_hex(parts[1]).ok_or_else(|| bad("bad trace id"))?;
        let span_id: [u8; 8] = decode_hex(parts[2]).ok_or_else(|| bad("bad span id"))?;
        let flags: [u8; 1] = decode_hex(parts[3]).ok_or_else(|| bad("bad flags"))?;
        if trace_id == [0; 16] {
            return Err(bad("trace id is all zero"));
        }
        if span_id == [0; 8] {
            return Err(bad("span id is all zero"));
        }
        Ok(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        encode_hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        encode_hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            u8::from(self.sampled)
        )
    }
}

/// Lowercase hex. By table, not `write!`: every event carries two of these, and the formatting
/// machinery took 4 % of a worker's CPU under load.
fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_derivation() {
        let corr = crate::ids::new_id();
        let ev = crate::ids::new_id();
        let tc = TraceContext::for_event(corr, ev);
        let s = tc.to_string();
        assert_eq!(s.len(), 55);
        assert_eq!(TraceContext::parse(&s).unwrap(), tc);
        assert_eq!(tc.trace_id_hex(), corr.simple().to_string());
        assert_eq!(tc.span_id_hex(), ev.simple().to_string()[16..]);
        // Every nibble value, both halves of a byte.
        let all = Uuid::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ]);
        assert_eq!(
            TraceContext::for_event(all, all).to_string(),
            "00-0123456789abcdeffedcba9876543210-fedcba9876543210-01"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_err(), "{bad}");
        }
        let ok =
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert!(ok.sampled);
    }
}

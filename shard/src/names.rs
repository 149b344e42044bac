//! Name rules of PROTOCOL.md section 5.1: realms, topics, procedures and patterns.

/// The longest realm name, in bytes.
pub const MAX_REALM_LEN: usize = 255;
/// The longest topic, pattern or procedure name, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Lowercase letters, digits, `.`, `-`, `_`; non-empty segments between dots; at most 255 bytes.
pub fn is_valid_realm(name: &[u8]) -> bool {
    let _ = name;
    todo!()
}

/// Dot-separated non-empty segments, none of them `*` or `**`; at most 1024 bytes.
/// Procedure names follow the same rule.
pub fn is_valid_topic(topic: &[u8]) -> bool {
    let _ = topic;
    todo!()
}

/// A topic whose segments may also be `*` or `**`.
pub fn is_valid_pattern(pattern: &[u8]) -> bool {
    let _ = pattern;
    todo!()
}

/// Whether `pattern` matches `topic` (a reference implementation for tests and models; the
/// index in `subs` is what the shard uses).
pub fn pattern_matches(pattern: &[u8], topic: &[u8]) -> bool {
    let _ = (pattern, topic);
    todo!()
}

//! Name rules of PROTOCOL.md section 5.1: realms, topics, procedures and patterns.
//!
//! A topic is a list of segments separated by `.`. In a pattern, a segment `*` stands for exactly
//! one segment of a topic and a segment `**` for any number of them, none included.

/// The longest realm name, in bytes.
pub const MAX_REALM_LEN: usize = 255;
/// The longest topic, pattern or procedure name, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// The pattern segment that matches exactly one topic segment.
pub const ONE_SEGMENT: &[u8] = b"*";
/// The pattern segment that matches zero or more topic segments.
pub const ANY_SEGMENTS: &[u8] = b"**";

/// The segments of a topic, pattern or realm name, in order.
pub fn segments(name: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    name.split(|&b| b == b'.')
}

/// Lowercase letters, digits, `.`, `-`, `_`; non-empty segments between dots; at most 255 bytes.
pub fn is_valid_realm(name: &[u8]) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_');
    (1..=MAX_REALM_LEN).contains(&name.len())
        && segments(name).all(|s| !s.is_empty() && s.iter().all(|&b| allowed(b)))
}

/// Dot-separated non-empty segments, none of them `*` or `**`; at most 1024 bytes.
/// Procedure names follow the same rule.
pub fn is_valid_topic(topic: &[u8]) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && segments(topic).all(|s| !s.is_empty() && s != ONE_SEGMENT && s != ANY_SEGMENTS)
}

/// A topic whose segments may also be `*` or `**`.
pub fn is_valid_pattern(pattern: &[u8]) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&pattern.len()) && segments(pattern).all(|s| !s.is_empty())
}

/// Whether `pattern` matches `topic`: the one matcher of single patterns, used by the client to
/// route deliveries and by tests and models as the reference for the subscription index
/// (`meshgate_shard::subs`), which matches a topic against many patterns at once.
///
/// Both are taken as split on `.`, valid or not. The cost is O(pattern segments × topic
/// segments) whatever the number of `**`; it allocates only for topics of more than 63
/// segments.
pub fn pattern_matches(pattern: &[u8], topic: &[u8]) -> bool {
    let segments_of_topic = segments(topic).count();
    let mut on_stack = [false; 64];
    let mut on_heap = Vec::new();
    // `reached[j]`: the pattern segments seen so far can match the first `j` topic segments.
    let reached: &mut [bool] = if segments_of_topic < on_stack.len() {
        &mut on_stack[..=segments_of_topic]
    } else {
        on_heap.resize(segments_of_topic + 1, false);
        &mut on_heap
    };
    reached[0] = true;
    for p in segments(pattern) {
        if p == ANY_SEGMENTS {
            // Once a prefix is reached, `**` reaches every longer one too.
            if let Some(first) = reached.iter().position(|&r| r) {
                reached[first..].fill(true);
            }
        } else {
            // From the last topic segment to the first, so that `reached[j - 1]` is still the
            // value before this pattern segment.
            for (j, t) in (1..=segments_of_topic).rev().zip(segments(topic).rev()) {
                reached[j] = reached[j - 1] && (p == ONE_SEGMENT || p == t);
            }
            reached[0] = false;
        }
    }
    reached[segments_of_topic]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_are_lowercase_dotted_names() {
        for ok in ["macula.default", "a", "a-b_c.9", "x.y.z"] {
            assert!(is_valid_realm(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "Macula", "a b", "a*", "é"] {
            assert!(!is_valid_realm(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn realms_are_at_most_255_bytes() {
        assert!(is_valid_realm(&[b'a'; 255]));
        assert!(!is_valid_realm(&[b'a'; 256]));
    }

    #[test]
    fn topics_take_any_bytes_but_dots_and_no_wildcard_segment() {
        for ok in [
            "sensor",
            "sensor.temp.room1",
            "A b.\u{e9}",
            "a*.**b",
            "\0.\u{7f}",
        ] {
            assert!(is_valid_topic(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "*", "a.*", "**.b", "a.**.b"] {
            assert!(!is_valid_topic(bad.as_bytes()), "{bad}");
        }
        assert!(is_valid_topic(&[0xff, b'.', 0xfe]));
    }

    #[test]
    fn topics_and_patterns_are_at_most_1024_bytes() {
        assert!(is_valid_topic(&[b'a'; 1024]));
        assert!(!is_valid_topic(&[b'a'; 1025]));
        assert!(is_valid_pattern(&[b'a'; 1024]));
        assert!(!is_valid_pattern(&[b'a'; 1025]));
    }

    #[test]
    fn patterns_may_hold_wildcard_segments_but_no_empty_one() {
        for ok in ["*", "**", "a.*.b", "**.room1", "a.**.**.b", "*.*"] {
            assert!(is_valid_pattern(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ".", "a.", ".*", "**..a"] {
            assert!(!is_valid_pattern(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(pattern_matches(b"sensor.*.room1", b"sensor.temp.room1"));
        assert!(!pattern_matches(b"sensor.*.room1", b"sensor.room1"));
        assert!(!pattern_matches(b"sensor.*.room1", b"sensor.a.b.room1"));
        assert!(pattern_matches(b"*", b"x"));
        assert!(!pattern_matches(b"*", b"x.y"));
    }

    #[test]
    fn double_star_matches_zero_or_more_segments_anywhere() {
        for topic in ["sensor", "sensor.temp", "sensor.temp.room1"] {
            assert!(pattern_matches(b"sensor.**", topic.as_bytes()), "{topic}");
        }
        assert!(!pattern_matches(b"sensor.**", b"sensors"));
        assert!(!pattern_matches(b"sensor.**", b"actuator.temp"));
        assert!(pattern_matches(b"**.room1", b"room1"));
        assert!(pattern_matches(b"**.room1", b"a.b.room1"));
        assert!(!pattern_matches(b"**.room1", b"room1.a"));
        assert!(pattern_matches(b"a.**.b", b"a.b"));
        assert!(pattern_matches(b"a.**.b", b"a.x.y.b"));
        assert!(!pattern_matches(b"a.**.b", b"a.x.y"));
        assert!(pattern_matches(b"**", b"anything.at.all"));
        assert!(pattern_matches(b"**.**", b"x"));
        assert!(pattern_matches(b"**.a.**.b.**", b"x.a.y.b"));
        assert!(!pattern_matches(b"**.a.**.b.**", b"x.b.y.a"));
        assert!(pattern_matches(b"**.*", b"x.y"));
        assert!(pattern_matches(b"a.**.b.**.c", b"a.x.b.y.z.c"));
        assert!(pattern_matches(b"a.**.b.**.c", b"a.b.c"));
        assert!(!pattern_matches(b"a.**.b.**.c", b"a.c.b"));
        assert!(pattern_matches(b"a.**.*", b"a.b"));
        assert!(!pattern_matches(b"a.**.*", b"a"));
        assert!(!pattern_matches(b"*.**.*", b"x"));
    }

    #[test]
    fn literal_segments_match_whole_segments_only() {
        assert!(pattern_matches(b"a.b", b"a.b"));
        assert!(!pattern_matches(b"a.b", b"a.bc"));
        assert!(!pattern_matches(b"a.b", b"a"));
        assert!(!pattern_matches(b"a*", b"ab"));
        assert!(pattern_matches(b"a*", b"a*"));
    }

    #[test]
    fn many_double_stars_stay_cheap() {
        let pattern = [&b"**."[..]; 200].concat();
        let pattern = [&pattern[..], b"x"].concat();
        let topic = [&b"y."[..]; 400].concat();
        assert!(!pattern_matches(&pattern, &topic[..topic.len() - 1]));
        assert!(pattern_matches(&pattern, &[&topic[..], b"x"].concat()));
    }

    #[test]
    fn topics_of_more_segments_than_fit_on_the_stack_match_alike() {
        let topic = [&b"y."[..]; 100].concat();
        let topic = [&topic[..], b"x"].concat();
        assert!(pattern_matches(b"**.x", &topic));
        assert!(pattern_matches(b"y.**.*", &topic));
        assert!(!pattern_matches(b"*.x", &topic));
    }
}

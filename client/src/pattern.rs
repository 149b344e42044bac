//! Topic patterns (PROTOCOL.md section 5.1), matched on the client to route a delivery to the
//! subscriptions that asked for it: the gateway sends each PUBLISH once per session, however
//! many of the session's patterns match.

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<[u8]>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

/// A pattern, split into segments once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// `None` for a pattern without wildcards, which is compared whole.
    segments: Option<Box<[Segment]>>,
    text: Box<[u8]>,
}

impl Pattern {
    pub(crate) fn new(text: &str) -> Pattern {
        let segments: Vec<Segment> = text
            .as_bytes()
            .split(|&b| b == b'.')
            .map(|s| match s {
                b"*" => Segment::One,
                b"**" => Segment::Any,
                s => Segment::Literal(s.into()),
            })
            .collect();
        let wild = segments.iter().any(|s| !matches!(s, Segment::Literal(_)));
        Pattern {
            segments: wild.then(|| segments.into_boxed_slice()),
            text: text.as_bytes().into(),
        }
    }

    /// Whether `topic` matches. `**` is matched greedily, backtracking to the latest `**` on a
    /// mismatch, which visits each (pattern, topic) position pair at most once per `**`.
    pub(crate) fn matches(&self, topic: &[u8]) -> bool {
        let Some(pattern) = &self.segments else {
            return *self.text == *topic;
        };
        let (mut p, mut t) = (0, 0);
        let mut retry: Option<(usize, usize)> = None;
        loop {
            if let Some(segment) = pattern.get(p) {
                let next = next_segment(topic, t);
                match (segment, next) {
                    (Segment::Any, _) => {
                        retry = Some((p + 1, t));
                        p += 1;
                        continue;
                    }
                    (Segment::One, Some((_, after))) => {
                        p += 1;
                        t = after;
                        continue;
                    }
                    (Segment::Literal(lit), Some((seg, after))) if **lit == *seg => {
                        p += 1;
                        t = after;
                        continue;
                    }
                    _ => {}
                }
            } else if next_segment(topic, t).is_none() {
                return true;
            }
            // Mismatch: let the latest `**` take one more segment.
            let Some((after_any, taken_to)) = retry else {
                return false;
            };
            let Some((_, after)) = next_segment(topic, taken_to) else {
                return false;
            };
            retry = Some((after_any, after));
            p = after_any;
            t = after;
        }
    }
}

/// The segment of `topic` starting at byte `at` and where the next one starts; `None` once
/// every segment was taken (`at` past the end).
fn next_segment(topic: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = topic.get(at..)?;
    let end = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
    Some((&rest[..end], at + end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, topic: &str) -> bool {
        Pattern::new(pattern).matches(topic.as_bytes())
    }

    #[test]
    fn a_literal_pattern_matches_only_its_topic() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b", "a"));
    }

    #[test]
    fn a_star_matches_exactly_one_segment() {
        assert!(m("sensor.*.room1", "sensor.temp.room1"));
        assert!(!m("sensor.*.room1", "sensor.room1"));
        assert!(!m("sensor.*.room1", "sensor.a.b.room1"));
        assert!(m("*", "x"));
        assert!(!m("*", "x.y"));
    }

    #[test]
    fn a_double_star_matches_zero_or_more_segments_anywhere() {
        for topic in ["sensor", "sensor.temp", "sensor.temp.room1"] {
            assert!(m("sensor.**", topic), "{topic}");
        }
        assert!(!m("sensor.**", "other.temp"));
        assert!(m("**.room1", "room1"));
        assert!(m("**.room1", "a.b.room1"));
        assert!(!m("**.room1", "a.room1.b"));
        assert!(m("a.**.b.**.c", "a.x.b.y.z.c"));
        assert!(m("a.**.b.**.c", "a.b.c"));
        assert!(!m("a.**.b.**.c", "a.c.b"));
        assert!(m("**", "anything.at.all"));
        assert!(m("a.**.*", "a.b"));
        assert!(!m("a.**.*", "a"));
    }
}

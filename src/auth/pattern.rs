//! Capability patterns: a topic whose segments may be `*` (exactly one
//! segment) or end in `#` (any number of further segments, zero included).
//! `acme/*/in` matches `acme/r1/in`; `acme/agents/#` matches `acme/agents`
//! and `acme/agents/a/b`. Matching walks both strings once and allocates
//! nothing (it runs on every `sub` and `pub` of an authenticated client).

use crate::topic::name::{valid_segment, MAX_SEGMENTS, MAX_TOPIC_LEN};

/// Whether `pattern` is well formed: 1–8 segments, each a topic segment,
/// `*`, or (last only) `#`.
pub fn valid(pattern: &str) -> bool {
    if pattern.is_empty() || pattern.len() > MAX_TOPIC_LEN {
        return false;
    }
    let n = pattern.split('/').count();
    n <= MAX_SEGMENTS
        && pattern.split('/').enumerate().all(|(i, s)| s == "*" || (s == "#" && i + 1 == n) || valid_segment(s))
}

/// Whether `topic` matches `pattern` (see the module docs).
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_wildcards_and_tails() {
        let yes = [
            ("acme/#", "acme/r1"),
            ("acme/#", "acme/r1/x/y"),
            ("acme/agents/#", "acme/agents"),
            ("acme/*/in", "acme/r1/in"),
            ("acme/r1", "acme/r1"),
            ("*/r1", "acme/r1"),
        ];
        let no = [
            ("acme/#", "acmex/r1"),
            ("acme/*/in", "acme/r1/out"),
            ("acme/*/in", "acme/r1/in/x"),
            ("acme/*", "acme/r1/x"),
            ("acme/r1", "acme/r1/x"),
            ("acme/r1/x", "acme/r1"),
            ("acme/*", "acme"),
        ];
        for (p, t) in yes {
            assert!(matches(p, t), "{p} should match {t}");
        }
        for (p, t) in no {
            assert!(!matches(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn only_well_formed_patterns() {
        for p in ["acme/#", "acme/*/in", "acme", "*", "#"] {
            assert!(valid(p), "{p}");
        }
        for p in ["", "acme/#/x", "acme//x", "acme/r 1", "a/b/c/d/e/f/g/h/i", "acme/#x"] {
            assert!(!valid(p), "{p}");
        }
    }
}

//! A single pass over a publication's `data` (already known to be
//! well-formed JSON: serde_json parsed it as a `RawValue`) that refuses what
//! common JSON parsers in subscribers reject, so one publisher cannot send
//! every subscriber a frame it cannot read:
//! * nesting deeper than a limit (`limits.max_data_depth`, default 64;
//!   many parsers stop at 100–512, some at 64);
//! * `\u` escapes of lone UTF-16 surrogates (`"\ud800"`), which are not
//!   Unicode scalar values and which strict parsers refuse.
//!
//! No allocation, no second parse: a byte loop over the text.

/// Why `data` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Arrays/objects nested deeper than the limit.
    #[error("`data` nests deeper than {0} levels")]
    TooDeep(usize),
    /// A `\u` escape of an unpaired surrogate.
    #[error("`data` holds an unpaired UTF-16 surrogate escape")]
    LoneSurrogate,
    /// An escape that is not valid JSON (defensive: serde_json already
    /// checked the syntax).
    #[error("`data` holds an invalid escape")]
    BadEscape,
}

/// Checks `data` (valid JSON text) against the depth limit and for lone
/// surrogate escapes.
pub fn check_data(data: &str, max_depth: usize) -> Result<(), DataError> {
    let b = data.as_bytes();
    let (mut i, mut depth, mut in_str) = (0usize, 0usize, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'"' => in_str = false,
                b'\\' => {
                    i += 1;
                    if b.get(i) == Some(&b'u') {
                        let cp = hex4(b, i + 1)?;
                        i += 4;
                        if (0xDC00..=0xDFFF).contains(&cp) {
                            return Err(DataError::LoneSurrogate);
                        }
                        if (0xD800..=0xDBFF).contains(&cp) {
                            // Must be followed by \u of a low surrogate.
                            if b.get(i + 1) != Some(&b'\\') || b.get(i + 2) != Some(&b'u') {
                                return Err(DataError::LoneSurrogate);
                            }
                            let lo = hex4(b, i + 3)?;
                            if !(0xDC00..=0xDFFF).contains(&lo) {
                                return Err(DataError::LoneSurrogate);
                            }
                            i += 6;
                        }
                    }
                }
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(DataError::TooDeep(max_depth));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

fn hex4(b: &[u8], at: usize) -> Result<u32, DataError> {
    let h = b.get(at..at + 4).ok_or(DataError::BadEscape)?;
    let mut v = 0u32;
    for &d in h {
        v = v * 16 + (d as char).to_digit(16).ok_or(DataError::BadEscape)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_bounded_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_data(&deep(64), 64), Ok(()));
        assert_eq!(check_data(&deep(65), 64), Err(DataError::TooDeep(64)));
        assert_eq!(check_data(&deep(30_000), 64), Err(DataError::TooDeep(64)), "issue 9 defect 8");
        assert_eq!(check_data(r#"{"a":"[[[[[[[[[[[[[[[["}"#, 2), Ok(()), "brackets in strings do not count");
        assert_eq!(check_data(r#"{"a":{"b":[1,{"c":2}]}}"#, 4), Ok(()));
        assert_eq!(check_data(r#"{"a":{"b":[1,{"c":2}]}}"#, 3), Err(DataError::TooDeep(3)));
    }

    #[test]
    fn lone_surrogates_are_refused_pairs_pass() {
        assert_eq!(check_data(r#""\ud800""#, 64), Err(DataError::LoneSurrogate), "issue 9 defect 8");
        assert_eq!(check_data(r#""\udc00""#, 64), Err(DataError::LoneSurrogate));
        assert_eq!(check_data(r#""\ud800x""#, 64), Err(DataError::LoneSurrogate));
        assert_eq!(check_data(r#""\ud800\u0041""#, 64), Err(DataError::LoneSurrogate));
        assert_eq!(check_data(r#""\ud83d\ude00 ok""#, 64), Ok(()), "a real pair (U+1F600)");
        assert_eq!(check_data(r#""\\ud800""#, 64), Ok(()), "an escaped backslash, not an escape");
        assert_eq!(check_data(r#"["\u00e9\"\\",{"k":"\n"}]"#, 64), Ok(()));
        assert_eq!(check_data("\"\u{1F600}\"", 64), Ok(()), "raw UTF-8 is fine");
    }

    #[test]
    fn never_panics_on_truncated_escapes() {
        for s in [r#""\u"#, r#""\u12"#, r#""\ud800\u"#, r#""\"#, "\\"] {
            let _ = check_data(s, 64);
        }
    }
}

//! Normalizes client-supplied backend paths so that allow and deny globs see what the backend would.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with a single '/'")]
    NotAbsolutePath,
    #[error("path must not be a URL or start with '//'")]
    NotLocal,
    #[error("path contains a forbidden character (control, NUL or backslash)")]
    ForbiddenChar,
    #[error("path is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("path climbs above the root")]
    AboveRoot,
}

/// A normalized path: `decoded` for matching, `wire` (re-encoded) plus the untouched query for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    pub decoded: String,
    pub wire: String,
}

/// Bytes that stay encoded on the wire.
const PATH_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\');

/// Bytes of a query that are percent-encoded on the way to the backend (characters that are
/// not valid in a URI query, such as a space or `#`, which would end it; non-ASCII is
/// always encoded). `%`, `&`, `=` and `+` keep their meaning.
const QUERY_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']');

/// Checks and normalizes `raw` (a path with optional query).
///
/// The path is percent-decoded, dot segments are resolved, repeated slashes are
/// collapsed; anything that could reach a different resource than it appears to
/// (an absolute URL, `//host`, encoded or raw backslashes, control bytes) is refused.
pub fn normalize(raw: &str) -> Result<SafePath, PathError> {
    if raw.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathError::ForbiddenChar);
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolutePath);
    }
    if path.starts_with("//") {
        return Err(PathError::NotLocal);
    }
    let decoded: Cow<str> = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| PathError::BadEncoding)?;
    if decoded.contains('\\') || decoded.chars().any(char::is_control) {
        return Err(PathError::ForbiddenChar);
    }
    let mut segs: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segs.push(s),
        }
    }
    let mut norm = String::with_capacity(decoded.len());
    for s in &segs {
        norm.push('/');
        norm.push_str(s);
    }
    if norm.is_empty() || (decoded.ends_with('/') && !segs.is_empty()) {
        norm.push('/');
    }
    let mut wire: String = utf8_percent_encode(&norm, PATH_ENCODE).collect();
    if let Some(q) = query {
        wire.push('?');
        wire.extend(utf8_percent_encode(q, QUERY_ENCODE));
    }
    Ok(SafePath {
        decoded: norm,
        wire,
    })
}

/// An item with its top-level strings percent-encoded as one path segment each.
pub fn encode_strings(item: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    match item {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => Value::String(
                            percent_encoding::utf8_percent_encode(s, SEGMENT).collect(),
                        ),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::String(s) => {
            Value::String(percent_encoding::utf8_percent_encode(s, SEGMENT).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let p = normalize(raw).unwrap();
        (p.decoded, p.wire)
    }

    #[test]
    fn plain_paths_pass_through_with_query() {
        assert_eq!(
            ok("/api/v1/models/status?pipeline_id=a%20b&x=1"),
            (
                "/api/v1/models/status".into(),
                "/api/v1/models/status?pipeline_id=a%20b&x=1".into()
            )
        );
        assert_eq!(
            ok("/api/v1/assets/my%20file.png").1,
            "/api/v1/assets/my%20file.png"
        );
        assert_eq!(ok("/api/v1/assets/").0, "/api/v1/assets/");
    }

    #[test]
    fn queries_are_encoded_not_refused() {
        assert_eq!(
            ok("/api/v1/assets?filename=clip one é.png").1,
            "/api/v1/assets?filename=clip%20one%20%C3%A9.png"
        );
        assert_eq!(ok("/api/v1/x?a=1#2&b=3").1, "/api/v1/x?a=1%232&b=3");
        assert_eq!(ok("/api/v1/x?a=%20&b=c+d").1, "/api/v1/x?a=%20&b=c+d");
        assert_eq!(
            normalize("/api/v1/x?a=\u{7}"),
            Err(PathError::ForbiddenChar)
        );
    }

    #[test]
    fn traversal_is_resolved_before_matching() {
        assert_eq!(ok("/api/v1/assets/../internal/x").0, "/api/v1/internal/x");
        assert_eq!(
            ok("/api/v1/assets/%2e%2e/internal/x").0,
            "/api/v1/internal/x"
        );
        assert_eq!(ok("/api/v1/%2E%2e/v1/internal").0, "/api/v1/internal");
        assert_eq!(ok("/api//v1///internal/./x").0, "/api/v1/internal/x");
        assert_eq!(normalize("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/api/%2e%2e/%2e%2e/x"), Err(PathError::AboveRoot));
    }

    #[test]
    fn hostile_forms_are_refused() {
        assert_eq!(normalize("http://evil/x"), Err(PathError::NotAbsolutePath));
        assert_eq!(normalize("//evil/x"), Err(PathError::NotLocal));
        assert_eq!(normalize("api/v1"), Err(PathError::NotAbsolutePath));
        assert_eq!(normalize("/api\\v1"), Err(PathError::ForbiddenChar));
        assert_eq!(normalize("/api%5cv1"), Err(PathError::ForbiddenChar));
        assert_eq!(normalize("/a\r\nHost: x"), Err(PathError::ForbiddenChar));
        assert_eq!(normalize("/a%0d%0aX"), Err(PathError::ForbiddenChar));
        assert_eq!(normalize("/a%00"), Err(PathError::ForbiddenChar));
        assert_eq!(normalize("/a%ff"), Err(PathError::BadEncoding));
    }
}

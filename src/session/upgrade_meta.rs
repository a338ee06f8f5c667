//! What the upgrade request says about who connects (`manifest-id`, `daydream-user-id`), cleaned for log fields.

use axum::http::HeaderMap;

/// Longest header value kept; a longer one is cut.
const MAX_LEN: usize = 128;

/// The Livepeer orchestrator's upgrade headers, when present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpgradeMeta {
    /// `manifest-id`: the job's manifest, the connection's id in the runner's events.
    pub manifest_id: Option<String>,
    /// `daydream-user-id`: the user the job runs for.
    pub user_id: Option<String>,
}

impl UpgradeMeta {
    pub fn from_headers(headers: &HeaderMap) -> UpgradeMeta {
        UpgradeMeta {
            manifest_id: clean(headers, "manifest-id"),
            user_id: clean(headers, "daydream-user-id"),
        }
    }

    /// Puts the values into the connection span's `manifest_id` and `user_id` fields.
    pub fn record(&self, span: &tracing::Span) {
        if let Some(m) = &self.manifest_id {
            span.record("manifest_id", tracing::field::display(m));
        }
        if let Some(u) = &self.user_id {
            span.record("user_id", tracing::field::display(u));
        }
    }
}

/// A header's value as printable ASCII (anything else becomes `?`), at most [`MAX_LEN`] bytes.
fn clean(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = headers.get(name)?.as_bytes();
    let v: String = raw
        .iter()
        .take(MAX_LEN)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    let v = v.trim().to_owned();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_cut_and_cleaned() {
        let mut h = HeaderMap::new();
        h.insert("manifest-id", "m-1".parse().unwrap());
        h.insert(
            "daydream-user-id",
            axum::http::HeaderValue::from_bytes(&[b'u', 0xff, b'\t', b'x']).unwrap(),
        );
        let m = UpgradeMeta::from_headers(&h);
        assert_eq!(m.manifest_id.as_deref(), Some("m-1"));
        assert_eq!(m.user_id.as_deref(), Some("u??x"));
        h.insert("manifest-id", "a".repeat(1000).parse().unwrap());
        assert_eq!(
            UpgradeMeta::from_headers(&h).manifest_id.map(|s| s.len()),
            Some(MAX_LEN)
        );
        assert_eq!(
            UpgradeMeta::from_headers(&HeaderMap::new()),
            UpgradeMeta::default()
        );
    }
}

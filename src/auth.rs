//! Who may connect: the connect-time token check (none, static tokens, or an HTTP authorizer).

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, Uri, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::backend::Backend;
use crate::config::AuthConfig;

/// Why a connection is refused. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no token (fal_jwt_token query parameter or Authorization header)")]
    Missing,
    #[error("token not accepted")]
    Rejected,
    #[error("authorizer failed: {0}")]
    Authorizer(String),
    #[error("auth is misconfigured: {0}")]
    Misconfigured(String),
}

/// The token of an upgrade request: `fal_jwt_token` in the query, else a Bearer `Authorization` header.
pub fn token_from(query: Option<&str>, authorization: Option<&str>) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "fal_jwt_token").then(|| {
                let v = v.replace('+', " ");
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    from_query
        .or_else(|| {
            authorization.map(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
                    .unwrap_or(h)
                    .trim()
                    .to_owned()
            })
        })
        .filter(|t| !t.is_empty())
}

/// Whether `token` is one of the comma-separated `list`, compared in constant time.
///
/// Digests are compared, so neither the contents nor the lengths of the accepted
/// tokens leak through timing; every entry is compared, match or not.
pub fn token_in_list(list: &str, token: &str) -> bool {
    let given = Sha256::digest(token.as_bytes());
    let mut ok = subtle::Choice::from(0u8);
    for accepted in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        ok |= Sha256::digest(accepted.as_bytes()).ct_eq(&given);
    }
    bool::from(ok)
}

/// Checks a connection's token.
pub async fn authorize(
    cfg: &AuthConfig,
    token: Option<&str>,
    connection_id: &str,
    backend: &Backend,
) -> Result<(), Denied> {
    match cfg {
        AuthConfig::None => Ok(()),
        AuthConfig::Token { env } => {
            let token = token.ok_or(Denied::Missing)?;
            let list = std::env::var(env)
                .map_err(|_| Denied::Misconfigured(format!("${env} is not set")))?;
            if token_in_list(&list, token) {
                Ok(())
            } else {
                Err(Denied::Rejected)
            }
        }
        AuthConfig::Http { url, timeout } => {
            let token = token.ok_or(Denied::Missing)?;
            let uri: Uri = url
                .parse()
                .map_err(|e| Denied::Misconfigured(format!("authorizer url: {e}")))?;
            let body =
                serde_json::json!({"token": token, "connection_id": connection_id}).to_string();
            let headers = [(header::AUTHORIZATION, format!("Bearer {token}"))];
            let resp = backend
                .send_outbound(
                    Method::POST,
                    uri,
                    Some((Bytes::from(body), "application/json")),
                    &headers,
                    Duration::max(timeout.0, Duration::from_millis(1)),
                    64 * 1024,
                )
                .await
                .map_err(|e| Denied::Authorizer(e.to_string()))?;
            if resp.status.is_success() {
                Ok(())
            } else {
                Err(Denied::Rejected)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        assert_eq!(
            token_from(Some("a=1&fal_jwt_token=abc%2Bd"), None).as_deref(),
            Some("abc+d")
        );
        assert_eq!(token_from(None, Some("Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(
            token_from(Some("fal_jwt_token=q"), Some("Bearer h")).as_deref(),
            Some("q")
        );
        assert_eq!(token_from(Some("fal_jwt_token="), None), None);
        assert_eq!(token_from(None, None), None);
    }

    #[test]
    fn static_tokens_compare_whole() {
        assert!(token_in_list("alpha, beta", "beta"));
        assert!(token_in_list("alpha,beta", "alpha"));
        assert!(!token_in_list("alpha, beta", "bet"));
        assert!(!token_in_list("alpha, beta", "alpha, beta"));
        assert!(!token_in_list("", ""));
    }

    #[tokio::test]
    async fn missing_token_and_unset_list_deny() {
        let backend = Backend::new("http://127.0.0.1:9", &crate::config::PoolConfig::default());
        let cfg = AuthConfig::Token {
            env: "SCOPE_ROUTER_TEST_UNSET_VAR".to_owned(),
        };
        assert_eq!(
            authorize(&cfg, None, "c", &backend).await,
            Err(Denied::Missing)
        );
        assert!(matches!(
            authorize(&cfg, Some("x"), "c", &backend).await,
            Err(Denied::Misconfigured(_))
        ));
        assert_eq!(
            authorize(&AuthConfig::None, None, "c", &backend).await,
            Ok(())
        );
    }
}

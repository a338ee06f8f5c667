//! Who may connect: the connect-time token check (none, static tokens, or an HTTP authorizer), compiled at load.

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
    token_in_request(query, "fal_jwt_token", authorization)
}

/// A request's token: the query parameter `param` (percent-decoded), else a Bearer
/// `Authorization` header. An empty token is no token.
pub fn token_in_request(
    query: Option<&str>,
    param: &str,
    authorization: Option<&str>,
) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == param).then(|| {
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

/// Digests of the comma-separated tokens in the variable `env`, or why there are none.
pub fn digests_from_env(env: &str) -> Result<Vec<[u8; 32]>, String> {
    std::env::var(env)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect()
        })
        .map_err(|_| format!("${env} is not set"))
}

/// How a connection proves who it is, compiled at load (tokens read, URL parsed).
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// Digests of the accepted tokens, or why there are none (the variable is not set).
    Token(Result<Vec<[u8; 32]>, String>),
    Http {
        uri: Uri,
        timeout: Duration,
    },
}

impl Auth {
    /// Compiles the `auth` section; a bad authorizer URL is a load error.
    pub fn compile(cfg: &AuthConfig) -> Result<Auth, String> {
        Ok(match cfg {
            AuthConfig::None => Auth::None,
            AuthConfig::Token { env } => Auth::Token(digests_from_env(env)),
            AuthConfig::Http { url, timeout } => Auth::Http {
                uri: url
                    .parse()
                    .map_err(|e| format!("connection.auth.url {url:?}: {e}"))?,
                timeout: Duration::max(timeout.0, Duration::from_millis(1)),
            },
        })
    }
}

/// Whether `token` is one of `accepted`, compared in constant time.
///
/// Digests are compared, so neither the contents nor the lengths of the accepted
/// tokens leak through timing; every entry is compared, match or not.
pub fn token_in_digests(accepted: &[[u8; 32]], token: &str) -> bool {
    let given = Sha256::digest(token.as_bytes());
    let mut ok = subtle::Choice::from(0u8);
    for a in accepted {
        ok |= a.as_slice().ct_eq(given.as_slice());
    }
    bool::from(ok)
}

/// Checks a connection's token.
pub async fn authorize(
    auth: &Auth,
    token: Option<&str>,
    connection_id: &str,
    pool: &Backend,
) -> Result<(), Denied> {
    match auth {
        Auth::None => Ok(()),
        Auth::Token(accepted) => {
            let token = token.ok_or(Denied::Missing)?;
            let accepted = accepted
                .as_ref()
                .map_err(|e| Denied::Misconfigured(e.clone()))?;
            if token_in_digests(accepted, token) {
                Ok(())
            } else {
                Err(Denied::Rejected)
            }
        }
        Auth::Http { uri, timeout } => {
            let token = token.ok_or(Denied::Missing)?;
            let body =
                serde_json::json!({"token": token, "connection_id": connection_id}).to_string();
            let headers = [(header::AUTHORIZATION, format!("Bearer {token}"))];
            let resp = pool
                .send_outbound(
                    Method::POST,
                    uri.clone(),
                    Some((Bytes::from(body), "application/json")),
                    &headers,
                    *timeout,
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

    fn token_in_list(list: &str, token: &str) -> bool {
        let digests: Vec<[u8; 32]> = list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        token_in_digests(&digests, token)
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
        let backend = Backend::new(&crate::config::PoolConfig::default());
        let cfg = Auth::compile(&AuthConfig::Token {
            env: "SCOPE_ROUTER_TEST_UNSET_VAR".to_owned(),
        })
        .unwrap();
        assert_eq!(
            authorize(&cfg, None, "c", &backend).await,
            Err(Denied::Missing)
        );
        assert!(matches!(
            authorize(&cfg, Some("x"), "c", &backend).await,
            Err(Denied::Misconfigured(_))
        ));
        assert_eq!(authorize(&Auth::None, None, "c", &backend).await, Ok(()));
    }
}

//! The one shared keep-alive HTTP client pool, and the backend as a snapshot addresses it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::PoolConfig;

/// A streamed request body (an assembled upload read from disk).
pub type BodyStream =
    futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>;

/// Request bodies of the backend pool: whole bytes, or a stream (large uploads), in one pool.
pub type ReqBody = http_body_util::Either<Full<Bytes>, http_body_util::StreamBody<BodyStream>>;

/// A backend answer, body read whole.
#[derive(Debug)]
pub struct BackendResponse {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

/// Why a backend call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend unavailable")]
    Unavailable,
    #[error("Request timeout")]
    Timeout,
    #[error("invalid backend request: {0}")]
    BadRequest(String),
    #[error("backend response over {0} bytes")]
    TooLarge(usize),
    #[error("backend request failed: {0}")]
    Failed(String),
    #[error("backend answered with status {0}, which is not a final HTTP status")]
    BadStatus(u16),
}

/// The shared HTTP clients: one keep-alive pool to the backend, one for other hosts.
///
/// Created once per process; every snapshot's [`Upstream`] shares it, so a reload
/// that changes the backend URL keeps the pool (and its idle connections to the same host).
pub struct Backend {
    client: Client<HttpConnector, ReqBody>,
    /// Calls to other hosts (authorizers, CDN fetches), over https or http; never redirected.
    outbound: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Backend {
    pub fn new(pool: &PoolConfig) -> Arc<Backend> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool.idle_timeout.0)
            .pool_max_idle_per_host(pool.max_idle)
            .build(connector.clone());
        let mut plain = connector;
        plain.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(plain);
        let outbound = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Arc::new(Backend { client, outbound })
    }

    /// One call to another host (an authorizer, a CDN), http or https, body capped at `limit`.
    pub async fn send_outbound(
        &self,
        method: Method,
        uri: Uri,
        body: Option<(Bytes, &str)>,
        headers: &[(header::HeaderName, String)],
        timeout: Duration,
        limit: usize,
    ) -> Result<BackendResponse, BackendError> {
        let req = build_request(method, uri, body, headers)?;
        exchange(&self.outbound, req, limit, timeout).await
    }
}

/// The backend as one snapshot sees it: its base URL, parsed once at load, over the shared pool.
pub struct Upstream {
    pool: Arc<Backend>,
    scheme: Scheme,
    authority: Authority,
    /// A path the base URL carries (usually none), put before every call's path.
    prefix: String,
    /// The base URL as written (trailing `/` removed), for logs and `/readyz`.
    base: String,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish()
    }
}

impl Upstream {
    /// The backend at `base_url` (a plain `http://host:port`), over `pool`.
    pub fn new(
        pool: Arc<Backend>,
        base_url: &str,
        max_response_bytes: usize,
    ) -> Result<Upstream, String> {
        let uri: Uri = base_url.parse().map_err(|e| format!("{e}"))?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err("must be an http:// URL with a host".to_owned());
        };
        if scheme != Scheme::HTTP {
            return Err("must be an http:// URL with a host".to_owned());
        }
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Ok(Upstream {
            pool,
            scheme,
            authority,
            prefix,
            base: base_url.trim_end_matches('/').to_owned(),
            max_response_bytes,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The shared pools (for calls to other hosts).
    pub fn pool(&self) -> &Backend {
        &self.pool
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, BackendError> {
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        let builder = if self.prefix.is_empty() {
            builder.path_and_query(path_and_query)
        } else {
            builder.path_and_query(format!("{}{path_and_query}", self.prefix))
        };
        builder
            .build()
            .map_err(|e| BackendError::BadRequest(format!("{e}")))
    }

    /// One call: method, path with query, optional body, within `timeout` for the whole exchange.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
        timeout: Duration,
    ) -> Result<BackendResponse, BackendError> {
        let uri = self.uri(path_and_query)?;
        let req = build_request(method, uri, body, &[])?.map(http_body_util::Either::Left);
        exchange(&self.pool.client, req, self.max_response_bytes, timeout).await
    }

    /// One call with a streamed body of known length (an assembled upload).
    pub async fn call_stream(
        &self,
        method: Method,
        path_and_query: &str,
        body: BodyStream,
        content_type: &str,
        content_length: u64,
        timeout: Duration,
    ) -> Result<BackendResponse, BackendError> {
        let req = Request::builder()
            .method(method)
            .uri(self.uri(path_and_query)?)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, content_length)
            .body(http_body_util::Either::Right(
                http_body_util::StreamBody::new(body),
            ))
            .map_err(|e| BackendError::BadRequest(e.to_string()))?;
        exchange(&self.pool.client, req, self.max_response_bytes, timeout).await
    }

    /// One health probe: true on a 2xx within `timeout`.
    pub async fn probe(&self, path: &str, timeout: Duration) -> bool {
        matches!(
            self.call(Method::GET, path, None, timeout).await,
            Ok(r) if r.status.is_success()
        )
    }
}

fn build_request(
    method: Method,
    uri: Uri,
    body: Option<(Bytes, &str)>,
    headers: &[(header::HeaderName, String)],
) -> Result<Request<Full<Bytes>>, BackendError> {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let body = match body {
        Some((bytes, content_type)) => {
            req = req.header(header::CONTENT_TYPE, content_type);
            Full::new(bytes)
        }
        None => Full::new(Bytes::new()),
    };
    req.body(body)
        .map_err(|e| BackendError::BadRequest(e.to_string()))
}

/// Sends `req` on `client` and reads the whole body (at most `limit` bytes), all within `timeout`.
async fn exchange<C, B>(
    client: &Client<C, B>,
    req: Request<B>,
    limit: usize,
    timeout: Duration,
) -> Result<BackendResponse, BackendError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                BackendError::Unavailable
            } else {
                BackendError::Failed(error_chain(&e))
            }
        })?;
        let status = resp.status();
        // An informational or out-of-range status is not an answer a client can use.
        if !(200..=599).contains(&status.as_u16()) {
            return Err(BackendError::BadStatus(status.as_u16()));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    BackendError::TooLarge(limit)
                } else {
                    BackendError::Failed(e.to_string())
                }
            })?
            .to_bytes();
        Ok(BackendResponse {
            status,
            content_type,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

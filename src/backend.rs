//! The one shared keep-alive HTTP client to the backend, and the backend's published readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
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
}

/// Whether the backend may be called, as published by the health probe or supervisor.
#[derive(Debug, Default)]
pub struct Readiness {
    healthy: AtomicBool,
    /// When set, calls are refused fast while unhealthy (a supervised child that is starting or restarting).
    gate: AtomicBool,
    /// A human-readable state for `/readyz`.
    status: ArcSwap<String>,
}

impl Readiness {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// True when a call should be refused without trying.
    pub fn refuse_calls(&self) -> bool {
        self.gate.load(Ordering::Relaxed) && !self.healthy.load(Ordering::Acquire)
    }

    pub fn set_gate(&self, gate: bool) {
        self.gate.store(gate, Ordering::Relaxed);
    }

    pub fn set(&self, healthy: bool, status: impl Into<String>) {
        self.healthy.store(healthy, Ordering::Release);
        self.status.store(Arc::new(status.into()));
    }

    pub fn status(&self) -> Arc<String> {
        self.status.load_full()
    }
}

/// The backend: its base URL (swappable on reload) over one connection pool.
pub struct Backend {
    client: Client<HttpConnector, ReqBody>,
    /// Calls to other hosts (authorizers, CDN fetches), over https or http; never redirected.
    outbound: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: ArcSwap<String>,
    max_response_bytes: std::sync::atomic::AtomicUsize,
    pub readiness: Readiness,
}

impl Backend {
    pub fn new(base_url: &str, pool: &PoolConfig) -> Backend {
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
        Backend {
            client,
            outbound,
            base: ArcSwap::from_pointee(trim_base(base_url)),
            max_response_bytes: pool.max_response_bytes.into(),
            readiness: Readiness::default(),
        }
    }

    /// Points the pool at a (possibly) new base URL; applies to the next call.
    pub fn set_base(&self, base_url: &str, pool: &PoolConfig) {
        let new = trim_base(base_url);
        if *self.base.load_full() != new {
            self.base.store(Arc::new(new));
        }
        self.max_response_bytes
            .store(pool.max_response_bytes, Ordering::Relaxed);
    }

    pub fn base(&self) -> Arc<String> {
        self.base.load_full()
    }

    /// One call: method, path with query, optional body, within `timeout` for the whole exchange.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
        timeout: Duration,
    ) -> Result<BackendResponse, BackendError> {
        let uri: Uri = {
            let base = self.base.load();
            let mut s = String::with_capacity(base.len() + path_and_query.len());
            s.push_str(&base);
            s.push_str(path_and_query);
            s.parse()
                .map_err(|e| BackendError::BadRequest(format!("{e}")))?
        };
        self.send(method, uri, body, &[], timeout).await
    }

    /// One call to the backend's pool with a full URI and extra headers.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        body: Option<(Bytes, &str)>,
        headers: &[(header::HeaderName, String)],
        timeout: Duration,
    ) -> Result<BackendResponse, BackendError> {
        let req = build_request(method, uri, body, headers)?.map(http_body_util::Either::Left);
        let limit = self.max_response_bytes.load(Ordering::Relaxed);
        exchange(&self.client, req, limit, timeout).await
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
        let uri: Uri = format!("{}{path_and_query}", self.base.load())
            .parse()
            .map_err(|e| BackendError::BadRequest(format!("{e}")))?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, content_length)
            .body(http_body_util::Either::Right(
                http_body_util::StreamBody::new(body),
            ))
            .map_err(|e| BackendError::BadRequest(e.to_string()))?;
        let limit = self.max_response_bytes.load(Ordering::Relaxed);
        exchange(&self.client, req, limit, timeout).await
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

fn trim_base(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
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

/// Probes the backend forever, publishing readiness (used when nothing is supervised).
pub async fn probe_loop(backend: Arc<Backend>, health: crate::config::HealthConfig) {
    let mut failures = 0u32;
    loop {
        let ok = backend.probe(&health.path, health.timeout.0).await;
        if ok {
            if !backend.readiness.is_healthy() {
                tracing::info!(url = %backend.base(), "backend is healthy");
            }
            failures = 0;
            backend.readiness.set(true, "healthy");
        } else {
            failures = failures.saturating_add(1);
            if failures >= health.failure_threshold.max(1) || !backend.readiness.is_healthy() {
                if backend.readiness.is_healthy() {
                    tracing::warn!(url = %backend.base(), failures, "backend stopped answering its health probe");
                }
                backend
                    .readiness
                    .set(false, format!("health probe failing ({failures} in a row)"));
            }
        }
        tokio::time::sleep(health.interval.0).await;
    }
}

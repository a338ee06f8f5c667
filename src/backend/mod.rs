//! The shared backend connections and HTTP clients, and the backend as a snapshot addresses it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::PoolConfig;

mod conns;

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
    /// Where a redirect (3xx) points.
    pub location: Option<String>,
    /// The body's share of the process-wide response budget, given back when this is dropped.
    _budget: Option<OwnedSemaphorePermit>,
}

impl BackendResponse {
    /// An answer made here (tests, local replies): it holds no budget.
    pub fn new(status: StatusCode, content_type: String, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            body,
            location: None,
            _budget: None,
        }
    }
}

/// A backend answer whose body has not been read yet: the caller streams it or reads it whole.
///
/// It holds its place among `pool.max_connections` until it is dropped.
#[derive(Debug)]
pub struct Opened {
    pub status: StatusCode,
    pub content_type: String,
    /// The body's length, when the backend said it.
    pub content_length: Option<u64>,
    /// Where a redirect (3xx) points.
    pub location: Option<String>,
    body: Incoming,
    /// The connection the body comes on, driven while the body is read (backend calls).
    lease: Option<conns::Lease>,
    _call: Option<OwnedSemaphorePermit>,
    budget: Arc<Semaphore>,
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
    #[error("the router holds as many backend responses as it may ({0} bytes); try again")]
    Busy(usize),
}

/// The shared HTTP clients: the backend's keep-alive connections (driven by their calls), the
/// health probe's pool, and one client for other hosts.
///
/// Created once per process; every snapshot's [`Upstream`] shares it, so a reload
/// that changes the backend URL keeps the pool (and its idle connections to the same host).
pub struct Backend {
    /// Backend calls: connections driven by the calls' own tasks.
    conns: conns::Conns,
    /// The health probe's own pool (it does not take a place among the calls').
    client: Client<HttpConnector, ReqBody>,
    /// Calls to other hosts (authorizers, CDN fetches), over https or http; never redirected.
    outbound: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Backend calls in flight, each on its own connection (`pool.max_connections`).
    calls: Arc<Semaphore>,
    /// Response bytes held in memory by all calls together, in KiB (`pool.max_buffered_bytes`).
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl Backend {
    pub fn new(pool: &PoolConfig) -> Arc<Backend> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool.idle_timeout.0)
            .pool_max_idle_per_host(2)
            .build(connector.clone());
        // Never more idle than may be open at once.
        let conns = conns::Conns::new(
            connector.clone(),
            pool.max_idle.min(pool.max_connections).max(1),
            pool.idle_timeout.0,
        );
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
        let kib = (pool.max_buffered_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Backend {
            conns,
            client,
            outbound,
            calls: Arc::new(Semaphore::new(pool.max_connections.max(1))),
            budget: Arc::new(Semaphore::new(kib)),
            budget_bytes: pool.max_buffered_bytes,
        })
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
        let deadline = tokio::time::Instant::now() + timeout;
        let opened = within(deadline, self.open_on(&self.outbound, req, None)).await?;
        within(deadline, opened.read_whole(limit, self.budget_bytes)).await
    }

    /// Sends `req` on `client` and returns as soon as the status and headers are in.
    async fn open_on<C, B>(
        &self,
        client: &Client<C, B>,
        req: Request<B>,
        call: Option<OwnedSemaphorePermit>,
    ) -> Result<Opened, BackendError>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                BackendError::Unavailable
            } else {
                BackendError::Failed(error_chain(&e))
            }
        })?;
        self.opened(resp, call, None)
    }

    /// An answer's head, checked, with its body still to read.
    fn opened(
        &self,
        resp: hyper::Response<Incoming>,
        call: Option<OwnedSemaphorePermit>,
        lease: Option<conns::Lease>,
    ) -> Result<Opened, BackendError> {
        let status = resp.status();
        // An informational or out-of-range status is not an answer a client can use.
        if !(200..=599).contains(&status.as_u16()) {
            return Err(BackendError::BadStatus(status.as_u16()));
        }
        let headers = resp.headers();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let location = status
            .is_redirection()
            .then(|| headers.get(header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Opened {
            status,
            content_type,
            content_length,
            location,
            body: resp.into_body(),
            lease,
            _call: call,
            budget: self.budget.clone(),
        })
    }
}

impl Opened {
    /// The next frame of the body (`None` at its end, when the connection is given back).
    pub async fn frame(&mut self) -> Option<Result<hyper::body::Frame<Bytes>, hyper::Error>> {
        let next = match self.lease.as_mut() {
            Some(lease) => lease.frame(&mut self.body).await,
            None => self.body.frame().await,
        };
        if next.is_none()
            && let Some(lease) = self.lease.take()
        {
            lease.give_back();
        }
        next
    }

    /// Reads the whole body, at most `limit` bytes, each byte counted against the
    /// process-wide response budget (`budget_bytes` in all) while the answer is held.
    pub async fn read_whole(
        mut self,
        limit: usize,
        budget_bytes: usize,
    ) -> Result<BackendResponse, BackendError> {
        if self.content_length.is_some_and(|n| n > limit as u64) {
            return Err(BackendError::TooLarge(limit));
        }
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut held_kib = 0usize;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = self.frame().await {
            let frame = frame.map_err(|e| BackendError::Failed(error_chain(&e)))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > limit {
                return Err(BackendError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
            let need = out.len().div_ceil(1024).saturating_sub(held_kib);
            if need > 0 {
                let more = u32::try_from(need)
                    .ok()
                    .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
                    .ok_or(BackendError::Busy(budget_bytes))?;
                held_kib += need;
                match &mut held {
                    Some(h) => h.merge(more),
                    None => held = Some(more),
                }
            }
        }
        Ok(BackendResponse {
            status: self.status,
            content_type: self.content_type,
            body: out.freeze(),
            location: self.location,
            _budget: held,
        })
    }
}

/// Runs `fut` until `deadline`; past it, the call has timed out.
async fn within<T>(
    deadline: tokio::time::Instant,
    fut: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or(Err(BackendError::Timeout))
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
    /// The `Host` header of every call, made once here: a URI-built request would otherwise
    /// format `host:port` into a new string for each request.
    host: header::HeaderValue,
    /// Where new connections go (`http://host:port/`).
    connect_uri: Uri,
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
        let host = header::HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{e}"))?;
        let connect_uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("{e}"))?;
        Ok(Upstream {
            connect_uri,
            pool,
            scheme,
            authority,
            prefix,
            base: base_url.trim_end_matches('/').to_owned(),
            host,
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

    /// The shared pools, to keep (a task that outlives the call).
    pub fn pool_arc(&self) -> Arc<Backend> {
        self.pool.clone()
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

    /// A call's request target in origin form (the connection is to the backend already).
    fn origin(&self, path_and_query: &str) -> Result<Uri, BackendError> {
        if !path_and_query.starts_with('/') {
            return Err(BackendError::BadRequest(format!(
                "the path must start with /: {path_and_query}"
            )));
        }
        let target = if self.prefix.is_empty() {
            Uri::try_from(path_and_query)
        } else {
            Uri::try_from(format!("{}{path_and_query}", self.prefix))
        };
        target.map_err(|e| BackendError::BadRequest(format!("{e}")))
    }

    /// A request on a backend connection: target, `Host`, content type, body.
    fn request(
        &self,
        method: &Method,
        target: &Uri,
        content_type: Option<&header::HeaderValue>,
        body: ReqBody,
    ) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = target.clone();
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        req
    }

    /// One call: method, path with query, optional body, within `timeout` for the whole exchange.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
        timeout: Duration,
    ) -> Result<BackendResponse, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let opened = within(deadline, self.open(method, path_and_query, body)).await?;
        within(deadline, self.read_whole(opened)).await
    }

    /// Reads an opened answer whole, within this backend's response cap.
    pub async fn read_whole(&self, opened: Opened) -> Result<BackendResponse, BackendError> {
        self.read_whole_within(opened, self.max_response_bytes)
            .await
    }

    /// Reads an opened answer whole, at most `limit` bytes (a route's own cap).
    pub async fn read_whole_within(
        &self,
        opened: Opened,
        limit: usize,
    ) -> Result<BackendResponse, BackendError> {
        opened.read_whole(limit, self.pool.budget_bytes).await
    }

    /// The backend's response cap (`backend.pool.max_response_bytes`).
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Sends a call and returns once the status and headers are in (the caller applies its timeout).
    ///
    /// Waits for a place among `pool.max_connections` first.
    pub async fn open(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<Opened, BackendError> {
        let target = self.origin(path_and_query)?;
        let (bytes, content_type) = match body {
            Some((bytes, ct)) => (bytes, Some(header_value(ct)?)),
            None => (Bytes::new(), None),
        };
        self.send(|| {
            let body = http_body_util::Either::Left(Full::new(bytes.clone()));
            Some(self.request(&method, &target, content_type.as_ref(), body))
        })
        .await
    }

    /// Waits for a place among `pool.max_connections`, then sends what `make` builds on a
    /// backend connection and returns the answer's head.
    async fn send(
        &self,
        make: impl FnMut() -> Option<Request<ReqBody>>,
    ) -> Result<Opened, BackendError> {
        let call = self.place().await?;
        let (resp, lease) = self
            .pool
            .conns
            .send(&self.authority, &self.connect_uri, make)
            .await?;
        self.pool.opened(resp, Some(call), Some(lease))
    }

    async fn place(&self) -> Result<OwnedSemaphorePermit, BackendError> {
        self.pool
            .calls
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Unavailable)
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
        let target = self.origin(path_and_query)?;
        let content_type = header_value(content_type)?;
        let mut body = Some(http_body_util::Either::Right(
            http_body_util::StreamBody::new(body),
        ));
        // A stream goes out once: it is not repeated on another connection.
        let make = || {
            let mut req = self.request(&method, &target, Some(&content_type), body.take()?);
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(content_length),
            );
            Some(req)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let opened = within(deadline, self.send(make)).await?;
        within(deadline, self.read_whole(opened)).await
    }

    /// One health probe: true on a 2xx within `timeout`. It does not wait for a place among
    /// `pool.max_connections`: busy clients must not make the backend look down.
    pub async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let probe = async {
            let uri = self.uri(path)?;
            let req = build_request(Method::GET, uri, None, &[])?.map(http_body_util::Either::Left);
            let opened = self.pool.open_on(&self.pool.client, req, None).await?;
            self.read_whole_within(opened, 64 * 1024).await
        };
        matches!(
            tokio::time::timeout(timeout, probe).await,
            Ok(Ok(r)) if r.status.is_success()
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

fn header_value(v: &str) -> Result<header::HeaderValue, BackendError> {
    header::HeaderValue::from_str(v).map_err(|e| BackendError::BadRequest(e.to_string()))
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

#[cfg(test)]
mod tests;

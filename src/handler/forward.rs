//! The `forward` handler: one HTTP call to the backend per message, and a reply rendered from the response.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use globset::{GlobMatcher, GlobSet};
use hyper::Method;
use serde_json::Value;

use super::Handle;
use super::transfer::{self, Settings};
use crate::backend::{BackendError, Upstream};
use crate::envelope::{Answer, Outcome, Reply, Request};
use crate::pathsafe;
use crate::template::{Ctx, ErrorVars, ResponseVars, Template};

/// Uploads by URL (`_cdn_url`), compiled at load.
#[derive(Debug, Clone)]
pub struct CdnSpec {
    pub allow_hosts: Vec<String>,
    pub allow_http: bool,
    pub max_bytes: usize,
    pub timeout: Duration,
    pub follow_redirects: usize,
}

/// Where method, path and body come from.
pub enum Target {
    /// The `api` passthrough: the message's own `method`, `path` and `body`.
    FromMessage,
    /// Fixed by the route, with the path and body rendered from the message.
    Fixed {
        method: Method,
        path: Template,
        body: Option<Template>,
    },
}

/// A per-request timeout rule.
pub struct TimeoutRule {
    pub path: GlobMatcher,
    pub method: Option<Method>,
    pub upload: bool,
    pub timeout: Duration,
}

/// Everything a forward route needs, compiled at load.
pub struct ForwardSpec {
    pub route: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// Chunked-download settings (large binary replies).
    pub transfers: Arc<Settings>,
    pub target: Target,
    pub methods: Vec<Method>,
    pub allow: GlobSet,
    pub deny: GlobSet,
    pub base64_uploads: bool,
    /// Largest body read whole (at most the backend's cap).
    pub max_response_bytes: usize,
    pub timeout: Duration,
    pub timeouts: Vec<TimeoutRule>,
    pub add_connection_id: Vec<(Method, GlobMatcher)>,
    /// What those bodies get.
    pub add_fields: super::AddFields,
    /// Requests never forwarded (`deny_requests`).
    pub deny_requests: Vec<(Method, GlobMatcher)>,
    /// Checks before a request is sent (`guards`).
    pub guards: Vec<super::allowlist::RequestGuard>,
    pub reply: Template,
    pub reply_binary: Option<Template>,
    pub on_error: Template,
    pub needs_parsed: bool,
    pub cdn: Option<CdnSpec>,
}

/// The forward handler of one route (its spec is shared with transfer routes that send through it).
pub struct ForwardHandler {
    spec: Arc<ForwardSpec>,
}

impl ForwardHandler {
    pub fn new(spec: Arc<ForwardSpec>) -> Self {
        Self { spec }
    }
}

impl Handle for ForwardHandler {
    async fn handle(self: Arc<Self>, req: Request) -> Answer {
        match self.spec.call(&req).await {
            Ok(answer) => answer,
            Err(f) => Answer::Reply(self.spec.render_failure(&req, &f)),
        }
    }
}

/// A failure before or during the call, rendered through `on_error`.
struct Failure {
    status: u16,
    message: String,
    code: Option<&'static str>,
    outcome: Outcome,
}

impl Failure {
    fn bad(status: u16, message: String) -> Failure {
        Failure {
            status,
            message,
            code: None,
            outcome: Outcome::Rejected,
        }
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Failure {
        let (status, code, outcome) = match &e {
            BackendError::Unavailable => (503, Some("BACKEND_UNAVAILABLE"), Outcome::Unavailable),
            BackendError::Timeout => (504, None, Outcome::Timeout),
            BackendError::BadRequest(_) => (400, None, Outcome::Rejected),
            BackendError::BadStatus(_) => (502, None, Outcome::BackendError),
            BackendError::TooLarge(_) => (502, Some("RESPONSE_TOO_LARGE"), Outcome::BackendError),
            BackendError::Busy(_) => (503, Some("ROUTER_BUSY"), Outcome::Unavailable),
            BackendError::Failed(_) => (500, None, Outcome::BackendError),
        };
        Failure {
            status,
            message: e.to_string(),
            code,
            outcome,
        }
    }
}

/// The kind of a content type that never ends (an event stream, MJPEG), which no reply can carry.
pub fn endless(content_type: &str) -> Option<&'static str> {
    let ct = content_type.trim_start();
    ["text/event-stream", "multipart/x-mixed-replace"]
        .into_iter()
        .find(|kind| {
            ct.get(..kind.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(kind))
        })
}

/// Whether a content type is sent back as base64 rather than JSON or text.
pub fn is_binary(content_type: &str) -> bool {
    let ct = content_type.trim_start();
    ["video/", "audio/", "image/"]
        .iter()
        .any(|p| ct.starts_with(p))
        || ct.starts_with("application/octet-stream")
}

impl ForwardSpec {
    /// The fast refusal while the backend is known to be down, through `on_error` (a 503 `api_response` for `api`).
    pub fn unavailable(&self, req: &Request) -> Reply {
        self.render_failure(req, &Failure::from(BackendError::Unavailable))
    }

    /// A failure rendered through `on_error`.
    fn render_failure(&self, req: &Request, f: &Failure) -> Reply {
        let ev = ErrorVars {
            status: f.status,
            message: &f.message,
            code: f.code,
            detail: None,
        };
        let user = req.conn.user_id();
        let ctx = Ctx {
            error: Some(&ev),
            ..super::message_ctx(req, &user)
        };
        let mut out = Vec::with_capacity(128);
        self.on_error
            .render_reply(&ctx, req.request_id.as_ref(), &mut out);
        Reply::from_json(out, f.outcome)
    }

    /// The allowed method named by `m` (any case).
    fn method(&self, m: &str) -> Result<Method, Failure> {
        let upper = m.to_ascii_uppercase();
        self.methods
            .iter()
            .find(|allowed| allowed.as_str() == upper)
            .cloned()
            .ok_or_else(|| Failure::bad(400, format!("Unsupported method: {upper}")))
    }

    /// The normalized path, if the allow and deny rules let it through.
    fn path(&self, raw_path: &str) -> Result<pathsafe::SafePath, Failure> {
        let safe = pathsafe::normalize(raw_path)
            .map_err(|e| Failure::bad(400, format!("Invalid path {raw_path:?}: {e}")))?;
        if !self.allow.is_match(&safe.decoded) || self.deny.is_match(&safe.decoded) {
            return Err(Failure::bad(
                403,
                format!("Path not allowed: {}", safe.decoded),
            ));
        }
        Ok(safe)
    }

    /// The normalized path, if the path rules and `deny_requests` let `method` reach it.
    fn request(&self, method: &Method, raw_path: &str) -> Result<pathsafe::SafePath, Failure> {
        let safe = self.path(raw_path)?;
        if self
            .deny_requests
            .iter()
            .any(|(m, g)| m == method && g.is_match(&safe.decoded))
        {
            return Err(Failure::bad(
                403,
                format!("Request not allowed: {method} {}", safe.decoded),
            ));
        }
        Ok(safe)
    }

    fn timeout_for(
        &self,
        method: &Method,
        decoded_path: &str,
        upload: bool,
    ) -> std::time::Duration {
        self.timeouts
            .iter()
            .find(|r| {
                (!r.upload || upload)
                    && r.method.as_ref().is_none_or(|m| m == method)
                    && r.path.is_match(decoded_path)
            })
            .map_or(self.timeout, |r| r.timeout)
    }

    /// Checks an upload's target before any of its bytes arrive.
    pub fn check_upload_target(&self, method: &str, raw_path: &str) -> Result<(), String> {
        let method = self.method(method).map_err(|f| f.message)?;
        let safe = self.request(&method, raw_path).map_err(|f| f.message)?;
        if self
            .guards
            .iter()
            .any(|g| g.applies(&method, &safe.decoded))
        {
            return Err(format!(
                "{method} {} is checked before it is sent: send it as one api message",
                safe.decoded
            ));
        }
        Ok(())
    }

    /// Sends an assembled upload, streamed from disk, and renders the reply as for any call.
    pub async fn forward_upload(&self, req: &Request, upload: transfer::Assembled) -> Reply {
        let result = async {
            let method = self.method(&upload.target.method)?;
            let safe = self.request(&method, &upload.target.path)?;
            let timeout = self.timeout_for(&method, &safe.decoded, true);
            let body = transfer::body_stream(&upload.disk)
                .await
                .map_err(|e| Failure::bad(500, format!("cannot read the assembled upload: {e}")))?;
            let resp = self
                .upstream
                .call_stream(
                    method,
                    &safe.wire,
                    body,
                    &upload.target.content_type,
                    upload.target.size,
                    timeout,
                )
                .await?;
            Ok(self.render_response(req, &resp))
        }
        .await;
        drop(upload);
        result.unwrap_or_else(|f| self.render_failure(req, &f))
    }

    async fn call(&self, req: &Request) -> Result<Answer, Failure> {
        let msg = &req.msg;
        let user = req.conn.user_id();
        let base_ctx = super::message_ctx(req, &user);
        let (method, raw_path, body): (Method, String, Option<Value>) = match &self.target {
            Target::FromMessage => {
                let method = match msg.get("method") {
                    None | Some(Value::Null) => self.method("GET")?,
                    Some(Value::String(s)) => self.method(s)?,
                    Some(other) => {
                        return Err(Failure::bad(400, format!("Unsupported method: {other}")));
                    }
                };
                let path = msg
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Failure::bad(400, "Missing string field \"path\"".to_owned()))?
                    .to_owned();
                (method, path, msg.get("body").cloned())
            }
            Target::Fixed { method, path, body } => (
                method.clone(),
                path.render_text(&base_ctx),
                body.as_ref().map(|b| {
                    serde_json::from_str(&b.render_to_string(&base_ctx)).unwrap_or(Value::Null)
                }),
            ),
        };

        let safe = self.request(&method, &raw_path)?;
        for g in self
            .guards
            .iter()
            .filter(|g| g.applies(&method, &safe.decoded))
        {
            g.check(body.as_ref(), self.upstream.pool())
                .await
                .map_err(|r| Failure {
                    status: r.status,
                    message: r.message,
                    code: None,
                    outcome: if r.status == 503 {
                        Outcome::Unavailable
                    } else {
                        Outcome::Rejected
                    },
                })?;
        }

        let mut upload = false;
        let payload: Option<(Bytes, String)> = match body {
            None | Some(Value::Null) => None,
            Some(Value::Object(obj)) if obj.contains_key("_cdn_url") => {
                upload = true;
                Some(self.fetch_cdn(&obj).await?)
            }
            Some(Value::Object(mut obj)) => {
                if self.base64_uploads && obj.contains_key("_base64_content") {
                    let content_type = obj
                        .get("_content_type")
                        .and_then(Value::as_str)
                        .unwrap_or("application/octet-stream")
                        .to_owned();
                    let encoded = match obj.get("_base64_content") {
                        Some(Value::String(s)) => s,
                        _ => {
                            return Err(Failure::bad(
                                400,
                                "_base64_content must be a string".to_owned(),
                            ));
                        }
                    };
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded.as_bytes())
                        .map_err(|e| Failure::bad(400, format!("Invalid _base64_content: {e}")))?;
                    upload = true;
                    Some((Bytes::from(bytes), content_type))
                } else {
                    if self
                        .add_connection_id
                        .iter()
                        .any(|(m, g)| *m == method && g.is_match(&safe.decoded))
                    {
                        self.add_fields.apply(req, &mut obj);
                    }
                    Some((
                        json_bytes(&Value::Object(obj)),
                        "application/json".to_owned(),
                    ))
                }
            }
            Some(other) => Some((json_bytes(&other), "application/json".to_owned())),
        };

        let timeout = self.timeout_for(&method, &safe.decoded, upload);
        let deadline = tokio::time::Instant::now() + timeout;
        let opened = tokio::time::timeout_at(
            deadline,
            self.upstream.open(
                method,
                &safe.wire,
                payload.as_ref().map(|(b, ct)| (b.clone(), ct.as_str())),
            ),
        )
        .await
        .unwrap_or(Err(BackendError::Timeout))?;
        drop(payload);

        // What cannot be read whole (an endless stream, or a large binary the client wants in
        // chunks) goes out as a chunked download, paced by the client's acknowledgements.
        let endless = endless(&opened.content_type);
        let unbounded = endless.is_some() || opened.content_length.is_none();
        let wants_chunks = msg.get("_chunked").and_then(Value::as_bool) == Some(true);
        if wants_chunks
            && opened.status == hyper::StatusCode::OK
            && (endless.is_some() || is_binary(&opened.content_type))
            && opened
                .content_length
                .is_none_or(|n| n > self.transfers.download_chunk_over as u64)
        {
            let binary = msg.get("_binary").and_then(Value::as_bool) == Some(true);
            let source = transfer::download::Source {
                opened,
                idle: timeout,
            };
            return match transfer::download::start_download(
                req.conn.clone(),
                &self.transfers,
                req.request_id.clone(),
                source,
                binary,
            ) {
                // The header went out with the chunks, in order; nothing more to send here.
                Ok(()) => Ok(Answer::Streamed),
                Err(e) => Ok(Answer::Reply(crate::envelope::refuse(
                    req.request_id.as_ref(),
                    &e,
                ))),
            };
        }
        let streamed_type = endless.or_else(|| {
            (unbounded && opened.content_type.trim_start().starts_with("video/"))
                .then_some("a video stream of unknown length")
        });
        if let (Some(kind), true) = (streamed_type, opened.status.is_success()) {
            return Err(Failure {
                status: 502,
                message: format!(
                    "{} answers an endless stream ({kind}), which one reply cannot carry; \
                     ask with \"_chunked\": true to receive it as a chunked download",
                    safe.decoded
                ),
                code: Some("STREAMING_RESPONSE"),
                outcome: Outcome::BackendError,
            });
        }
        let resp = tokio::time::timeout_at(
            deadline,
            self.upstream
                .read_whole_within(opened, self.max_response_bytes),
        )
        .await
        .unwrap_or(Err(BackendError::Timeout))
        .map_err(|e| match e {
            BackendError::TooLarge(n) => Failure {
                status: 502,
                message: format!(
                    "Response over {n} bytes; binary files this large come as a chunked \
                     download when the message asks with \"_chunked\": true"
                ),
                code: Some("RESPONSE_TOO_LARGE"),
                outcome: Outcome::BackendError,
            },
            other => Failure::from(other),
        })?;
        Ok(Answer::Reply(self.render_response(req, &resp)))
    }

    /// A backend response rendered through `reply` (or `reply_binary` for a 200 with a binary type).
    fn render_response(&self, req: &Request, resp: &crate::backend::BackendResponse) -> Reply {
        let template = match &self.reply_binary {
            // As the original: only a 200 with a binary type is sent back as base64.
            Some(t) if resp.status == hyper::StatusCode::OK && is_binary(&resp.content_type) => t,
            _ => &self.reply,
        };
        let parsed = if self.needs_parsed {
            serde_json::from_slice(&resp.body).ok()
        } else {
            None
        };
        let rv = ResponseVars {
            status: resp.status.as_u16(),
            body: &resp.body,
            content_type: &resp.content_type,
            parsed,
        };
        let user = req.conn.user_id();
        let ctx = Ctx {
            response: Some(&rv),
            ..super::message_ctx(req, &user)
        };
        let mut out = Vec::with_capacity(resp.body.len() + 96);
        template.render_reply(&ctx, req.request_id.as_ref(), &mut out);
        let outcome = if resp.status.is_server_error() {
            Outcome::BackendError
        } else {
            Outcome::Ok
        };
        Reply::from_json(out, outcome)
    }
}

impl ForwardSpec {
    /// Fetches an upload by URL, from an allowed host only, within the size and time caps.
    async fn fetch_cdn(
        &self,
        obj: &serde_json::Map<String, Value>,
    ) -> Result<(Bytes, String), Failure> {
        let cdn = self.cdn.as_ref().ok_or_else(|| {
            Failure::bad(403, "Uploads by URL (_cdn_url) are not enabled".to_owned())
        })?;
        let url = obj
            .get("_cdn_url")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::bad(400, "_cdn_url must be a string".to_owned()))?;
        let mut uri = cdn_uri(url, cdn)
            .map_err(|why| Failure::bad(403, format!("_cdn_url refused: {why}")))?;
        let deadline = tokio::time::Instant::now() + cdn.timeout;
        let mut redirects = 0;
        let resp = loop {
            let host = uri.host().unwrap_or_default().to_owned();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let resp = self
                .upstream
                .pool()
                .send_outbound(Method::GET, uri.clone(), None, &[], left, cdn.max_bytes)
                .await;
            let Ok(r) = &resp else {
                break resp.map(|r| (r, host));
            };
            let Some(next) = r.location.as_deref().filter(|_| r.status.is_redirection()) else {
                break resp.map(|r| (r, host));
            };
            redirects += 1;
            if redirects > cdn.follow_redirects {
                return Err(Failure::bad(
                    502,
                    format!(
                        "CDN fetch redirected more than {} times",
                        cdn.follow_redirects
                    ),
                ));
            }
            // A relative Location resolves against the URL that answered.
            let absolute = if next.starts_with('/') {
                format!(
                    "{}://{}{next}",
                    uri.scheme_str().unwrap_or("https"),
                    uri.authority().map(|a| a.as_str()).unwrap_or("")
                )
            } else {
                next.to_owned()
            };
            uri = cdn_uri(&absolute, cdn)
                .map_err(|why| Failure::bad(403, format!("_cdn_url redirect refused: {why}")))?;
        };
        let (resp, host) = resp.map_err(|e| match e {
            BackendError::TooLarge(n) => {
                Failure::bad(413, format!("_cdn_url file is over {n} bytes"))
            }
            BackendError::Timeout => Failure {
                status: 504,
                message: "CDN fetch timeout".to_owned(),
                code: None,
                outcome: Outcome::Timeout,
            },
            other => Failure {
                status: 502,
                message: format!("CDN fetch failed: {other}"),
                code: None,
                outcome: Outcome::BackendError,
            },
        })?;
        if resp.status != hyper::StatusCode::OK {
            return Err(Failure {
                status: 502,
                message: format!("CDN answered {}", resp.status.as_u16()),
                code: None,
                outcome: Outcome::BackendError,
            });
        }
        tracing::info!(%host, bytes = resp.body.len(), "fetched upload from CDN");
        let content_type = obj
            .get("_content_type")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .filter(|c| !c.is_empty())
            .or_else(|| (!resp.content_type.is_empty()).then(|| resp.content_type.clone()))
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        Ok((resp.body, content_type))
    }
}

/// Checks a client-supplied URL against the CDN allowlist: scheme, no credentials, exact host.
pub fn cdn_uri(url: &str, cdn: &CdnSpec) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if cdn.allow_http => {}
        Some(other) => return Err(format!("scheme {other} not allowed")),
        None => return Err("not an absolute URL".to_owned()),
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in URLs are not allowed".to_owned());
    }
    let full = authority.as_str().to_ascii_lowercase();
    let host = authority.host().to_ascii_lowercase();
    let allowed = cdn
        .allow_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .any(|h| h == full || (authority.port().is_none() && h == host));
    if allowed {
        Ok(uri)
    } else {
        Err(format!("host {full} is not in cdn_uploads.allow_hosts"))
    }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::is_binary;

    #[test]
    fn cdn_allowlist() {
        let cdn = super::CdnSpec {
            allow_hosts: vec!["cdn.example.com".into(), "127.0.0.1:9000".into()],
            allow_http: false,
            max_bytes: 1,
            timeout: std::time::Duration::from_secs(1),
            follow_redirects: 0,
        };
        assert!(super::cdn_uri("https://cdn.example.com/a.mp4", &cdn).is_ok());
        assert!(super::cdn_uri("https://CDN.example.com/a.mp4", &cdn).is_ok());
        assert!(super::cdn_uri("http://cdn.example.com/a.mp4", &cdn).is_err());
        assert!(super::cdn_uri("https://cdn.example.com:444/a", &cdn).is_err());
        assert!(super::cdn_uri("https://evil.com/a", &cdn).is_err());
        assert!(super::cdn_uri("https://cdn.example.com@evil.com/a", &cdn).is_err());
        assert!(super::cdn_uri("https://evil.com#@cdn.example.com/", &cdn).is_err());
        assert!(super::cdn_uri("file:///etc/passwd", &cdn).is_err());
        assert!(super::cdn_uri("/relative", &cdn).is_err());
        assert!(super::cdn_uri("https://127.0.0.1:9000/x", &cdn).is_ok());
        assert!(super::cdn_uri("https://127.0.0.1/x", &cdn).is_err());
    }

    #[test]
    fn binary_types() {
        assert!(is_binary("video/mp4"));
        assert!(is_binary("image/png"));
        assert!(is_binary("audio/wav"));
        assert!(is_binary("application/octet-stream"));
        assert!(!is_binary("application/json"));
        assert!(!is_binary("text/plain; charset=utf-8"));
    }
}

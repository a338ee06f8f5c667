//! The `forward` handler: one HTTP call to the backend per message, and a reply rendered from the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use globset::{GlobMatcher, GlobSet};
use hyper::Method;
use serde_json::Value;
use tower::Service;

use super::HandlerFuture;
use crate::backend::{Backend, BackendError};
use crate::codec::{Outcome, Reply, Request};
use crate::pathsafe;
use crate::template::{Ctx, ErrorVars, ResponseVars, Template};

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
    pub target: Target,
    pub methods: Vec<Method>,
    pub allow: GlobSet,
    pub deny: GlobSet,
    pub base64_uploads: bool,
    pub timeout: Duration,
    pub timeouts: Vec<TimeoutRule>,
    pub add_connection_id: Vec<(Method, GlobMatcher)>,
    pub reply: Template,
    pub reply_binary: Option<Template>,
    pub on_error: Template,
    pub needs_parsed: bool,
}

/// The forward service: cheap to clone, shares the backend pool.
#[derive(Clone)]
pub struct ForwardHandler {
    backend: Arc<Backend>,
    spec: Arc<ForwardSpec>,
}

impl ForwardHandler {
    pub fn new(backend: Arc<Backend>, spec: ForwardSpec) -> Self {
        Self {
            backend,
            spec: Arc::new(spec),
        }
    }
}

impl Service<Request> for ForwardHandler {
    type Response = Reply;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let backend = self.backend.clone();
        let spec = self.spec.clone();
        Box::pin(async move { Ok(spec.run(&backend, req).await) })
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
            BackendError::TooLarge(_) | BackendError::Failed(_) => (500, None, Outcome::BackendError),
        };
        Failure {
            status,
            message: e.to_string(),
            code,
            outcome,
        }
    }
}

/// Whether a content type is sent back as base64 rather than JSON or text.
pub fn is_binary(content_type: &str) -> bool {
    let ct = content_type.trim_start();
    ["video/", "audio/", "image/"].iter().any(|p| ct.starts_with(p))
        || ct.starts_with("application/octet-stream")
}

impl ForwardSpec {
    async fn run(&self, backend: &Backend, req: Request) -> Reply {
        let rid = req.request_id.as_ref();
        match self.call(backend, &req).await {
            Ok(reply) => reply,
            Err(f) => {
                let ev = ErrorVars {
                    status: f.status,
                    message: &f.message,
                    code: f.code,
                    detail: None,
                };
                let ctx = Ctx {
                    message: Some(&req.msg),
                    connection_id: Some(&req.conn.id),
                    response: None,
                    error: Some(&ev),
                };
                let mut out = Vec::with_capacity(128);
                self.on_error.render_reply(&ctx, rid, &mut out);
                Reply::from_json(out, f.outcome)
            }
        }
    }

    async fn call(&self, backend: &Backend, req: &Request) -> Result<Reply, Failure> {
        let msg = &req.msg;
        let base_ctx = Ctx {
            message: Some(msg),
            connection_id: Some(&req.conn.id),
            ..Ctx::default()
        };
        let (method, raw_path, body): (Method, String, Option<Value>) = match &self.target {
            Target::FromMessage => {
                let m = match msg.get("method") {
                    None | Some(Value::Null) => "GET".to_owned(),
                    Some(Value::String(s)) => s.to_ascii_uppercase(),
                    Some(other) => {
                        return Err(Failure::bad(400, format!("Unsupported method: {other}")));
                    }
                };
                let method = self
                    .methods
                    .iter()
                    .find(|allowed| allowed.as_str() == m)
                    .cloned()
                    .ok_or_else(|| Failure::bad(400, format!("Unsupported method: {m}")))?;
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

        let safe = pathsafe::normalize(&raw_path)
            .map_err(|e| Failure::bad(400, format!("Invalid path {raw_path:?}: {e}")))?;
        if !self.allow.is_match(&safe.decoded) || self.deny.is_match(&safe.decoded) {
            return Err(Failure::bad(403, format!("Path not allowed: {}", safe.decoded)));
        }

        let mut upload = false;
        let payload: Option<(Bytes, String)> = match body {
            None | Some(Value::Null) => None,
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
                            return Err(Failure::bad(400, "_base64_content must be a string".to_owned()));
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
                        obj.insert("connection_id".to_owned(), Value::from(req.conn.id.as_ref()));
                    }
                    Some((json_bytes(&Value::Object(obj)), "application/json".to_owned()))
                }
            }
            Some(other) => Some((json_bytes(&other), "application/json".to_owned())),
        };

        let timeout = self
            .timeouts
            .iter()
            .find(|r| {
                (!r.upload || upload)
                    && r.method.as_ref().is_none_or(|m| *m == method)
                    && r.path.is_match(&safe.decoded)
            })
            .map_or(self.timeout, |r| r.timeout);

        let resp = backend
            .call(
                method,
                &safe.wire,
                payload.as_ref().map(|(b, ct)| (b.clone(), ct.as_str())),
                timeout,
            )
            .await?;
        drop(payload);

        let status = resp.status.as_u16();
        let template = match &self.reply_binary {
            Some(t) if resp.status.is_success() && is_binary(&resp.content_type) => t,
            _ => &self.reply,
        };
        let parsed = if self.needs_parsed {
            serde_json::from_slice(&resp.body).ok()
        } else {
            None
        };
        let rv = ResponseVars {
            status,
            body: &resp.body,
            content_type: &resp.content_type,
            parsed,
        };
        let ctx = Ctx {
            response: Some(&rv),
            ..base_ctx
        };
        let mut out = Vec::with_capacity(resp.body.len() + 96);
        template.render_reply(&ctx, req.request_id.as_ref(), &mut out);
        let outcome = if resp.status.is_server_error() {
            Outcome::BackendError
        } else {
            Outcome::Ok
        };
        Ok(Reply::from_json(out, outcome))
    }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::is_binary;

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

//! The WebRTC signaling relay: offers, trickle ICE, and closing a connection's sessions on disconnect.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tower::Service;

use super::HandlerFuture;
use crate::backend::{Backend, BackendError};
use crate::codec::{Outcome, ProtocolError, Reply, Request, error_json, error_reply};
use crate::session::ConnCtx;

/// Which signaling step a route performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Offer,
    IceCandidate,
}

/// Signaling settings, compiled at load.
#[derive(Debug)]
pub struct SignalingSpec {
    pub action: Action,
    /// The offer endpoint; sessions live at `<path>/<id>`.
    pub path: String,
    pub timeout: Duration,
    pub add_connection_id: bool,
}

/// The signaling service.
#[derive(Clone)]
pub struct SignalingHandler {
    backend: Arc<Backend>,
    spec: Arc<SignalingSpec>,
}

impl SignalingHandler {
    pub fn new(backend: Arc<Backend>, spec: SignalingSpec) -> Self {
        Self {
            backend,
            spec: Arc::new(spec),
        }
    }
}

impl Service<Request> for SignalingHandler {
    type Response = Reply;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let backend = self.backend.clone();
        let spec = self.spec.clone();
        Box::pin(async move {
            Ok(match spec.action {
                Action::Offer => offer(&backend, &spec, req).await,
                Action::IceCandidate => ice_candidate(&backend, &spec, req).await,
            })
        })
    }
}

/// A reply object with `request_id` echoed.
fn object_reply(
    request_id: Option<&Value>,
    mut obj: Map<String, Value>,
    outcome: Outcome,
) -> Reply {
    if let Some(rid) = request_id {
        obj.insert("request_id".to_owned(), rid.clone());
    }
    Reply::from_json(serde_json::to_vec(&obj).unwrap_or_default(), outcome)
}

fn error(request_id: Option<&Value>, msg: &str, detail: Option<&str>, outcome: Outcome) -> Reply {
    Reply::from_json(error_json(request_id, msg, None, detail), outcome)
}

fn session_path(base: &str, id: &str) -> String {
    let enc: String =
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).collect();
    format!("{base}/{enc}")
}

async fn offer(backend: &Backend, spec: &SignalingSpec, req: Request) -> Reply {
    let rid = req.request_id.as_ref();
    let msg = &req.msg;
    let mut body = Map::new();
    body.insert(
        "sdp".to_owned(),
        msg.get("sdp").cloned().unwrap_or(Value::Null),
    );
    body.insert(
        "type".to_owned(),
        msg.get("sdp_type")
            .cloned()
            .unwrap_or_else(|| Value::from("offer")),
    );
    if let Some(p) = msg.get("initialParameters").filter(|p| !p.is_null()) {
        body.insert("initialParameters".to_owned(), p.clone());
    }
    if spec.add_connection_id {
        body.insert(
            "connection_id".to_owned(),
            Value::from(req.conn.id.as_ref()),
        );
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let result = backend
        .call(
            Method::POST,
            &spec.path,
            Some((bytes, "application/json")),
            spec.timeout,
        )
        .await;
    match result {
        Ok(resp) if resp.status == StatusCode::OK => {
            let data: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            let Some(session_id) = data.get("sessionId").and_then(Value::as_str) else {
                return error(
                    rid,
                    "Offer failed: backend answer has no sessionId",
                    Some(&String::from_utf8_lossy(&resp.body)),
                    Outcome::BackendError,
                );
            };
            req.conn.add_session(session_id);
            tracing::info!(session = session_id, "WebRTC session opened");
            let mut obj = Map::new();
            obj.insert("type".to_owned(), Value::from("answer"));
            obj.insert(
                "sdp".to_owned(),
                data.get("sdp").cloned().unwrap_or(Value::Null),
            );
            obj.insert(
                "sdp_type".to_owned(),
                data.get("type").cloned().unwrap_or(Value::Null),
            );
            obj.insert("sessionId".to_owned(), Value::from(session_id));
            object_reply(rid, obj, Outcome::Ok)
        }
        Ok(resp) => error(
            rid,
            &format!("Offer failed: {}", resp.status.as_u16()),
            Some(&String::from_utf8_lossy(&resp.body)),
            Outcome::BackendError,
        ),
        Err(BackendError::Timeout) => error(
            rid,
            "WebRTC offer timeout - pipeline may still be loading",
            None,
            Outcome::Timeout,
        ),
        Err(BackendError::Unavailable) => error_reply(rid, &ProtocolError::BackendUnavailable),
        Err(e) => error(
            rid,
            &format!("WebRTC offer failed: {e}"),
            None,
            Outcome::BackendError,
        ),
    }
}

async fn ice_candidate(backend: &Backend, spec: &SignalingSpec, req: Request) -> Reply {
    let rid = req.request_id.as_ref();
    let msg = &req.msg;
    let named = msg.get("sessionId").and_then(Value::as_str);
    let session = match named {
        Some(id) => {
            if !req.conn.owns_session(id) {
                tracing::warn!(
                    session = id,
                    "ICE candidate for a session this connection did not open"
                );
                return Reply::from_json(
                    error_json(
                        rid,
                        "Unknown session ID: not opened by this connection",
                        Some("SESSION_NOT_OWNED"),
                        None,
                    ),
                    Outcome::Rejected,
                );
            }
            id.to_owned()
        }
        None => match req.conn.last_session() {
            Some(id) => id,
            None => {
                return error(
                    rid,
                    "No session ID available for ICE candidate",
                    None,
                    Outcome::Rejected,
                );
            }
        },
    };
    let candidate = match msg.get("candidate") {
        None | Some(Value::Null) => {
            let obj = json!({"type": "icecandidate_ack", "status": "end_of_candidates"});
            return object_reply(
                rid,
                obj.as_object().cloned().unwrap_or_default(),
                Outcome::Ok,
            );
        }
        Some(c) => c,
    };
    let field = |k: &str| candidate.get(k).cloned().unwrap_or(Value::Null);
    let body = json!({"candidates": [{
        "candidate": field("candidate"),
        "sdpMid": field("sdpMid"),
        "sdpMLineIndex": field("sdpMLineIndex"),
    }]});
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let result = backend
        .call(
            Method::PATCH,
            &session_path(&spec.path, &session),
            Some((bytes, "application/json")),
            spec.timeout,
        )
        .await;
    match result {
        Ok(resp) if resp.status == StatusCode::NO_CONTENT => {
            let obj = json!({"type": "icecandidate_ack", "status": "ok"});
            object_reply(
                rid,
                obj.as_object().cloned().unwrap_or_default(),
                Outcome::Ok,
            )
        }
        Ok(resp) => error(
            rid,
            &format!("ICE candidate failed: {}", resp.status.as_u16()),
            Some(&String::from_utf8_lossy(&resp.body)),
            Outcome::BackendError,
        ),
        Err(BackendError::Timeout) => error(rid, "ICE candidate timeout", None, Outcome::Timeout),
        Err(BackendError::Unavailable) => error_reply(rid, &ProtocolError::BackendUnavailable),
        Err(e) => error(
            rid,
            &format!("ICE candidate failed: {e}"),
            None,
            Outcome::BackendError,
        ),
    }
}

/// DELETEs every session `conn` opened; run on disconnect.
pub async fn close_sessions(backend: &Backend, offer_path: &str, conn: &ConnCtx) {
    for id in conn.take_sessions() {
        let result = backend
            .call(
                Method::DELETE,
                &session_path(offer_path, &id),
                None,
                Duration::from_secs(10),
            )
            .await;
        match result {
            Ok(r) => {
                tracing::info!(session = %id, status = r.status.as_u16(), "WebRTC session closed")
            }
            Err(e) => tracing::warn!(session = %id, error = %e, "could not close WebRTC session"),
        }
    }
}

//! The WebRTC signaling relay: offers, trickle ICE, and closing a connection's sessions on disconnect.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::Handle;
use crate::backend::{BackendError, Upstream};
use crate::conn::ConnHandle;
use crate::envelope::{Answer, Outcome, Refuse, Reply, Request, refuse};

/// The WebRTC sessions one connection opened, oldest first (a per-connection extension).
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    ids: Vec<String>,
    /// Offers sent and not answered yet; each may become a session.
    pending: usize,
}

/// An offer's place among the connection's sessions, held until its answer is in.
struct Reservation(Arc<Sessions>);

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut open = self.0.open();
        open.pending = open.pending.saturating_sub(1);
    }
}

impl Sessions {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // A poisoned lock only means a panic elsewhere mid-push; the list is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, id: &str) {
        let mut s = self.open();
        if !s.ids.iter().any(|x| x == id) {
            s.ids.push(id.to_owned());
        }
    }

    pub fn owns(&self, id: &str) -> bool {
        self.open().ids.iter().any(|x| x == id)
    }

    pub fn last(&self) -> Option<String> {
        self.open().ids.last().cloned()
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.open().ids)
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.open().ids.len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.open().ids.is_empty()
    }

    /// A place for one more offer within `max` sessions (open and pending together). When
    /// full, the oldest open session is given up for it (returned, to be closed), or, with
    /// `refuse` or when every place is a pending offer, the offer is refused.
    fn reserve(
        self: &Arc<Self>,
        max: usize,
        refuse: bool,
    ) -> Result<(Reservation, Option<String>), SignalingError> {
        let mut open = self.open();
        let evicted = if open.ids.len() + open.pending < max {
            None
        } else if refuse || open.ids.is_empty() {
            return Err(SignalingError::TooManySessions(max));
        } else {
            Some(open.ids.remove(0))
        };
        open.pending += 1;
        drop(open);
        Ok((Reservation(self.clone()), evicted))
    }
}

/// Why a signaling step failed, as the protocol words it.
#[derive(Debug, thiserror::Error)]
enum SignalingError {
    #[error("Offer failed: backend answer has no sessionId")]
    NoSessionId { body: String },
    #[error("Offer failed: {status}")]
    OfferStatus { status: u16, body: String },
    #[error("WebRTC offer timeout - pipeline may still be loading")]
    OfferTimeout,
    #[error("WebRTC offer failed: {0}")]
    OfferFailed(BackendError),
    #[error("Unknown session ID: not opened by this connection")]
    NotOwned,
    #[error("No session ID available for ICE candidate")]
    NoSession,
    #[error("ICE candidate failed: {status}")]
    IceStatus { status: u16, body: String },
    #[error("ICE candidate timeout")]
    IceTimeout,
    #[error("ICE candidate failed: {0}")]
    IceFailed(BackendError),
    #[error("backend unavailable")]
    Unavailable,
    #[error("Too many WebRTC sessions on this connection (at most {0})")]
    TooManySessions(usize),
}

impl Refuse for SignalingError {
    fn code(&self) -> Option<&'static str> {
        match self {
            SignalingError::NotOwned => Some("SESSION_NOT_OWNED"),
            SignalingError::Unavailable => Some("BACKEND_UNAVAILABLE"),
            SignalingError::TooManySessions(_) => Some("TOO_MANY_SESSIONS"),
            _ => None,
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            SignalingError::NoSessionId { body }
            | SignalingError::OfferStatus { body, .. }
            | SignalingError::IceStatus { body, .. } => Some(body),
            _ => None,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            SignalingError::NotOwned
            | SignalingError::NoSession
            | SignalingError::TooManySessions(_) => Outcome::Rejected,
            SignalingError::OfferTimeout | SignalingError::IceTimeout => Outcome::Timeout,
            SignalingError::Unavailable => Outcome::Unavailable,
            _ => Outcome::BackendError,
        }
    }
}

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
    /// What offers get with `add_connection_id`.
    pub add_fields: super::AddFields,
    /// Sessions one connection may hold (offers in flight included).
    pub max_sessions: usize,
    /// Refuse an offer over `max_sessions` instead of closing the oldest session for it.
    pub refuse_over_max: bool,
}

/// The signaling handler of one route.
pub struct SignalingHandler {
    upstream: Arc<Upstream>,
    spec: SignalingSpec,
}

impl SignalingHandler {
    pub fn new(upstream: Arc<Upstream>, spec: SignalingSpec) -> Self {
        Self { upstream, spec }
    }
}

impl Handle for SignalingHandler {
    async fn handle(self: Arc<Self>, req: Request) -> Answer {
        let rid = req.request_id.clone();
        let result = match self.spec.action {
            Action::Offer => offer(&self.upstream, &self.spec, &req).await,
            Action::IceCandidate => ice_candidate(&self.upstream, &self.spec, &req).await,
        };
        Answer::Reply(result.unwrap_or_else(|e| refuse(rid.as_ref(), &e)))
    }
}

/// A session id goes into one path segment: everything but letters, digits, `-`, `_` and
/// `~` is encoded, so a uuid stays as written and no id can be a `.` or `..` segment.
const SESSION_ID_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn session_path(base: &str, id: &str) -> String {
    let enc: String = percent_encoding::utf8_percent_encode(id, SESSION_ID_ENCODE).collect();
    format!("{base}/{enc}")
}

async fn offer(
    upstream: &Upstream,
    spec: &SignalingSpec,
    req: &Request,
) -> Result<Reply, SignalingError> {
    let msg = &req.msg;
    let sessions = req.conn.state::<Sessions>();
    let (_place, evicted) = sessions.reserve(spec.max_sessions, spec.refuse_over_max)?;
    if let Some(old) = evicted {
        // The oldest session makes room: a client that starts and stops streams on one
        // socket leaves stopped sessions behind, and the backend is told they are gone.
        tracing::info!(session = %old, limit = spec.max_sessions, "closing the oldest WebRTC session for a new offer");
        close_session(upstream, &spec.path, &old).await;
    }
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
        spec.add_fields.apply(req, &mut body);
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let resp = upstream
        .call(
            Method::POST,
            &spec.path,
            Some((bytes, "application/json")),
            spec.timeout,
        )
        .await
        .map_err(|e| match e {
            BackendError::Timeout => SignalingError::OfferTimeout,
            BackendError::Unavailable => SignalingError::Unavailable,
            other => SignalingError::OfferFailed(other),
        })?;
    if resp.status != StatusCode::OK {
        return Err(SignalingError::OfferStatus {
            status: resp.status.as_u16(),
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    let data: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let Some(session_id) = data.get("sessionId").and_then(Value::as_str) else {
        return Err(SignalingError::NoSessionId {
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    };
    sessions.add(session_id);
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
    Ok(Reply::object(req.request_id.as_ref(), obj, Outcome::Ok))
}

async fn ice_candidate(
    upstream: &Upstream,
    spec: &SignalingSpec,
    req: &Request,
) -> Result<Reply, SignalingError> {
    let rid = req.request_id.as_ref();
    let msg = &req.msg;
    let sessions = req.conn.state::<Sessions>();
    // A null or absent id means "this connection's latest session" (the 0.2.3 browser
    // adapter sends `sessionId: null` before it knows one).
    let session = match msg.get("sessionId").and_then(Value::as_str) {
        Some(id) => {
            if !sessions.owns(id) {
                tracing::warn!(
                    session = id,
                    "ICE candidate for a session this connection did not open"
                );
                return Err(SignalingError::NotOwned);
            }
            id.to_owned()
        }
        None => sessions.last().ok_or(SignalingError::NoSession)?,
    };
    let candidate = match msg.get("candidate") {
        None | Some(Value::Null) => {
            let obj = json!({"type": "icecandidate_ack", "status": "end_of_candidates"});
            return Ok(Reply::value(rid, obj, Outcome::Ok));
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
    let resp = upstream
        .call(
            Method::PATCH,
            &session_path(&spec.path, &session),
            Some((bytes, "application/json")),
            spec.timeout,
        )
        .await
        .map_err(|e| match e {
            BackendError::Timeout => SignalingError::IceTimeout,
            BackendError::Unavailable => SignalingError::Unavailable,
            other => SignalingError::IceFailed(other),
        })?;
    if resp.status != StatusCode::NO_CONTENT {
        return Err(SignalingError::IceStatus {
            status: resp.status.as_u16(),
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    let obj = json!({"type": "icecandidate_ack", "status": "ok"});
    Ok(Reply::value(rid, obj, Outcome::Ok))
}

/// DELETEs every session `conn` opened, a few at a time; run on disconnect.
pub async fn close_sessions(upstream: &Upstream, offer_path: &str, conn: &ConnHandle) {
    use futures_util::StreamExt;
    let Some(sessions) = conn.existing_state::<Sessions>() else {
        return;
    };
    futures_util::stream::iter(sessions.take())
        .for_each_concurrent(CLOSE_CONCURRENCY, |id| async move {
            close_session(upstream, offer_path, &id).await;
        })
        .await;
}

/// DELETEs one session at the backend; a failure is logged.
async fn close_session(upstream: &Upstream, offer_path: &str, id: &str) {
    let result = upstream
        .call(
            Method::DELETE,
            &session_path(offer_path, id),
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

/// Sessions closed at once on disconnect: many sessions end in a few round trips, and the
/// backend is not flooded.
const CLOSE_CONCURRENCY: usize = 8;

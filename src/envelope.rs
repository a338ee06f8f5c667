//! The message envelope: a decoded request, the answer it gets, and the one place a failure becomes a reply.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::conn::ConnHandle;
use crate::json::kind_of;

/// One decoded inbound message on its way through the route stack.
#[derive(Debug)]
pub struct Request {
    /// The whole message, parsed once.
    pub msg: Value,
    /// The message's `request_id`, echoed verbatim in the reply.
    pub request_id: Option<Value>,
    /// The connection it came from.
    pub conn: Arc<ConnHandle>,
}

/// How a message ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The client's message was refused (invalid, unknown, over a limit).
    Rejected,
    /// The backend answered with an error status or an unusable body.
    BackendError,
    /// The backend could not be reached or is not ready.
    Unavailable,
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Rejected,
        Outcome::BackendError,
        Outcome::Unavailable,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::BackendError => "backend_error",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A reply ready for the socket: one JSON object as text.
#[derive(Debug)]
pub struct Reply {
    pub text: String,
    pub outcome: Outcome,
}

impl Reply {
    /// Wraps rendered JSON bytes (always valid UTF-8: they come from serde_json and templates).
    pub fn from_json(bytes: Vec<u8>, outcome: Outcome) -> Reply {
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Reply { text, outcome }
    }

    /// A JSON object with `request_id` echoed.
    pub fn object(
        request_id: Option<&Value>,
        mut obj: Map<String, Value>,
        outcome: Outcome,
    ) -> Reply {
        if let Some(rid) = request_id {
            obj.insert("request_id".to_owned(), rid.clone());
        }
        Reply::from_json(serde_json::to_vec(&obj).unwrap_or_default(), outcome)
    }

    /// `value` (an object) with `request_id` echoed.
    pub fn value(request_id: Option<&Value>, value: Value, outcome: Outcome) -> Reply {
        match value {
            Value::Object(obj) => Reply::object(request_id, obj, outcome),
            other => Reply::from_json(serde_json::to_vec(&other).unwrap_or_default(), outcome),
        }
    }
}

/// What a handler gives back for one message.
#[derive(Debug)]
pub enum Answer {
    /// One reply, sent as it is.
    Reply(Reply),
    /// Answered another way: on the connection's push channel (a chunked download's
    /// header and chunks, in order), or, for a download acknowledgement without a
    /// `request_id`, by the download's own progress.
    Streamed,
}

impl Answer {
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Reply(r) => r.outcome,
            Answer::Streamed => Outcome::Ok,
        }
    }
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Answer {
        Answer::Reply(r)
    }
}

/// A failure that is answered with a `{"type":"error",…}` reply.
///
/// Every error type of the data path implements this; [`refuse`] is the one place any
/// of them becomes a reply.
pub trait Refuse: std::fmt::Display {
    /// The machine-readable code, where the protocol has one.
    fn code(&self) -> Option<&'static str> {
        None
    }
    /// More about the failure (a backend's answer), as the protocol's `detail`.
    fn detail(&self) -> Option<&str> {
        None
    }
    fn outcome(&self) -> Outcome {
        Outcome::Rejected
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a Value>,
    #[serde(rename = "type")]
    kind: &'static str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The error reply for `err`, with `request_id` echoed.
pub fn refuse(request_id: Option<&Value>, err: &dyn Refuse) -> Reply {
    refuse_with(request_id, err, Map::new())
}

/// The error reply for `err` with extra fields (a binary chunk's error names its upload and chunk).
pub fn refuse_with(
    request_id: Option<&Value>,
    err: &dyn Refuse,
    extra: Map<String, Value>,
) -> Reply {
    let message = err.to_string();
    let body = ErrorBody {
        request_id,
        kind: "error",
        error: &message,
        code: err.code(),
        detail: err.detail(),
        extra,
    };
    Reply::from_json(serde_json::to_vec(&body).unwrap_or_default(), err.outcome())
}

/// Errors the router itself answers with, outside any handler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProtocolError {
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Invalid message: expected a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("Invalid message: missing string field \"{0}\" to route on")]
    MissingRouteKey(String),
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    #[error("{0}")]
    Validation(String),
    #[error("Binary frames are not supported: send JSON text frames")]
    BinaryFrame,
    #[error("Too many requests in flight (limit {0}): wait for replies before sending more")]
    TooManyInFlight(usize),
    #[error("backend unavailable")]
    BackendUnavailable,
    #[error("Max duration exceeded")]
    MaxDuration,
    #[error("Rate limit exceeded: slow down")]
    RateLimited,
    #[error("Idle timeout: no message received")]
    IdleTimeout,
    #[error("Too many connections")]
    TooManyConnections,
    #[error("Access denied")]
    AccessDenied,
}

impl Refuse for ProtocolError {
    fn code(&self) -> Option<&'static str> {
        match self {
            ProtocolError::BinaryFrame => Some("BINARY_NOT_SUPPORTED"),
            ProtocolError::TooManyInFlight(_) => Some("TOO_MANY_IN_FLIGHT"),
            ProtocolError::BackendUnavailable => Some("BACKEND_UNAVAILABLE"),
            ProtocolError::MaxDuration => Some("MAX_DURATION_EXCEEDED"),
            ProtocolError::RateLimited => Some("RATE_LIMITED"),
            ProtocolError::IdleTimeout => Some("IDLE_TIMEOUT"),
            ProtocolError::Validation(_) => Some("VALIDATION_FAILED"),
            ProtocolError::TooManyConnections => Some("TOO_MANY_CONNECTIONS"),
            ProtocolError::AccessDenied => Some("ACCESS_DENIED"),
            _ => None,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            ProtocolError::BackendUnavailable => Outcome::Unavailable,
            _ => Outcome::Rejected,
        }
    }
}

/// A text frame decoded far enough to route: the message and its `request_id`.
pub fn decode(text: &str) -> Result<(Value, Option<Value>), ProtocolError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            let rid = map.get("request_id").cloned();
            Ok((Value::Object(map), rid))
        }
        Ok(other) => Err(ProtocolError::NotObject(kind_of(&other))),
        Err(e) => Err(ProtocolError::InvalidJson(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decode_keeps_request_id_verbatim() {
        let (msg, rid) = decode(r#"{"type":"ping","request_id":{"a":1}}"#).unwrap();
        assert_eq!(msg["type"], "ping");
        assert_eq!(rid, Some(json!({"a": 1})));
    }

    #[test]
    fn decode_errors_say_why() {
        let e = decode("{nope").unwrap_err();
        insta::assert_snapshot!(e.to_string(), @"Invalid JSON: key must be a string at line 1 column 2");
        let e = decode("[1]").unwrap_err();
        insta::assert_snapshot!(e.to_string(), @"Invalid message: expected a JSON object, got an array");
    }

    #[test]
    fn error_reply_shape() {
        let r = refuse(Some(&json!("r9")), &ProtocolError::BackendUnavailable);
        let v: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "request_id": "r9", "error": "backend unavailable", "code": "BACKEND_UNAVAILABLE"})
        );
        let r = refuse(None, &ProtocolError::UnknownType("x".into()));
        assert_eq!(
            r.text,
            r#"{"type":"error","error":"Unknown message type: x"}"#
        );
    }
}

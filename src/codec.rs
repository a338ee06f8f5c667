//! Text frame ⇄ message envelope: decoding inbound messages, and every error reply that crosses the socket.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::session::ConnCtx;

/// One decoded inbound message on its way through the route stack.
#[derive(Debug)]
pub struct Request {
    /// The whole message, parsed once.
    pub msg: Value,
    /// The message's `request_id`, echoed verbatim in the reply.
    pub request_id: Option<Value>,
    /// The connection it came from.
    pub conn: Arc<ConnCtx>,
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
}

/// Errors the router itself answers with; each becomes an `error` reply in [`error_reply`].
#[derive(Debug, thiserror::Error)]
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
}

impl ProtocolError {
    /// The machine-readable code, where the protocol has one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ProtocolError::BinaryFrame => Some("BINARY_NOT_SUPPORTED"),
            ProtocolError::TooManyInFlight(_) => Some("TOO_MANY_IN_FLIGHT"),
            ProtocolError::BackendUnavailable => Some("BACKEND_UNAVAILABLE"),
            ProtocolError::MaxDuration => Some("MAX_DURATION_EXCEEDED"),
            ProtocolError::RateLimited => Some("RATE_LIMITED"),
            ProtocolError::IdleTimeout => Some("IDLE_TIMEOUT"),
            ProtocolError::Validation(_) => Some("VALIDATION_FAILED"),
            _ => None,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            ProtocolError::BackendUnavailable => Outcome::Unavailable,
            _ => Outcome::Rejected,
        }
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
}

/// Renders a plain `{"type":"error",…}` reply.
pub fn error_json(
    request_id: Option<&Value>,
    error: &str,
    code: Option<&str>,
    detail: Option<&str>,
) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        request_id,
        kind: "error",
        error,
        code,
        detail,
    })
    .unwrap_or_default()
}

/// The one place a [`ProtocolError`] becomes a reply.
pub fn error_reply(request_id: Option<&Value>, err: &ProtocolError) -> Reply {
    Reply::from_json(
        error_json(request_id, &err.to_string(), err.code(), None),
        err.outcome(),
    )
}

/// A text frame decoded far enough to route: the message and its `request_id`.
pub fn decode(text: &str) -> Result<(Value, Option<Value>), (ProtocolError, Option<Value>)> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            let rid = map.get("request_id").cloned();
            Ok((Value::Object(map), rid))
        }
        Ok(other) => Err((ProtocolError::NotObject(kind_of(&other)), None)),
        Err(e) => Err((ProtocolError::InvalidJson(e.to_string()), None)),
    }
}

pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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
        let (e, _) = decode("{nope").unwrap_err();
        insta::assert_snapshot!(e.to_string(), @"Invalid JSON: key must be a string at line 1 column 2");
        let (e, _) = decode("[1]").unwrap_err();
        insta::assert_snapshot!(e.to_string(), @"Invalid message: expected a JSON object, got an array");
    }

    #[test]
    fn error_reply_shape() {
        let r = error_reply(Some(&json!("r9")), &ProtocolError::BackendUnavailable);
        let v: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "request_id": "r9", "error": "backend unavailable", "code": "BACKEND_UNAVAILABLE"})
        );
        let r = error_reply(None, &ProtocolError::UnknownType("x".into()));
        assert_eq!(
            r.text,
            r#"{"type":"error","error":"Unknown message type: x"}"#
        );
    }
}

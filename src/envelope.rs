//! The message envelope: a decoded request, the answer it gets, and the one place a failure becomes a reply.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::conn::ConnHandle;
use crate::json::kind_of;

/// One decoded inbound message on its way through the route stack.
#[derive(Debug)]
pub struct Request {
    /// The whole message, parsed once.
    pub msg: Value,
    /// The message's `request_id`, echoed verbatim in the reply.
    pub request_id: Option<RequestId>,
    /// The connection it came from.
    pub conn: Arc<ConnHandle>,
}

/// A message's `request_id`, as every reply echoes it: the same JSON the client sent.
///
/// serde_json (without `arbitrary_precision`) keeps integers within 64 bits exactly and
/// turns every other number into an f64, so `123456789012345678901234567890` would come
/// back as `1.2345678901234568e29`. An id holding such a number keeps the text the client
/// sent instead; every other id (a string, a 64-bit integer, …) is the parsed value, which
/// serde_json writes back as it came.
#[derive(Debug, Clone)]
pub enum RequestId {
    /// An id that serializes back to what was sent.
    Value(Value),
    /// An id with a number that an f64 would change: its JSON text as it was in the frame.
    Raw(Box<RawValue>),
}

impl RequestId {
    /// The id of a decoded frame: `parsed` (the frame's `request_id`), or, when it holds a
    /// number that is not a 64-bit integer, that field's text recovered from `frame`. The
    /// second parse runs for those ids only, so the usual string or integer costs nothing.
    pub fn from_frame(frame: &str, parsed: Value) -> RequestId {
        if !holds_inexact_number(&parsed) {
            return RequestId::Value(parsed);
        }
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(borrow)]
            request_id: Option<&'a RawValue>,
        }
        // A frame that cannot be read this way (a duplicate `request_id`) keeps the value.
        match serde_json::from_str::<IdOnly<'_>>(frame) {
            Ok(IdOnly {
                request_id: Some(raw),
            }) => RequestId::Raw(raw.to_owned()),
            _ => RequestId::Value(parsed),
        }
    }

    /// Writes the id's JSON text into `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            RequestId::Value(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            RequestId::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
        }
    }

    /// The id's JSON text.
    pub fn json_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            RequestId::Value(v) => v.to_string().into(),
            RequestId::Raw(raw) => raw.get().into(),
        }
    }
}

impl From<Value> for RequestId {
    fn from(v: Value) -> RequestId {
        RequestId::Value(v)
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &RequestId) -> bool {
        match (self, other) {
            (RequestId::Value(a), RequestId::Value(b)) => a == b,
            _ => self.json_text() == other.json_text(),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Value(v) => v.serialize(s),
            RequestId::Raw(raw) => raw.serialize(s),
        }
    }
}

/// Whether `v` holds a number serde_json did not keep exactly (anything but a 64-bit integer).
/// Depth is bounded by serde_json's recursion limit on the parse that made `v`.
fn holds_inexact_number(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(holds_inexact_number),
        Value::Object(map) => map.values().any(holds_inexact_number),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

/// `obj` as JSON text with `request_id` (when given) in it; a raw id goes first, as the
/// template renderer writes it.
pub fn object_json(request_id: Option<&RequestId>, mut obj: Map<String, Value>) -> Vec<u8> {
    match request_id {
        None => serde_json::to_vec(&obj).unwrap_or_default(),
        Some(RequestId::Value(v)) => {
            obj.insert("request_id".to_owned(), v.clone());
            serde_json::to_vec(&obj).unwrap_or_default()
        }
        Some(rid @ RequestId::Raw(_)) => {
            obj.remove("request_id");
            let rest = serde_json::to_vec(&obj).unwrap_or_default();
            let mut out = Vec::with_capacity(rest.len() + 64);
            out.extend_from_slice(b"{\"request_id\":");
            rid.write_json(&mut out);
            // `rest` is `{…}`: its fields follow the id.
            match rest.get(1..) {
                Some(fields) if fields != b"}" => {
                    out.push(b',');
                    out.extend_from_slice(fields);
                }
                _ => out.push(b'}'),
            }
            out
        }
    }
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
        request_id: Option<&RequestId>,
        obj: Map<String, Value>,
        outcome: Outcome,
    ) -> Reply {
        Reply::from_json(object_json(request_id, obj), outcome)
    }

    /// `value` (an object) with `request_id` echoed.
    pub fn value(request_id: Option<&RequestId>, value: Value, outcome: Outcome) -> Reply {
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
    request_id: Option<&'a RequestId>,
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
pub fn refuse(request_id: Option<&RequestId>, err: &dyn Refuse) -> Reply {
    refuse_with(request_id, err, Map::new())
}

/// The error reply for `err` with extra fields (a binary chunk's error names its upload and chunk).
pub fn refuse_with(
    request_id: Option<&RequestId>,
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
    #[error("Send {0} first: this connection has not identified its user")]
    AuthRequired(String),
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
            ProtocolError::AuthRequired(_) => Some("AUTH_REQUIRED"),
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
pub fn decode(text: &str) -> Result<(Value, Option<RequestId>), ProtocolError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            let rid = map
                .get("request_id")
                .map(|v| RequestId::from_frame(text, v.clone()));
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
        assert_eq!(rid, Some(RequestId::Value(json!({"a": 1}))));
    }

    /// Numbers an f64 would change come back digit for digit; the rest stay parsed values.
    #[test]
    fn request_ids_beyond_64_bits_are_echoed_as_sent() {
        for id in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "-123456789012345678901234567890",
            "1.50",
            "1e3",
            "0.1000000000000000000000001",
            r#"{"n": 123456789012345678901234567890, "s": "x"}"#,
            "[18446744073709551616]",
        ] {
            let frame = format!(r#"{{"type":"ping","request_id":{id}}}"#);
            let (_, rid) = decode(&frame).unwrap();
            let rid = rid.unwrap();
            assert!(matches!(rid, RequestId::Raw(_)), "{id}");
            assert_eq!(rid.json_text(), id);
            let r = refuse(Some(&rid), &ProtocolError::RateLimited);
            assert!(
                r.text.starts_with(&format!(r#"{{"request_id":{id},"#)),
                "{}",
                r.text
            );
            let mut obj = Map::new();
            obj.insert("type".to_owned(), json!("pong"));
            obj.insert("request_id".to_owned(), json!("stale"));
            let r = Reply::object(Some(&rid), obj, Outcome::Ok);
            assert_eq!(r.text, format!(r#"{{"request_id":{id},"type":"pong"}}"#));
            let r = Reply::object(Some(&rid), Map::new(), Outcome::Ok);
            assert_eq!(r.text, format!(r#"{{"request_id":{id}}}"#));
        }
        for (id, value) in [
            ("18446744073709551615", json!(u64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            (r#""r-1""#, json!("r-1")),
            ("null", Value::Null),
        ] {
            let frame = format!(r#"{{"request_id":{id},"type":"ping"}}"#);
            let (_, rid) = decode(&frame).unwrap();
            assert_eq!(rid, Some(RequestId::Value(value)), "{id}");
        }
        // Two `request_id` keys: the parsed (last) one, as before.
        let (_, rid) = decode(r#"{"request_id":1.5,"request_id":2.5}"#).unwrap();
        assert_eq!(rid.unwrap().json_text(), "2.5");
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
        let r = refuse(
            Some(&RequestId::Value(json!("r9"))),
            &ProtocolError::BackendUnavailable,
        );
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

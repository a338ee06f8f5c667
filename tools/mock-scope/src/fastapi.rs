//! FastAPI's answers as Scope's routes give them (`{"detail": …}` errors, pydantic's 422 lists) and the small HTTP helpers every handler uses.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// An error answer: FastAPI's `{"detail": <text or list>}` JSON, or (`plain`) starlette's
/// `text/plain` `Internal Server Error` for an exception that is not an `HTTPException`.
pub struct ApiError {
    status: StatusCode,
    detail: Value,
    plain: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: Value::String(detail.into()),
            plain: false,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// `fastapi/exception_handlers.py:request_validation_exception_handler`.
    pub fn unprocessable(errors: Vec<Value>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: Value::Array(errors),
            plain: false,
        }
    }

    /// starlette's `ServerErrorMiddleware`: 500, `text/plain`, not JSON.
    pub fn internal_plain() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: Value::Null,
            plain: true,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.plain {
            return (
                self.status,
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                "Internal Server Error",
            )
                .into_response();
        }
        json_response(self.status, &json!({ "detail": self.detail }))
    }
}

pub type ApiResult = Result<Response, ApiError>;

pub fn json_response(status: StatusCode, value: &Value) -> Response {
    json_bytes(status, Bytes::from(value.to_string()))
}

pub fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

pub fn ok_json(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

pub fn detail(status: StatusCode, msg: &str) -> Response {
    json_response(status, &json!({ "detail": msg }))
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub fn parse_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// A loose JSON object for the test-only endpoints (`/_mock/…`): 400 with serde's message.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
    }
}

/// A request body FastAPI reads into a pydantic model (`fastapi/routing.py`): 422 `missing` for an
/// empty body, `json_invalid` (with the character position) for bad JSON, `model_attributes_type`
/// for JSON that is not an object. `ctx.error` is Python's wording for the common cases.
pub fn body_model(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::unprocessable(vec![json!({
            "type": "missing", "loc": ["body"], "msg": "Field required", "input": null,
        })]));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::unprocessable(vec![model_type(
            json!(["body"]),
            other,
        )])),
        Err(e) => {
            let text = String::from_utf8_lossy(body);
            let pos = char_pos(&text, e.line(), e.column());
            let msg = python_json_error(&e.to_string());
            Err(ApiError::unprocessable(vec![json!({
                "type": "json_invalid", "loc": ["body", pos], "msg": "JSON decode error",
                "input": {}, "ctx": {"error": msg},
            })]))
        }
    }
}

/// Python's `json` wording for serde_json's error (approximate: the common cases).
fn python_json_error(serde: &str) -> String {
    let table = [
        ("EOF while parsing a value", "Expecting value"),
        ("expected value", "Expecting value"),
        ("expected ident", "Expecting value"),
        ("EOF while parsing an object", "Expecting ',' delimiter"),
        ("EOF while parsing a list", "Expecting ',' delimiter"),
        ("expected `,` or", "Expecting ',' delimiter"),
        ("expected `:`", "Expecting ':' delimiter"),
        (
            "key must be a string",
            "Expecting property name enclosed in double quotes",
        ),
        (
            "EOF while parsing a string",
            "Unterminated string starting at",
        ),
        ("trailing characters", "Extra data"),
        (
            "trailing comma",
            "Illegal trailing comma before end of object",
        ),
    ];
    table
        .iter()
        .find(|(k, _)| serde.starts_with(k))
        .map_or_else(|| serde.to_owned(), |(_, v)| (*v).to_owned())
}

/// The character index of serde's (1-based line, 1-based column), clamped to the text.
fn char_pos(text: &str, line: usize, column: usize) -> usize {
    let mut pos = 0;
    for (i, l) in text.split('\n').enumerate() {
        if i + 1 == line {
            return pos + column.saturating_sub(1).min(l.chars().count());
        }
        pos += l.chars().count() + 1;
    }
    text.chars().count()
}

/// What pydantic 2.12 says when a model (the body or a nested one) gets something that is not an
/// object.
pub fn model_type(loc: Value, input: Value) -> Value {
    json!({
        "type": "model_attributes_type", "loc": loc,
        "msg": "Input should be a valid dictionary or object to extract fields from",
        "input": input,
    })
}

/// Pydantic v2's checks of one model's fields, collecting every error as pydantic does.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    loc: Vec<Value>,
    pub errors: Vec<Value>,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, loc: &[Value]) -> Self {
        Self {
            obj,
            loc: loc.to_vec(),
            errors: Vec::new(),
        }
    }

    fn at(&self, key: &str) -> Value {
        let mut loc = self.loc.clone();
        loc.push(json!(key));
        Value::Array(loc)
    }

    fn error(&mut self, loc: Value, kind: &str, msg: &str, input: &Value) {
        self.errors
            .push(json!({"type": kind, "loc": loc, "msg": msg, "input": input}));
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A required `str`.
    pub fn req_str(&mut self, key: &str) -> Option<&'a str> {
        match self.obj.get(key) {
            None => {
                let input = Value::Object(self.obj.clone());
                self.error(self.at(key), "missing", "Field required", &input);
                None
            }
            Some(v) => self.string(key, v),
        }
    }

    fn string(&mut self, key: &str, v: &'a Value) -> Option<&'a str> {
        if let Some(s) = v.as_str() {
            return Some(s);
        }
        self.error(
            self.at(key),
            "string_type",
            "Input should be a valid string",
            v,
        );
        None
    }

    /// `str | None`.
    pub fn opt_str(&mut self, key: &str) -> Option<&'a str> {
        let v = self.present(key)?;
        self.string(key, v)
    }

    /// `dict | None`.
    pub fn opt_dict(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        let v = self.present(key)?;
        if let Some(m) = v.as_object() {
            return Some(m);
        }
        self.error(
            self.at(key),
            "dict_type",
            "Input should be a valid dictionary",
            v,
        );
        None
    }

    /// `list | None` (the items are checked by the caller).
    pub fn opt_list(&mut self, key: &str) -> Option<&'a Vec<Value>> {
        let v = self.present(key)?;
        if let Some(l) = v.as_array() {
            return Some(l);
        }
        self.error(self.at(key), "list_type", "Input should be a valid list", v);
        None
    }

    /// `list[str] | None`; pydantic does not turn numbers into strings.
    pub fn opt_list_str(&mut self, key: &str) -> Option<Vec<String>> {
        let items = self.opt_list(key)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => {
                    ok = false;
                    let mut loc = self.loc.clone();
                    loc.extend([json!(key), json!(i)]);
                    self.error(
                        Value::Array(loc),
                        "string_type",
                        "Input should be a valid string",
                        item,
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// `int | None`, lax as pydantic is: `1.0`, `"1"` and booleans pass.
    pub fn opt_int(&mut self, key: &str) -> Option<i64> {
        let v = self.present(key)?;
        let parsed = match v {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err((
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                )),
            },
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| {
                (
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                )
            }),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => Err(("int_type", "Input should be a valid integer")),
        };
        match parsed {
            Ok(i) => Some(i),
            Err((kind, msg)) => {
                self.error(self.at(key), kind, msg, v);
                None
            }
        }
    }

    /// A `Literal[...] | None` of strings.
    pub fn opt_literal(&mut self, key: &str, allowed: &[&str]) {
        let Some(v) = self.present(key) else { return };
        if v.as_str().is_some_and(|s| allowed.contains(&s)) {
            return;
        }
        let expected = match allowed {
            [one] => format!("'{one}'"),
            [init @ .., last] => format!(
                "{} or '{last}'",
                init.iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [] => String::new(),
        };
        self.errors.push(json!({
            "type": "literal_error", "loc": self.at(key),
            "msg": format!("Input should be {expected}"), "input": v,
            "ctx": {"expected": expected},
        }));
    }

    /// A nested model (`<Model> | None`): the object to check, or a `model_type` error.
    pub fn opt_model(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        let v = self.present(key)?;
        if let Some(m) = v.as_object() {
            return Some(m);
        }
        let err = model_type(self.at(key), v.clone());
        self.errors.push(err);
        None
    }

    /// The location of `key` inside this model, for a nested model's checks.
    pub fn loc_of(&self, key: &str) -> Vec<Value> {
        let mut loc = self.loc.clone();
        loc.push(json!(key));
        loc
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unprocessable(self.errors))
        }
    }
}

/// A query parameter FastAPI requires (`Query(...)`): 422 `missing` when absent.
pub fn required_query(uri: &Uri, name: &str) -> Result<String, ApiError> {
    query_param(uri, name).ok_or_else(|| {
        ApiError::unprocessable(vec![json!({
            "type": "missing", "loc": ["query", name], "msg": "Field required", "input": null,
        })])
    })
}

pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (url_decode(k) == name).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(format!("Invalid path parameter: {e}")))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Test-only endpoints the router can reach (`/api/v1/mock/…`: echo, slow, status, text, binary, json, stream, env) and the byte pattern the binary ones serve; the real server has none of them.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::fastapi::{
    ApiError, ApiResult, detail, ok_json, parse_json, path_param, query_param, sha256_hex,
};

const MAX_PATTERN_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_PATTERN_BYTES: u64 = 65536;
const ECHO_TEXT_LIMIT: usize = 4096;
/// Bounded so a forgotten `ms=` cannot wedge a test run.
pub const MAX_SLEEP_MS: u64 = 600_000;

/// The byte pattern repeats every 251 bytes, so one chunk whose length is a multiple of 251 can be
/// re-sliced for every chunk of an arbitrarily large body without recomputing or copying.
const PATTERN_PERIOD: usize = 251;
const PATTERN_CHUNK: usize = PATTERN_PERIOD * 261;

pub async fn mock_echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut header_map = Map::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match header_map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                header_map.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let body_json = parse_json(&body);
    let body_text = match (&body_json, body.len() < ECHO_TEXT_LIMIT) {
        (None, true) => std::str::from_utf8(&body).ok().map(str::to_owned),
        _ => None,
    };
    ok_json(&json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": header_map,
        "body_len": body.len(),
        "body_sha256": sha256_hex(&body),
        "body_json": body_json,
        "body_text": body_text,
    }))
}

pub async fn mock_slow(uri: Uri) -> ApiResult {
    let ms = match query_param(&uri, "ms") {
        None => 1000,
        Some(s) => match s.parse::<u64>() {
            Ok(ms) => ms.min(MAX_SLEEP_MS),
            Err(_) => return Err(ApiError::bad_request("ms must be a non-negative integer")),
        },
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(ok_json(&json!({ "slept_ms": ms })))
}

pub async fn mock_status(code: Result<Path<String>, PathRejection>) -> ApiResult {
    let code = path_param(code)?;
    // 1xx cannot be a final response (hyper would turn it into a 500).
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| *c >= 200)
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return Err(ApiError::bad_request(
            "status code must be an integer in 200..=999",
        ));
    };
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(status.into_response());
    }
    Ok(detail(status, &format!("mock status {}", status.as_u16())))
}

pub async fn mock_text() -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        "hello from mock-scope",
    )
        .into_response()
}

pub async fn mock_binary(uri: Uri) -> ApiResult {
    let size = size_param(&uri)?;
    let content_type = match query_param(&uri, "type") {
        None => HeaderValue::from_static("application/octet-stream"),
        Some(t) => match HeaderValue::from_str(&t) {
            Ok(v) => v,
            Err(_) => return Err(ApiError::bad_request("invalid content type")),
        },
    };
    Ok(pattern_response(size, content_type))
}

/// `GET /api/v1/mock/json?size=N`: a JSON object of exactly N bytes (at least 12), for the
/// benchmark's reply-size rows: `{"pad":"xxx…"}`.
pub async fn mock_json(uri: Uri) -> ApiResult {
    let size = usize::try_from(size_param(&uri)?).unwrap_or(usize::MAX);
    let mut body = Vec::with_capacity(size.max(12));
    body.extend_from_slice(br#"{"pad":""#);
    body.resize(size.max(12) - 2, b'x');
    body.extend_from_slice(br#""}"#);
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// An endless body (no length) of the pattern bytes, as fast as the reader takes it, under
/// `?type=` (default `text/event-stream`): what Scope's MJPEG, event and `output.ts` streams
/// look like to a proxy.
pub async fn mock_stream(uri: Uri) -> ApiResult {
    let content_type = match query_param(&uri, "type") {
        None => HeaderValue::from_static("text/event-stream"),
        Some(t) => {
            HeaderValue::from_str(&t).map_err(|_| ApiError::bad_request("invalid content type"))?
        }
    };
    Ok(endless(content_type))
}

/// `GET /api/v1/session/output.ts`: the session's MPEG-TS output, endless.
pub async fn output_ts() -> Response {
    endless(HeaderValue::from_static("video/mp2t"))
}

fn endless(content_type: HeaderValue) -> Response {
    let chunk = pattern_chunk();
    let body = Body::from_stream(futures_util::stream::repeat_with(move || {
        Ok::<_, Infallible>(chunk.clone())
    }));
    (StatusCode::OK, [(CONTENT_TYPE, content_type)], body).into_response()
}

pub async fn mock_env(name: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path_param(name)?;
    let value = std::env::var(&name).ok();
    Ok(ok_json(&json!({ "name": name, "value": value })))
}

pub fn size_param(uri: &Uri) -> Result<u64, ApiError> {
    match query_param(uri, "size") {
        None => Ok(DEFAULT_PATTERN_BYTES),
        Some(s) => s
            .parse::<u64>()
            .map(|n| n.min(MAX_PATTERN_BYTES))
            .map_err(|_| ApiError::bad_request("size must be a non-negative integer")),
    }
}

fn pattern_chunk() -> Bytes {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    CHUNK
        .get_or_init(|| {
            (0..PATTERN_CHUNK)
                .map(|i| ((i * 31 + 7) % PATTERN_PERIOD) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
        .clone()
}

/// Streams `size` bytes where byte i = (i * 31 + 7) % 251, without materialising the whole body.
pub fn pattern_response(size: u64, content_type: HeaderValue) -> Response {
    let chunk = pattern_chunk();
    let chunk_len = PATTERN_CHUNK as u64;
    let body = if size <= chunk_len {
        Body::from(chunk.slice(..usize::try_from(size).unwrap_or(PATTERN_CHUNK)))
    } else {
        let full = size / chunk_len;
        let rem = usize::try_from(size % chunk_len).unwrap_or(0);
        let pieces = (0..full)
            .map(move |_| PATTERN_CHUNK)
            .chain((rem > 0).then_some(rem));
        Body::from_stream(futures_util::stream::iter(
            pieces.map(move |len| Ok::<_, Infallible>(chunk.slice(..len))),
        ))
    };
    let mut resp = (StatusCode::OK, [(CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

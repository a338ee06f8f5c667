//! The control plane (`/_mock/…`: stats, reset, faults, exit, sessions, deleted), never counted and never logged; tests drive and inspect the mock through it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::exit_process;
use crate::fastapi::{ApiError, ApiResult, lock, ok_json, parse_object, query_param};
use crate::peer::PeerHandle;
use crate::serve::Shared;
use crate::state::{FaultRule, Faults, Session, Sessions};
use crate::testing::MAX_SLEEP_MS;

const EXIT_DELAY: Duration = Duration::from_millis(50);

pub async fn control_stats(State(state): Shared) -> Response {
    let inner = lock(&state.stats.inner);
    let by_route: Map<String, Value> = inner
        .by_route
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let recent: Vec<Value> = inner
        .recent
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.path,
                "content_type": r.content_type,
                "body_len": r.body_len,
                "body_sha256": r.body_sha256,
                "body_json": r.body_json,
            })
        })
        .collect();
    ok_json(&json!({
        "total": state.stats.total.load(Ordering::Relaxed),
        "connections_accepted": state.stats.connections_accepted.load(Ordering::Relaxed),
        "connections_closed": state.stats.connections_closed.load(Ordering::Relaxed),
        "by_route": by_route,
        "recent": recent,
    }))
}

/// Resets stats, sessions (and the deleted list) and faults; `?all=1` also forgets the loaded
/// pipeline, assets and plugins. The crash-after counter is never reset.
pub async fn control_reset(State(state): Shared, uri: Uri) -> Response {
    {
        let mut inner = lock(&state.stats.inner);
        state.stats.total.store(0, Ordering::Relaxed);
        inner.by_route.clear();
        inner.recent.clear();
    }
    *lock(&state.sessions) = Sessions::default();
    state.faults.store(Arc::new(Faults::default()));
    let all = query_param(&uri, "all").is_some_and(|v| matches!(v.as_str(), "1" | "true" | ""));
    if all {
        state.pipelines.forget();
        state.assets.clear();
        lock(&state.plugins).clear();
        lock(&state.downloads).clear();
    }
    ok_json(&json!({ "reset": true, "all": all }))
}

fn parse_fault_rules<T>(
    obj: &Map<String, Value>,
    field: &str,
    convert: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<FaultRule<T>>, ApiError> {
    let rules = match obj.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(rules)) => rules,
        Some(_) => return Err(ApiError::bad_request(format!("{field} must be an object"))),
    };
    rules
        .iter()
        .map(|(key, value)| {
            let (method, prefix) = match key.split_once(' ') {
                Some((m, p)) => (m.trim(), p.trim()),
                None => ("*", key.trim()),
            };
            if !prefix.starts_with('/') {
                return Err(ApiError::bad_request(format!(
                    "fault key {key:?} must be \"<METHOD> /path-prefix\""
                )));
            }
            let method = match method {
                "*" | "ANY" => None,
                m => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        return Err(ApiError::bad_request(format!("invalid method in {key:?}")));
                    }
                },
            };
            let Some(value) = convert(value) else {
                return Err(ApiError::bad_request(format!(
                    "invalid {field} value for {key:?}"
                )));
            };
            Ok(FaultRule {
                method,
                prefix: prefix.to_owned(),
                key: key.clone(),
                value,
            })
        })
        .collect()
}

pub async fn control_faults_set(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_object(&body)?
    };
    let delays = parse_fault_rules(&obj, "delay_ms", |v| {
        v.as_u64().map(|ms| ms.min(MAX_SLEEP_MS))
    })?;
    let statuses = parse_fault_rules(&obj, "status", |v| {
        v.as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c >= 200)
            .and_then(|c| StatusCode::from_u16(c).ok())
    })?;
    let faults = Faults { delays, statuses };
    let echo = faults.to_json();
    state.faults.store(Arc::new(faults));
    Ok(ok_json(&echo))
}

pub async fn control_faults_get(State(state): Shared) -> Response {
    ok_json(&state.faults.load().to_json())
}

pub async fn control_exit(uri: Uri) -> ApiResult {
    let code = match query_param(&uri, "code") {
        None => 0,
        Some(c) => match c.parse::<i32>() {
            Ok(c) => c,
            Err(_) => return Err(ApiError::bad_request("code must be an integer")),
        },
    };
    tokio::spawn(async move {
        // Gives hyper time to flush the 200 before the process disappears.
        tokio::time::sleep(EXIT_DELAY).await;
        exit_process(code);
    });
    Ok(ok_json(&json!({ "exiting": true, "code": code })))
}

pub async fn control_sessions(State(state): Shared) -> Response {
    let sessions = lock(&state.sessions);
    let mut live: Vec<(&String, &Session)> = sessions.live.iter().collect();
    live.sort_by_key(|(_, s)| s.seq);
    let list: Vec<Value> = live
        .into_iter()
        .map(|(id, s)| {
            json!({
                "id": id,
                "candidates": s.candidates,
                "initialParameters": s.initial_parameters,
                "sdp": s.offer_sdp,
                "peer": s.peer.as_ref().map(PeerHandle::to_json),
                // What the real server's FrameProcessor would do, and the frames sent back.
                "frame_processor": {
                    "running": s.frame_processor.running,
                    "pipeline_ids": s.frame_processor.pipeline_ids,
                    "error": s.frame_processor.error,
                },
                "frames_sent": s.peer.as_ref().map_or(0, PeerHandle::frames_out),
                "gone": s.gone(),
            })
        })
        .collect();
    ok_json(&json!({ "sessions": list }))
}

pub async fn control_deleted(State(state): Shared) -> Response {
    ok_json(&json!({ "deleted": lock(&state.sessions).deleted }))
}

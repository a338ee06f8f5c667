//! A fake Daydream API (`/daydream/v1/…`: users and the plugin allowlist, paged), an event sink (`/daydream/events`), and Scope 0.2.3's fal connection id endpoint, for the relay-parity tests.

use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use serde_json::{Value, json};

use crate::fastapi::{ApiError, ApiResult, lock, ok_json, path_param, query_param};
use crate::serve::Shared;

/// What the fake API knows: users that exist, and the plugin allowlist.
pub struct Daydream {
    pub users: Vec<String>,
    pub plugins: Vec<String>,
    /// Lifecycle events POSTed to `/daydream/events`, oldest first (bounded).
    pub events: Mutex<Vec<Value>>,
}

/// Events kept; older ones are dropped.
const EVENTS_KEPT: usize = 1000;

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Daydream {
    pub fn new(users: &str, plugins: &str) -> Self {
        Self {
            users: split(users),
            plugins: split(plugins),
            events: Mutex::new(Vec::new()),
        }
    }
}

/// `GET /daydream/v1/users/{id}`: 200 for a known user, 404 "User not found" otherwise.
pub async fn user(State(state): Shared, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_param(id)?;
    if state.daydream.users.contains(&id) {
        Ok(ok_json(&json!({ "id": id })))
    } else {
        Err(ApiError::not_found("User not found"))
    }
}

/// `GET /daydream/v1/plugins?limit=N&offset=M`: `{"plugins":[{"repositoryUrl"}], "hasMore"}`.
pub async fn plugins(State(state): Shared, uri: Uri) -> ApiResult {
    let num = |k: &str, d: usize| -> Result<usize, ApiError> {
        query_param(&uri, k).map_or(Ok(d), |v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a non-negative integer")))
        })
    };
    let (limit, offset) = (num("limit", 20)?.clamp(1, 100), num("offset", 0)?);
    let all = &state.daydream.plugins;
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|u| json!({ "repositoryUrl": u }))
        .collect();
    Ok(ok_json(&json!({
        "plugins": page,
        "hasMore": offset.saturating_add(limit) < all.len(),
    })))
}

/// `PUT` / `DELETE /api/v1/internal/fal-connection-id`: Scope 0.2.3 tags its log lines with
/// the fal connection id; the mock only answers (the request log records the body).
pub async fn fal_connection_id() -> Response {
    ok_json(&json!({ "success": true }))
}

/// `POST /daydream/events`: an event sink that keeps what it gets (faults apply, to stall it).
pub async fn event_post(State(state): Shared, body: Bytes) -> ApiResult {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not JSON: {e}")))?;
    let mut events = lock(&state.daydream.events);
    if events.len() >= EVENTS_KEPT {
        events.remove(0);
    }
    events.push(v);
    Ok(ok_json(&json!({ "ok": true })))
}

/// `GET /daydream/events`: the events received.
pub async fn events_get(State(state): Shared) -> Response {
    let events = lock(&state.daydream.events).clone();
    ok_json(&json!({ "events": events }))
}

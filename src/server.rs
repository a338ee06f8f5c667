//! The listener: `/ws` upgrades, `/healthz`, `/readyz`, `/metrics`, `/admin/config`, and optional static files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::route::RouteTable;
use crate::session::{self, ConnCtx};

/// The outcome of the last reload attempt, for `/readyz` and `/admin/config`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_attempt_unix: Option<f64>,
    /// Changed fields that only apply on restart.
    pub pending_restart: Vec<String>,
}

/// Everything the listener and the connections share.
pub struct AppState {
    /// The live route table; replaced whole on reload, never locked.
    pub table: ArcSwap<RouteTable>,
    pub backend: Arc<Backend>,
    pub metrics: Option<PrometheusHandle>,
    pub reload: ArcSwap<ReloadStatus>,
    /// Flips to true when the router is stopping.
    pub shutdown: watch::Sender<bool>,
    /// Extra readiness detail from the supervisor (crash loops and the like).
    pub supervisor_status: ArcSwap<Option<serde_json::Value>>,
    pub connections_total: AtomicU64,
    /// Uploads being assembled (they outlive connections, for resume).
    pub transfers: Arc<crate::transfer::Transfers>,
    /// Backend log lines for clients that asked for them (a lagging client loses the oldest).
    pub logs: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Connections admitted and not yet in cleanup (checked against `max_connections`).
    pub serving: std::sync::atomic::AtomicUsize,
    /// Connections running their disconnect steps; a `ready` may wait for zero.
    pub cleaning: watch::Sender<usize>,
    /// Connections being served right now (including their disconnect hooks).
    pub open_sessions: std::sync::atomic::AtomicUsize,
}

impl AppState {
    pub fn new(
        table: RouteTable,
        backend: Arc<Backend>,
        metrics: Option<PrometheusHandle>,
    ) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        let queue = table.source.file.backend.logs.queue.max(1);
        let transfers = crate::transfer::Transfers::new(table.source.file.transfers.clone());
        let (logs, _) = tokio::sync::broadcast::channel(queue);
        Arc::new(Self {
            table: ArcSwap::from_pointee(table),
            backend,
            metrics,
            reload: ArcSwap::from_pointee(ReloadStatus::default()),
            shutdown,
            supervisor_status: ArcSwap::from_pointee(None),
            connections_total: AtomicU64::new(0),
            open_sessions: std::sync::atomic::AtomicUsize::new(0),
            serving: std::sync::atomic::AtomicUsize::new(0),
            cleaning: watch::channel(0).0,
            logs,
            transfers,
        })
    }

    fn config_json(&self) -> serde_json::Value {
        let table = self.table.load();
        let reload = self.reload.load();
        let loaded = table
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        json!({
            "version": table.version,
            "file": table.source.path.display().to_string(),
            "loaded_at": loaded,
            "last_reload_error": reload.last_error,
            "last_reload_attempt": reload.last_attempt_unix,
            "pending_restart": reload.pending_restart,
            "routes": table.routes().map(|r| json!({
                "name": &*r.name, "kind": r.kind, "schema": r.schema, "reply_schemas": r.reply_schemas,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Initial read buffer of a WebSocket; tungstenite's default is 128 KiB per connection.
const READ_BUFFER: usize = 8 * 1024;

/// Builds the HTTP app.
pub fn app(state: Arc<AppState>) -> Router {
    let static_dir = {
        let table = state.table.load();
        table.source.file.static_files.as_ref().map(|d| {
            table
                .source
                .path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(d)
        })
    };
    let router = Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/config", get(admin_config));
    let router = match static_dir {
        Some(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router,
    };
    router.with_state(state)
}

async fn ws(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = state.table.load().connection.max_message_bytes;
    let shutdown = state.shutdown.subscribe();
    if *shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    state.connections_total.fetch_add(1, Ordering::Relaxed);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers (they grow for big messages): an idle connection costs a few KiB, not 256.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let upgrade = session::Upgrade {
                token: crate::auth::token_from(query.as_deref(), authorization),
            };
            let conn = Arc::new(ConnCtx::with(
                ConnCtx::new_id(),
                state.transfers.clone(),
                upgrade.token.as_deref(),
            ));
            session::serve(socket, state, conn, upgrade, shutdown)
        })
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let backend_ok = state.backend.readiness.is_healthy();
    let table = state.table.load();
    let reload = state.reload.load();
    let body = json!({
        "ready": backend_ok,
        "backend": {
            "url": &*state.backend.base(),
            "healthy": backend_ok,
            "status": &*state.backend.readiness.status(),
            "supervisor": &**state.supervisor_status.load(),
        },
        "config": {
            "version": table.version,
            "last_reload_error": reload.last_error,
        },
    });
    let code = if backend_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off").into_response(),
    }
}

async fn admin_config(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(state.config_json())
}

/// Seconds since the epoch, for status documents.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

//! The listener: `/ws` upgrades, `/healthz`, `/readyz`, `/metrics`, `/admin/config`, and optional static files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::watch;

use crate::conn::ConnHandle;
use crate::policy::operator::Access;
use crate::publish::{Readiness, ReloadStatus, SupervisorStatus, View};
use crate::session::admission::HandshakePermit;
use crate::session::{self, Shared};

/// What the listener reads: the sessions' shared state and the control plane's status.
pub struct Listener {
    pub sessions: Arc<Shared>,
    pub readiness: View<Readiness>,
    pub supervisor: View<Option<SupervisorStatus>>,
    pub reload: View<ReloadStatus>,
    pub metrics: Option<PrometheusHandle>,
    /// Flips to true when the router is stopping.
    pub shutdown: watch::Sender<bool>,
    pub connections_total: AtomicU64,
}

impl Listener {
    fn config_json(&self) -> serde_json::Value {
        let snap = self.sessions.snapshot.load();
        let reload = self.reload.load();
        let loaded = snap
            .meta
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        json!({
            "version": snap.meta.version,
            "file": snap.meta.path.display().to_string(),
            "loaded_at": loaded,
            "last_reload_error": reload.last_error,
            "last_reload_attempt": reload.last_attempt_unix,
            "pending_restart": reload.pending_restart,
            "routes": snap.describe_routes(),
        })
    }
}

/// Initial read buffer of a WebSocket; tungstenite's default is 128 KiB per connection.
const READ_BUFFER: usize = 8 * 1024;
/// Frames queued on a WebSocket before they are written without waiting for a flush. The
/// session flushes once per batch of ready frames, so what is ready together leaves in one
/// write; a frame always goes out whole (header and payload from one buffer).
const WRITE_BUFFER: usize = 64 * 1024;

/// Builds the HTTP app.
pub fn app(state: Arc<Listener>) -> Router {
    let static_dir = state.sessions.snapshot.load().meta.static_dir.clone();
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
    State(state): State<Arc<Listener>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    permit: Option<axum::Extension<HandshakePermit>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (max, origin_ok, admission) = {
        let snap = state.sessions.snapshot.load();
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let admission = snap
            .policy
            .admission
            .clone()
            .map(|a| (a, snap.upstream.clone(), snap.policy.max_connections));
        (
            snap.policy.max_message_bytes,
            snap.policy.origin_allowed(origin, host),
            admission,
        )
    };
    if !origin_ok {
        tracing::warn!("refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let mut shutdown = state.shutdown.subscribe();
    if *shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // The backend must say it can take a session before the upgrade is accepted (the
    // handshake's permit is held meanwhile, so waiting clients stay bounded).
    if let Some((gate, upstream, max_connections)) = admission {
        let slots = &state.sessions.slots;
        let refused = tokio::select! {
            r = gate.admit(&upstream, || slots.serving() < max_connections) => r.err(),
            _ = shutdown.changed() => Some("shutting down".to_owned()),
        };
        if let Some(why) = refused {
            tracing::warn!(reason = %why, "refused before the upgrade: runner not ready");
            metrics::counter!("scope_router_admission_refused_total").increment(1);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({"error": "Runner not ready", "code": "RUNNER_NOT_READY"})),
            )
                .into_response();
        }
    }
    state.connections_total.fetch_add(1, Ordering::Relaxed);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers (they grow for big messages): an idle connection costs a few KiB, not 256.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let upgrade = session::Upgrade {
                token: crate::policy::auth::token_from(query.as_deref(), authorization),
                handshake: permit.map(|p| p.0),
                meta: session::upgrade_meta::UpgradeMeta::from_headers(&headers),
            };
            let conn = ConnHandle::with_token(ConnHandle::new_id(), upgrade.token.as_deref());
            session::serve(socket, state.sessions.clone(), conn, upgrade, shutdown)
        })
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Whether this request may read an operator endpoint, by the current snapshot's `operator`
/// setting (re-read on every request, so a reload applies at once).
fn operator_access(
    state: &Listener,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Access {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let access = state
        .sessions
        .snapshot
        .load()
        .operator
        .check(query, authorization);
    match access {
        Access::Granted => {}
        Access::Misconfigured => {
            tracing::warn!("operator request refused: the operator token's variable is not set");
        }
        Access::Missing | Access::Rejected => {
            tracing::debug!(?access, "operator request refused");
        }
    }
    access
}

/// The answer of `/admin/config` and `/metrics` without the operator token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({
            "error": "operator token required (Authorization: Bearer <token>, or ?token=<token>)",
            "code": "UNAUTHORIZED",
        })),
    )
        .into_response()
}

async fn readyz(
    State(state): State<Arc<Listener>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let readiness = state.readiness.load_full();
    let code = if readiness.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Without the operator token: the status alone, as a load balancer needs it, and
    // nothing about the backend, the files or the versions.
    if operator_access(&state, query.as_deref(), &headers) != Access::Granted {
        return (code, axum::Json(json!({"ready": readiness.healthy})));
    }
    let snap = state.sessions.snapshot.load();
    let reload = state.reload.load();
    let supervisor = state.supervisor.load();
    let body = json!({
        "ready": readiness.healthy,
        "backend": {
            "url": snap.upstream.base(),
            "healthy": readiness.healthy,
            "status": &readiness.status,
            "supervisor": &**supervisor,
        },
        "config": {
            "version": snap.meta.version,
            "last_reload_error": reload.last_error,
        },
    });
    (code, axum::Json(body))
}

async fn metrics(
    State(state): State<Arc<Listener>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    if operator_access(&state, query.as_deref(), &headers) != Access::Granted {
        return unauthorized();
    }
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off").into_response(),
    }
}

async fn admin_config(
    State(state): State<Arc<Listener>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    if operator_access(&state, query.as_deref(), &headers) != Access::Granted {
        return unauthorized();
    }
    axum::Json(state.config_json()).into_response()
}

/// Describes every metric the router exports (`# HELP` lines) and registers each one, so
/// `/metrics` lists them all from startup, at zero, before anything has happened.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "scope_router_messages_total",
        "Messages handled, by route and result (ok, rejected, backend_error, unavailable, timeout)."
    );
    describe_histogram!(
        "scope_router_message_duration_seconds",
        Unit::Seconds,
        "Time from a message's arrival to its reply, by route."
    );
    describe_gauge!(
        "scope_router_connections_open",
        "WebSocket connections being served right now."
    );
    describe_counter!(
        "scope_router_auth_denied_total",
        "Connections refused by the connect-time auth check."
    );
    describe_counter!(
        "scope_router_reload_total",
        "Reload attempts of routes.yaml and its schemas, by result (ok, unchanged, error)."
    );
    describe_counter!(
        "scope_router_backend_restarts_total",
        "Restarts of the supervised backend."
    );
    describe_gauge!(
        "scope_router_backend_crash_loop",
        "1 while the supervised backend restarts more often than max_restarts_per_minute."
    );
    describe_counter!(
        "scope_router_reply_contract_violations_total",
        "Replies that fit none of their route's reply schemas (validate_replies: warn), by route."
    );
    describe_counter!(
        "scope_router_admission_refused_total",
        "Upgrades refused with 503 because connection.admission did not pass."
    );
    crate::handler::tunnel::describe_metrics();
    metrics::gauge!("scope_router_connections_open").set(0.0);
    metrics::gauge!("scope_router_backend_crash_loop").set(0.0);
    metrics::counter!("scope_router_auth_denied_total").absolute(0);
    metrics::counter!("scope_router_backend_restarts_total").absolute(0);
    for result in ["ok", "unchanged", "error"] {
        metrics::counter!("scope_router_reload_total", "result" => result).absolute(0);
    }
}

/// Serves `app` on `listener` until `stop` resolves.
///
/// Each accepted socket gets `TCP_NODELAY` (a reply and a pushed message are separate
/// small writes; with Nagle's algorithm the second waits for the client's delayed ACK,
/// about 40 ms) and a permit among `max_handshakes`; a connection that does not send its
/// request head within `header_timeout` is dropped. Over the cap a client gets a plain 503.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    max_handshakes: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_probed(listener, app, header_timeout, max_handshakes, stop, None).await
}

/// [`serve`], with a probe that records what is done to each client socket (tests).
pub(crate) async fn serve_probed(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    max_handshakes: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    probe: Option<Arc<crate::sock::Probe>>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let permits = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let (stopping, stopped) = watch::channel(false);
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = max_handshakes,
                "refused: too many handshakes in progress"
            );
            metrics::counter!("scope_router_handshakes_refused_total").increment(1);
            let _ = tcp.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        };
        let tcp = crate::sock::ClientSocket::accept(tcp, probe.clone());
        let permit = HandshakePermit::new(permit);
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(permit)),
        );
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    // An exchange in progress finishes; an idle keep-alive closes.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Open HTTP exchanges finish; upgraded sockets are the sessions' to close.
    let _ = stopping.send(true);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

#[cfg(test)]
#[path = "sock_tests.rs"]
mod sock_tests;

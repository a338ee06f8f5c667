//! Serving: connections on hyper (peer address for the access log, `--crash-after` after the response is out), what every request goes through (counting, faults), and the route table.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, delete, get, patch, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

use crate::fastapi::detail;
use crate::state::{AppState, BodyDigest};
use crate::{assets, client, control, exit_process, misc, pipeline, stdout_line, testing, webrtc};

pub type Shared = State<Arc<AppState>>;

/// Real uploads (LoRAs, videos) can be hundreds of MiB; the spec floor is 512 MiB.
const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;
/// In-flight requests get this long after SIGTERM; idle keep-alive connections close at once.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// If the client never drains the crash-triggering response, exit anyway.
const CRASH_FALLBACK: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct ConnCtx {
    remote: SocketAddr,
    crash_on_close: Arc<AtomicBool>,
}

// Served directly on hyper rather than `axum::serve` so each connection knows its peer address
// (for the access log) and `--crash-after` can exit only once the triggering response has really
// been written and its connection closed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; `recv()` yields `None` once all of them have ended.
    let (conn_alive_tx, mut conn_alive_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                tokio::spawn(serve_connection(
                    stream,
                    remote,
                    Arc::clone(&state),
                    router.clone(),
                    shutdown.clone(),
                    conn_alive_tx.clone(),
                ));
            }
            Err(e) => {
                // Usually EMFILE under benchmark load; back off instead of spinning.
                eprintln!("mock-scope: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    drop(conn_alive_tx);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn_alive_rx.recv()).await;
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    state: Arc<AppState>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let crash_on_close = Arc::new(AtomicBool::new(false));
    let ctx = ConnCtx {
        remote,
        crash_on_close: Arc::clone(&crash_on_close),
    };
    state
        .stats
        .connections_accepted
        .fetch_add(1, Ordering::SeqCst);
    let keep_alive = state.opts.keep_alive;
    // Requests being served on this connection, and a signal at the end of each.
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let activity = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let state = Arc::clone(&state);
        let (busy, activity) = (Arc::clone(&busy), Arc::clone(&activity));
        service_fn(move |req: hyper::Request<Incoming>| {
            let state = Arc::clone(&state);
            let router = router.clone();
            let ctx = ctx.clone();
            let (busy, activity) = (Arc::clone(&busy), Arc::clone(&activity));
            busy.fetch_add(1, Ordering::SeqCst);
            async move {
                let resp = handle(state, router, ctx, req.map(Body::new)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                activity.notify_one();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // Any request restarts the idle clock (the loop makes a new sleep).
            () = activity.notified(), if keep_alive.is_some() => {}
            () = tokio::time::sleep(keep_alive.unwrap_or_default()), if keep_alive.is_some() && !draining => {
                if busy.load(Ordering::SeqCst) == 0 {
                    // As uvicorn: an idle connection is closed without a word.
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    state
        .stats
        .connections_closed
        .fetch_add(1, Ordering::SeqCst);
    if crash_on_close.load(Ordering::SeqCst) {
        eprintln!("mock-scope: --crash-after reached, exiting with code 1");
        exit_process(1);
    }
}

/// Wraps the router with what every request needs: counting, fault injection, crash-after and
/// the uvicorn-style access log.
async fn handle(state: Arc<AppState>, router: Router, ctx: ConnCtx, req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/_mock/") {
        return route(router, req).await;
    }
    if path == "/health" {
        let log = (state.opts.log_health && !state.opts.quiet).then(|| access_prefix(&ctx, &req));
        let resp = route(router, req).await;
        if let Some(prefix) = log {
            stdout_line(&format!("{prefix} {}", resp.status().as_u16()));
        }
        return resp;
    }

    let log = (!state.opts.quiet).then(|| access_prefix(&ctx, &req));
    let served = state.served.fetch_add(1, Ordering::SeqCst) + 1;
    let crash_now = match state.opts.crash_after {
        // The process is "dead" already; the client should see a reset, never an answer.
        Some(n) if served > n => std::future::pending().await,
        Some(n) => served == n,
        None => false,
    };

    let mut resp = counted_request(&state, router, req).await;

    if let Some(prefix) = log {
        stdout_line(&format!("{prefix} {}", resp.status().as_u16()));
    }
    if crash_now {
        // `Connection: close` makes hyper end the connection after this response, and the
        // connection task exits the process once that has happened.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        ctx.crash_on_close.store(true, Ordering::SeqCst);
        tokio::spawn(async {
            tokio::time::sleep(CRASH_FALLBACK).await;
            eprintln!("mock-scope: --crash-after reached, exiting with code 1");
            exit_process(1);
        });
    }
    resp
}

async fn counted_request(state: &AppState, router: Router, req: Request) -> Response {
    let declared_len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        let _ = state.record(&req, &Bytes::new());
        return detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let req = Request::from_parts(parts, Body::empty());
            let _ = state.record(&req, &Bytes::new());
            return detail(
                StatusCode::BAD_REQUEST,
                &format!("Error reading request body: {e}"),
            );
        }
    };
    let mut req = Request::from_parts(parts, Body::from(bytes.clone()));
    let digest = state.record(&req, &bytes);
    // Lets the asset upload reuse the hash instead of hashing a large body twice.
    req.extensions_mut().insert(BodyDigest(digest));

    let faults = state.faults.load();
    if !faults.is_empty() {
        let method = req.method();
        let path = req.uri().path();
        if let Some(ms) = faults.delay_for(method, path) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(code) = faults.status_for(method, path) {
            return detail(code, "injected fault");
        }
    }
    route(router, req).await
}

async fn route(router: Router, req: Request) -> Response {
    match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

fn access_prefix(ctx: &ConnCtx, req: &Request) -> String {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    format!(
        "INFO:     {} - \"{} {} {:?}\"",
        ctx.remote.ip(),
        req.method(),
        target,
        req.version()
    )
}

/// Scope's routes (each handler names the upstream function it mirrors), the test-only
/// `/api/v1/mock/…` ones, and the `/_mock/…` control plane.
pub fn build_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(misc::health))
        .route("/api/v1/webrtc/ice-servers", get(webrtc::ice_servers))
        .route("/api/v1/webrtc/offer", post(webrtc::webrtc_offer))
        .route(
            "/api/v1/webrtc/offer/{id}",
            patch(webrtc::add_candidates).delete(webrtc::delete_session),
        )
        .route("/api/v1/pipeline/status", get(pipeline::pipeline_status))
        .route("/api/v1/pipeline/load", post(pipeline::pipeline_load))
        .route("/api/v1/pipelines/schemas", get(pipeline::pipeline_schemas))
        .route("/api/v1/hardware/info", get(misc::hardware_info))
        .route(
            "/api/v1/loras",
            get(misc::lora_list).post(misc::lora_install),
        )
        .route(
            "/api/v1/assets",
            get(assets::assets_list).post(assets::asset_upload),
        )
        .route("/api/v1/assets/{*path}", get(assets::asset_get))
        .route("/api/v1/recordings/{session_id}", get(assets::recording))
        .route("/api/v1/models/status", get(misc::models_status))
        .route("/api/v1/models/download", post(misc::models_download))
        .route("/api/v1/logs/current", get(misc::logs_current))
        .route(
            "/api/v1/plugins",
            get(misc::plugins_list).post(misc::plugin_install),
        )
        .route("/api/v1/plugins/{name}", delete(misc::plugin_uninstall))
        .route("/api/v1/mock/echo", any(testing::mock_echo))
        .route("/api/v1/mock/echo/{*rest}", any(testing::mock_echo))
        .route("/api/v1/mock/slow", get(testing::mock_slow))
        .route("/api/v1/mock/status/{code}", any(testing::mock_status))
        .route("/api/v1/mock/text", get(testing::mock_text))
        .route("/api/v1/mock/binary", get(testing::mock_binary))
        .route("/api/v1/mock/json", get(testing::mock_json))
        .route("/api/v1/mock/stream", get(testing::mock_stream))
        .route("/api/v1/session/output.ts", get(testing::output_ts))
        .route("/api/v1/mock/env/{name}", get(testing::mock_env))
        .route("/daydream/v1/users/{id}", get(crate::daydream::user))
        .route("/daydream/v1/plugins", get(crate::daydream::plugins))
        .route(
            "/daydream/events",
            get(crate::daydream::events_get).post(crate::daydream::event_post),
        )
        .route(
            "/api/v1/internal/fal-connection-id",
            axum::routing::put(crate::daydream::fal_connection_id)
                .delete(crate::daydream::fal_connection_id),
        )
        .route("/_mock/stats", get(control::control_stats))
        .route("/_mock/reset", post(control::control_reset))
        .route(
            "/_mock/faults",
            get(control::control_faults_get).post(control::control_faults_set),
        )
        .route("/_mock/exit", post(control::control_exit))
        .route("/_mock/sessions", get(control::control_sessions))
        .route("/_mock/deleted", get(control::control_deleted))
        .route("/_mock/client", post(client::client_create))
        .route(
            "/_mock/client/{id}",
            get(client::client_status).delete(client::client_delete),
        )
        .route("/_mock/client/{id}/answer", post(client::client_answer))
        // Must come after every `.route`: it only applies to routes registered so far.
        .method_not_allowed_fallback(misc::method_not_allowed)
        .fallback(fallback)
        // Bodies are already buffered (with their own cap) before routing.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// `app.py:serve_frontend` catches every GET; any other method on an unknown path is a 405.
async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        misc::frontend_not_built().await
    } else {
        misc::method_not_allowed_any().await
    }
}

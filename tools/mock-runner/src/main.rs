//! `mock-runner`: a fake Livepeer runner (the `livepeer-runner` of Scope 0.2.4 and later), as /work/shared/spec/LIVEPEER.md describes its side, plus test knobs under `/_mock/`.
//!
//! - `GET /docs`: 200 (the runner's readiness, it has no `/health`).
//! - `GET /internal/status`: `{"listener_ready", "connection_active", "connection_count"}`.
//! - `POST /internal/cleanup-session`: `{"ok", "plugins", "assets"}`, after `--cleanup-ms`,
//!   and held until `POST /_mock/release_cleanup` while `hold_cleanup` is on.
//! - `GET /ws`: `ready` with an 8-character `connection_id`; the first text frame is the job
//!   info (no `type`): a missing `control_url`/`events_url` is answered with an untyped error
//!   and a close, a user named by `--deny-user` gets `ACCESS_DENIED` and close 4003, anyone
//!   else `started`, then two `create_channels` requests (`in` and `out`). Then `ping` gets
//!   `pong` with its `request_id` and `timestamp`, a `response` is recorded, and anything
//!   else (invalid JSON and binary frames included) is ignored, or sent back unchanged with
//!   `--echo`.
//!
//! Knobs: `POST /_mock/set?ready=…&refuse_ws=…&hold_cleanup=…&cleanup_ok=…` (booleans),
//! `POST /_mock/drop` (every open socket is dropped without a close frame), `POST
//! /_mock/flood?frames=N&size=BYTES` (binary frames to every open socket, as fast as it
//! takes them), `POST /_mock/release_cleanup`, `GET /_mock/stats`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, broadcast};

#[derive(Parser, Debug)]
#[command(about = "A fake Livepeer runner for scope-router's tests")]
struct Args {
    /// Address to listen on (wins over --host and --port).
    #[arg(long)]
    listen: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// Send back every frame the runner would ignore, unchanged.
    #[arg(long)]
    echo: bool,
    /// Start with `listener_ready: false`.
    #[arg(long)]
    not_ready: bool,
    /// Time the cleanup takes.
    #[arg(long, default_value_t = 0)]
    cleanup_ms: u64,
    /// Hold every cleanup until `POST /_mock/release_cleanup`.
    #[arg(long)]
    hold_cleanup: bool,
    /// A user id whose job is refused with ACCESS_DENIED and close 4003.
    #[arg(long)]
    deny_user: Option<String>,
}

/// Counts and switches, shared by every handler.
#[derive(Default)]
struct Runner {
    ready: AtomicBool,
    refuse_ws: AtomicBool,
    hold_cleanup: AtomicBool,
    cleanup_not_ok: AtomicBool,
    echo: bool,
    cleanup_ms: u64,
    deny_user: Option<String>,
    active: AtomicU64,
    connections_total: AtomicU64,
    ws_refused: AtomicU64,
    status_calls: AtomicU64,
    cleanups_started: AtomicU64,
    cleanups_done: AtomicU64,
    pings_seen: AtomicU64,
    frames_in: AtomicU64,
    flood_sent_bytes: AtomicU64,
    floods_done: AtomicU64,
    release: Notify,
    responses: Mutex<Vec<Value>>,
    job_infos: Mutex<Vec<Value>>,
    control: Option<broadcast::Sender<Control>>,
}

/// What the knobs tell open sockets.
#[derive(Debug, Clone, Copy)]
enum Control {
    Drop,
    Flood { frames: u64, size: usize },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let addr = args
        .listen
        .clone()
        .unwrap_or_else(|| format!("{}:{}", args.host, args.port));
    let (control, _) = broadcast::channel(16);
    let runner = Arc::new(Runner {
        ready: AtomicBool::new(!args.not_ready),
        hold_cleanup: AtomicBool::new(args.hold_cleanup),
        echo: args.echo,
        cleanup_ms: args.cleanup_ms,
        deny_user: args.deny_user.clone(),
        control: Some(control),
        ..Runner::default()
    });
    let app = Router::new()
        .route("/docs", get(docs))
        .route("/internal/status", get(status))
        .route("/internal/cleanup-session", post(cleanup))
        .route("/ws", get(ws))
        .route("/_mock/set", post(set))
        .route("/_mock/drop", post(drop_sockets))
        .route("/_mock/flood", post(flood))
        .route("/_mock/release_cleanup", post(release_cleanup))
        .route("/_mock/stats", get(stats))
        .route("/_mock/env", get(env))
        .with_state(runner);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-runner: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    let local: SocketAddr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-runner: {e}");
            std::process::exit(2);
        }
    };
    println!("mock-runner listening on http://{local}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("mock-runner: {e}");
        std::process::exit(1);
    }
}

async fn docs() -> impl IntoResponse {
    (
        [("content-type", "text/html")],
        "<html><body>livepeer-runner (mock)</body></html>",
    )
}

async fn status(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    r.status_calls.fetch_add(1, Ordering::SeqCst);
    let active = r.active.load(Ordering::SeqCst);
    axum::Json(json!({
        "listener_ready": r.ready.load(Ordering::SeqCst),
        "connection_active": active > 0,
        "connection_count": active,
    }))
}

async fn cleanup(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    r.cleanups_started.fetch_add(1, Ordering::SeqCst);
    if r.hold_cleanup.load(Ordering::SeqCst) {
        r.release.notified().await;
    }
    if r.cleanup_ms > 0 {
        tokio::time::sleep(Duration::from_millis(r.cleanup_ms)).await;
    }
    r.cleanups_done.fetch_add(1, Ordering::SeqCst);
    let ok = !r.cleanup_not_ok.load(Ordering::SeqCst);
    axum::Json(json!({"ok": ok, "plugins": [], "assets": 0}))
}

async fn ws(State(r): State<Arc<Runner>>, upgrade: WebSocketUpgrade) -> Response {
    if r.refuse_ws.load(Ordering::SeqCst) {
        r.ws_refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "refused by /_mock/set").into_response();
    }
    upgrade.on_upgrade(move |socket| session(socket, r))
}

fn flag(q: &std::collections::HashMap<String, String>, name: &str) -> Option<bool> {
    q.get(name).map(|v| v == "true" || v == "1")
}

async fn set(
    State(r): State<Arc<Runner>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    if let Some(v) = flag(&q, "ready") {
        r.ready.store(v, Ordering::SeqCst);
    }
    if let Some(v) = flag(&q, "refuse_ws") {
        r.refuse_ws.store(v, Ordering::SeqCst);
    }
    if let Some(v) = flag(&q, "hold_cleanup") {
        r.hold_cleanup.store(v, Ordering::SeqCst);
    }
    if let Some(v) = flag(&q, "cleanup_ok") {
        r.cleanup_not_ok.store(!v, Ordering::SeqCst);
    }
    StatusCode::NO_CONTENT
}

async fn drop_sockets(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    if let Some(c) = &r.control {
        let _ = c.send(Control::Drop);
    }
    StatusCode::NO_CONTENT
}

async fn flood(
    State(r): State<Arc<Runner>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    let frames = q.get("frames").and_then(|v| v.parse().ok()).unwrap_or(1);
    let size = q
        .get("size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        .min(16 * 1024 * 1024);
    if let Some(c) = &r.control {
        let _ = c.send(Control::Flood { frames, size });
    }
    StatusCode::NO_CONTENT
}

async fn release_cleanup(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    r.release.notify_waiters();
    StatusCode::NO_CONTENT
}

async fn stats(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    axum::Json(json!({
        "active": n(&r.active),
        "connections_total": n(&r.connections_total),
        "ws_refused": n(&r.ws_refused),
        "status_calls": n(&r.status_calls),
        "cleanups_started": n(&r.cleanups_started),
        "cleanups_done": n(&r.cleanups_done),
        "pings_seen": n(&r.pings_seen),
        "frames_in": n(&r.frames_in),
        "flood_sent_bytes": n(&r.flood_sent_bytes),
        "floods_done": n(&r.floods_done),
        "responses": *r.responses.lock().await,
        "job_infos": *r.job_infos.lock().await,
    }))
}

/// This process's environment, for checking what a supervisor passed on.
async fn env() -> impl IntoResponse {
    let vars: serde_json::Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    axum::Json(Value::Object(vars))
}

/// Counts a socket as active for as long as it lives.
struct Active(Arc<Runner>);
impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the runner is in the job handshake.
enum Phase {
    WaitingForJob,
    Started,
}

async fn session(socket: WebSocket, r: Arc<Runner>) {
    r.active.fetch_add(1, Ordering::SeqCst);
    r.connections_total.fetch_add(1, Ordering::SeqCst);
    let _active = Active(r.clone());
    let mut control = match &r.control {
        Some(c) => c.subscribe(),
        None => return,
    };
    let (mut tx, mut rx) = socket.split();
    let id = format!("{:08x}", rand::random::<u32>());
    if tx
        .send(text(json!({"type": "ready", "connection_id": id})))
        .await
        .is_err()
    {
        return;
    }
    let mut phase = Phase::WaitingForJob;
    let mut requests = 0u64;
    loop {
        let msg = tokio::select! {
            m = rx.next() => m,
            c = control.recv() => match c {
                Ok(Control::Drop) => return,
                Ok(Control::Flood { frames, size }) => {
                    let chunk = Bytes::from(vec![0x5a; size]);
                    for _ in 0..frames {
                        if tx.send(Message::Binary(chunk.clone())).await.is_err() {
                            return;
                        }
                        r.flood_sent_bytes.fetch_add(size as u64, Ordering::SeqCst);
                    }
                    r.floods_done.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Err(_) => continue,
            },
        };
        let msg = match msg {
            None | Some(Err(_)) => return,
            Some(Ok(m)) => m,
        };
        let reply: Vec<Message> = match msg {
            Message::Ping(_) => {
                r.pings_seen.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Message::Pong(_) => continue,
            Message::Close(_) => return,
            Message::Binary(b) => {
                r.frames_in.fetch_add(1, Ordering::SeqCst);
                if r.echo {
                    vec![Message::Binary(b)]
                } else {
                    continue;
                }
            }
            Message::Text(t) => {
                r.frames_in.fetch_add(1, Ordering::SeqCst);
                let parsed: Option<Value> = serde_json::from_str(t.as_str()).ok();
                match phase {
                    Phase::WaitingForJob => {
                        let job = parsed.unwrap_or(Value::Null);
                        r.job_infos.lock().await.push(job.clone());
                        match job_answer(&r, &job) {
                            Err((frame, code)) => {
                                let _ = tx.send(text(frame)).await;
                                let _ = tx
                                    .send(Message::Close(Some(CloseFrame {
                                        code,
                                        reason: "".into(),
                                    })))
                                    .await;
                                return;
                            }
                            Ok(()) => {
                                phase = Phase::Started;
                                let mut out = vec![text(json!({"type": "started"}))];
                                for direction in ["in", "out"] {
                                    requests += 1;
                                    out.push(text(json!({
                                        "type": "create_channels",
                                        "request_id": format!("{id}-{requests}"),
                                        "mime_type": "video/MP2T",
                                        "direction": direction,
                                    })));
                                }
                                out
                            }
                        }
                    }
                    Phase::Started => match parsed
                        .as_ref()
                        .and_then(|v| v.get("type"))
                        .and_then(Value::as_str)
                    {
                        Some("ping") => {
                            let p = parsed.as_ref().unwrap_or(&Value::Null);
                            vec![text(json!({
                                "type": "pong",
                                "request_id": p.get("request_id").cloned().unwrap_or(Value::Null),
                                "timestamp": p.get("timestamp").cloned().unwrap_or(Value::Null),
                            }))]
                        }
                        Some("response") => {
                            if let Some(v) = parsed {
                                r.responses.lock().await.push(v);
                            }
                            continue;
                        }
                        _ if r.echo => vec![Message::Text(t)],
                        _ => continue,
                    },
                }
            }
        };
        for m in reply {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    }
}

/// The answer to the job info: `Ok` to start, or the frame to send and the close code.
fn job_answer(r: &Runner, job: &Value) -> Result<(), (Value, u16)> {
    for field in ["control_url", "events_url"] {
        if job.get(field).and_then(Value::as_str).is_none() {
            return Err((
                json!({"error": format!("{field} is required but was not provided")}),
                1000,
            ));
        }
    }
    let user = job
        .get("params")
        .and_then(|p| p.get("daydream_user_id"))
        .and_then(Value::as_str);
    if user.is_some() && user == r.deny_user.as_deref() {
        return Err((
            json!({"type": "error", "error": "Access denied", "code": "ACCESS_DENIED"}),
            4003,
        ));
    }
    Ok(())
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

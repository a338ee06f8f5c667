//! `mock-scope`: a fake Scope backend (Scope's HTTP API, a real WebRTC peer that loops video back, test knobs and a `/_mock/` control plane).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use clap::Parser;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

mod peer;

use peer::{PeerConfig, PeerHandle};

/// Real uploads (LoRAs, videos) can be hundreds of MiB; the spec floor is 512 MiB.
const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;
/// Keeps `body_json` in `/_mock/stats` from pinning huge uploads in memory 200 times over.
const MAX_STATS_JSON_BYTES: usize = 1024 * 1024;
const MAX_PATTERN_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_PATTERN_BYTES: u64 = 65536;
const RECENT_CAPACITY: usize = 200;
const ECHO_TEXT_LIMIT: usize = 4096;
/// Bounded so a forgotten `ms=` cannot wedge a test run.
const MAX_SLEEP_MS: u64 = 600_000;
/// In-flight requests get this long after SIGTERM; idle keep-alive connections close at once.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// If the client never drains the crash-triggering response, exit anyway.
const CRASH_FALLBACK: Duration = Duration::from_secs(2);
const EXIT_DELAY: Duration = Duration::from_millis(50);

/// The byte pattern repeats every 251 bytes, so one chunk whose length is a multiple of 251 can be
/// re-sliced for every chunk of an arbitrarily large body without recomputing or copying.
const PATTERN_PERIOD: usize = 251;
const PATTERN_CHUNK: usize = PATTERN_PERIOD * 261;

#[derive(Parser, Debug)]
#[command(
    name = "mock-scope",
    about = "Fake Scope backend for tests and benchmarks"
)]
struct Cli {
    /// Address to listen on (HOST:PORT); port 0 picks an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Overrides the host part of --listen (mirrors `daydream-scope --host`).
    #[arg(long)]
    host: Option<String>,
    /// Overrides the port part of --listen (mirrors `daydream-scope --port`).
    #[arg(long)]
    port: Option<u16>,
    /// Accepted for command-line compatibility with `daydream-scope`; ignored.
    #[arg(long)]
    no_browser: bool,
    /// Sleep this long before binding, like a slow model load.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// Exit with code 1 once the Nth counted response has been sent.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    crash_after: Option<u64>,
    /// Refuse WebRTC offers until a pipeline has been loaded, like real Scope.
    #[arg(long)]
    require_pipeline: bool,
    /// Emit heartbeat log lines to stderr at this interval (0 = off).
    #[arg(long, default_value_t = 0)]
    log_interval_ms: u64,
    /// Also log `/health` requests.
    #[arg(long)]
    log_health: bool,
    /// Suppress per-request access log lines.
    #[arg(long)]
    quiet: bool,
    /// Also offer a WebRTC host candidate on this address (127.0.0.1 is always offered).
    #[arg(long, default_value = "127.0.0.1")]
    webrtc_ip: std::net::IpAddr,
}

struct Opts {
    require_pipeline: bool,
    quiet: bool,
    log_health: bool,
    crash_after: Option<u64>,
}

struct AppState {
    opts: Opts,
    server_start_time: f64,
    /// Separate from `stats.total` because `/_mock/reset` must not postpone a configured crash.
    served: AtomicU64,
    stats: Stats,
    faults: ArcSwap<Faults>,
    sessions: Mutex<Sessions>,
    pipeline_loaded: AtomicBool,
    /// Pre-serialised so the status endpoint, polled hard by clients, never takes a lock.
    pipeline_status: ArcSwap<Bytes>,
    assets: Mutex<BTreeMap<String, Asset>>,
    assets_dir: Option<PathBuf>,
    plugins: Mutex<Vec<Plugin>>,
    ice_servers: Bytes,
    peers: PeerConfig,
}

#[derive(Default)]
struct Stats {
    total: AtomicU64,
    inner: Mutex<StatsInner>,
}

#[derive(Default)]
struct StatsInner {
    by_route: HashMap<String, u64>,
    recent: VecDeque<RecentRequest>,
}

struct RecentRequest {
    method: String,
    path: String,
    content_type: Option<String>,
    body_len: usize,
    body_sha256: String,
    body_json: Value,
}

#[derive(Default)]
struct Faults {
    delays: Vec<FaultRule<u64>>,
    statuses: Vec<FaultRule<StatusCode>>,
}

struct FaultRule<T> {
    /// `None` matches any method (key `* /prefix` or just `/prefix`).
    method: Option<Method>,
    prefix: String,
    key: String,
    value: T,
}

#[derive(Default)]
struct Sessions {
    live: HashMap<String, Session>,
    next_seq: u64,
    deleted: Vec<String>,
}

struct Session {
    seq: u64,
    offer_sdp: String,
    initial_parameters: Value,
    candidates: Vec<Value>,
    /// The real WebRTC peer, when the offer was one str0m could accept; dropping it closes it.
    peer: Option<PeerHandle>,
}

struct Asset {
    bytes: Bytes,
    content_type: String,
    sha256: String,
}

#[derive(Clone)]
struct BodyDigest(String);

struct Plugin {
    name: String,
    package: String,
}

#[derive(Clone)]
struct ConnCtx {
    remote: SocketAddr,
    crash_on_close: Arc<AtomicBool>,
}

type Shared = State<Arc<AppState>>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Installed before the startup delay so a slow "import" can still be interrupted.
    tokio::spawn(watch_signals(shutdown_tx));

    if cli.startup_delay_ms > 0 {
        let mut rx = shutdown_rx.clone();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(cli.startup_delay_ms)) => {}
            _ = rx.wait_for(|stop| *stop) => exit_process(0),
        }
    }

    let (host, port) = match resolve_listen(&cli) {
        Ok(hp) => hp,
        Err(msg) => {
            eprintln!("mock-scope: {msg}");
            exit_process(2);
        }
    };
    let listener = match TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-scope: cannot bind {host}:{port}: {e}");
            exit_process(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-scope: cannot read bound address: {e}");
            exit_process(1);
        }
    };
    stdout_line(&format!("mock-scope listening on http://{local}"));

    if cli.log_interval_ms > 0 {
        tokio::spawn(heartbeat(Duration::from_millis(cli.log_interval_ms)));
    }

    let state = Arc::new(AppState::new(&cli));
    let router = build_router(Arc::clone(&state));
    serve(listener, state, router, shutdown_rx).await;
    if !cli.quiet {
        eprintln!("INFO:     Shutting down");
    }
    exit_process(0);
}

async fn watch_signals(shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-scope: cannot install SIGTERM handler: {e}");
            return;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-scope: cannot install SIGINT handler: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = shutdown.send(true);
    // A second signal means the caller is done waiting for the grace period.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    exit_process(0);
}

fn resolve_listen(cli: &Cli) -> Result<(String, u16), String> {
    let (host, port) = cli
        .listen
        .rsplit_once(':')
        .ok_or_else(|| format!("--listen must be HOST:PORT, got {:?}", cli.listen))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port in --listen {:?}", cli.listen))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = cli.host.as_deref().unwrap_or(host);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, cli.port.unwrap_or(port)))
}

async fn heartbeat(period: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut n: u64 = 0;
    loop {
        ticker.tick().await;
        n += 1;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "INFO scope.server: heartbeat {n}");
        if n.is_multiple_of(3) {
            let _ = writeln!(err, "INFO kafka_publisher: published event {n}");
        }
        let _ = err.flush();
    }
}

/// Flushes explicitly: stdout is usually a pipe read line-by-line by a test harness.
fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn exit_process(code: i32) -> ! {
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    std::process::exit(code)
}

// ---------------------------------------------------------------------------------------------
// Connection handling

// Served directly on hyper rather than `axum::serve` so each connection knows its peer address
// (for the access log) and `--crash-after` can exit only once the triggering response has really
// been written and its connection closed.
async fn serve(
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
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let state = Arc::clone(&state);
        let router = router.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(state, router, ctx, req.map(Body::new)).await) }
    });
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
        }
    }
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

// ---------------------------------------------------------------------------------------------
// State

impl AppState {
    fn new(cli: &Cli) -> Self {
        let assets_dir = std::env::var_os("DAYDREAM_SCOPE_ASSETS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Self {
            opts: Opts {
                require_pipeline: cli.require_pipeline,
                quiet: cli.quiet,
                log_health: cli.log_health,
                crash_after: cli.crash_after,
            },
            server_start_time: unix_now(),
            served: AtomicU64::new(0),
            stats: Stats::default(),
            faults: ArcSwap::from_pointee(Faults::default()),
            sessions: Mutex::new(Sessions::default()),
            pipeline_loaded: AtomicBool::new(false),
            pipeline_status: ArcSwap::from_pointee(not_loaded_status()),
            assets: Mutex::new(BTreeMap::new()),
            assets_dir,
            plugins: Mutex::new(Vec::new()),
            ice_servers: ice_servers_body(),
            peers: PeerConfig::new(cli.webrtc_ip, cli.quiet),
        }
    }

    /// Returns the body's sha256 hex.
    fn record(&self, req: &Request, body: &Bytes) -> String {
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        let body_sha256 = sha256_hex(body);
        let path = req.uri().path();
        let route_key = format!("{} {}", req.method(), path);
        let entry = RecentRequest {
            method: req.method().as_str().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
            content_type: req
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body_len: body.len(),
            body_sha256: body_sha256.clone(),
            body_json: if body.len() <= MAX_STATS_JSON_BYTES {
                parse_json(body).unwrap_or(Value::Null)
            } else {
                Value::Null
            },
        };
        let mut inner = lock(&self.stats.inner);
        *inner.by_route.entry(route_key).or_insert(0) += 1;
        if inner.recent.len() >= RECENT_CAPACITY {
            inner.recent.pop_front();
        }
        inner.recent.push_back(entry);
        body_sha256
    }
}

impl Faults {
    fn is_empty(&self) -> bool {
        self.delays.is_empty() && self.statuses.is_empty()
    }

    fn delay_for(&self, method: &Method, path: &str) -> Option<u64> {
        best_rule(&self.delays, method, path).copied()
    }

    fn status_for(&self, method: &Method, path: &str) -> Option<StatusCode> {
        best_rule(&self.statuses, method, path).copied()
    }

    fn to_json(&self) -> Value {
        let delays: Map<String, Value> = self
            .delays
            .iter()
            .map(|r| (r.key.clone(), json!(r.value)))
            .collect();
        let statuses: Map<String, Value> = self
            .statuses
            .iter()
            .map(|r| (r.key.clone(), json!(r.value.as_u16())))
            .collect();
        json!({ "delay_ms": delays, "status": statuses })
    }
}

/// Longest matching prefix wins so a broad rule can coexist with a more specific override.
fn best_rule<'a, T>(rules: &'a [FaultRule<T>], method: &Method, path: &str) -> Option<&'a T> {
    rules
        .iter()
        .filter(|r| r.method.as_ref().is_none_or(|m| m == method) && path.starts_with(&r.prefix))
        .max_by_key(|r| r.prefix.len())
        .map(|r| &r.value)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn not_loaded_status() -> Bytes {
    Bytes::from_static(br#"{"status":"not_loaded"}"#)
}

fn ice_servers_body() -> Bytes {
    let mut servers = vec![json!({ "urls": ["stun:stun.l.google.com:19302"] })];
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        // Only a prefix: enough for a test to see the token was forwarded, useless if leaked.
        let hint: String = token.chars().take(4).collect();
        servers.push(json!({
            "urls": ["turn:turn.example.invalid:3478"],
            "username": "mock",
            "credential": format!("{hint}…"),
        }));
    }
    Bytes::from(json!({ "iceServers": servers }).to_string())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn json_response(status: StatusCode, value: &Value) -> Response {
    json_bytes(status, Bytes::from(value.to_string()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

fn ok_json(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

fn detail(status: StatusCode, msg: &str) -> Response {
    json_response(status, &json!({ "detail": msg }))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn parse_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// A FastAPI-style `{"detail": ...}` error; small, so `Result<_, ApiError>` stays cheap to move.
struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }

    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        detail(self.status, &self.detail)
    }
}

type ApiResult = Result<Response, ApiError>;

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
    }
}

fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(format!("Invalid path parameter: {e}")))
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
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

fn size_param(uri: &Uri) -> Result<u64, ApiError> {
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
fn pattern_response(size: u64, content_type: HeaderValue) -> Response {
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

fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Mirrors the offer's media sections so clients that inspect the answer (mids, kinds, codecs)
/// see something consistent; no real ICE/DTLS happens behind it.
fn fake_answer_sdp(offer: &str, session_id: &str) -> String {
    struct Section {
        kind: String,
        proto: String,
        formats: String,
        mid: Option<String>,
        direction: &'static str,
        codec_lines: Vec<String>,
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in offer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("video").to_owned();
            let _port = parts.next();
            let proto = parts.next().unwrap_or("UDP/TLS/RTP/SAVPF").to_owned();
            let formats = parts.collect::<Vec<_>>().join(" ");
            sections.push(Section {
                kind,
                proto,
                formats,
                mid: None,
                direction: "sendrecv",
                codec_lines: Vec::new(),
            });
        } else if let Some(section) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid.get_or_insert_with(|| mid.to_owned());
            } else if line.starts_with("a=rtpmap:")
                || line.starts_with("a=fmtp:")
                || line.starts_with("a=rtcp-fb:")
            {
                section.codec_lines.push(line.to_owned());
            } else {
                section.direction = match line {
                    "a=sendonly" => "recvonly",
                    "a=recvonly" => "sendonly",
                    "a=inactive" => "inactive",
                    "a=sendrecv" => "sendrecv",
                    _ => section.direction,
                };
            }
        }
    }
    if sections.is_empty() {
        sections.push(Section {
            kind: "video".to_owned(),
            proto: "UDP/TLS/RTP/SAVPF".to_owned(),
            formats: "96".to_owned(),
            mid: None,
            direction: "sendrecv",
            codec_lines: vec!["a=rtpmap:96 VP8/90000".to_owned()],
        });
    }

    let digest = Sha256::digest(session_id.as_bytes());
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let digest_hex = hex(&digest);
    let ufrag: String = session_id.chars().take(8).collect();
    let pwd: String = digest_hex.chars().take(24).collect();
    let mids: Vec<String> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| s.mid.clone().unwrap_or_else(|| i.to_string()))
        .collect();

    let mut sdp = String::new();
    let _ = write!(
        sdp,
        "v=0\r\no=mock-scope {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\na=msid-semantic:WMS *\r\n",
        u64::from_str_radix(session_id.get(..12).unwrap_or("1"), 16).unwrap_or(1),
        mids.join(" ")
    );
    for (section, mid) in sections.iter().zip(&mids) {
        let formats = if section.formats.is_empty() {
            "96"
        } else {
            section.formats.as_str()
        };
        let _ = write!(
            sdp,
            "m={} 9 {} {}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fingerprint}\r\na=setup:active\r\na=mid:{mid}\r\n",
            section.kind, section.proto, formats
        );
        if section.kind == "application" {
            sdp.push_str("a=sctp-port:5000\r\n");
        } else {
            let _ = write!(sdp, "a={}\r\na=rtcp-mux\r\n", section.direction);
            for line in &section.codec_lines {
                sdp.push_str(line);
                sdp.push_str("\r\n");
            }
        }
        sdp.push_str(
            "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n",
        );
    }
    sdp
}

// ---------------------------------------------------------------------------------------------
// Router

fn build_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/webrtc/ice-servers", get(ice_servers))
        .route("/api/v1/webrtc/offer", post(webrtc_offer))
        .route(
            "/api/v1/webrtc/offer/{id}",
            patch(add_candidates).delete(delete_session),
        )
        .route("/api/v1/pipeline/status", get(pipeline_status))
        .route("/api/v1/pipeline/load", post(pipeline_load))
        .route("/api/v1/pipelines/schemas", get(pipeline_schemas))
        .route("/api/v1/hardware/info", get(hardware_info))
        .route("/api/v1/lora/list", get(lora_list))
        .route("/api/v1/loras", post(lora_install))
        .route("/api/v1/assets", get(assets_list).post(asset_upload))
        .route("/api/v1/assets/{name}", get(asset_get))
        .route("/api/v1/recordings/{session_id}", get(recording))
        .route("/api/v1/models/status", get(models_status))
        .route("/api/v1/models/download", post(models_download))
        .route("/api/v1/logs/current", get(logs_current))
        .route("/api/v1/plugins", get(plugins_list).post(plugin_install))
        .route("/api/v1/plugins/{name}", delete(plugin_uninstall))
        .route("/api/v1/mock/echo", any(mock_echo))
        .route("/api/v1/mock/echo/{*rest}", any(mock_echo))
        .route("/api/v1/mock/slow", get(mock_slow))
        .route("/api/v1/mock/status/{code}", any(mock_status))
        .route("/api/v1/mock/text", get(mock_text))
        .route("/api/v1/mock/binary", get(mock_binary))
        .route("/api/v1/mock/env/{name}", get(mock_env))
        .route("/_mock/stats", get(control_stats))
        .route("/_mock/reset", post(control_reset))
        .route(
            "/_mock/faults",
            get(control_faults_get).post(control_faults_set),
        )
        .route("/_mock/exit", post(control_exit))
        .route("/_mock/sessions", get(control_sessions))
        .route("/_mock/deleted", get(control_deleted))
        // Must come after every `.route`: it only applies to routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Bodies are already buffered (with their own cap) before routing.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> Response {
    detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

// ---------------------------------------------------------------------------------------------
// Scope API

async fn health(State(state): Shared) -> Response {
    ok_json(&json!({
        "status": "healthy",
        "timestamp": unix_now(),
        "server_start_time": state.server_start_time,
        "version": "0.0.0-mock",
        "git_commit": "mock",
    }))
}

async fn ice_servers(State(state): Shared) -> Response {
    json_bytes(StatusCode::OK, state.ice_servers.clone())
}

async fn webrtc_offer(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = parse_object(&body)?;
    let Some(sdp) = obj.get("sdp").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "Field 'sdp' is required and must be a string",
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("offer") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Expected type 'offer', got '{other}'"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Field 'type' is required and must be a string",
            ));
        }
    }
    let initial_parameters = match obj.get("initialParameters") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Field 'initialParameters' must be an object",
            ));
        }
    };
    if state.opts.require_pipeline && !state.pipeline_loaded.load(Ordering::SeqCst) {
        return Err(ApiError::bad_request("Pipeline not loaded"));
    }

    let id = new_session_id();
    // A browser's offer gets a real peer that loops its video back; anything str0m cannot accept
    // (the SDP fragments tests send) gets the fake answer, as before.
    let (answer, peer) = match peer::start(&state.peers, &id, sdp).await {
        Ok((answer, handle)) => (answer, Some(handle)),
        Err(why) => {
            if !state.opts.quiet && sdp.contains("a=fingerprint:") {
                eprintln!("INFO scope.webrtc: session {id}: fake answer ({why})");
            }
            (fake_answer_sdp(sdp, &id), None)
        }
    };
    {
        let mut sessions = lock(&state.sessions);
        sessions.next_seq += 1;
        let seq = sessions.next_seq;
        sessions.live.insert(
            id.clone(),
            Session {
                seq,
                offer_sdp: sdp.to_owned(),
                initial_parameters,
                candidates: Vec::new(),
                peer,
            },
        );
    }
    Ok(ok_json(
        &json!({ "sdp": answer, "type": "answer", "sessionId": id }),
    ))
}

fn parse_candidates(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let obj = parse_object(body)?;
    let Some(Value::Array(items)) = obj.get("candidates") else {
        return Err(ApiError::bad_request(
            "Field 'candidates' is required and must be an array",
        ));
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(c) = item else {
                return Err(ApiError::bad_request("Each candidate must be an object"));
            };
            let Some(candidate) = c.get("candidate").and_then(Value::as_str) else {
                return Err(ApiError::bad_request(
                    "candidate.candidate must be a string",
                ));
            };
            let sdp_mid = match c.get("sdpMid") {
                None | Some(Value::Null) => Value::Null,
                Some(v @ Value::String(_)) => v.clone(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "candidate.sdpMid must be a string or null",
                    ));
                }
            };
            let sdp_mline_index = match c.get("sdpMLineIndex") {
                None | Some(Value::Null) => Value::Null,
                Some(v) if v.is_u64() => v.clone(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "candidate.sdpMLineIndex must be a non-negative integer or null",
                    ));
                }
            };
            Ok(json!({
                "candidate": candidate,
                "sdpMid": sdp_mid,
                "sdpMLineIndex": sdp_mline_index,
            }))
        })
        .collect()
}

async fn add_candidates(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let id = path_param(id)?;
    let candidates = parse_candidates(&body)?;
    let mut sessions = lock(&state.sessions);
    match sessions.live.get_mut(&id) {
        Some(session) => {
            if let Some(peer) = &session.peer {
                peer.add_candidates(&candidates);
            }
            session.candidates.extend(candidates);
            Ok(no_content())
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "Session not found")),
    }
}

async fn delete_session(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_param(id)?;
    let mut sessions = lock(&state.sessions);
    if sessions.live.remove(&id).is_some() {
        sessions.deleted.push(id);
        Ok(no_content())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "Session not found"))
    }
}

async fn pipeline_status(State(state): Shared) -> Response {
    json_bytes(StatusCode::OK, Bytes::clone(&state.pipeline_status.load()))
}

async fn pipeline_load(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = parse_object(&body)?;
    let ids: Vec<String> = match (obj.get("pipeline_ids"), obj.get("pipeline_id")) {
        (Some(Value::Array(items)), _) => {
            match items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
            {
                Some(ids) => ids,
                None => {
                    return Err(ApiError::bad_request(
                        "pipeline_ids must be a list of strings",
                    ));
                }
            }
        }
        (Some(v), _) if !v.is_null() => {
            return Err(ApiError::bad_request(
                "pipeline_ids must be a list of strings",
            ));
        }
        (_, Some(Value::String(id))) => vec![id.clone()],
        (_, Some(v)) if !v.is_null() => {
            return Err(ApiError::bad_request("pipeline_id must be a string"));
        }
        _ => {
            return Err(ApiError::bad_request(
                "pipeline_ids or pipeline_id is required",
            ));
        }
    };
    let Some(first) = ids.first() else {
        return Err(ApiError::bad_request("pipeline_ids must not be empty"));
    };
    let mut status = json!({
        "status": "loaded",
        "pipeline_id": first,
        "load_params": obj.get("load_params").cloned().unwrap_or(Value::Null),
    });
    if let (Some(conn), Value::Object(map)) = (obj.get("connection_id"), &mut status)
        && !conn.is_null()
    {
        map.insert("connection_id".to_owned(), conn.clone());
    }
    state
        .pipeline_status
        .store(Arc::new(Bytes::from(status.to_string())));
    state.pipeline_loaded.store(true, Ordering::SeqCst);
    Ok(ok_json(
        &json!({ "message": "Pipeline loading initiated successfully" }),
    ))
}

async fn pipeline_schemas() -> Response {
    json_bytes(
        StatusCode::OK,
        Bytes::from_static(
            br#"{"pipelines":{"passthrough":{"name":"Passthrough","config_schema":{"type":"object"}}}}"#,
        ),
    )
}

async fn hardware_info() -> Response {
    json_bytes(
        StatusCode::OK,
        Bytes::from_static(br#"{"vram_gb":24.0,"spout_available":false}"#),
    )
}

async fn lora_list() -> Response {
    json_bytes(StatusCode::OK, Bytes::from_static(br#"{"lora_files":[]}"#))
}

async fn lora_install() -> Response {
    ok_json(&json!({ "message": "LoRA installed" }))
}

async fn assets_list(State(state): Shared) -> Response {
    let assets = lock(&state.assets);
    let list: Vec<Value> = assets
        .iter()
        .map(|(name, a)| {
            json!({
                "name": name,
                "path": format!("assets/{name}"),
                "size_bytes": a.bytes.len(),
                "content_type": a.content_type,
                "sha256": a.sha256,
            })
        })
        .collect();
    ok_json(&json!({ "assets": list }))
}

/// Always enforced (not only when writing to disk) so behaviour does not depend on the env.
fn valid_asset_name(name: &str) -> bool {
    !name.is_empty() && name != "." && !name.contains(['/', '\\', '\0']) && !name.contains("..")
}

async fn asset_upload(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    digest: Option<Extension<BodyDigest>>,
    body: Bytes,
) -> ApiResult {
    let Some(name) = query_param(&uri, "filename").filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(
            "Query parameter 'filename' is required",
        ));
    };
    if !valid_asset_name(&name) {
        return Err(ApiError::bad_request("Invalid filename"));
    }
    let content_type = headers.get(CONTENT_TYPE).map_or_else(
        || "application/octet-stream".to_owned(),
        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
    );
    let sha256 = digest.map_or_else(|| sha256_hex(&body), |Extension(BodyDigest(d))| d);
    if let Some(dir) = &state.assets_dir {
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Cannot create assets dir: {e}"),
            ));
        }
        if let Err(e) = tokio::fs::write(dir.join(&name), &body).await {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Cannot write asset: {e}"),
            ));
        }
    }
    let size = body.len();
    lock(&state.assets).insert(
        name.clone(),
        Asset {
            bytes: body,
            content_type: content_type.clone(),
            sha256: sha256.clone(),
        },
    );
    Ok(ok_json(&json!({
        "path": format!("assets/{name}"),
        "filename": name,
        "size_bytes": size,
        "sha256": sha256,
        "content_type": content_type,
    })))
}

async fn asset_get(State(state): Shared, name: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path_param(name)?;
    let found = lock(&state.assets)
        .get(&name)
        .map(|a| (a.bytes.clone(), a.content_type.clone()));
    match found {
        Some((bytes, content_type)) => {
            let ct = HeaderValue::from_str(&content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
            Ok((StatusCode::OK, [(CONTENT_TYPE, ct)], bytes).into_response())
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "Asset not found")),
    }
}

async fn recording(uri: Uri) -> ApiResult {
    let size = size_param(&uri)?;
    Ok(pattern_response(
        size,
        HeaderValue::from_static("video/mp4"),
    ))
}

async fn models_status(uri: Uri) -> Response {
    ok_json(&json!({
        "downloaded": true,
        "pipeline_id": query_param(&uri, "pipeline_id"),
    }))
}

async fn models_download() -> Response {
    ok_json(&json!({ "message": "Download started" }))
}

async fn logs_current(State(state): Shared) -> Response {
    let loaded = state.pipeline_loaded.load(Ordering::SeqCst);
    let text = format!(
        "INFO scope.server: mock-scope started\n\
         INFO scope.server: pipeline {}\n\
         INFO scope.server: served {} requests\n",
        if loaded { "loaded" } else { "not loaded" },
        state.served.load(Ordering::Relaxed),
    );
    (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

fn plugin_json(p: &Plugin) -> Value {
    json!({ "name": p.name, "package": p.package, "version": "0.0.0-mock" })
}

/// `scope-foo==1.2`, `git+https://host/org/scope-foo.git` and `scope-foo` all name `scope-foo`.
fn plugin_name(package: &str) -> String {
    let base = if package.contains("://") {
        package
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(package)
            .trim_end_matches(".git")
    } else {
        package
            .split(['=', '<', '>', '!', '~', ';', '[', ' '])
            .next()
            .unwrap_or(package)
    };
    base.to_owned()
}

async fn plugins_list(State(state): Shared) -> Response {
    let plugins = lock(&state.plugins);
    let list: Vec<Value> = plugins.iter().map(plugin_json).collect();
    ok_json(&json!({ "plugins": list }))
}

async fn plugin_install(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = parse_object(&body)?;
    let Some(package) = obj
        .get("package")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
    else {
        return Err(ApiError::bad_request(
            "Field 'package' is required and must be a non-empty string",
        ));
    };
    let name = plugin_name(package.trim());
    let mut plugins = lock(&state.plugins);
    plugins.retain(|p| p.name != name);
    plugins.push(Plugin {
        name: name.clone(),
        package: package.to_owned(),
    });
    Ok(ok_json(
        &json!({ "message": "installed", "package": package, "name": name }),
    ))
}

async fn plugin_uninstall(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = path_param(name)?;
    let mut plugins = lock(&state.plugins);
    let before = plugins.len();
    plugins.retain(|p| p.name != name && p.package != name);
    if plugins.len() < before {
        Ok(ok_json(&json!({ "message": "uninstalled", "name": name })))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "Plugin not found"))
    }
}

// ---------------------------------------------------------------------------------------------
// Test endpoints reachable through the router (`/api/v1/mock/...`)

async fn mock_echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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

async fn mock_slow(uri: Uri) -> ApiResult {
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

async fn mock_status(code: Result<Path<String>, PathRejection>) -> ApiResult {
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

async fn mock_text() -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        "hello from mock-scope",
    )
        .into_response()
}

async fn mock_binary(uri: Uri) -> ApiResult {
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

async fn mock_env(name: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path_param(name)?;
    let value = std::env::var(&name).ok();
    Ok(ok_json(&json!({ "name": name, "value": value })))
}

// ---------------------------------------------------------------------------------------------
// Control plane (`/_mock/...`): never counted, never logged

async fn control_stats(State(state): Shared) -> Response {
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
        "by_route": by_route,
        "recent": recent,
    }))
}

/// Resets stats, sessions (and the deleted list) and faults; `?all=1` also forgets the loaded
/// pipeline, assets and plugins. The crash-after counter is never reset.
async fn control_reset(State(state): Shared, uri: Uri) -> Response {
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
        state.pipeline_loaded.store(false, Ordering::SeqCst);
        state.pipeline_status.store(Arc::new(not_loaded_status()));
        lock(&state.assets).clear();
        lock(&state.plugins).clear();
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

async fn control_faults_set(State(state): Shared, body: Bytes) -> ApiResult {
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

async fn control_faults_get(State(state): Shared) -> Response {
    ok_json(&state.faults.load().to_json())
}

async fn control_exit(uri: Uri) -> ApiResult {
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

async fn control_sessions(State(state): Shared) -> Response {
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
            })
        })
        .collect();
    ok_json(&json!({ "sessions": list }))
}

async fn control_deleted(State(state): Shared) -> Response {
    ok_json(&json!({ "deleted": lock(&state.sessions).deleted }))
}

//! The mock's shared state: options, the request log and counters, fault rules, and the WebRTC session table.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::Cli;
use crate::client::Clients;
use crate::clock::unix_now;
use crate::fastapi::{lock, parse_json, sha256_hex};
use crate::peer::{PeerConfig, PeerHandle};
use crate::pipeline::Pipelines;

/// Keeps `body_json` in `/_mock/stats` from pinning huge uploads in memory 200 times over.
const MAX_STATS_JSON_BYTES: usize = 1024 * 1024;
const RECENT_CAPACITY: usize = 200;

pub struct Opts {
    pub quiet: bool,
    pub log_health: bool,
    pub crash_after: Option<u64>,
    /// Idle connections are closed after this long (`--keep-alive-timeout-ms`).
    pub keep_alive: Option<std::time::Duration>,
}

pub struct AppState {
    pub opts: Opts,
    pub server_start_time: f64,
    /// Separate from `stats.total` because `/_mock/reset` must not postpone a configured crash.
    pub served: AtomicU64,
    pub stats: Stats,
    pub faults: ArcSwap<Faults>,
    pub sessions: Mutex<Sessions>,
    pub pipelines: std::sync::Arc<Pipelines>,
    pub assets: crate::assets::Assets,
    pub plugins: Mutex<Vec<crate::misc::Plugin>>,
    pub daydream: crate::daydream::Daydream,
    /// Pipelines whose models `POST /api/v1/models/download` is "downloading".
    pub downloads: Mutex<HashMap<String, f64>>,
    pub ice_servers: Bytes,
    pub peers: PeerConfig,
    pub clients: Clients,
}

#[derive(Default)]
pub struct Stats {
    pub total: AtomicU64,
    /// Connections accepted, and closed, since the start (not reset).
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub inner: Mutex<StatsInner>,
}

#[derive(Default)]
pub struct StatsInner {
    pub by_route: HashMap<String, u64>,
    pub recent: VecDeque<RecentRequest>,
}

pub struct RecentRequest {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body_len: usize,
    pub body_sha256: String,
    pub body_json: Value,
}

#[derive(Default)]
pub struct Faults {
    pub delays: Vec<FaultRule<u64>>,
    pub statuses: Vec<FaultRule<StatusCode>>,
}

pub struct FaultRule<T> {
    /// `None` matches any method (key `* /prefix` or just `/prefix`).
    pub method: Option<Method>,
    pub prefix: String,
    pub key: String,
    pub value: T,
}

#[derive(Default)]
pub struct Sessions {
    pub live: HashMap<String, Session>,
    pub next_seq: u64,
    /// Ids of sessions a DELETE removed (unknown ids are answered 204 but not listed).
    pub deleted: Vec<String>,
}

/// What `frame_processor.py:FrameProcessor.start` decided for a session.
pub struct FrameProcessor {
    pub pipeline_ids: Vec<String>,
    pub running: bool,
    pub error: Option<String>,
}

pub struct Session {
    pub seq: u64,
    pub offer_sdp: String,
    /// As the client sent them (not `model_dump`ed), for tests to compare.
    pub initial_parameters: Value,
    pub candidates: Vec<Value>,
    /// The real WebRTC peer, when the offer was one str0m could accept; dropping it closes it.
    pub peer: Option<PeerHandle>,
    pub frame_processor: FrameProcessor,
    /// `initialParameters.recording` (`RECORDING_ENABLED` is false by default).
    pub recording: bool,
}

impl Session {
    /// Whether the real server would still have it: `webrtc.py:Session` removes itself when its
    /// connection state becomes `closed` or `failed` (here: when the peer has ended by itself).
    pub fn gone(&self) -> bool {
        self.peer.as_ref().is_some_and(PeerHandle::is_closed)
    }
}

impl Sessions {
    /// The session as the real server's `self.sessions.get(id)` would find it.
    pub fn find(&mut self, id: &str) -> Option<&mut Session> {
        self.live.get_mut(id).filter(|s| !s.gone())
    }
}

#[derive(Clone)]
pub struct BodyDigest(pub String);

impl AppState {
    pub fn new(cli: &Cli) -> Self {
        Self {
            opts: Opts {
                quiet: cli.quiet,
                log_health: cli.log_health,
                crash_after: cli.crash_after,
                keep_alive: (cli.keep_alive_timeout_ms > 0)
                    .then(|| std::time::Duration::from_millis(cli.keep_alive_timeout_ms)),
            },
            server_start_time: unix_now(),
            served: AtomicU64::new(0),
            stats: Stats::default(),
            faults: ArcSwap::from_pointee(Faults::default()),
            sessions: Mutex::new(Sessions::default()),
            pipelines: std::sync::Arc::new(Pipelines::new(cli.load_ms)),
            assets: crate::assets::Assets::new(assets_dir()),
            plugins: Mutex::new(
                cli.bundled_plugins
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|name| crate::misc::Plugin {
                        name: name.to_owned(),
                        package: name.to_owned(),
                        bundled: true,
                    })
                    .collect(),
            ),
            daydream: crate::daydream::Daydream::new(&cli.daydream_users, &cli.daydream_plugins),
            downloads: Mutex::new(HashMap::new()),
            ice_servers: ice_servers_body(),
            peers: PeerConfig::new(cli.webrtc_ip, cli.quiet),
            clients: Clients::default(),
        }
    }

    /// Counts and logs one request; returns the body's sha256 hex.
    pub fn record(&self, req: &Request, body: &Bytes) -> String {
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

/// `app.py:get_assets_dir`: `DAYDREAM_SCOPE_ASSETS_DIR`, else `<models dir>/../assets` with the
/// models dir `DAYDREAM_SCOPE_MODELS_DIR` or `~/.daydream-scope/models`. Files are written there
/// only when `DAYDREAM_SCOPE_ASSETS_DIR` is set; otherwise they stay in memory under that name.
fn assets_dir() -> (PathBuf, bool) {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("DAYDREAM_SCOPE_ASSETS_DIR") {
        return (dir, true);
    }
    let models = env("DAYDREAM_SCOPE_MODELS_DIR").unwrap_or_else(|| {
        env("HOME")
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".daydream-scope/models")
    });
    let base = models
        .parent()
        .map_or_else(|| models.clone(), PathBuf::from);
    (base.join("assets"), false)
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.delays.is_empty() && self.statuses.is_empty()
    }

    pub fn delay_for(&self, method: &Method, path: &str) -> Option<u64> {
        best_rule(&self.delays, method, path).copied()
    }

    pub fn status_for(&self, method: &Method, path: &str) -> Option<StatusCode> {
        best_rule(&self.statuses, method, path).copied()
    }

    pub fn to_json(&self) -> Value {
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

/// `webrtc.py:create_rtc_config` without TURN credentials: Google's STUN server, `username` and
/// `credential` present and null (`schema.py:IceServerConfig`). With `HF_TOKEN` set (the real
/// server then fetches Cloudflare TURN credentials) a made-up TURN entry whose credential shows
/// the token's first four characters, so tests can see the token reached the backend.
fn ice_servers_body() -> Bytes {
    let mut servers = vec![
        json!({ "urls": ["stun:stun.l.google.com:19302"], "username": null, "credential": null }),
    ];
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        let hint: String = token.chars().take(4).collect();
        servers.push(json!({
            "urls": ["turn:turn.example.invalid:3478"],
            "username": "mock",
            "credential": format!("{hint}…"),
        }));
    }
    Bytes::from(json!({ "iceServers": servers }).to_string())
}

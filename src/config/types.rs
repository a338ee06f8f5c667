//! The typed shape of `routes.yaml`: serde for loading, schemars for the editor schema.
//!
//! Longer than most files on purpose: it reads top-down like the routes file itself,
//! section by section, and its doc comments are the descriptions of the generated
//! `schemas/routes.schema.json`, so splitting it would scatter one document.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_saphyr::Spanned;

/// A whole routes file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Format version of this file. Only `1` exists.
    pub version: u32,
    /// Address the router listens on (`HOST:PORT`). Applies on restart only.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory holding the JSON Schemas that routes name, relative to this file.
    #[serde(default = "default_schemas")]
    pub schemas: PathBuf,
    /// The Scope backend: where it answers and, optionally, how to run it.
    pub backend: BackendConfig,
    /// Per-connection behaviour: routing key, limits and hooks.
    #[serde(default)]
    pub connection: ConnectionConfig,
    /// Check every reply against its route's `reply_schemas` at run time and log mismatches
    /// (`warn`), or not (`off`, the default: it costs a parse per reply).
    #[serde(default)]
    pub validate_replies: ReplyValidation,
    /// Large files in acknowledged, resumable chunks over the socket (the `transfer` routes).
    #[serde(default)]
    pub transfers: TransferConfig,
    /// Serve a directory of static files (for example the browser example) at `/`.
    #[serde(default)]
    pub static_files: Option<PathBuf>,
    /// Who may read the operator endpoints (`/admin/config`, `/metrics` and the detailed
    /// `/readyz`). Absent: anyone who reaches the port. Applies live.
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    /// Message routes, keyed by the value of the routing field. `$default` catches the rest.
    #[schemars(with = "BTreeMap<String, RawRoute>")]
    pub routes: BTreeMap<String, Spanned<RouteConfig>>,
}

/// Chunked, resumable uploads and downloads.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Size of every chunk but the last.
    pub chunk_size: usize,
    /// Most chunks a sender may have unacknowledged.
    pub window: u32,
    /// Largest single upload.
    pub max_upload_bytes: u64,
    /// Largest total of all uploads being assembled at once.
    pub max_total_bytes: u64,
    /// Where uploads are assembled (default: a `scope-router-uploads` folder in the system temp dir).
    pub dir: Option<PathBuf>,
    /// How long an upload of a lost connection can be resumed by a new one.
    pub resume_timeout: Dur,
    /// An upload with no chunk for this long is abandoned and removed.
    pub idle_timeout: Dur,
    /// Binary backend responses over this size go out as a chunked download when the
    /// `api` message asks for it with `"_chunked": true`.
    pub download_chunk_over: usize,
    /// Time a receiver may take to acknowledge download chunks before the download is dropped.
    pub ack_timeout: Dur,
    /// Chunked downloads one connection may have at once; more get `TOO_MANY_DOWNLOADS`.
    pub max_downloads: usize,
    /// Uploads one connection may have in progress at once, whatever their size; more get
    /// `TOO_MANY_UPLOADS`.
    pub max_uploads: usize,
    /// Uploads the router keeps at once over all connections, those waiting to be resumed
    /// included; more get `TOO_MANY_UPLOADS`.
    pub max_uploads_total: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            chunk_size: 256 * 1024,
            window: 8,
            max_upload_bytes: 1024 * 1024 * 1024,
            max_total_bytes: 4 * 1024 * 1024 * 1024,
            dir: None,
            resume_timeout: Dur::secs(600),
            idle_timeout: Dur::secs(600),
            download_chunk_over: 1024 * 1024,
            ack_timeout: Dur::secs(60),
            max_downloads: 4,
            max_uploads: 4,
            max_uploads_total: 64,
        }
    }
}

/// Run-time reply validation.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplyValidation {
    /// No checks.
    #[default]
    Off,
    /// Log a warning for every reply that fits none of its route's reply schemas.
    Warn,
}

fn default_listen() -> String {
    "0.0.0.0:8080".to_owned()
}

fn default_schemas() -> PathBuf {
    PathBuf::from("schemas")
}

/// The backend section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL of the backend, e.g. `http://127.0.0.1:8000`. Applies live.
    pub url: String,
    /// Command that starts the backend. When absent, nothing is supervised.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Working directory for the command.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the inherited environment of the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// When set, the command does not inherit the router's whole environment: only these
    /// variables pass (those that are set; a trailing `*` matches a prefix, as `KAFKA_*`),
    /// plus `env`. Applies on restart.
    #[serde(default)]
    pub env_allowlist: Option<Vec<String>>,
    /// Health probe of the backend.
    #[serde(default)]
    pub health: HealthConfig,
    /// Restart policy of the supervised command.
    #[serde(default)]
    pub restart: RestartConfig,
    /// How the supervised command is stopped.
    #[serde(default)]
    pub stop: StopConfig,
    /// What happens to the backend's log lines.
    #[serde(default)]
    pub logs: LogsConfig,
    /// The shared keep-alive connection pool to the backend.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// Health probe settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Path probed with GET; 2xx means healthy.
    pub path: String,
    /// Time between probes.
    pub interval: Dur,
    /// Time one probe may take.
    pub timeout: Dur,
    /// How long a starting backend may take to become healthy before it is restarted.
    pub startup_timeout: Dur,
    /// Consecutive failed probes after which a running backend counts as unhealthy (and, when supervised, is restarted).
    pub failure_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval: Dur::secs(2),
            timeout: Dur::secs(2),
            startup_timeout: Dur::secs(120),
            failure_threshold: 3,
        }
    }
}

/// When the supervisor restarts the backend.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the process exits.
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// Restart settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Exponential backoff between restarts (with jitter).
    pub backoff: BackoffConfig,
    /// More restarts than this within a minute count as a crash loop (reported on /readyz and in metrics).
    pub max_restarts_per_minute: u32,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Always,
            backoff: BackoffConfig::default(),
            max_restarts_per_minute: 5,
        }
    }
}

/// Exponential backoff bounds.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Dur,
    /// Largest delay.
    pub max: Dur,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Dur::millis(500),
            max: Dur::secs(30),
        }
    }
}

/// Stop settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StopConfig {
    /// Signal sent to the backend's process group first (`SIGTERM`, `SIGINT`, `SIGQUIT`, `SIGHUP`).
    pub signal: StopSignal,
    /// Time allowed after the signal (and for in-flight requests) before SIGKILL.
    pub grace: Dur,
}

impl Default for StopConfig {
    fn default() -> Self {
        Self {
            signal: StopSignal::Sigterm,
            grace: Dur::secs(10),
        }
    }
}

/// The signal that asks the backend to stop.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
pub enum StopSignal {
    #[serde(rename = "SIGTERM", alias = "TERM", alias = "sigterm", alias = "term")]
    Sigterm,
    #[serde(rename = "SIGINT", alias = "INT", alias = "sigint", alias = "int")]
    Sigint,
    #[serde(rename = "SIGQUIT", alias = "QUIT", alias = "sigquit", alias = "quit")]
    Sigquit,
    #[serde(rename = "SIGHUP", alias = "HUP", alias = "sighup", alias = "hup")]
    Sighup,
}

/// Backend log handling.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Push the backend's log lines to connected clients as `{"type":"logs","lines":[…]}`.
    pub push_to_clients: bool,
    /// Most lines in one `logs` message.
    pub batch: usize,
    /// Lines containing any of these substrings are not pushed (noisy loggers).
    pub exclude: Vec<String>,
    /// INFO and DEBUG lines of these loggers are not pushed; ERROR and WARNING lines always
    /// are. The logger is read from Scope's line format
    /// (`2026-01-01 12:00:00,000 - logger.name - LEVEL - message`).
    pub skip_loggers: Vec<String>,
    /// An environment variable whose comma-separated loggers extend `skip_loggers`
    /// (Scope 0.2.3's `CLOUD_LOG_SKIP_LOGGERS`), read at start.
    pub skip_loggers_env: Option<String>,
    /// Lines queued per client before the oldest are dropped.
    pub queue: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            push_to_clients: false,
            batch: 50,
            exclude: Vec::new(),
            skip_loggers: Vec::new(),
            skip_loggers_env: None,
            queue: 1000,
        }
    }
}

/// Backend connection pool settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept to the backend (never more than `max_connections`).
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Dur,
    /// Largest backend response body read whole (a route may set a smaller cap). Larger
    /// binary answers go out as chunked downloads, streamed, when the client asks for them.
    pub max_response_bytes: usize,
    /// Backend calls in flight at once, over all clients; each holds one connection to the
    /// backend, and no more connections than this are open (idle ones included). Further
    /// calls wait for a place within their own timeout.
    pub max_connections: usize,
    /// Response bytes all calls together may hold in memory; a call that would go over
    /// is answered 503 (`ROUTER_BUSY`).
    pub max_buffered_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle: 1024,
            idle_timeout: Dur::secs(90),
            max_response_bytes: 48 * 1024 * 1024,
            max_connections: 64,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Per-connection settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// The message field to route on: a top-level field name, or a JSON pointer such as `/action`.
    pub route_on: String,
    /// Largest inbound message, in bytes. A larger one closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Most messages of one connection being handled at once; more get an error reply.
    pub max_in_flight: usize,
    /// Longest life of a connection; it then gets a `MAX_DURATION_EXCEEDED` error and is closed.
    pub max_duration: Option<Dur>,
    /// Time allowed for in-flight messages to finish after the client has gone, before the disconnect hooks run.
    pub drain_timeout: Dur,
    /// Most connections served at once; more get a `TOO_MANY_CONNECTIONS` error and close code 1013.
    pub max_connections: usize,
    /// Per-connection message rate; messages over it get a `RATE_LIMITED` error.
    pub rate: Option<RateConfig>,
    /// Close a connection that sent nothing (not even a ping) for this long.
    pub idle_timeout: Option<Dur>,
    /// Close a client that does not read its replies for this long.
    pub write_timeout: Dur,
    /// Time a client may take to send its HTTP request head (the upgrade request), like
    /// nginx's `client_header_timeout`; a silent or half-sent request is then dropped.
    /// Applies on restart.
    pub header_timeout: Dur,
    /// Most connections still in their handshake at once (before the upgrade, and while
    /// the token is being checked); more are answered 503. They take no connection slot.
    /// Applies on restart.
    pub max_handshakes: usize,
    /// Browser origins allowed to open the socket (`Origin` header, exact match such as
    /// `http://127.0.0.1:8080`); requests without an `Origin` (non-browser clients) are
    /// always allowed. `self` admits the router's own pages (an origin whose host is the
    /// request's `Host`). Absent: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Send WebSocket ping frames this often and close a peer that stops answering.
    pub keepalive: Option<KeepaliveConfig>,
    /// Who may connect.
    pub auth: AuthConfig,
    /// Sent right after the upgrade (a reply template; `connection.*` is available).
    /// `false` sends nothing (a tunnel whose upstream sends its own first message).
    pub on_connect: Option<Value>,
    /// Backend calls made right after `ready`, in order, best effort (they never delay it),
    /// such as telling the backend the connection id its log lines should carry.
    pub after_connect: Vec<ConnectStep>,
    /// A check that must pass before a client's upgrade is accepted (the tunnel profile:
    /// the runner is listening and has no session). A refusal is an HTTP 503.
    pub admission: Option<AdmissionConfig>,
    /// Steps run when the connection ends.
    pub on_disconnect: Vec<DisconnectStep>,
    /// The user-id message (Scope 0.2.3's `set_user_id`): answered, recorded for
    /// `${connection.user_id}`, and checked against an authorizer when `check` is set.
    pub gate: Option<GateConfig>,
    /// What the backend learns about the deployment (`${connection.info}`): an object whose
    /// values may name the environment (`${env.NOMAD_DC:-unknown}`), read at load.
    pub info: Option<Value>,
    /// Lifecycle events (`websocket_connected`, `websocket_disconnected`): always logged;
    /// sent to an HTTP sink too when one is set.
    pub events: Option<EventsConfig>,
}

/// The user-id message and its optional access check.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The message type (default `set_user_id`).
    #[serde(default = "default_gate_message")]
    pub message: String,
    /// The field holding the user id (default `user_id`).
    #[serde(default = "default_gate_field")]
    pub field: String,
    /// The access check: a GET to this URL (a template: `${message.*}`, `${env.*}`); a 2xx
    /// grants access, anything else (or no answer in `timeout`) is `ACCESS_DENIED` and close
    /// 4003. Messages sent meanwhile wait, in order. Absent: no check, the id is recorded.
    #[serde(default)]
    pub check: Option<GateCheck>,
    /// Messages before the first user-id message are refused with `AUTH_REQUIRED`.
    #[serde(default)]
    pub required: bool,
    /// The reply (a template; default `{type: user_id_set, user_id: ${message.<field>}}`).
    #[serde(default)]
    pub reply: Option<Value>,
    /// Log lines are pushed only once access is granted (when `check` is set).
    #[serde(default = "yes")]
    pub logs_after_grant: bool,
}

fn default_gate_message() -> String {
    "set_user_id".to_owned()
}

fn default_gate_field() -> String {
    "user_id".to_owned()
}

/// The gate's HTTP check.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateCheck {
    /// URL template, http:// or https://.
    pub url: String,
    /// Time the check may take (default 10 s); a timeout denies.
    #[serde(default = "default_gate_timeout")]
    pub timeout: Dur,
}

fn default_gate_timeout() -> Dur {
    Dur::secs(10)
}

/// Where lifecycle events go besides the log.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// An HTTP sink: each event is POSTed as JSON `{"type": …, "data": {…}}`.
    pub url: String,
    /// Events waiting for the sink; when full, new events are dropped and counted
    /// (`scope_router_events_dropped_total`), so a slow sink never delays a socket.
    #[serde(default = "default_event_queue")]
    pub queue: usize,
    /// Time one POST may take.
    #[serde(default = "default_event_timeout")]
    pub timeout: Dur,
}

fn default_event_queue() -> usize {
    1000
}

fn default_event_timeout() -> Dur {
    Dur::secs(5)
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            route_on: "type".to_owned(),
            max_message_bytes: 64 * 1024 * 1024,
            max_in_flight: 64,
            max_duration: Some(Dur::secs(2 * 60 * 60)),
            drain_timeout: Dur::secs(10),
            max_connections: 1024,
            rate: None,
            idle_timeout: None,
            write_timeout: Dur::secs(30),
            header_timeout: Dur::secs(10),
            max_handshakes: 256,
            allowed_origins: None,
            keepalive: None,
            auth: AuthConfig::None,
            on_connect: None,
            after_connect: Vec::new(),
            admission: None,
            on_disconnect: Vec::new(),
            gate: None,
            info: None,
            events: None,
        }
    }
}

/// WebSocket-level keepalive.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// Time between ping frames.
    pub interval: Dur,
    /// Time a pong may take before the peer counts as gone.
    pub timeout: Dur,
}

/// A step run on disconnect, in order.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DisconnectStep {
    /// `close_sessions`: DELETE every WebRTC session this connection opened.
    Signaling(SignalingDisconnect),
    /// Empty a directory (its entries are removed, the directory stays), such as the
    /// backend's assets directory, so no user sees the previous user's files. Runs when
    /// the last connection leaves; a new connection's `ready` waits for it.
    /// `$NAME` takes the path from `backend.env` or the router's environment.
    ClearDir(String),
    /// An HTTP call to the backend.
    Http(Box<HttpStep>),
}

/// A step run right after `ready`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ConnectStep {
    /// An HTTP call to the backend.
    Http(Box<HttpStep>),
}

/// An HTTP call to the backend made by a connection hook.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Method (default POST).
    #[serde(default = "default_post")]
    pub method: String,
    /// Backend path, a template: `${connection.id}`, `${connection.user_id}`, `${env.*}`.
    pub path: String,
    /// JSON body, a template like the path.
    #[serde(default)]
    pub body: Option<Value>,
    /// Time the call may take (default 10 s). A non-2xx answer, or a JSON answer with
    /// `ok: false`, is logged as a warning.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Run only when the last connection leaves (between users), like `clear_dir`.
    #[serde(default)]
    pub last_only: bool,
    /// Statuses that are fine and logged quietly (a newer backend's 404, say).
    #[serde(default)]
    pub quiet_statuses: Vec<u16>,
    /// A call for each element of a list in this call's JSON answer.
    #[serde(default)]
    pub for_each: Option<ForEachStep>,
}

/// One call per element of a list in an answer (`${item.*}` names the element's fields;
/// string fields are percent-encoded where they go into the path).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForEachStep {
    /// Where the list is in the answer: a dotted path such as `plugins` (empty: the answer).
    #[serde(default)]
    pub items: String,
    /// Elements whose field of this name is `true` are skipped (e.g. `bundled`).
    #[serde(default)]
    pub skip_if: Option<String>,
    /// Method of each call (default DELETE).
    #[serde(default = "default_delete")]
    pub method: String,
    /// Path of each call, a template (`${item.name}`).
    pub path: String,
    /// Time each call may take (default 10 s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Most elements walked (the rest are logged and left).
    #[serde(default = "default_for_each_max")]
    pub max_items: usize,
}

fn default_delete() -> String {
    "DELETE".to_owned()
}

fn default_for_each_max() -> usize {
    256
}

/// The check before a client's upgrade: an HTTP call to the backend whose JSON answer
/// must hold every field of `expect`, tried up to `attempts` times, `interval` apart.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Method (default GET).
    #[serde(default = "default_get")]
    pub method: String,
    /// Backend path, such as `/internal/status`.
    pub path: String,
    /// Fields the answer's JSON object must have, with these values (a 2xx is needed too).
    #[serde(default)]
    pub expect: BTreeMap<String, Value>,
    /// Checks before the client is refused (default 10).
    #[serde(default = "default_admission_attempts")]
    pub attempts: u32,
    /// Time between two checks (default 1 s).
    #[serde(default = "default_admission_interval")]
    pub interval: Dur,
    /// Time one check may take (default 2 s).
    #[serde(default = "default_admission_timeout")]
    pub timeout: Dur,
}

fn default_get() -> String {
    "GET".to_owned()
}
fn default_admission_attempts() -> u32 {
    10
}
fn default_admission_interval() -> Dur {
    Dur::secs(1)
}
fn default_admission_timeout() -> Dur {
    Dur::secs(2)
}

fn default_post() -> String {
    "POST".to_owned()
}

/// Disconnect actions of the signaling relay.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalingDisconnect {
    /// DELETE every WebRTC session this connection opened.
    CloseSessions,
}

/// A per-connection token bucket.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages that may arrive at once above the sustained rate.
    pub burst: u32,
}

/// How a connection proves who it is, before `ready`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "mode")]
pub enum AuthConfig {
    /// Everyone is let in.
    #[default]
    None,
    /// The token must equal one of a list read from an environment variable (comma-separated), compared in constant time.
    Token {
        /// The variable holding the accepted tokens.
        env: String,
    },
    /// The token is sent to an HTTP authorizer (`Authorization: Bearer …`, JSON body `{"token","connection_id"}`); a 2xx lets the connection in.
    Http {
        /// The authorizer's URL (https:// or http://).
        url: String,
        /// Time the authorizer may take; a timeout denies.
        #[serde(default = "default_auth_timeout")]
        timeout: Dur,
    },
}

/// The operator endpoints' token.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The environment variable holding the operator token (a comma-separated list is
    /// accepted, for rotation), compared by digest in constant time. Requests give it as
    /// `Authorization: Bearer <token>` or `?token=<token>`. `/admin/config` and `/metrics`
    /// answer 401 without it; `/readyz` answers only `{"ready": bool}`. An unset variable
    /// locks the endpoints rather than opening them.
    pub token_env: String,
}

fn default_auth_timeout() -> Dur {
    Dur::secs(5)
}

/// One route: an optional schema and exactly one handler.
///
/// "Exactly one" is checked while deserializing (through [`RawRoute`]), so the error
/// is placed at the route's line and no later code counts handlers.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRoute")]
pub struct RouteConfig {
    /// JSON Schema file every message of this route must satisfy.
    pub schema: Option<String>,
    /// Schema files a reply of this route may satisfy.
    pub reply_schemas: Vec<String>,
    /// What the route does.
    pub handler: HandlerConfig,
}

/// The handler of a route.
#[derive(Debug, Clone)]
pub enum HandlerConfig {
    Reply(Value),
    Forward(Box<ForwardConfig>),
    Signaling(SignalingConfig),
    Transfer(TransferRoute),
    Tunnel(TunnelConfig),
}

impl HandlerConfig {
    /// The handler kind's name, for `/admin/config` and tooling.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerConfig::Reply(_) => "reply",
            HandlerConfig::Forward(_) => "forward",
            HandlerConfig::Signaling(_) => "signaling",
            HandlerConfig::Transfer(_) => "transfer",
            HandlerConfig::Tunnel(_) => "tunnel",
        }
    }
}

/// One route as written: exactly one of `reply`, `forward`, `signaling`, `transfer` or `tunnel`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RouteConfig")]
pub struct RawRoute {
    /// JSON Schema file (in the schemas directory) every message of this route must satisfy.
    #[serde(default)]
    pub schema: Option<String>,
    /// Schema files a reply of this route may satisfy (used by contract checks).
    #[serde(default)]
    pub reply_schemas: Vec<String>,
    /// A local reply built from a template.
    #[serde(default)]
    pub reply: Option<Value>,
    /// An HTTP call to the backend.
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
    /// The WebRTC signaling relay.
    #[serde(default)]
    pub signaling: Option<SignalingConfig>,
    /// A step of a chunked transfer.
    #[serde(default)]
    pub transfer: Option<TransferRoute>,
    /// Every frame no other route takes (typed or not, text or binary) relayed unchanged
    /// over one upstream WebSocket per client connection. Only on `$default`.
    #[serde(default)]
    pub tunnel: Option<TunnelConfig>,
}

/// The start of the error a route without exactly one handler gets.
pub(crate) const ROUTE_HANDLER_ERROR: &str = "a route needs exactly one of";

impl TryFrom<RawRoute> for RouteConfig {
    type Error = String;

    fn try_from(raw: RawRoute) -> Result<Self, String> {
        let mut handlers = Vec::new();
        if let Some(r) = raw.reply {
            handlers.push(HandlerConfig::Reply(r));
        }
        if let Some(f) = raw.forward {
            handlers.push(HandlerConfig::Forward(Box::new(f)));
        }
        if let Some(s) = raw.signaling {
            handlers.push(HandlerConfig::Signaling(s));
        }
        if let Some(t) = raw.transfer {
            handlers.push(HandlerConfig::Transfer(t));
        }
        if let Some(t) = raw.tunnel {
            handlers.push(HandlerConfig::Tunnel(t));
        }
        let handler = match (handlers.pop(), handlers.is_empty()) {
            (Some(h), true) => h,
            _ => {
                return Err(
                    "a route needs exactly one of `reply`, `forward`, `signaling`, `transfer` or `tunnel`"
                        .to_owned(),
                );
            }
        };
        Ok(RouteConfig {
            schema: raw.schema,
            reply_schemas: raw.reply_schemas,
            handler,
        })
    }
}

/// A tunnel: per client connection one upstream WebSocket, frames relayed both ways unchanged.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// The upstream WebSocket, such as `ws://127.0.0.1:8001/ws`.
    pub url: String,
    /// Frames waiting in each direction (default 64). A full queue slows its sender: the
    /// router stops reading that side until there is room.
    #[serde(default = "default_tunnel_queue")]
    pub queue: usize,
    /// Time the upstream handshake may take (default 10 s).
    #[serde(default = "default_tunnel_connect_timeout")]
    pub connect_timeout: Dur,
    /// Wait before reconnecting a dropped upstream, the client's socket kept open (default 2.5 s).
    #[serde(default = "default_tunnel_reconnect_delay")]
    pub reconnect_delay: Dur,
    /// More than this many upstream failures (drops and failed connects) within
    /// `failure_window` close the client with 1011 (default 20).
    #[serde(default = "default_tunnel_max_failures")]
    pub max_failures: u32,
    /// The window `max_failures` counts in (default 60 s).
    #[serde(default = "default_tunnel_failure_window")]
    pub failure_window: Dur,
    /// WebSocket pings to the upstream; a silent one counts as dropped (default every 20 s,
    /// 20 s to answer). `connection.keepalive` pings the client.
    #[serde(default = "default_tunnel_keepalive")]
    pub keepalive: Option<KeepaliveConfig>,
    /// Frame types counted by name in `scope_router_tunnel_frames_total`; any other type
    /// counts as `other`, a frame without one as `untyped`, a binary frame as `binary`.
    #[serde(default = "default_tunnel_frame_types")]
    pub frame_types: Vec<String>,
}

fn default_tunnel_queue() -> usize {
    64
}
fn default_tunnel_connect_timeout() -> Dur {
    Dur::secs(10)
}
fn default_tunnel_reconnect_delay() -> Dur {
    Dur::millis(2500)
}
fn default_tunnel_max_failures() -> u32 {
    20
}
fn default_tunnel_failure_window() -> Dur {
    Dur::secs(60)
}
fn default_tunnel_keepalive() -> Option<KeepaliveConfig> {
    Some(KeepaliveConfig {
        interval: Dur::secs(20),
        timeout: Dur::secs(20),
    })
}
fn default_tunnel_frame_types() -> Vec<String> {
    [
        "ready",
        "started",
        "create_channels",
        "close_channels",
        "response",
        "restarting",
        "ping",
        "pong",
        "error",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A transfer route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRoute {
    /// Which step this route performs.
    pub action: TransferAction,
    /// For `upload_start`/`upload_finish`: the forward route whose rules (methods, allow/deny,
    /// timeouts, reply templates) the assembled upload goes through.
    #[serde(default)]
    pub via: Option<String>,
}

/// Steps of a chunked transfer.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferAction {
    /// Announce an upload: target, size, sha256.
    UploadStart,
    /// One numbered chunk.
    UploadChunk,
    /// How far an upload got (to resume).
    UploadStatus,
    /// All chunks sent: verify and forward.
    UploadFinish,
    /// Acknowledge download chunks.
    DownloadAck,
}

/// An HTTP forward to the backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Take method, path and body from the message's `method`, `path` and `body` fields (the `api` passthrough).
    #[serde(default)]
    pub from_message: bool,
    /// Fixed method (when not `from_message`).
    #[serde(default)]
    pub method: Option<String>,
    /// Fixed path, may interpolate `${message.…}` (when not `from_message`).
    #[serde(default)]
    pub path: Option<String>,
    /// JSON body template (when not `from_message`).
    #[serde(default)]
    pub body: Option<Value>,
    /// Methods a message may use (with `from_message`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Globs a path must match (after normalization) to be forwarded.
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    /// Globs that are never forwarded, even when allowed.
    #[serde(default = "default_deny")]
    pub deny: Vec<String>,
    /// Requests (`METHOD /glob`) that are never forwarded, whatever the path rules say:
    /// `403 Request not allowed`. The default routes deny `POST /api/v1/plugins`, since a
    /// plugin install runs the package's code on the runner.
    #[serde(default)]
    pub deny_requests: Vec<String>,
    /// Checks made before a request is sent: a request (`METHOD /glob`) goes on only when
    /// a field of its body is on an allowlist fetched over HTTP (Scope 0.2.3's plugin
    /// allowlist). Not on it: 403; the list cannot be fetched: 503.
    #[serde(default)]
    pub guards: Vec<GuardConfig>,
    /// A body `{"_base64_content":…, "_content_type":…}` is decoded and sent as raw bytes.
    #[serde(default = "yes")]
    pub base64_uploads: bool,
    /// Time a request may take, unless a `timeouts` rule matches.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Per-path timeouts; the first match wins.
    #[serde(default)]
    pub timeouts: Vec<TimeoutRule>,
    /// Requests (`METHOD /glob`) whose JSON object body gets the connection id added as
    /// `connection_id` (and the other `add_fields`).
    #[serde(default)]
    pub add_connection_id: Vec<String>,
    /// The fields those bodies get, a template (default: `connection_id`, `user_id` and
    /// `connection_info` from `${connection.*}`); an absent value (no user id given yet, no
    /// `connection.info`) leaves its key out.
    #[serde(default)]
    pub add_fields: Option<Value>,
    /// Uploads by URL (`{"_cdn_url": …}` bodies): the router fetches the file and sends its
    /// bytes. Off unless hosts are listed: fetching client-supplied URLs is a request-forgery hole.
    #[serde(default)]
    pub cdn_uploads: Option<CdnConfig>,
    /// Largest response body this route reads whole; at most, and by default,
    /// `backend.pool.max_response_bytes`. Larger answers get a 502 (`RESPONSE_TOO_LARGE`),
    /// unless they are binary and the message asked for `"_chunked": true`.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Reply template for a JSON or text response (`response.*` is available).
    pub reply: Value,
    /// Reply template for a binary response (2xx with a binary content type). When absent, binary bodies go through `reply` as base64 text.
    #[serde(default)]
    pub reply_binary: Option<Value>,
    /// Reply template for failures (`error.status`, `error.message`, `error.code` are available).
    #[serde(default)]
    pub on_error: Option<Value>,
}

fn yes() -> bool {
    true
}

/// A request guard of a forward route.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The requests it checks, `METHOD /path-glob` (e.g. `POST /api/v1/plugins`).
    pub request: String,
    /// The list the value must be on.
    pub allowlist: AllowlistConfig,
}

/// An allowlist fetched over HTTP, page by page (`?limit=N&offset=M`), cached briefly.
/// Values and list entries are compared after normalizing URLs: lower case, trimmed,
/// without a leading `git+`, `http://` or `https://`, or a trailing `.git` or `/`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowlistConfig {
    /// The list's URL (`${env.*}` is read at load), http:// or https://.
    pub url: String,
    /// The array of entries in each page (`plugins`).
    #[serde(default = "default_list_items")]
    pub items: String,
    /// The field of an entry compared (`repositoryUrl`).
    #[serde(default = "default_list_field")]
    pub field: String,
    /// The page's flag that another page follows (`hasMore`).
    #[serde(default = "default_list_more")]
    pub more: String,
    /// Entries asked per page.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Most pages fetched.
    #[serde(default = "default_max_pages")]
    pub max_pages: usize,
    /// The request body's field checked (`package`).
    #[serde(default = "default_list_value")]
    pub value: String,
    /// How long a fetched list is used before it is fetched again.
    #[serde(default = "default_list_cache")]
    pub cache: Dur,
    /// Time each page may take.
    #[serde(default = "default_gate_timeout")]
    pub timeout: Dur,
    /// The 403's error text; `{value}` is the value refused.
    #[serde(default = "default_list_denied")]
    pub denied: String,
}

fn default_list_items() -> String {
    "plugins".to_owned()
}
fn default_list_field() -> String {
    "repositoryUrl".to_owned()
}
fn default_list_more() -> String {
    "hasMore".to_owned()
}
fn default_page_size() -> usize {
    100
}
fn default_max_pages() -> usize {
    50
}
fn default_list_value() -> String {
    "package".to_owned()
}
fn default_list_cache() -> Dur {
    Dur::secs(60)
}
fn default_list_denied() -> String {
    "Plugin '{value}' is not in the allowed list for cloud mode".to_owned()
}

fn default_methods() -> Vec<String> {
    ["GET", "POST", "PATCH", "DELETE", "PUT"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn default_allow() -> Vec<String> {
    vec!["/api/v1/**".to_owned(), "/health".to_owned()]
}

fn default_deny() -> Vec<String> {
    vec!["/api/v1/internal/**".to_owned()]
}

fn default_timeout() -> Dur {
    Dur::secs(30)
}

/// Uploads fetched from a CDN.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CdnConfig {
    /// Hosts (`host` or `host:port`, exact match) files may be fetched from.
    pub allow_hosts: Vec<String>,
    /// Allow `http://` URLs too (local testing); by default only `https://`.
    #[serde(default)]
    pub allow_http: bool,
    /// Largest file fetched.
    #[serde(default = "default_cdn_max")]
    pub max_bytes: usize,
    /// Time the fetch may take.
    #[serde(default = "default_cdn_timeout")]
    pub timeout: Dur,
    /// Redirects followed, each only to a URL that passes the same checks (host, scheme,
    /// no credentials); 0 follows none.
    #[serde(default)]
    pub follow_redirects: usize,
}

fn default_cdn_max() -> usize {
    512 * 1024 * 1024
}

fn default_cdn_timeout() -> Dur {
    Dur::secs(120)
}

/// A timeout for matching requests.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutRule {
    /// Path glob, e.g. `/api/v1/recordings/**`.
    pub path: String,
    /// Only for this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only for raw (base64-decoded) uploads.
    #[serde(default)]
    pub upload: bool,
    /// The timeout.
    pub timeout: Dur,
}

/// The WebRTC signaling relay.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalingConfig {
    /// `offer` or `icecandidate`.
    pub action: SignalingAction,
    /// Backend path of the offer endpoint; ICE PATCH and DELETE go to `<path>/<sessionId>`.
    #[serde(default = "default_offer_path")]
    pub path: String,
    /// Time the backend call may take.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Add the connection id to offers as `connection_id` (and the other `add_fields`).
    #[serde(default)]
    pub add_connection_id: bool,
    /// The fields offers get with `add_connection_id`, a template (default: `connection_id`,
    /// `user_id` and `connection_info`); absent values leave their key out.
    #[serde(default)]
    pub add_fields: Option<Value>,
    /// WebRTC sessions one connection may hold, offers in flight included (`offer` only).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// What an offer over `max_sessions` does: `close_oldest` (the default: the oldest
    /// session is closed at the backend to make room, as a client that starts and stops
    /// streams on one socket needs) or `refuse` (`TOO_MANY_SESSIONS`).
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_max_sessions() -> usize {
    4
}

/// What an offer over `max_sessions` does.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Close the connection's oldest session to make room.
    #[default]
    CloseOldest,
    /// Refuse the offer with `TOO_MANY_SESSIONS`.
    Refuse,
}

fn default_offer_path() -> String {
    "/api/v1/webrtc/offer".to_owned()
}

/// Signaling actions.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalingAction {
    /// Relay an SDP offer and remember the session.
    Offer,
    /// Relay a trickle ICE candidate to this connection's session.
    Icecandidate,
}

/// A duration written as `500ms`, `2s`, `5m`, `2h` (or a bare number of seconds).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Dur::secs(s)),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map(Dur)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
        }
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as `500ms`, `2s`, `5m` or `2h`, or a whole number of seconds.",
            "oneOf": [
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zµ]+(\\s*[0-9]+\\s*[a-zµ]+)*\\s*$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

//! `loadgen`: the benchmark's closed-loop load generator (WebSocket through the router, HTTP straight to the backend, idle connections).
//!
//! Every worker owns one connection and keeps exactly one request in flight: send, await the
//! reply, record the latency, repeat. Latencies go into one HDR histogram per worker (merged at
//! the end), and each run prints one JSON line on stdout:
//!
//! ```text
//! loadgen ws   --url ws://127.0.0.1:8080/ws --conns 50 --duration 5s --warmup 1s --mix api
//! loadgen http --url http://127.0.0.1:8000  --conns 50 --duration 5s --warmup 1s --mix api
//! loadgen idle --url ws://127.0.0.1:8080/ws --conns 10000          # holds until stdin closes
//! loadgen report --raw target/bench/raw.jsonl                       # medians, as Markdown
//! ```
//!
//! The `http` mode sends what the router would send for the same `ws` mix, so the two runs can be
//! compared side by side. The generator reports its own CPU per message (`cpu_us_per_msg.loadgen`),
//! because it shares the machine with what it measures, and that of any process named with
//! `--cpu-pid` (the router, the backend), sampled exactly at the edges of the measured window.
//!
//! The Markdown report lives in `report.rs`. This file stays at about 900 lines on purpose:
//! the command line, the two transports and the worker loop are one measurement, and the
//! worker must be read beside the transports whose costs it times.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// Lowest and highest latency the histograms track, in nanoseconds (3 significant figures).
const HIST_LOW_NS: u64 = 100;
const HIST_HIGH_NS: u64 = 60_000_000_000;
/// How long one reply may take before the worker gives up on its connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Linux reports process CPU time in clock ticks of 1/100 s (`USER_HZ`) on every mainstream architecture.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Closed-loop load generator for the scope-router benchmark"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// N WebSocket connections sending the message mix through scope-router.
    Ws(RunArgs),
    /// N keep-alive HTTP connections making the equivalent calls straight to the backend.
    Http(HttpArgs),
    /// Open N WebSocket connections, wait for `ready` on each, then hold them idle.
    Idle(IdleArgs),
    /// Read the JSON lines of a benchmark run and print the Markdown results (medians of repeats).
    Report(ReportArgs),
    /// One large transfer at a time (base64 upload, chunked upload, chunked download), through
    /// the router or straight to the backend: MB/s and the router's peak RSS.
    Transfer(transfer::TransferArgs),
}

#[derive(Debug, Clone, Args)]
struct ReportArgs {
    /// The JSON lines written by `scripts/bench.sh` (this tool's output, plus `idle` RSS lines).
    #[arg(long)]
    raw: std::path::PathBuf,
    /// A line added under the machine description (such as the load average before the run).
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// `ws://host:port/ws` for `ws`, the backend base URL `http://host:port` for `http`.
    #[arg(long)]
    url: String,
    /// Concurrent connections, one closed-loop worker each.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time spent sending before measuring starts (nothing recorded).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// What each worker sends.
    #[arg(long, value_enum, default_value_t = Mix::Ping)]
    mix: Mix,
    /// Tokio worker threads of the generator itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also measure another process's CPU time over the measured window, as `NAME=PID`
    /// (repeatable); reported per message and in cores next to the generator's own.
    #[arg(long = "cpu-pid", value_name = "NAME=PID", value_parser = parse_cpu_pid)]
    cpu_pids: Vec<(String, u32)>,
    /// Row name, copied into the output line (`report` groups by it).
    #[arg(long, default_value = "")]
    row: String,
    /// Configuration label (which routes file the router ran), copied into the output line.
    #[arg(long, default_value = "")]
    config: String,
    /// Repeat number, copied into the output line.
    #[arg(long, default_value_t = 0)]
    repeat: u32,
}

#[derive(Debug, Clone, Args)]
struct HttpArgs {
    #[command(flatten)]
    run: RunArgs,
    /// `conn`: one dedicated keep-alive connection per worker (hyper's connection API, the
    /// lightest client); `pool`: hyper-util's pooled client shared by every worker (what the
    /// router itself uses to reach the backend).
    #[arg(long, value_enum, default_value_t = HttpClientKind::Conn)]
    client: HttpClientKind,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    /// `ws://host:port/ws`.
    #[arg(long)]
    url: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Hold this long, then exit; without it, hold until stdin reaches end of file.
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,
    /// Report this process's resident memory (the router's) before connecting and once every
    /// connection is open and has settled.
    #[arg(long)]
    rss_pid: Option<u32>,
    /// Wait this long after the last `ready` before reading the RSS.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Row name, copied into the output line (`report` groups by it).
    #[arg(long, default_value = "")]
    row: String,
    /// Configuration label, copied into the output line.
    #[arg(long, default_value = "")]
    config: String,
    /// Repeat number, copied into the output line.
    #[arg(long, default_value_t = 0)]
    repeat: u32,
    /// Tokio worker threads of the generator itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// `ping` (local reply); over HTTP, `GET /health`.
    Ping,
    /// `ping_noschema`, the same route without a schema (needs `benches/routes.yaml`).
    #[value(name = "ping_noschema")]
    PingNoschema,
    /// `api` `GET /api/v1/pipeline/status`.
    Api,
    /// api GET and POST, get_ice_servers and icecandidate, after one offer per connection.
    #[value(name = "mix")]
    Realistic,
    /// `api` GET of a 1 KiB JSON answer (`/api/v1/mock/json?size=1024`).
    #[value(name = "api1k")]
    Api1k,
    /// `api` GET of a 64 KiB JSON answer.
    #[value(name = "api64k")]
    Api64k,
    /// `api` GET of a 1 MiB JSON answer.
    #[value(name = "api1m")]
    Api1m,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Ping => "ping",
            Mix::PingNoschema => "ping_noschema",
            Mix::Api => "api",
            Mix::Realistic => "mix",
            Mix::Api1k => "api1k",
            Mix::Api64k => "api64k",
            Mix::Api1m => "api1m",
        }
    }

    fn ops(self) -> &'static [Op] {
        match self {
            Mix::Ping => &[Op::Ping],
            Mix::PingNoschema => &[Op::PingNoschema],
            Mix::Api => &[Op::ApiGet(STATUS_PATH)],
            Mix::Realistic => &MIX,
            Mix::Api1k => &[Op::ApiGet("/api/v1/mock/json?size=1024")],
            Mix::Api64k => &[Op::ApiGet("/api/v1/mock/json?size=65536")],
            Mix::Api1m => &[Op::ApiGet("/api/v1/mock/json?size=1048576")],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HttpClientKind {
    Conn,
    Pool,
}

const STATUS_PATH: &str = "/api/v1/pipeline/status";
const OFFER_PATH: &str = "/api/v1/webrtc/offer";
const ICE_SERVERS_PATH: &str = "/api/v1/webrtc/ice-servers";
const CANDIDATE: &str = r#"{"candidate":"candidate:1 1 UDP 2122252543 192.0.2.10 54400 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
const OFFER_SDP: &str = "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\nc=IN IP4 0.0.0.0\\r\\na=mid:0\\r\\na=sendrecv\\r\\na=rtpmap:96 VP8/90000\\r\\n";

/// The realistic mix, cycled by every worker (one offer first): 5 api GET, 1 api POST,
/// 1 get_ice_servers, 3 icecandidate, the proportions of a client that trickles ICE while
/// polling the pipeline.
const MIX: [Op; 10] = [
    Op::ApiGet(STATUS_PATH),
    Op::IceCandidate,
    Op::ApiGet("/api/v1/hardware/info"),
    Op::IceCandidate,
    Op::ApiPost(
        "/api/v1/models/download",
        r#"{"pipeline_id":"passthrough"}"#,
    ),
    Op::IceServers,
    Op::ApiGet(STATUS_PATH),
    Op::IceCandidate,
    Op::ApiGet("/api/v1/loras"),
    Op::ApiGet(STATUS_PATH),
];

/// One request of a mix, in both its WebSocket and its HTTP form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ping,
    PingNoschema,
    ApiGet(&'static str),
    ApiPost(&'static str, &'static str),
    IceServers,
    IceCandidate,
}

impl Op {
    /// The WebSocket message, with a numeric `request_id`.
    fn ws_message(self, request_id: u64) -> String {
        match self {
            Op::Ping => format!(r#"{{"type":"ping","request_id":{request_id}}}"#),
            Op::PingNoschema => format!(r#"{{"type":"ping_noschema","request_id":{request_id}}}"#),
            Op::ApiGet(path) => format!(
                r#"{{"type":"api","method":"GET","path":"{path}","request_id":{request_id}}}"#
            ),
            Op::ApiPost(path, body) => format!(
                r#"{{"type":"api","method":"POST","path":"{path}","body":{body},"request_id":{request_id}}}"#
            ),
            Op::IceServers => format!(r#"{{"type":"get_ice_servers","request_id":{request_id}}}"#),
            Op::IceCandidate => format!(
                r#"{{"type":"icecandidate","candidate":{CANDIDATE},"request_id":{request_id}}}"#
            ),
        }
    }

    /// Whether a WebSocket reply is the success this request should get (a substring check:
    /// the generator must stay cheap).
    fn ws_ok(self, reply: &str) -> bool {
        match self {
            Op::Ping | Op::PingNoschema => reply.contains(r#""pong""#),
            Op::ApiGet(_) | Op::ApiPost(..) | Op::IceServers => {
                reply.contains(r#""status":200"#) && !reply.contains(r#""type":"error""#)
            }
            Op::IceCandidate => reply.contains(r#""icecandidate_ack""#),
        }
    }

    /// The equivalent backend call: method, path, body, and the status that means success.
    fn http(self, session_path: &str) -> (Method, &str, Option<String>, StatusCode) {
        match self {
            Op::Ping | Op::PingNoschema => (Method::GET, "/health", None, StatusCode::OK),
            Op::ApiGet(path) => (Method::GET, path, None, StatusCode::OK),
            Op::ApiPost(path, body) => (Method::POST, path, Some(body.to_owned()), StatusCode::OK),
            Op::IceServers => (Method::GET, ICE_SERVERS_PATH, None, StatusCode::OK),
            Op::IceCandidate => (
                Method::PATCH,
                session_path,
                Some(format!(r#"{{"candidates":[{CANDIDATE}]}}"#)),
                StatusCode::NO_CONTENT,
            ),
        }
    }
}

/// When recording starts and when sending stops, shared by every worker.
#[derive(Debug, Clone, Copy)]
struct Plan {
    record_from: Instant,
    end: Instant,
}

/// What one worker measured.
struct WorkerResult {
    hist: Histogram<u32>,
    msgs: u64,
    errors: u64,
    first_error: Option<String>,
    /// Set when the worker's connection failed and it stopped early.
    failed: Option<String>,
}

impl WorkerResult {
    fn new() -> Result<WorkerResult> {
        Ok(WorkerResult {
            hist: Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3)
                .context("cannot create a histogram")?,
            msgs: 0,
            errors: 0,
            first_error: None,
            failed: None,
        })
    }

    /// Records one exchange if it started inside the measured window.
    fn record(&mut self, plan: &Plan, started: Instant, ok: bool, reply: impl FnOnce() -> String) {
        if started < plan.record_from {
            return;
        }
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Out-of-range values are clamped rather than dropped, so every message counts.
        let _ = self.hist.record(ns.clamp(HIST_LOW_NS, HIST_HIGH_NS));
        self.msgs += 1;
        if !ok {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(reply());
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.mode {
        Mode::Ws(a) => a.threads,
        Mode::Http(a) => a.run.threads,
        Mode::Idle(a) => a.threads,
        Mode::Transfer(_) => 1,
        Mode::Report(a) => {
            return match report::run(a) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.mode {
            Mode::Ws(args) => run(args, Transport::Ws).await,
            Mode::Http(args) => {
                let kind = args.client;
                run(args.run, Transport::Http(kind)).await
            }
            Mode::Idle(args) => idle(args).await,
            Mode::Transfer(args) => transfer::run(args).await,
            Mode::Report(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Ws,
    Http(HttpClientKind),
}

/// Runs one measurement and prints its JSON line.
async fn run(args: RunArgs, transport: Transport) -> Result<()> {
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let target = Target::parse(&args.url)?;
    let pool = match transport {
        Transport::Http(HttpClientKind::Pool) => Some(pool_client(args.conns)),
        _ => None,
    };

    // Connect everything first, so the warm-up measures traffic rather than handshakes.
    let mut connecting = JoinSet::new();
    for _ in 0..args.conns {
        let target = target.clone();
        let pool = pool.clone();
        let mix = args.mix;
        connecting.spawn(async move {
            match transport {
                Transport::Ws => Conn::ws(&target, mix).await,
                Transport::Http(_) => Conn::http(&target, pool, mix).await,
            }
        });
    }
    let mut conns = Vec::with_capacity(args.conns);
    while let Some(joined) = connecting.join_next().await {
        conns.push(joined.context("connect task panicked")??);
    }

    let start = Instant::now();
    let plan = Plan {
        record_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let mut workers = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        workers.spawn(worker(conn, args.mix, plan, i));
    }

    // Sampled exactly at the edges of the measured window, so handshakes, warm-up and teardown
    // are not charged to the measured messages.
    let mut watched: Vec<(String, Option<u32>)> = vec![("loadgen".to_owned(), None)];
    watched.extend(args.cpu_pids.iter().map(|(n, p)| (n.clone(), Some(*p))));
    tokio::time::sleep_until(plan.record_from.into()).await;
    let cpu_from: Vec<Option<f64>> = watched.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    tokio::time::sleep_until(plan.end.into()).await;
    let cpu_to: Vec<Option<f64>> = watched.iter().map(|(_, p)| cpu_seconds(*p)).collect();

    let mut total = WorkerResult::new()?;
    let mut failures = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let r = joined.context("worker panicked")??;
        total.hist.add(&r.hist).context("merging histograms")?;
        total.msgs += r.msgs;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        if let Some(f) = r.failed {
            failures.push(f);
        }
    }

    let secs = args.duration.as_secs_f64();
    let us = |q: f64| total.hist.value_at_quantile(q) as f64 / 1000.0;
    let mut cpu_per_msg = serde_json::Map::new();
    let mut cpu_cores = serde_json::Map::new();
    for ((name, _), (from, to)) in watched.iter().zip(cpu_from.iter().zip(&cpu_to)) {
        let (per_msg, cores) = match (from, to) {
            (Some(a), Some(b)) if total.msgs > 0 => (
                Value::from(round2((b - a) * 1e6 / total.msgs as f64)),
                Value::from(round2((b - a) / secs)),
            ),
            _ => (Value::Null, Value::Null),
        };
        cpu_per_msg.insert(name.clone(), per_msg);
        cpu_cores.insert(name.clone(), cores);
    }
    let mode = match transport {
        Transport::Ws => "ws",
        Transport::Http(_) => "http",
    };
    let line = json!({
        "row": args.row,
        "config": args.config,
        "repeat": args.repeat,
        "mode": mode,
        "mix": args.mix.name(),
        "conns": args.conns,
        "threads": args.threads,
        "msgs": total.msgs,
        "errors": total.errors,
        "worker_failures": failures.len(),
        "duration_s": secs,
        "throughput": round2(total.msgs as f64 / secs),
        "p50_us": round2(us(0.5)),
        "p90_us": round2(us(0.9)),
        "p99_us": round2(us(0.99)),
        "p999_us": round2(us(0.999)),
        "max_us": round2(total.hist.max() as f64 / 1000.0),
        "mean_us": round2(total.hist.mean() / 1000.0),
        "cpu_us_per_msg": cpu_per_msg,
        "cpu_cores": cpu_cores,
    });
    print_line(&line.to_string());
    if let Some(e) = &total.first_error {
        eprintln!("loadgen: {} error replies; first: {e}", total.errors);
    }
    if let Some(f) = failures.first() {
        eprintln!(
            "loadgen: {} workers stopped early; first: {f}",
            failures.len()
        );
    }
    if total.msgs == 0 {
        bail!("no message completed in the measured window");
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Resident set size of a process, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `NAME=PID` for `--cpu-pid`.
fn parse_cpu_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
    let pid = pid.parse().map_err(|_| format!("bad PID in {s:?}"))?;
    Ok((name.to_owned(), pid))
}

/// User + system CPU time of a process (this one for `None`), in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; the fields after it are space-separated.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // After ")" come state (field 3) … utime (14) and stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SEC)
}

/// Where to connect, from `--url`.
#[derive(Debug, Clone)]
struct Target {
    url: Arc<str>,
    /// `host:port`, for the TCP connect and the `Host` header.
    authority: Arc<str>,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--url {url:?} has no host"))?;
        let port = match (authority.port_u16(), uri.scheme_str()) {
            (Some(p), _) => p,
            (None, Some("ws" | "http")) => 80,
            (None, _) => bail!("--url {url:?}: only ws:// and http:// are supported"),
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Target {
            url: Arc::from(url.trim_end_matches('/')),
            authority: Arc::from(authority),
        })
    }

    async fn tcp(&self) -> Result<TcpStream> {
        let stream = TcpStream::connect(&*self.authority)
            .await
            .with_context(|| format!("cannot connect to {}", self.authority))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(stream)
    }
}

/// Small buffers: generator messages are tiny, and 10,000 idle connections should cost the
/// generator little memory.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket and waits for the router's `ready`.
async fn ws_connect(target: &Target) -> Result<Ws> {
    let tcp = target.tcp().await?;
    let (mut ws, _) = client_async_with_config(&*target.url, tcp, Some(ws_config()))
        .await
        .with_context(|| format!("WebSocket handshake with {} failed", target.url))?;
    let first = next_text(&mut ws).await?;
    if !first.as_str().contains(r#""ready""#) {
        bail!("expected a ready message first, got {}", first.as_str());
    }
    Ok(ws)
}

/// Whether a text frame is a pushed batch of backend log lines (`{"lines":[…],"type":"logs"}`,
/// sent every 100 ms with the `fal` routes of the benchmark), which answers no request.
fn is_logs(text: &str) -> bool {
    text.starts_with(r#"{"lines":"#) && text.ends_with(r#""type":"logs"}"#)
}

/// The next text frame (control frames and log pushes are skipped; a close or an error ends the run).
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        let frame = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no reply within {REPLY_TIMEOUT:?}"))?;
        match frame {
            Some(Ok(Message::Text(t))) if is_logs(t.as_str()) => {}
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(c))) => bail!("server closed the connection: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("WebSocket read failed"),
            None => bail!("connection closed"),
        }
    }
}

/// A pooled client shared by every worker (`--client pool`).
#[derive(Clone)]
struct Pool {
    client: Client<HttpConnector, Full<Bytes>>,
}

fn pool_client(conns: usize) -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(connector);
    Pool { client }
}

/// One worker's connection, already set up (WebSocket `ready` received; offer made for the mix).
enum Conn {
    Ws(Box<Ws>),
    Http(HttpConn),
}

struct HttpConn {
    target: Target,
    client: HttpClient,
    /// `/api/v1/webrtc/offer/<id>` of this worker's session, for the mix.
    session_path: String,
}

enum HttpClient {
    Dedicated(SendRequest<Full<Bytes>>),
    Pooled(Pool),
}

impl Conn {
    async fn ws(target: &Target, mix: Mix) -> Result<Conn> {
        let mut ws = ws_connect(target).await?;
        if mix == Mix::Realistic {
            let offer = format!(r#"{{"type":"offer","sdp":"{OFFER_SDP}","request_id":"offer"}}"#);
            ws.send(Message::text(offer))
                .await
                .context("sending the offer")?;
            let answer = next_text(&mut ws).await?;
            if !answer.as_str().contains(r#""answer""#) {
                bail!("offer failed: {}", answer.as_str());
            }
        }
        Ok(Conn::Ws(Box::new(ws)))
    }

    async fn http(target: &Target, pool: Option<Pool>, mix: Mix) -> Result<Conn> {
        let client = match pool {
            Some(p) => HttpClient::Pooled(p),
            None => {
                let tcp = target.tcp().await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .context("HTTP handshake")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                HttpClient::Dedicated(sender)
            }
        };
        let mut conn = HttpConn {
            target: target.clone(),
            client,
            session_path: String::new(),
        };
        if mix == Mix::Realistic {
            let body = format!(r#"{{"sdp":"{OFFER_SDP}","type":"offer"}}"#);
            let (status, answer) = conn.call(Method::POST, OFFER_PATH, Some(body)).await?;
            let id = serde_json::from_slice::<Value>(&answer).ok().and_then(|v| {
                v.get("sessionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            match (status, id) {
                (StatusCode::OK, Some(id)) => conn.session_path = format!("{OFFER_PATH}/{id}"),
                _ => bail!(
                    "offer failed: {status} {}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        Ok(Conn::Http(conn))
    }
}

impl HttpConn {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let uri = match self.client {
            HttpClient::Dedicated(_) => path.to_owned(),
            HttpClient::Pooled(_) => format!("{}{path}", self.target.url),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, &*self.target.authority);
        let body = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).context("building the request")?;
        let call = async {
            let resp = match &mut self.client {
                HttpClient::Dedicated(sender) => {
                    sender.ready().await.context("connection closed")?;
                    sender.send_request(req).await.context("HTTP request")?
                }
                HttpClient::Pooled(pool) => {
                    pool.client.request(req).await.context("HTTP request")?
                }
            };
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .context("reading the body")?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(REPLY_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("no reply within {REPLY_TIMEOUT:?}"))?
    }

    /// Closes the worker's WebRTC session, as the router does when a WebSocket closes.
    async fn close_session(&mut self) {
        if !self.session_path.is_empty() {
            let path = std::mem::take(&mut self.session_path);
            let _ = self.call(Method::DELETE, &path, None).await;
        }
    }
}

/// One closed-loop worker: its connection, one request in flight, until the plan ends.
async fn worker(conn: Conn, mix: Mix, plan: Plan, index: usize) -> Result<WorkerResult> {
    let mut result = WorkerResult::new()?;
    let ops = mix.ops();
    // Workers start at different points of the mix so the backend sees the blend at once.
    let mut i = index;
    let mut request_id: u64 = 0;
    match conn {
        Conn::Ws(mut ws) => {
            while Instant::now() < plan.end {
                let Some(op) = ops.get(i % ops.len()).copied() else {
                    break;
                };
                i += 1;
                request_id += 1;
                let msg = Message::text(op.ws_message(request_id));
                let started = Instant::now();
                let reply = match ws.send(msg).await {
                    Ok(()) => next_text(&mut ws).await,
                    Err(e) => Err(anyhow::Error::new(e).context("WebSocket send failed")),
                };
                match reply {
                    Ok(text) => {
                        let ok = op.ws_ok(text.as_str());
                        result.record(&plan, started, ok, || text.as_str().to_owned());
                    }
                    Err(e) => {
                        result.failed = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            let _ = (*ws).close(None).await;
        }
        Conn::Http(mut conn) => {
            while Instant::now() < plan.end {
                let Some(op) = ops.get(i % ops.len()).copied() else {
                    break;
                };
                i += 1;
                let (method, path, body, expect) = op.http(&conn.session_path);
                let path = path.to_owned();
                let started = Instant::now();
                match conn.call(method, &path, body).await {
                    Ok((status, body)) => {
                        let ok = status == expect;
                        result.record(&plan, started, ok, || {
                            format!("{status} {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(e) => {
                        result.failed = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            conn.close_session().await;
        }
    }
    Ok(result)
}

/// Opens `--conns` WebSockets (each waits for `ready`), prints one JSON line, then holds them.
async fn idle(args: IdleArgs) -> Result<()> {
    let target = Target::parse(&args.url)?;
    let rss_base = args.rss_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut opened: Vec<Ws> = Vec::with_capacity(args.conns);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut connecting = futures_util::stream::iter(0..args.conns)
        .map(|_| {
            let target = target.clone();
            async move { ws_connect(&target).await }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(r) = connecting.next().await {
        match r {
            Ok(ws) => opened.push(ws),
            Err(e) => {
                failed += 1;
                if first_error.is_none() {
                    first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    let connect_s = round2(started.elapsed().as_secs_f64());
    let rss = match args.rss_pid {
        Some(pid) => {
            tokio::time::sleep(args.settle).await;
            rss_kib(pid)
        }
        None => None,
    };
    let line = json!({
        "row": args.row,
        "config": args.config,
        "repeat": args.repeat,
        "mode": "idle",
        "conns": args.conns,
        "connected": opened.len(),
        "failed": failed,
        "connect_s": connect_s,
        "rss_base_kib": rss_base,
        "rss_kib": rss,
    });
    print_line(&line.to_string());
    if let Some(e) = first_error {
        eprintln!("loadgen: {failed} connections failed; first: {e}");
    }

    // Each connection is read while held, so keepalive pings get their pongs and a
    // connection the router closes is noticed (and reported) rather than silently lost.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut holders = JoinSet::new();
    for mut ws in opened {
        let mut stop = stop_rx.clone();
        holders.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return true,
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }
    match args.hold {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            // Held until whoever started us closes our stdin.
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut dropped = 0usize;
    while let Some(held) = holders.join_next().await {
        if !matches!(held, Ok(true)) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        eprintln!("loadgen: {dropped} connections closed by the server while held");
    }
    if failed > 0 {
        bail!("{failed} of {} connections failed", args.conns);
    }
    Ok(())
}

/// `loadgen report`: medians of the repeats, as the Markdown the README shows.
mod report;
/// `loadgen transfer`: large uploads and downloads.
mod transfer;

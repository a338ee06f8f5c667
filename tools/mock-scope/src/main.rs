//! `mock-scope`: a fake Scope backend, as strict as the real one (daydream-scope 0.2.3, upstream `6fcc8ebf^`) in what the router forwards and the example page relies on; plus a real WebRTC peer that loops video back, test knobs and a `/_mock/` control plane.
//!
//! The spec is docs/scope-server-checks.md. What is mirrored, each with the upstream function
//! it comes from (`app.py` etc. are under `src/scope/server/`):
//!
//! - **Offer with no pipeline loaded** (status `not_loaded`, `loading` or `error`): 400 `Pipeline not
//!   loaded. Please load pipeline first.`, no session (`app.py:handle_webrtc_offer`).
//! - **Offer without `initialParameters.pipeline_ids`**, or naming one that is not loaded: answered
//!   200, ICE and DTLS connect, the browser's video is received, but no frame is ever sent back;
//!   logged `<asctime> - scope.server.frame_processor - ERROR - No pipeline IDs provided, cannot
//!   start` (or `Pipeline setup failed: Pipeline <id> not loaded`) during the request
//!   (`frame_processor.py:FrameProcessor.start`, `tracks.py:VideoProcessingTrack.recv`). With
//!   them: `[FRAME-PROCESSOR] Started with N pipeline(s): [...]` and the video loops back.
//! - **Offer body**: pydantic's 422 list for a missing/non-string `sdp` or `type`, a non-object
//!   `initialParameters`, a bad `input_mode`/`prompts`/`pipeline_ids`; a `type` other than
//!   `offer` is a 500 with aiortc's text (`schema.py:WebRTCOfferRequest`, `Parameters`; aiortc
//!   `RTCSessionDescription`); the answer is exactly `{sdp, type: "answer", sessionId}` with a
//!   uuid4 `sessionId` (`webrtc.py:Session.__init__`, `WebRTCManager.handle_offer`).
//! - **PATCH `/webrtc/offer/{id}`**: 422 for a bad body; 404 `Session <id> not found` for an
//!   unknown id or one whose connection ended; 404 `Invalid ICE candidate: …` for a candidate of
//!   fewer than 8 fields or with neither `sdpMid` nor `sdpMLineIndex`; else 204
//!   (`app.py:add_ice_candidate`, `webrtc.py:WebRTCManager.add_ice_candidate`).
//! - **DELETE `/webrtc/offer/{id}`**: 204, known id or not (`app.py:close_webrtc_session`,
//!   `webrtc.py:WebRTCManager.remove_session`).
//! - **Pipeline load**: 422 for a bad body; 400 `Either 'pipelines' or 'pipeline_ids' must be
//!   provided` unless one is a non-empty list (a singular `pipeline_id` is ignored); the
//!   `pipelines: [{node_id, pipeline_id, load_params}]` form; 200 `Pipeline loading initiated
//!   successfully` before loading starts (`app.py:load_pipeline`, `schema.py:PipelineLoadRequest`).
//! - **Pipeline status**: `not_loaded` → `loading` → `loaded`, or `error` once for an unknown
//!   pipeline id (then `not_loaded`; an offer's check consumes it too); loading other ids unloads
//!   the old ones; always the eight keys `status, pipeline_id, load_params, loaded_lora_adapters,
//!   error, loading_stage, produces_video, produces_audio` (`pipeline_manager.py:get_status_info`,
//!   `load_pipelines`, `schema.py:PipelineStatusResponse`). `PIPELINE=<id>` loads one at startup
//!   (`app.py:prewarm_pipeline`).
//! - **Assets**: listing `{assets: [AssetFileInfo]}` of image/video/audio files, newest first
//!   (`app.py:list_assets`); upload 422 without `filename`, 400 `Invalid file type. Allowed types:
//!   …` for another extension, 400 `Invalid filename` outside the assets dir, reply
//!   `{name (stem), path (absolute), size_mb, folder, type, created_at}` (`app.py:upload_asset`);
//!   download by sub-path, 403 `Invalid path`, 404 `Asset not found`, media type by extension
//!   (`app.py:serve_asset`).
//! - **Recordings**: 404 `Session <id> not found`, 404 `No recording available for this session`
//!   unless the offer asked for `recording` (`app.py:download_recording`).
//! - **`/health`**: exactly `status, timestamp` (`datetime.now().isoformat()`, local time),
//!   `server_start_time, version ("0.2.3"), git_commit` (`app.py:health_check`).
//! - **ICE servers**: `username`/`credential` present and null (`app.py:get_ice_servers`,
//!   `webrtc.py:create_rtc_config`). **Hardware info**: the four keys (`app.py:get_hardware_info`).
//!   **Models**: `status` requires `pipeline_id` (422) and answers `{downloaded, progress}`;
//!   `download` 422/400/409/200 (`app.py:get_model_status`, `download_pipeline_models`).
//!   **Logs**: this process's log in Scope's format (`app.py:get_current_logs`). **Plugins**: the
//!   `PluginInfo` shapes, `total`, `failed_plugins`, a text/plain 500 for a bad install body, exact
//!   names on uninstall (`app.py:list_plugins`, `install_plugin`, `uninstall_plugin`).
//! - **Unknown paths**: GET 404 `Frontend not built` (`app.py:serve_frontend`), other methods 405.
//!
//! Test-only extensions, which the real server does not have and which change nothing the router
//! relies on: an offer whose SDP str0m cannot accept (the SDP fragments the router's tests send)
//! gets a made-up answer instead of aiortc's 500; the upload reply has four extra fields
//! (`filename`, `size_bytes`, `sha256`, `content_type`); `GET /api/v1/recordings/<any>?size=N`
//! serves N pattern bytes; `POST /api/v1/loras` answers 200 without downloading; the mock plays a
//! GPU machine (all 12 built-in pipelines, `vram_gb` 24); `/api/v1/mock/…` test endpoints; the
//! `/_mock/…` control plane (stats, faults, sessions with each one's frame processor and
//! `frames_sent`, deleted, reset, exit, and a test WebRTC client); `--crash-after`,
//! `--startup-delay-ms`, `--log-interval-ms`, `--load-ms`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod assets;
mod client;
mod clock;
mod control;
mod daydream;
mod fastapi;
mod misc;
mod peer;
mod pipeline;
mod sdp;
mod serve;
mod state;
mod testing;
mod webrtc;

use state::AppState;

#[derive(Parser, Debug)]
#[command(
    name = "mock-scope",
    about = "Fake Scope backend for tests and benchmarks"
)]
pub struct Cli {
    /// Address to listen on (HOST:PORT); port 0 picks an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Overrides the host part of --listen (mirrors `daydream-scope --host`).
    #[arg(long)]
    pub host: Option<String>,
    /// Overrides the port part of --listen (mirrors `daydream-scope --port`).
    #[arg(long)]
    pub port: Option<u16>,
    /// Accepted for command-line compatibility with `daydream-scope`; ignored.
    #[arg(long)]
    pub no_browser: bool,
    /// Sleep this long before binding, like a slow model load.
    #[arg(long, default_value_t = 0)]
    pub startup_delay_ms: u64,
    /// Close a connection that has been idle this long between requests, silently (uvicorn's
    /// `--timeout-keep-alive`, 5 s by default there); 0 keeps idle connections open.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub keep_alive_timeout_ms: u64,
    /// Exit with code 1 once the Nth counted response has been sent.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_after: Option<u64>,
    /// Load this pipeline at startup, as the real server's `PIPELINE` environment variable does
    /// (`app.py:prewarm_pipeline`); done before the mock listens, so no request races it.
    #[arg(long, env = "PIPELINE", value_name = "ID")]
    pub pipeline: Option<String>,
    /// Start with no pipeline loaded even when `--pipeline`/`PIPELINE` is set (offers are refused
    /// until one is loaded; that is the default behaviour anyway, as upstream).
    #[arg(long)]
    pub require_pipeline: bool,
    /// How long a `POST /api/v1/pipeline/load` stays `loading` before it is `loaded`; 0 loads
    /// before the POST is answered (a test shortcut: the real load always runs in the background).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub load_ms: u64,
    /// Emit heartbeat log lines to stderr at this interval (0 = off).
    #[arg(long, default_value_t = 0)]
    pub log_interval_ms: u64,
    /// Also log `/health` requests.
    #[arg(long)]
    pub log_health: bool,
    /// Suppress per-request access log lines.
    #[arg(long)]
    pub quiet: bool,
    /// Also offer a WebRTC host candidate on this address (127.0.0.1 is always offered).
    #[arg(long, default_value = "127.0.0.1")]
    pub webrtc_ip: std::net::IpAddr,
    /// Users the fake Daydream API (`/daydream/v1/users/{id}`) knows, comma-separated.
    #[arg(long, default_value = "user_123")]
    pub daydream_users: String,
    /// Repository URLs on the fake Daydream plugin allowlist (`/daydream/v1/plugins`).
    #[arg(
        long,
        default_value = "https://github.com/daydreamlive/scope-plugin-a,https://github.com/daydreamlive/scope-plugin-b"
    )]
    pub daydream_plugins: String,
    /// Plugins installed at start and marked `bundled` (kept by cleanup), comma-separated.
    #[arg(long, default_value = "")]
    pub bundled_plugins: String,
}

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
    clock::scope_log(
        "scope.server.app",
        "INFO",
        &format!(
            "mock-scope started (standing in for daydream-scope {})",
            misc::VERSION
        ),
    );
    if let Some(id) = cli
        .pipeline
        .as_deref()
        .filter(|p| !p.is_empty() && !cli.require_pipeline)
    {
        state.pipelines.preload(id);
    }
    let router = serve::build_router(Arc::clone(&state));
    serve::serve(listener, state, router, shutdown_rx).await;
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
        // Scope's line format, so the router's logger filters see what they would in production.
        clock::scope_log("scope.server.app", "INFO", &format!("heartbeat {n}"));
        if n.is_multiple_of(3) {
            clock::scope_log(
                "scope.server.kafka_publisher",
                "INFO",
                &format!("published event {n}"),
            );
        }
        if n.is_multiple_of(5) {
            clock::scope_log(
                "scope.server.kafka_publisher",
                "WARNING",
                &format!("broker slow at event {n}"),
            );
        }
    }
}

/// Flushes explicitly: stdout is usually a pipe read line-by-line by a test harness.
pub fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn exit_process(code: i32) -> ! {
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    std::process::exit(code)
}

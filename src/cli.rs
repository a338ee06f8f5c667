//! The command line: `serve` (the default), `validate`, and the wiring of a running router.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::control::ControlPlane;
use crate::server::{self, Listener};
use crate::snapshot::{Overrides, Snapshot};

#[derive(Debug, Parser)]
#[command(
    name = "scope-router",
    version,
    about = "A declarative WebSocket routing proxy for the Scope backend on fal"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve WebSocket clients (the default).
    Serve(ServeArgs),
    /// Print the JSON Schema of routes.yaml (generated from the config types).
    Schema,
    /// Print an AsyncAPI 3.0 document of the WebSocket API, from the routes and schemas.
    Asyncapi {
        /// The routes file.
        #[arg(long, default_value = "routes.yaml", env = "SCOPE_ROUTER_ROUTES")]
        routes: PathBuf,
    },
    /// Run the schema contract (every example of every route) against a live endpoint.
    Check {
        /// The endpoint, e.g. ws://127.0.0.1:8080/ws or wss://fal.run/<user>/<app>/ws.
        #[arg(long)]
        url: String,
        /// The routes file whose schemas describe the endpoint.
        #[arg(long, default_value = "routes.yaml", env = "SCOPE_ROUTER_ROUTES")]
        routes: PathBuf,
        /// Auth token, sent as the fal_jwt_token query parameter.
        #[arg(long, env = "SCOPE_ROUTER_TOKEN")]
        token: Option<String>,
        /// Only these routes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also run cases that change backend state (offers, non-GET api calls).
        #[arg(long)]
        include_mutating: bool,
    },
    /// Check a routes file and every schema it names; exit non-zero on error.
    Validate {
        /// The routes file.
        #[arg(long, default_value = "routes.yaml", env = "SCOPE_ROUTER_ROUTES")]
        routes: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// The routes file.
    #[arg(long, default_value = "routes.yaml", env = "SCOPE_ROUTER_ROUTES")]
    routes: PathBuf,
    /// Listen address (overrides the file), e.g. 127.0.0.1:0 for any free port.
    #[arg(long)]
    listen: Option<String>,
    /// Backend base URL (overrides the file).
    #[arg(long)]
    backend_url: Option<String>,
    /// Start no backend command; talk to whatever answers at the backend URL.
    #[arg(long)]
    no_supervise: bool,
    /// Do not watch the routes file and schemas for changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
    /// Quiet time after a file change before reloading.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    reload_debounce: Duration,
    /// Log format (only serving writes logs; the other commands print their results).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SCOPE_ROUTER_LOG_FORMAT")]
    log_format: LogFormat,
    /// Runtime worker threads; 0 picks one per two CPUs, at least one. On a small machine
    /// that the backend shares, fewer workers mean fewer cross-thread wake-ups per message.
    #[arg(long, default_value_t = 0, env = "SCOPE_ROUTER_WORKER_THREADS")]
    worker_threads: usize,
}

/// The runtime's worker threads for `--worker-threads N` (0: one per two CPUs, at least one).
fn worker_threads(asked: usize) -> usize {
    if asked > 0 {
        return asked;
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cpus / 2).max(1)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(args)) => args.log_format,
        None => cli.serve.log_format,
        Some(_) => LogFormat::Text,
    };
    init_tracing(log_format);
    match cli.command {
        Some(Command::Validate { routes }) => validate(&routes),
        Some(Command::Asyncapi { routes }) => match offline_table(&routes) {
            Ok(table) => {
                let doc = crate::contract::asyncapi(&table);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Check {
            url,
            routes,
            token,
            only,
            include_mutating,
        }) => check(&url, &routes, token.as_deref(), &only, include_mutating),
        Some(Command::Schema) => {
            println!("{}", routes_schema());
            ExitCode::SUCCESS
        }
        Some(Command::Serve(args)) => run_serve(args),
        None => run_serve(cli.serve),
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// The JSON Schema of the routes file, pretty-printed.
pub fn routes_schema() -> String {
    let schema = schemars::schema_for!(crate::config::RoutesFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// Loads and compiles a routes file without serving it.
fn offline_table(routes: &Path) -> anyhow::Result<Snapshot> {
    Ok(crate::snapshot::offline(routes)?)
}

fn check(
    url: &str,
    routes: &Path,
    token: Option<&str>,
    only: &[String],
    include_mutating: bool,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table = match rt.block_on(async { offline_table(routes) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let all = crate::contract::cases(&table);
    let selection = match crate::contract::select(&table, all, only, include_mutating) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for route in crate::contract::unchecked_routes(&table) {
        if only.is_empty() || only.contains(&route) {
            println!(
                "warning: route `{route}` names no reply_schemas; its replies are checked structurally only"
            );
        }
    }
    let crate::contract::Selection {
        cases,
        filtered,
        mutating_skipped,
    } = selection;
    println!(
        "checking {} against {} ({} cases)",
        crate::contract::redact(url),
        routes.display(),
        cases.len()
    );
    let full_url = crate::contract::with_token(url, token);
    let results = match rt.block_on(crate::contract::run(&table, &full_url, cases)) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL  connect: {e}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for r in &results {
        let ms = r.latency.as_secs_f64() * 1000.0;
        match &r.failure {
            None => println!("PASS  {:<56} {ms:>8.1} ms", r.case.name),
            Some(why) => {
                failed += 1;
                println!("FAIL  {:<56} {ms:>8.1} ms  {why}", r.case.name);
            }
        }
    }
    let passed = results.len() - failed;
    if filtered > 0 {
        println!("({filtered} cases of other routes left out by --only)");
    }
    if mutating_skipped > 0 {
        println!(
            "({mutating_skipped} cases that change backend state skipped; --include-mutating runs them)"
        );
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn validate(routes: &Path) -> ExitCode {
    // Tools compile with a runtime, as serving does (the HTTP pools need one to exist).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { crate::snapshot::offline(routes) }) {
        Ok(snap) => {
            for route in crate::contract::unchecked_routes(&snap) {
                eprintln!(
                    "warning: route `{route}` names no reply_schemas: `scope-router check` can check its replies only structurally"
                );
            }
            println!(
                "{}: ok ({} routes, {} schemas, version {})",
                routes.display(),
                snap.table.routes().count(),
                snap.schemas.by_name.len(),
                snap.meta.version
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for one in e.each() {
                let mut single = one.clone();
                single.more.clear();
                eprintln!("error: {single}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(args.worker_threads))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    server::describe_metrics();

    // The control plane: first load, reload, supervision. It publishes; the listener reads.
    let overrides = Overrides {
        backend_url: args.backend_url.clone(),
    };
    let control = ControlPlane::load(&args.routes, overrides)?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| control.file.listen.clone());
    control.watch(
        args.listen.clone(),
        (!args.no_watch).then_some(args.reload_debounce),
    )?;
    let supervisor = control.start_backend(!args.no_supervise);

    // The data plane reads only views of what the control plane publishes.
    let state = Arc::new(Listener {
        sessions: Arc::new(crate::session::Shared {
            snapshot: control.snapshot.view(),
            uploads: control.runtime.uploads.clone(),
            logs: control.logs.clone(),
            slots: Default::default(),
        }),
        readiness: control.readiness.view(),
        supervisor: control.supervisor_status.view(),
        reload: control.reload_status.view(),
        metrics,
        shutdown: tokio::sync::watch::channel(false).0,
        connections_total: Default::default(),
    });

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("scope-router listening on http://{addr} (WebSocket: ws://{addr}/ws)");
    tracing::info!(%addr, backend = %control.snapshot.current().upstream.base(), routes = %args.routes.display(), "listening");

    let app = server::app(state.clone());
    let stop_state = state.clone();
    let (header_timeout, max_handshakes) = {
        let snap = control.snapshot.current();
        (snap.policy.header_timeout, snap.policy.max_handshakes)
    };
    server::serve(listener, app, header_timeout, max_handshakes, async move {
        shutdown_signal().await;
        tracing::info!("stopping: no new connections; closing clients with 1001");
        stop_state.shutdown.send_replace(true);
    })
    .await?;
    // Upgraded sockets outlive the listener; give them their grace to finish.
    let grace = control.file.backend.stop.grace.0;
    let deadline = tokio::time::Instant::now() + grace;
    while state.sessions.slots.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(s) = supervisor {
        tracing::info!("stopping the backend");
        s.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_threads_default_to_half_the_cpus() {
        assert_eq!(super::worker_threads(3), 3);
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(super::worker_threads(0), (cpus / 2).max(1));
        assert!(super::worker_threads(0) >= 1);
    }

    #[test]
    fn checked_in_routes_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/routes.schema.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in.trim_end() == super::routes_schema(),
            "schemas/routes.schema.json is stale: run `cargo run -- schema > schemas/routes.schema.json`"
        );
    }
}

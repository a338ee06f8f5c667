//! The backend child: spawn in its own process group, probe health, restart with backoff, stop gracefully.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{BackendConfig, RestartPolicy, StopSignal};
use crate::publish::{LogFeed, Publisher, Readiness, SupervisorStatus};
use crate::snapshot::Snapshot;

/// What the supervisor publishes, and where it finds the backend to probe.
pub struct Outputs {
    /// The live snapshot: probes go to its backend URL (a reload may change it).
    pub snapshot: Arc<Publisher<Snapshot>>,
    pub readiness: Arc<Publisher<Readiness>>,
    pub status: Arc<Publisher<Option<SupervisorStatus>>>,
    pub logs: LogFeed,
}

impl Outputs {
    /// A supervised backend's calls are refused fast while it is not healthy.
    fn ready(&self, healthy: bool, status: impl Into<String>) {
        self.readiness
            .publish(Readiness::new(healthy, true, status));
    }

    async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let upstream = self.snapshot.current().upstream.clone();
        upstream.probe(path, timeout).await
    }
}

/// Commands to the supervisor task.
#[derive(Debug)]
pub enum Control {
    /// Stop the child (signal, grace, SIGKILL) and end; replies when done.
    Stop(oneshot::Sender<()>),
}

/// A cloneable handle to the supervisor task.
#[derive(Clone, Debug)]
pub struct Supervisor {
    tx: mpsc::Sender<Control>,
}

impl Supervisor {
    /// Stops the child and waits until it and its process group are gone.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Control::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts supervising `cfg.command`; readiness and status are published through `out`.
pub fn spawn(cfg: BackendConfig, base_dir: PathBuf, out: Outputs) -> Supervisor {
    let (tx, rx) = mpsc::channel(4);
    out.ready(false, "starting");
    tokio::spawn(run(cfg, base_dir, out, rx));
    Supervisor { tx }
}

/// Where the child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
}

/// Why the current child is being replaced.
#[derive(Debug)]
enum Ended {
    Exited(std::process::ExitStatus),
    Unhealthy(String),
    SpawnFailed(String),
    Stop(oneshot::Sender<()>),
}

async fn run(
    cfg: BackendConfig,
    base_dir: PathBuf,
    out: Outputs,
    mut control: mpsc::Receiver<Control>,
) {
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut attempt: u32 = 0;
    let mut restarts_total: u64 = 0;
    let mut last_failure: Option<String> = None;
    let mut crash_loop = false;
    let restart_counter = metrics::counter!("scope_router_backend_restarts_total");
    let crash_loop_gauge = metrics::gauge!("scope_router_backend_crash_loop");
    loop {
        let started = Instant::now();
        let ended = match spawn_child(&cfg, &base_dir, &out.logs) {
            Err(e) => Ended::SpawnFailed(e),
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(pid, command = ?cfg.command, "backend started");
                out.status.publish(Some(SupervisorStatus {
                    pid,
                    restarts_total,
                    last_failure: last_failure.clone(),
                    crash_loop,
                    ..SupervisorStatus::default()
                }));
                let ended = watch(&cfg, &out, &mut child, &mut control).await;
                // Whatever happened, nothing of this child's group may outlive it.
                stop_group(&mut child, pid, &cfg, !matches!(ended, Ended::Exited(_))).await;
                ended
            }
        };
        out.ready(false, "restarting");
        let was_healthy_long = started.elapsed() >= Duration::from_secs(60);
        let failure = match ended {
            Ended::Stop(done) => {
                out.ready(false, "stopped");
                let _ = done.send(());
                return;
            }
            Ended::Exited(status) => {
                tracing::warn!(%status, "backend exited");
                if cfg.restart.policy == RestartPolicy::Never
                    || (cfg.restart.policy == RestartPolicy::OnFailure && status.success())
                {
                    out.ready(
                        false,
                        format!(
                            "exited ({status}); restart policy is {:?}",
                            cfg.restart.policy
                        ),
                    );
                    // Nothing to supervise any more; still honour a stop request.
                    if let Some(Control::Stop(done)) = control.recv().await {
                        let _ = done.send(());
                    }
                    return;
                }
                format!("exited ({status})")
            }
            Ended::Unhealthy(why) => {
                tracing::warn!(%why, "backend unhealthy; restarting");
                why
            }
            Ended::SpawnFailed(why) => {
                tracing::error!(%why, "backend could not be started");
                why
            }
        };

        // Crash-loop accounting over the last minute.
        let now = Instant::now();
        restarts.push_back(now);
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            restarts.pop_front();
        }
        crash_loop = restarts.len() > cfg.restart.max_restarts_per_minute as usize;
        restarts_total += 1;
        crash_loop_gauge.set(if crash_loop { 1.0 } else { 0.0 });
        if crash_loop {
            tracing::error!(
                restarts_last_minute = restarts.len(),
                "backend is crash-looping"
            );
        }
        attempt = if was_healthy_long {
            0
        } else {
            attempt.saturating_add(1)
        };
        let delay = backoff(&cfg, attempt);
        restart_counter.increment(1);
        out.status.publish(Some(SupervisorStatus {
            pid: None,
            restarts_total,
            last_failure: Some(failure.clone()),
            crash_loop,
            restarts_last_minute: Some(restarts.len()),
            next_restart_in_ms: Some(delay.as_millis() as u64),
        }));
        last_failure = Some(failure.clone());
        out.ready(
            false,
            format!("restarting in {} ms after: {failure}", delay.as_millis()),
        );
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            attempt,
            "restarting backend"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            Some(Control::Stop(done)) = control.recv() => {
                out.ready(false, "stopped");
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Exponential backoff with ±20% jitter.
fn backoff(cfg: &BackendConfig, attempt: u32) -> Duration {
    let initial = cfg.restart.backoff.initial.0;
    let max = cfg.restart.backoff.max.0;
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let base = exp.min(max);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter).min(max)
}

/// Probes the child until it exits, stays unhealthy, or a stop is asked for.
async fn watch(
    cfg: &BackendConfig,
    out: &Outputs,
    child: &mut Child,
    control: &mut mpsc::Receiver<Control>,
) -> Ended {
    let health = &cfg.health;
    let started = Instant::now();
    let mut phase = Phase::Starting;
    let mut failures = 0u32;
    // Probe often while starting, so readiness follows the child closely.
    let start_interval = health.interval.0.min(Duration::from_millis(250));
    let mut next_probe = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => Ended::Exited(s),
                    Err(e) => Ended::Unhealthy(format!("cannot wait for the backend: {e}")),
                };
            }
            msg = control.recv() => {
                match msg {
                    Some(Control::Stop(done)) => return Ended::Stop(done),
                    None => return Ended::Unhealthy("supervisor handle dropped".to_owned()),
                }
            }
            _ = tokio::time::sleep_until(next_probe) => {
                let ok = out.probe(&health.path, health.timeout.0).await;
                match (phase, ok) {
                    (Phase::Starting, true) => {
                        phase = Phase::Running;
                        failures = 0;
                        tracing::info!(after_ms = started.elapsed().as_millis() as u64, "backend is healthy");
                        out.ready(true, "healthy");
                    }
                    (Phase::Starting, false) => {
                        let waited = started.elapsed();
                        if waited >= health.startup_timeout.0 {
                            return Ended::Unhealthy(format!("not healthy within {:?}", health.startup_timeout));
                        }
                        // A cold GPU start takes minutes: say that we are still waiting.
                        if last_progress.elapsed() >= Duration::from_secs(10) {
                            last_progress = Instant::now();
                            tracing::info!(
                                waited_s = waited.as_secs(),
                                timeout_s = health.startup_timeout.0.as_secs(),
                                "waiting for the backend to become healthy"
                            );
                        }
                        out.ready(false, format!("starting ({} s)", waited.as_secs()));
                    }
                    (Phase::Running, true) => failures = 0,
                    (Phase::Running, false) => {
                        failures += 1;
                        tracing::warn!(failures, "backend health probe failed");
                        if failures >= health.failure_threshold.max(1) {
                            return Ended::Unhealthy(format!("{failures} health probes failed in a row"));
                        }
                    }
                }
                next_probe = Instant::now() + if phase == Phase::Starting { start_interval } else { health.interval.0 };
            }
        }
    }
}

/// Signals the child's process group, waits for the grace period, then kills what is left.
async fn stop_group(child: &mut Child, pid: Option<u32>, cfg: &BackendConfig, graceful: bool) {
    let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw) else {
        return;
    };
    if graceful {
        let signal = signal_of(cfg.stop.signal);
        let _ = killpg(pgid, signal);
        if tokio::time::timeout(cfg.stop.grace.0, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?cfg.stop.grace, "backend ignored {signal}; killing");
        }
    }
    // Grandchildren (uv starts python) share the group; none may outlive the child.
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
}

fn signal_of(s: StopSignal) -> Signal {
    match s {
        StopSignal::Sigterm => Signal::SIGTERM,
        StopSignal::Sigint => Signal::SIGINT,
        StopSignal::Sigquit => Signal::SIGQUIT,
        StopSignal::Sighup => Signal::SIGHUP,
    }
}

/// Resolves the program: a bare name is looked for beside this executable first (so `mock-scope`
/// is found next to `scope-router`), then on PATH.
fn resolve_program(program: &str) -> PathBuf {
    if !program.contains('/')
        && let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
    {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}

fn expand_home(v: &str) -> String {
    match (v.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => v.to_owned(),
    }
}

fn spawn_child(cfg: &BackendConfig, base_dir: &Path, logs: &LogFeed) -> Result<Child, String> {
    let argv = cfg.command.as_deref().unwrap_or_default();
    let (program, args) = argv.split_first().ok_or("backend.command is empty")?;
    let program = resolve_program(program);
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(allow) = &cfg.env_allowlist {
        cmd.env_clear();
        cmd.envs(allowed_env(std::env::vars_os(), allow));
    }
    for (k, v) in &cfg.env {
        cmd.env(k, expand_home(v));
    }
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(base_dir.join(dir));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let filter = Arc::new(LogFilter::new(&cfg.logs));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, "stdout", logs.clone(), filter.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, "stderr", logs.clone(), filter));
    }
    Ok(child)
}

/// The variables of `vars` that `allow` names: exact names, or prefixes written `NAME_*`.
fn allowed_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    allow: &[String],
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.filter(|(k, _)| {
        let Some(k) = k.to_str() else { return false };
        allow.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => k.starts_with(prefix),
            None => a == k,
        })
    })
    .collect()
}

/// Longest backend log line kept; the rest of a longer line is cut and the cut is marked.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Copies the child's output into tracing and, filtered, to subscribed clients.
///
/// It reads bytes, not text: a line that is not UTF-8 is decoded lossily, a line longer
/// than [`MAX_LOG_LINE`] is cut (memory stays bounded whatever the child writes), and a
/// read error never ends the loop, so the pipe stays open and the child never gets EPIPE.
async fn pump(
    stream: impl AsyncRead + Unpin,
    which: &'static str,
    logs: LogFeed,
    exclude: Arc<LogFilter>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = 0usize;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(stream = which, error = %e, "backend output read failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() || cut > 0 {
                emit(&line, cut, which, &logs, &exclude);
            }
            return;
        }
        let newline = buf.iter().position(|b| *b == b'\n');
        let take = newline.unwrap_or(buf.len());
        let keep = take.min(MAX_LOG_LINE.saturating_sub(line.len()));
        line.extend_from_slice(buf.get(..keep).unwrap_or_default());
        cut += take - keep;
        reader.consume(if newline.is_some() { take + 1 } else { take });
        if newline.is_some() {
            emit(&line, cut, which, &logs, &exclude);
            line.clear();
            cut = 0;
        }
    }
}

/// Which backend lines reach clients: not those with an excluded substring, nor the INFO and
/// DEBUG lines of skipped loggers.
#[derive(Debug, Default)]
pub struct LogFilter {
    exclude: Vec<String>,
    skip_loggers: std::collections::HashSet<String>,
}

impl LogFilter {
    pub fn new(cfg: &crate::config::LogsConfig) -> LogFilter {
        let mut skip: std::collections::HashSet<String> = cfg
            .skip_loggers
            .iter()
            .map(|s| s.trim().to_owned())
            .collect();
        if let Some(var) = &cfg.skip_loggers_env
            && let Ok(extra) = std::env::var(var)
        {
            skip.extend(
                extra
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        LogFilter {
            exclude: cfg.exclude.clone(),
            skip_loggers: skip,
        }
    }

    /// Whether a line goes to clients.
    pub fn pushes(&self, line: &str) -> bool {
        if self.exclude.iter().any(|x| line.contains(x.as_str())) {
            return false;
        }
        if self.skip_loggers.is_empty() {
            return true;
        }
        // `2026-01-01 12:00:00,000 - logger.name - LEVEL - message`; other shapes pass.
        let mut parts = line.splitn(4, " - ");
        let (Some(_), Some(logger), Some(level)) = (parts.next(), parts.next(), parts.next())
        else {
            return true;
        };
        !(matches!(level.trim(), "INFO" | "DEBUG") && self.skip_loggers.contains(logger.trim()))
    }
}

fn emit(raw: &[u8], cut: usize, which: &'static str, logs: &LogFeed, exclude: &LogFilter) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut line = String::from_utf8_lossy(raw).into_owned();
    if cut > 0 {
        line.push_str(&format!(" …[{cut} more bytes cut]"));
    }
    tracing::info!(target: "backend", stream = which, "{line}");
    if logs.has_subscribers() && exclude.pushes(&line) {
        logs.send(Arc::from(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skipped_loggers_lose_info_and_debug_only() {
        let cfg = crate::config::LogsConfig {
            exclude: vec!["GET /health".to_owned()],
            skip_loggers: vec!["scope.server.kafka_publisher".to_owned()],
            ..Default::default()
        };
        let f = LogFilter::new(&cfg);
        let line = |logger: &str, level: &str| {
            format!("2026-01-01 12:00:00,000 - {logger} - {level} - hello - world")
        };
        assert!(!f.pushes(&line("scope.server.kafka_publisher", "INFO")));
        assert!(!f.pushes(&line("scope.server.kafka_publisher", "DEBUG")));
        assert!(f.pushes(&line("scope.server.kafka_publisher", "WARNING")));
        assert!(f.pushes(&line("scope.server.kafka_publisher", "ERROR")));
        assert!(f.pushes(&line("scope.server.app", "INFO")));
        assert!(f.pushes("a line of another shape"));
        assert!(!f.pushes("INFO: GET /health 200"));
    }

    #[test]
    fn the_allowlist_passes_names_and_prefixes_only() {
        let vars = [
            ("PATH", "/bin"),
            ("HF_TOKEN", "t"),
            ("KAFKA_URL", "k"),
            ("SECRET", "s"),
            ("KAFKA", "x"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let allow = ["PATH", "HF_TOKEN", "KAFKA_*"].map(str::to_owned);
        let mut kept: Vec<String> = allowed_env(vars.into_iter(), &allow)
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["HF_TOKEN", "KAFKA_URL", "PATH"]);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut cfg: BackendConfig = serde_json::from_value(json!({"url": "http://x"})).unwrap();
        cfg.restart.backoff.initial = crate::config::Dur::millis(100);
        cfg.restart.backoff.max = crate::config::Dur::millis(1000);
        let d = |n| backoff(&cfg, n).as_millis();
        assert!((80..=120).contains(&d(1)));
        assert!((160..=240).contains(&d(2)));
        assert!((320..=480).contains(&d(3)));
        assert!(d(10) <= 1000 && d(10) >= 800);
    }

    #[tokio::test]
    async fn log_lines_are_bytes_cut_and_never_end_the_reader() {
        let logs = LogFeed::new(16);
        let mut rx = logs.subscribe();
        let mut input = b"ok line\n\xff\xfebad utf8\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LOG_LINE + 10));
        input.extend_from_slice(b"\nlast");
        pump(&input[..], "stdout", logs, Arc::new(LogFilter::default())).await;
        assert_eq!(&*rx.recv().await.unwrap(), "ok line");
        assert_eq!(&*rx.recv().await.unwrap(), "\u{fffd}\u{fffd}bad utf8");
        let long = rx.recv().await.unwrap();
        assert!(long.len() < MAX_LOG_LINE + 64, "a long line is cut");
        assert!(
            long.ends_with(" …[10 more bytes cut]"),
            "{}",
            &long[long.len() - 40..]
        );
        assert_eq!(&*rx.recv().await.unwrap(), "last");
    }

    #[test]
    fn stop_signals_are_a_closed_set() {
        let cfg =
            |sig: &str| serde_json::from_value::<crate::config::StopConfig>(json!({"signal": sig}));
        assert_eq!(signal_of(cfg("SIGINT").unwrap().signal), Signal::SIGINT);
        assert_eq!(signal_of(cfg("term").unwrap().signal), Signal::SIGTERM);
        assert!(cfg("bogus").is_err(), "an unknown signal is a load error");
    }
}

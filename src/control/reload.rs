//! Live reload: watch the routes file and its schemas, compile a whole new snapshot, and publish it (or keep the old one).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use tokio::sync::mpsc;

use crate::config::{ConfigError, RoutesFile};
use crate::publish::{Publisher, ReloadStatus, now_unix};
use crate::snapshot::{self, Compiled, Overrides, Runtime, Snapshot};

/// What a reload keeps from the command line and the first load, and where it publishes.
#[derive(Clone)]
pub struct Reloader {
    pub routes: PathBuf,
    /// `--backend-url`, which wins over the file on every reload.
    pub overrides: Overrides,
    pub runtime: Runtime,
    pub snapshot: Arc<Publisher<Snapshot>>,
    pub status: Arc<Publisher<ReloadStatus>>,
    /// `--listen`, if given (then a changed `listen` in the file is no news).
    pub listen_override: Option<String>,
    /// The file as the process started with it: fields that only apply on restart are compared to it.
    pub started_with: Arc<RoutesFile>,
}

/// The result of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { version: String },
    Unchanged,
    Failed(String),
}

impl Reloader {
    /// Loads, compiles and checks the files; publishes the new snapshot on success, keeps the old one otherwise.
    pub fn reload(&self, why: &str) -> Outcome {
        let result = snapshot::load(&self.routes, &self.overrides, &self.runtime);
        let mut status = ReloadStatus {
            last_attempt_unix: Some(now_unix()),
            ..ReloadStatus::clone(&self.status.current())
        };
        let outcome = match result {
            Ok(Compiled { snapshot, file }) => {
                let current = self.snapshot.current();
                if snapshot.meta.version == current.meta.version {
                    // The files were put back as they were: say so, or the last line in
                    // the log would stay the failure.
                    if status.last_error.take().is_some() {
                        tracing::info!(version = %current.meta.version, %why, "reload recovered: the files are valid again (unchanged from the running routes)");
                    }
                    Outcome::Unchanged
                } else {
                    let pending = self.restart_only_changes(&file);
                    if !pending.is_empty() {
                        tracing::warn!(fields = ?pending, "changed fields apply on restart only; the rest is live");
                    }
                    super::warn_operator(&snapshot);
                    let version = snapshot.meta.version.clone();
                    tracing::info!(%version, previous = %current.meta.version, %why, "routes reloaded");
                    self.snapshot.publish(snapshot);
                    status.last_error = None;
                    status.pending_restart = pending;
                    Outcome::Applied { version }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, %why, "reload failed; keeping the running routes");
                status.last_error = Some(e.to_string());
                Outcome::Failed(e.to_string())
            }
        };
        let label = match &outcome {
            Outcome::Applied { .. } => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed(_) => "error",
        };
        metrics::counter!("scope_router_reload_total", "result" => label).increment(1);
        self.status.publish(status);
        outcome
    }

    /// Names of changed fields that a running process cannot apply.
    fn restart_only_changes(&self, new: &RoutesFile) -> Vec<String> {
        let old = &self.started_with;
        let mut out = Vec::new();
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if self.listen_override.is_none() && old.listen != new.listen {
            out.push("listen".to_owned());
        }
        let (a, b) = (&old.backend, &new.backend);
        for (name, changed) in [
            ("backend.command", differs(&a.command, &b.command)),
            ("backend.cwd", differs(&a.cwd, &b.cwd)),
            ("backend.env", differs(&a.env, &b.env)),
            (
                "backend.env_allowlist",
                differs(&a.env_allowlist, &b.env_allowlist),
            ),
            ("backend.health", differs(&a.health, &b.health)),
            ("backend.restart", differs(&a.restart, &b.restart)),
            ("backend.stop", differs(&a.stop, &b.stop)),
            (
                "backend.logs.exclude",
                differs(&a.logs.exclude, &b.logs.exclude),
            ),
            ("backend.logs.queue", a.logs.queue != b.logs.queue),
            (
                "backend.pool",
                a.pool.max_idle != b.pool.max_idle || a.pool.idle_timeout != b.pool.idle_timeout,
            ),
            (
                "static_files",
                differs(&old.static_files, &new.static_files),
            ),
        ] {
            if changed {
                out.push(name.to_owned());
            }
        }
        out
    }
}

/// Watches the routes file's directory and the schema directory; reloads after a quiet `debounce`.
///
/// Directories, not files, are watched: editors save by renaming a temporary
/// file over the old one, and Kubernetes swaps a symlink, and both replace the
/// inode a file watch would be holding.
pub fn watch(reloader: Reloader, debounce: Duration) -> Result<(), ConfigError> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut debouncer = notify_debouncer_full::new_debouncer(
        debounce,
        Some(debounce / 4),
        move |res: notify_debouncer_full::DebounceEventResult| {
            let relevant = match res {
                Ok(events) => events
                    .iter()
                    .any(|e| !matches!(e.kind, EventKind::Access(_))),
                Err(_) => true,
            };
            if relevant {
                // A full channel means a reload is already pending: coalesce.
                let _ = tx.try_send(());
            }
        },
    )
    .map_err(|e| ConfigError::new(&reloader.routes, format!("cannot watch: {e}")))?;
    for (i, dir) in watch_dirs(&reloader).into_iter().enumerate() {
        // The routes directory must be watchable; a schema directory that does not
        // exist (no route names a schema) is simply not watched.
        if i > 0 && !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "schema directory does not exist; not watched");
            continue;
        }
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| ConfigError::new(&dir, format!("cannot watch: {e}")))?;
        tracing::info!(dir = %dir.display(), ?debounce, "watching for changes");
    }
    tokio::spawn(async move {
        // The debouncer stops when dropped: it lives as long as this task.
        let _debouncer = debouncer;
        while rx.recv().await.is_some() {
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
        }
    });
    Ok(())
}

fn watch_dirs(r: &Reloader) -> Vec<PathBuf> {
    let snap = r.snapshot.current();
    let routes_dir = absolute(r.routes.parent().unwrap_or(Path::new(".")));
    let schema_dir = absolute(&snap.meta.schema_dir);
    let mut dirs = vec![routes_dir];
    if !dirs.contains(&schema_dir) {
        dirs.push(schema_dir);
    }
    dirs
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    };
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Reloads on SIGHUP.
pub fn on_sighup(reloader: Reloader) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
        }
    });
}

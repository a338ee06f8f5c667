//! The control plane: the first load, live reload, backend supervision and health probing.
//!
//! It owns every [`Publisher`]: the snapshot, readiness, the supervisor's status, the
//! reload status and the backend's log lines. The data plane holds only their views and
//! never imports this module.

mod health;
pub mod reload;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::config::{self, ConfigError, RoutesFile};
use crate::handler::transfer::Uploads;
use crate::publish::{LogFeed, Publisher, Readiness, ReloadStatus, SupervisorStatus};
use crate::snapshot::{self, Overrides, Runtime, Snapshot};

/// Says so when the operator endpoints are locked for everyone (their token's variable is unset).
fn warn_operator(snapshot: &Snapshot) {
    if let Some(why) = snapshot.operator.misconfigured() {
        tracing::warn!(%why, "operator token unavailable: /admin/config and /metrics refuse every request, /readyz answers only its status");
    }
}

/// Everything the control plane publishes, with what it needs to do so.
pub struct ControlPlane {
    pub snapshot: Arc<Publisher<Snapshot>>,
    pub readiness: Arc<Publisher<Readiness>>,
    pub supervisor_status: Arc<Publisher<Option<SupervisorStatus>>>,
    pub reload_status: Arc<Publisher<ReloadStatus>>,
    pub logs: LogFeed,
    pub runtime: Runtime,
    /// The file as the process started with it.
    pub file: Arc<RoutesFile>,
    routes: PathBuf,
    overrides: Overrides,
}

impl ControlPlane {
    /// The first load: creates the shared pool and upload store, and the first snapshot.
    pub fn load(routes: &Path, overrides: Overrides) -> Result<ControlPlane, ConfigError> {
        let loaded = config::load(routes)?;
        let readiness = Arc::new(Publisher::new(Readiness::default()));
        let runtime = Runtime {
            backend: Backend::new(&loaded.file.backend.pool),
            uploads: Uploads::new(),
            readiness: readiness.view(),
        };
        let logs = LogFeed::new(loaded.file.backend.logs.queue);
        let compiled = snapshot::from_loaded(loaded, &overrides, &runtime)?;
        warn_operator(&compiled.snapshot);
        let t = &compiled.snapshot.transfers;
        let orphans = Uploads::remove_orphans(&t.dir, t.idle_timeout.max(t.resume_timeout));
        if orphans > 0 {
            tracing::info!(
                removed = orphans,
                dir = %compiled.snapshot.transfers.dir.display(),
                "removed partial uploads left by an earlier run"
            );
        }
        Ok(ControlPlane {
            snapshot: Arc::new(Publisher::new(compiled.snapshot)),
            readiness,
            supervisor_status: Arc::new(Publisher::new(None)),
            reload_status: Arc::new(Publisher::new(ReloadStatus::default())),
            logs,
            runtime,
            file: Arc::new(compiled.file),
            routes: routes.to_owned(),
            overrides,
        })
    }

    /// The reloader of this plane (for file watching and SIGHUP).
    pub fn reloader(&self, listen_override: Option<String>) -> reload::Reloader {
        reload::Reloader {
            routes: self.routes.clone(),
            overrides: self.overrides.clone(),
            runtime: self.runtime.clone(),
            snapshot: self.snapshot.clone(),
            status: self.reload_status.clone(),
            listen_override,
            started_with: self.file.clone(),
        }
    }

    /// Reloads on SIGHUP and, unless `debounce` is `None`, on file changes.
    pub fn watch(
        &self,
        listen_override: Option<String>,
        debounce: Option<Duration>,
    ) -> Result<(), ConfigError> {
        let reloader = self.reloader(listen_override);
        reload::on_sighup(reloader.clone());
        if let Some(d) = debounce {
            reload::watch(reloader, d)?;
        }
        Ok(())
    }

    /// Starts the backend command under supervision, or, when there is none to run, probes
    /// whatever answers at the backend URL. The uploads sweeper starts here too.
    pub fn start_backend(&self, supervise: bool) -> Option<supervisor::Supervisor> {
        self.runtime.uploads.spawn_sweeper();
        let cfg = self.file.backend.clone();
        if supervise && cfg.command.is_some() {
            let base_dir = self.routes.parent().map(Path::to_owned).unwrap_or_default();
            Some(supervisor::spawn(
                cfg,
                base_dir,
                supervisor::Outputs {
                    snapshot: self.snapshot.clone(),
                    readiness: self.readiness.clone(),
                    status: self.supervisor_status.clone(),
                    logs: self.logs.clone(),
                },
            ))
        } else {
            tokio::spawn(health::probe_loop(
                self.snapshot.clone(),
                self.readiness.clone(),
                cfg.health,
            ));
            None
        }
    }
}

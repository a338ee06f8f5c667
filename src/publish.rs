//! The handles through which the control plane publishes values into the data plane, and the values it publishes.
//!
//! A [`Publisher`] is held by the control plane (reload, supervisor, health probe) and
//! is the only way to change a value; the data plane holds [`View`]s, which only read.
//! Reads are lock-free (`arc-swap`), so the hot path can look at readiness per message.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;
use tokio::sync::broadcast;

/// The writing side of a published value.
pub struct Publisher<T> {
    cell: Arc<ArcSwap<T>>,
}

/// The reading side of a published value.
pub struct View<T> {
    cell: Arc<ArcSwap<T>>,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        Self {
            cell: self.cell.clone(),
        }
    }
}

impl<T> Publisher<T> {
    pub fn new(value: T) -> Self {
        Self {
            cell: Arc::new(ArcSwap::from_pointee(value)),
        }
    }

    /// Replaces the value; readers see the new one from their next load.
    pub fn publish(&self, value: T) {
        self.cell.store(Arc::new(value));
    }

    /// Replaces the value with an already shared one.
    pub fn publish_arc(&self, value: Arc<T>) {
        self.cell.store(value);
    }

    /// The current value, as the publisher last set it.
    pub fn current(&self) -> Arc<T> {
        self.cell.load_full()
    }

    pub fn view(&self) -> View<T> {
        View {
            cell: self.cell.clone(),
        }
    }
}

impl<T> View<T> {
    /// A cheap, short-lived read (do not hold it across an await).
    pub fn load(&self) -> Guard<Arc<T>> {
        self.cell.load()
    }

    /// The current value, to keep.
    pub fn load_full(&self) -> Arc<T> {
        self.cell.load_full()
    }
}

/// Whether the backend may be called, as the health probe or the supervisor last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub healthy: bool,
    /// Refuse calls fast while unhealthy (a supervised child that is starting or restarting).
    pub gated: bool,
    /// A human-readable state for `/readyz`.
    pub status: String,
}

impl Readiness {
    pub fn new(healthy: bool, gated: bool, status: impl Into<String>) -> Self {
        Self {
            healthy,
            gated,
            status: status.into(),
        }
    }

    /// True when a call should be refused without trying.
    pub fn refuse_calls(&self) -> bool {
        self.gated && !self.healthy
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new(false, false, "not probed yet")
    }
}

/// What the supervisor reports about the backend process, for `/readyz`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// The running child, or none between restarts.
    pub pid: Option<u32>,
    pub restarts_total: u64,
    pub last_failure: Option<String>,
    pub crash_loop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts_last_minute: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_restart_in_ms: Option<u64>,
}

/// The outcome of the last reload attempt, for `/readyz` and `/admin/config`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_attempt_unix: Option<f64>,
    /// Changed fields that only apply on restart.
    pub pending_restart: Vec<String>,
}

/// Backend log lines, fanned out to the clients that get them (a lagging client loses the oldest).
#[derive(Clone)]
pub struct LogFeed {
    tx: broadcast::Sender<Arc<str>>,
}

impl LogFeed {
    pub fn new(queue: usize) -> Self {
        Self {
            tx: broadcast::channel(queue.max(1)).0,
        }
    }

    /// Publishes one line; nobody listening is fine.
    pub fn send(&self, line: Arc<str>) {
        let _ = self.tx.send(line);
    }

    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

/// Seconds since the epoch, for status documents.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

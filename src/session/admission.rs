//! Connection slots: who is admitted, and the hold that makes the next user's `ready` wait for the last user's cleanup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A handshake's place among `max_handshakes`: held from accept until the upgrade and the
/// token check are done (it travels into the session in the request's extensions).
#[derive(Clone)]
pub struct HandshakePermit {
    _held: std::sync::Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl HandshakePermit {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            _held: std::sync::Arc::new(permit),
        }
    }
}

/// The listener-wide counts a connection takes part in.
pub struct Slots {
    /// Connections admitted and not yet in cleanup (checked against `max_connections`).
    serving: AtomicUsize,
    /// Last users' data being cleared (at most one at a time in practice); a `ready` waits for zero.
    cleaning: watch::Sender<usize>,
    /// Connections being served right now (including their disconnect steps).
    open: AtomicUsize,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            serving: AtomicUsize::new(0),
            cleaning: watch::channel(0).0,
            open: AtomicUsize::new(0),
        }
    }
}

/// A slot taken by an admitted connection; give it back with [`Slots::leave`].
#[must_use]
pub struct Slot(());

/// The hold of the last user's cleanup on the next `ready`; give it back with [`Slots::cleaned`].
#[must_use]
pub struct Hold(());

impl Slots {
    /// Connections being served, including their disconnect steps.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections admitted and not yet in cleanup.
    pub fn serving(&self) -> usize {
        self.serving.load(Ordering::Acquire)
    }

    /// Takes a slot, unless `max` connections are already served.
    pub(crate) fn admit(&self, max: usize) -> Option<Slot> {
        let serving = self.serving.fetch_add(1, Ordering::AcqRel) + 1;
        if serving > max {
            self.serving.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(Slot(()))
        }
    }

    /// The connection ends. When it was the last one served, its user's data is to be
    /// cleared: the hold is raised before the slot is given up, so a connection admitted
    /// from now on waits for that before its `ready`; give it back with [`Slots::cleaned`].
    /// Another tab of the same user leaving holds nothing.
    pub(crate) fn leave(&self, _slot: Slot) -> Option<Hold> {
        let mut hold = None;
        // Raised first, then the count dropped: no admission can see zero of both.
        self.cleaning.send_modify(|n| *n += 1);
        if self.serving.fetch_sub(1, Ordering::AcqRel) == 1 {
            hold = Some(Hold(()));
        } else {
            self.cleaning.send_modify(|n| *n = n.saturating_sub(1));
        }
        hold
    }

    /// The last user's data is cleared.
    pub(crate) fn cleaned(&self, _hold: Hold) {
        self.cleaning.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Waits (up to `limit`) until no cleanup is running, so no user sees the previous user's files.
    pub(crate) async fn wait_for_cleanups(&self, limit: Duration) {
        let mut cleaning = self.cleaning.subscribe();
        let waited = Instant::now();
        if *cleaning.borrow() > 0 {
            tracing::info!("waiting for the previous user's cleanup");
        }
        if tokio::time::timeout(limit, cleaning.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                limit_s = limit.as_secs(),
                "previous user's cleanup still running; going on"
            );
        } else if waited.elapsed() > Duration::from_millis(1) {
            tracing::info!(
                waited_ms = waited.elapsed().as_millis() as u64,
                "held ready until the previous cleanup finished"
            );
        }
    }
}

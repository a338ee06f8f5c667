//! Probing an unsupervised backend forever and publishing its readiness.

use std::sync::Arc;

use crate::config::HealthConfig;
use crate::publish::{Publisher, Readiness};
use crate::snapshot::Snapshot;

/// Probes the live snapshot's backend every `interval` (nothing is supervised, so calls
/// are never refused fast: `gated` stays off).
pub(crate) async fn probe_loop(
    snapshot: Arc<Publisher<Snapshot>>,
    readiness: Arc<Publisher<Readiness>>,
    health: HealthConfig,
) {
    let mut failures = 0u32;
    loop {
        let upstream = snapshot.current().upstream.clone();
        let ok = upstream.probe(&health.path, health.timeout.0).await;
        let was_healthy = readiness.current().healthy;
        if ok {
            if !was_healthy {
                tracing::info!(url = %upstream.base(), "backend is healthy");
            }
            failures = 0;
            readiness.publish(Readiness::new(true, false, "healthy"));
        } else {
            failures = failures.saturating_add(1);
            if failures >= health.failure_threshold.max(1) || !was_healthy {
                if was_healthy {
                    tracing::warn!(url = %upstream.base(), failures, "backend stopped answering its health probe");
                }
                readiness.publish(Readiness::new(
                    false,
                    false,
                    format!("health probe failing ({failures} in a row)"),
                ));
            }
        }
        tokio::time::sleep(health.interval.0).await;
    }
}

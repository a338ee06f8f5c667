//! Waiting: the one polling loop every test goes through, and how long any wait may take.

use std::fmt::Display;
use std::time::Duration;

/// How long any single wait may take before a test fails (generous: CI machines are noisy).
pub const WAIT: Duration = Duration::from_secs(20);

/// How often [`eventually`] asks again.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `f` until it returns Some, or fails the test after [`WAIT`] saying what it waited for.
/// `what` is rendered only on failure, so it may describe state read at that moment.
pub async fn eventually<T>(what: impl Display, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_every(POLL, what, f).await
}

/// [`eventually`], asking every `interval`: for a wait whose duration is itself measured.
pub async fn eventually_every<T>(
    interval: Duration,
    what: impl Display,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

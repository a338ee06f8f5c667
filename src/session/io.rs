//! Writing to one client socket within its time limits, closing it with the RFC's codes, and the per-connection rate bucket.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{FutureExt, Sink, SinkExt};

use crate::policy::Rate;

/// Close codes (RFC 6455 §7.4.1, and the original's 4003 for access denied).
pub(crate) const CLOSE_NORMAL: u16 = 1000;
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
pub(crate) const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
pub(crate) const CLOSE_ACCESS_DENIED: u16 = 4003;

/// Sends one message within `timeout`; false when the client is gone or not reading.
pub(crate) async fn send<S>(tx: &mut S, msg: Message, timeout: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    match tokio::time::timeout(timeout, tx.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "send failed");
            false
        }
        Err(_) => {
            tracing::warn!(?timeout, "client is not reading its replies; closing");
            false
        }
    }
}

/// Queues one message for the next flush, within `timeout`; false when the client is gone
/// or not reading.
///
/// The socket's write buffer (`server`'s `WRITE_BUFFER`) holds it, whole frame (header and
/// payload) in one buffer, so frames queued together leave in one write at [`flush`]. No
/// timer is armed unless the socket is not ready at once (the common case costs none).
pub(crate) async fn feed<S>(tx: &mut S, msg: Message, timeout: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut fut = std::pin::pin!(tx.feed(msg));
    let done = match fut.as_mut().now_or_never() {
        Some(r) => Ok(r),
        None => tokio::time::timeout(timeout, fut).await,
    };
    settle(done, timeout)
}

/// Writes out what [`feed`] queued, within `timeout`.
pub(crate) async fn flush<S>(tx: &mut S, timeout: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut fut = std::pin::pin!(tx.flush());
    let done = match fut.as_mut().now_or_never() {
        Some(r) => Ok(r),
        None => tokio::time::timeout(timeout, fut).await,
    };
    settle(done, timeout)
}

fn settle(
    done: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> bool {
    match done {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "send failed");
            false
        }
        Err(_) => {
            tracing::warn!(?timeout, "client is not reading its replies; closing");
            false
        }
    }
}

/// Sends one text message within `timeout`.
pub(crate) async fn send_text<S>(tx: &mut S, text: String, timeout: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    send(tx, Message::Text(text.into()), timeout).await
}

/// Sends a close frame (best effort, 5 s at most).
pub(crate) async fn close<S>(tx: &mut S, code: u16, reason: &str)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tx.send(Message::Close(Some(frame)))).await;
}

/// Maps a read error to the close code the RFC asks for.
pub(crate) fn classify(e: axum::Error) -> (u16, &'static str, String) {
    let inner = e.into_inner();
    let why = inner.to_string();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (CLOSE_TOO_BIG, "message too big", why),
        Some(tungstenite::Error::Utf8(_)) => (CLOSE_INVALID_DATA, "invalid UTF-8", why),
        _ => (CLOSE_PROTOCOL, "protocol error", why),
    }
}

/// A per-connection token bucket: local state, no locks.
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    cfg: Rate,
}

impl Bucket {
    pub(crate) fn new(cfg: Rate) -> Self {
        Self {
            tokens: f64::from(cfg.burst),
            last: Instant::now(),
            cfg,
        }
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.cfg.per_second;
        self.tokens = (self.tokens + refill).min(f64::from(self.cfg.burst.max(1)));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = Bucket::new(Rate {
            per_second: 0.0,
            burst: 3,
        });
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        let mut b = Bucket::new(Rate {
            per_second: 1000.0,
            burst: 1,
        });
        assert!(b.take());
        b.last -= Duration::from_millis(5);
        assert!(b.take());
    }
}

//! One connection: admission and auth, frames in through the route table, replies out, then cleanup.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::codec::{ProtocolError, Reply, Request, decode, error_json, error_reply};
use crate::config::RateConfig;
use crate::server::AppState;

/// A message pushed to the client outside request/reply (download chunks).
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Binary(bytes::Bytes),
}

/// Per-connection state shared with the handlers of its messages.
pub struct ConnCtx {
    /// Short id (8 hex characters) that tags every log line about this connection.
    pub id: Box<str>,
    /// WebRTC sessions this connection opened, oldest first.
    sessions: Mutex<Vec<String>>,
    /// Digest of the connection's auth token (uploads resume only under the same token).
    pub token_digest: Option<[u8; 32]>,
    /// The process-wide upload registry.
    pub transfers: Arc<crate::transfer::Transfers>,
    /// Where pushed messages go (set by the session loop).
    push: std::sync::OnceLock<tokio::sync::mpsc::Sender<Outbound>>,
    /// Downloads being paced by this connection's acknowledgements.
    downloads: Mutex<std::collections::HashMap<String, Arc<crate::transfer::Download>>>,
}

impl std::fmt::Debug for ConnCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCtx").field("id", &self.id).finish()
    }
}

impl ConnCtx {
    /// A connection with a registry of its own (tests and tools).
    pub fn new(id: impl Into<Box<str>>) -> Self {
        Self::with(
            id,
            crate::transfer::Transfers::new(Default::default()),
            None,
        )
    }

    /// A connection of a serving router.
    pub fn with(
        id: impl Into<Box<str>>,
        transfers: Arc<crate::transfer::Transfers>,
        token: Option<&str>,
    ) -> Self {
        use sha2::Digest;
        Self {
            id: id.into(),
            sessions: Mutex::new(Vec::new()),
            token_digest: token.map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
            transfers,
            push: std::sync::OnceLock::new(),
            downloads: Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn push_sender(&self) -> Option<tokio::sync::mpsc::Sender<Outbound>> {
        self.push.get().cloned()
    }

    fn downloads(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<crate::transfer::Download>>>
    {
        self.downloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add_download(&self, id: &str) -> Arc<crate::transfer::Download> {
        let d = Arc::new(crate::transfer::Download::default());
        self.downloads().insert(id.to_owned(), d.clone());
        d
    }

    pub fn remove_download(&self, id: &str) {
        self.downloads().remove(id);
    }

    /// Records an acknowledgement; false for an unknown download.
    pub fn ack_download(&self, id: &str, seq: u64) -> bool {
        match self.downloads().get(id) {
            Some(d) => {
                d.ack(seq);
                true
            }
            None => false,
        }
    }

    /// A fresh random id.
    pub fn new_id() -> String {
        format!("{:08x}", rand::random::<u32>())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A poisoned lock only means a panic elsewhere mid-push; the list is still usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add_session(&self, id: &str) {
        let mut s = self.sessions();
        if !s.iter().any(|x| x == id) {
            s.push(id.to_owned());
        }
    }

    pub fn owns_session(&self, id: &str) -> bool {
        self.sessions().iter().any(|x| x == id)
    }

    pub fn last_session(&self) -> Option<String> {
        self.sessions().last().cloned()
    }

    pub fn take_sessions(&self) -> Vec<String> {
        std::mem::take(&mut *self.sessions())
    }
}

/// What the upgrade request carried that the session needs.
#[derive(Debug, Default)]
pub struct Upgrade {
    /// The auth token (query parameter or header), if any. Never logged.
    pub token: Option<String>,
}

/// Why a connection ended, for the disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    ClientClosed,
    ClientGone,
    TooLarge,
    ProtocolError,
    MaxDuration,
    Idle,
    KeepaliveTimeout,
    Shutdown,
    SendFailed,
}

/// Close codes (RFC 6455 §7.4.1, and the original's 4003 for access denied).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const CLOSE_ACCESS_DENIED: u16 = 4003;

/// A per-connection token bucket: local state, no locks.
struct Bucket {
    tokens: f64,
    last: Instant,
    cfg: RateConfig,
}

impl Bucket {
    fn new(cfg: RateConfig) -> Self {
        Self {
            tokens: f64::from(cfg.burst),
            last: Instant::now(),
            cfg,
        }
    }

    fn take(&mut self) -> bool {
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

/// Serves one connection until it ends, then runs the disconnect steps.
pub async fn serve<S>(
    socket: S,
    state: Arc<AppState>,
    conn: Arc<ConnCtx>,
    upgrade: Upgrade,
    shutdown: watch::Receiver<bool>,
) where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let span = tracing::info_span!("conn", id = %conn.id);
    state.open_sessions.fetch_add(1, Ordering::AcqRel);
    run(socket, state.clone(), conn, upgrade, shutdown)
        .instrument(span)
        .await;
    state.open_sessions.fetch_sub(1, Ordering::AcqRel);
}

async fn run<S>(
    socket: S,
    state: Arc<AppState>,
    conn: Arc<ConnCtx>,
    upgrade: Upgrade,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let started = Instant::now();
    let (mut tx, mut rx) = socket.split();
    let table = state.table.load_full();
    let limits = table.connection.clone();
    let write_timeout = limits.write_timeout.0;

    // Admission: the slot is held until this connection's cleanup has finished.
    let serving = state.serving.fetch_add(1, Ordering::AcqRel) + 1;
    if serving > limits.max_connections {
        state.serving.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            limit = limits.max_connections,
            "refused: too many connections"
        );
        let text = error_json(
            None,
            "Too many connections",
            Some("TOO_MANY_CONNECTIONS"),
            None,
        );
        let _ = send(
            &mut tx,
            Reply::from_json(text, crate::codec::Outcome::Rejected).text,
            write_timeout,
        )
        .await;
        close(&mut tx, CLOSE_TRY_AGAIN_LATER, "too many connections").await;
        return;
    }

    if let Err(denied) = crate::auth::authorize(
        &limits.auth,
        upgrade.token.as_deref(),
        &conn.id,
        &state.backend,
    )
    .await
    {
        state.serving.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(reason = %denied, "access denied");
        metrics::counter!("scope_router_auth_denied_total").increment(1);
        let text = error_json(None, "Access denied", Some("ACCESS_DENIED"), None);
        let _ = send(
            &mut tx,
            Reply::from_json(text, crate::codec::Outcome::Rejected).text,
            write_timeout,
        )
        .await;
        close(&mut tx, CLOSE_ACCESS_DENIED, "access denied").await;
        return;
    }

    // The next user's `ready` waits until the previous user's cleanup is done (their files are gone).
    {
        let mut cleaning = state.cleaning.subscribe();
        let waited = Instant::now();
        if tokio::time::timeout(Duration::from_secs(120), cleaning.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("previous connection's cleanup still running after 120 s; going on");
        } else if waited.elapsed() > Duration::from_millis(1) {
            tracing::info!(
                waited_ms = waited.elapsed().as_millis() as u64,
                "held ready until the previous cleanup finished"
            );
        }
    }

    let (mut bytes_in, mut bytes_out, mut messages) = (0u64, 0u64, 0u64);
    let open_gauge = metrics::gauge!("scope_router_connections_open");
    open_gauge.increment(1.0);
    tracing::info!(table = %table.version, "connected");

    let ready = table.connect_message(&conn.id);
    let log_cfg = &table.source.file.backend.logs;
    let log_batch = log_cfg.batch.max(1);
    let mut logs = log_cfg.push_to_clients.then(|| state.logs.subscribe());
    drop(table);
    bytes_out += ready.len() as u64;
    let mut ok = send(&mut tx, ready, write_timeout).await;

    let (push_tx, mut push_rx) = tokio::sync::mpsc::channel::<Outbound>(16);
    let _ = conn.push.set(push_tx);
    let binary_uploads = state.table.load().binary_uploads;
    let mut in_flight = FuturesUnordered::new();
    let mut bucket = limits.rate.map(Bucket::new);
    let max_duration = sleep_opt(limits.max_duration.map(|d| d.0));
    tokio::pin!(max_duration);
    // Far enough to never fire when there is no idle limit (the branch is disabled then too).
    let idle = tokio::time::sleep(
        limits
            .idle_timeout
            .map_or(Duration::from_secs(86_400 * 365), |d| d.0),
    );
    tokio::pin!(idle);
    let mut keepalive = limits.keepalive.map(|k| {
        let mut i = tokio::time::interval(k.interval.0);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let keepalive_grace = limits
        .keepalive
        .map_or(Duration::MAX, |k| k.interval.0 + k.timeout.0);
    let mut last_heard = Instant::now();

    let reason = loop {
        if !ok {
            break EndReason::SendFailed;
        }
        tokio::select! {
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                let reply: Reply = reply;
                // An empty reply was answered another way (a chunked download's header).
                if !reply.text.is_empty() {
                    bytes_out += reply.text.len() as u64;
                    ok = send(&mut tx, reply.text, write_timeout).await;
                }
            }
            Some(pushed) = push_rx.recv() => {
                let msg = match pushed {
                    Outbound::Text(t) => {
                        bytes_out += t.len() as u64;
                        Message::Text(t.into())
                    }
                    Outbound::Binary(b) => {
                        bytes_out += b.len() as u64;
                        Message::Binary(b)
                    }
                };
                ok = matches!(tokio::time::timeout(write_timeout, tx.send(msg)).await, Ok(Ok(())));
            }
            frame = rx.next() => {
                last_heard = Instant::now();
                if let Some(d) = limits.idle_timeout {
                    idle.as_mut().reset(tokio::time::Instant::now() + d.0);
                }
                let reply = match frame {
                    None => break EndReason::ClientGone,
                    Some(Ok(Message::Text(text))) => {
                        bytes_in += text.len() as u64;
                        messages += 1;
                        let decoded = decode(text.as_str());
                        drop(text);
                        match decoded {
                            Err((err, rid)) => {
                                tracing::debug!(error = %err, "undecodable message");
                                Some(error_reply(rid.as_ref(), &err))
                            }
                            Ok((msg, request_id)) => {
                                if bucket.as_mut().is_some_and(|b| !b.take()) {
                                    Some(error_reply(request_id.as_ref(), &ProtocolError::RateLimited))
                                } else if in_flight.len() >= limits.max_in_flight {
                                    Some(error_reply(request_id.as_ref(), &ProtocolError::TooManyInFlight(limits.max_in_flight)))
                                } else {
                                    let req = Request { msg, request_id, conn: conn.clone() };
                                    // Each message uses the table current when it arrived.
                                    in_flight.push(state.table.load().dispatch(req));
                                    None
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        bytes_in += b.len() as u64;
                        match crate::transfer::parse_binary_chunk(&b).filter(|_| binary_uploads) {
                            Some((id, seq, data)) => {
                                let r = conn.transfers.chunk(&conn, id, seq, data, None).await;
                                Some(crate::transfer::handler::binary_chunk_reply(id, seq, r))
                            }
                            None => Some(error_reply(None, &ProtocolError::BinaryFrame)),
                        }
                    }
                    Some(Ok(Message::Close(_))) => break EndReason::ClientClosed,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Err(e)) => {
                        let (code, reason, why) = classify(e);
                        tracing::info!(error = %why, "read error");
                        close(&mut tx, code, reason).await;
                        break if code == CLOSE_TOO_BIG { EndReason::TooLarge } else { EndReason::ProtocolError };
                    }
                };
                if let Some(r) = reply {
                    bytes_out += r.text.len() as u64;
                    ok = send(&mut tx, r.text, write_timeout).await;
                }
            }
            lines = next_logs(&mut logs, log_batch), if logs.is_some() => {
                match lines {
                    Some(lines) => {
                        let text = serde_json::json!({"type": "logs", "lines": lines}).to_string();
                        bytes_out += text.len() as u64;
                        ok = send(&mut tx, text, write_timeout).await;
                    }
                    None => logs = None,
                }
            }
            _ = tick(&mut keepalive), if keepalive.is_some() => {
                if last_heard.elapsed() > keepalive_grace {
                    close(&mut tx, CLOSE_GOING_AWAY, "keepalive timeout: no pong").await;
                    break EndReason::KeepaliveTimeout;
                }
                ok = matches!(
                    tokio::time::timeout(write_timeout, tx.send(Message::Ping(bytes::Bytes::new()))).await,
                    Ok(Ok(()))
                );
            }
            _ = &mut idle, if limits.idle_timeout.is_some() => {
                let r = error_reply(None, &ProtocolError::IdleTimeout);
                let _ = send(&mut tx, r.text, write_timeout).await;
                close(&mut tx, CLOSE_NORMAL, "idle timeout").await;
                break EndReason::Idle;
            }
            _ = &mut max_duration => {
                let r = error_reply(None, &ProtocolError::MaxDuration);
                let _ = send(&mut tx, r.text, write_timeout).await;
                close(&mut tx, CLOSE_NORMAL, "max duration exceeded").await;
                break EndReason::MaxDuration;
            }
            _ = shutdown.changed() => break EndReason::Shutdown,
        }
    };

    // Cleaning is raised before the slot is given up, so a connection admitted
    // from now on waits for this connection's cleanup before its `ready`.
    state.cleaning.send_modify(|n| *n += 1);
    let last = state.serving.fetch_sub(1, Ordering::AcqRel) == 1;

    // Let in-flight work finish: an offer may still open a session that must be
    // closed below, and on shutdown the client still gets its replies.
    if !in_flight.is_empty() {
        let deliver = reason == EndReason::Shutdown;
        let drain = async {
            while let Some(reply) = in_flight.next().await {
                if deliver && ok {
                    ok = send(&mut tx, reply.text, write_timeout).await;
                }
            }
        };
        if tokio::time::timeout(limits.drain_timeout.0, drain)
            .await
            .is_err()
        {
            tracing::warn!("in-flight messages still running after the drain timeout; dropped");
        }
    }
    if reason == EndReason::Shutdown {
        close(&mut tx, CLOSE_GOING_AWAY, "server shutting down").await;
    }
    // A client that stopped reading cannot take a graceful close either: don't wait on it.
    if ok {
        let _ = tokio::time::timeout(Duration::from_secs(5), tx.close()).await;
    }
    drop(tx);
    drop(rx);
    conn.transfers.detach(&conn.id).await;
    open_gauge.decrement(1.0);

    let table = state.table.load_full();
    crate::cleanup::run(&table, &state, &conn, last).await;
    state.cleaning.send_modify(|n| *n = n.saturating_sub(1));

    tracing::info!(
        reason = ?reason,
        duration_ms = started.elapsed().as_millis() as u64,
        messages,
        bytes_in,
        bytes_out,
        "disconnected"
    );
}

/// Sleeps for `d`, or forever when there is no limit.
async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next batch of backend log lines: waits for one, then takes what else is queued, up to `batch`.
/// `None` when the log channel is gone.
async fn next_logs(
    rx: &mut Option<broadcast::Receiver<Arc<str>>>,
    batch: usize,
) -> Option<Vec<Arc<str>>> {
    let rx = rx.as_mut()?;
    let mut lines = Vec::new();
    loop {
        match rx.recv().await {
            Ok(l) => {
                lines.push(l);
                break;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    dropped = n,
                    "client is behind on backend logs; dropped the oldest"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
    while lines.len() < batch {
        match rx.try_recv() {
            Ok(l) => lines.push(l),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    Some(lines)
}

async fn send<S>(tx: &mut S, text: String, timeout: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    match tokio::time::timeout(timeout, tx.send(Message::Text(text.into()))).await {
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

async fn close<S>(tx: &mut S, code: u16, reason: &'static str)
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
fn classify(e: axum::Error) -> (u16, &'static str, String) {
    let inner = e.into_inner();
    let why = inner.to_string();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (CLOSE_TOO_BIG, "message too big", why),
        Some(tungstenite::Error::Utf8(_)) => (CLOSE_INVALID_DATA, "invalid UTF-8", why),
        _ => (CLOSE_PROTOCOL, "protocol error", why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = Bucket::new(RateConfig {
            per_second: 0.0,
            burst: 3,
        });
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        let mut b = Bucket::new(RateConfig {
            per_second: 1000.0,
            burst: 1,
        });
        assert!(b.take());
        b.last -= Duration::from_millis(5);
        assert!(b.take());
    }
}

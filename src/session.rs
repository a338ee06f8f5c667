//! One connection: frames in, through the route table, replies out; and the connection's own state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::codec::{ProtocolError, Request, decode, error_reply};
use crate::server::AppState;

/// Per-connection state shared with the handlers of its messages.
#[derive(Debug)]
pub struct ConnCtx {
    /// Short id (8 hex characters) that tags every log line about this connection.
    pub id: Box<str>,
    /// WebRTC sessions this connection opened, oldest first.
    sessions: Mutex<Vec<String>>,
}

impl ConnCtx {
    pub fn new(id: impl Into<Box<str>>) -> Self {
        Self {
            id: id.into(),
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// A fresh random id.
    pub fn new_id() -> String {
        format!("{:08x}", rand::random::<u32>())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A poisoned lock only means a panic elsewhere mid-push; the list is still usable.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// Why a connection ended, for the disconnect log line.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    ClientClosed,
    ClientGone,
    TooLarge,
    ProtocolError,
    MaxDuration,
    Shutdown,
    SendFailed,
}

/// Close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// How long one write may wait on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until it ends, then runs the disconnect hooks.
pub async fn serve<S>(socket: S, state: Arc<AppState>, conn: Arc<ConnCtx>, shutdown: watch::Receiver<bool>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send,
{
    let span = tracing::info_span!("conn", id = %conn.id);
    state.open_sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    run(socket, state.clone(), conn, shutdown).instrument(span).await;
    state.open_sessions.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
}

async fn run<S>(socket: S, state: Arc<AppState>, conn: Arc<ConnCtx>, mut shutdown: watch::Receiver<bool>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send,
{
    let started = Instant::now();
    let (mut tx, mut rx) = socket.split();
    let table = state.table.load_full();
    let limits = table.connection.clone();
    let (mut bytes_in, mut bytes_out, mut messages) = (0u64, 0u64, 0u64);
    metrics::gauge!("scope_router_connections_open").increment(1.0);
    tracing::info!(table = %table.version, "connected");

    let ready = table.connect_message(&conn.id);
    let log_cfg = &table.source.file.backend.logs;
    let log_batch = log_cfg.batch.max(1);
    let mut logs = log_cfg.push_to_clients.then(|| state.logs.subscribe());
    drop(table);
    bytes_out += ready.len() as u64;
    let mut ok = send(&mut tx, ready).await;

    let mut in_flight = FuturesUnordered::new();
    let deadline = limits.max_duration.map(|d| tokio::time::Instant::now() + d.0);
    let max_duration = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(max_duration);

    let reason = loop {
        if !ok {
            break EndReason::SendFailed;
        }
        tokio::select! {
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                let reply: crate::codec::Reply = reply;
                bytes_out += reply.text.len() as u64;
                ok = send(&mut tx, reply.text).await;
            }
            frame = rx.next() => match frame {
                None => break EndReason::ClientGone,
                Some(Ok(Message::Text(text))) => {
                    bytes_in += text.len() as u64;
                    messages += 1;
                    let decoded = decode(text.as_str());
                    drop(text);
                    match decoded {
                        Err((err, rid)) => {
                            tracing::debug!(error = %err, "undecodable message");
                            let r = error_reply(rid.as_ref(), &err);
                            bytes_out += r.text.len() as u64;
                            ok = send(&mut tx, r.text).await;
                        }
                        Ok((msg, request_id)) => {
                            if in_flight.len() >= limits.max_in_flight {
                                let r = error_reply(request_id.as_ref(), &ProtocolError::TooManyInFlight(limits.max_in_flight));
                                bytes_out += r.text.len() as u64;
                                ok = send(&mut tx, r.text).await;
                            } else {
                                let req = Request { msg, request_id, conn: conn.clone() };
                                // Each message uses the table current when it arrived.
                                in_flight.push(state.table.load().dispatch(req));
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    bytes_in += b.len() as u64;
                    let r = error_reply(None, &ProtocolError::BinaryFrame);
                    ok = send(&mut tx, r.text).await;
                }
                Some(Ok(Message::Close(_))) => break EndReason::ClientClosed,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(e)) => {
                    let (code, reason, why) = classify(e);
                    tracing::info!(error = %why, "read error");
                    close(&mut tx, code, reason).await;
                    break if code == CLOSE_TOO_BIG { EndReason::TooLarge } else { EndReason::ProtocolError };
                }
            },
            lines = next_logs(&mut logs, log_batch), if logs.is_some() => {
                match lines {
                    Some(lines) => {
                        let text = serde_json::json!({"type": "logs", "lines": lines}).to_string();
                        bytes_out += text.len() as u64;
                        ok = send(&mut tx, text).await;
                    }
                    None => logs = None,
                }
            }
            _ = &mut max_duration => {
                let r = error_reply(None, &ProtocolError::MaxDuration);
                let _ = send(&mut tx, r.text).await;
                close(&mut tx, CLOSE_NORMAL, "max duration exceeded").await;
                break EndReason::MaxDuration;
            }
            _ = shutdown.changed() => break EndReason::Shutdown,
        }
    };

    // Let in-flight work finish: an offer may still open a session that must be
    // closed below, and on shutdown the client still gets its replies.
    if !in_flight.is_empty() {
        let deliver = matches!(reason, EndReason::Shutdown);
        let drain = async {
            while let Some(reply) = in_flight.next().await {
                if deliver && ok {
                    ok = send(&mut tx, reply.text).await;
                }
            }
        };
        if tokio::time::timeout(limits.drain_timeout.0, drain).await.is_err() {
            tracing::warn!("in-flight messages still running after the drain timeout; dropped");
        }
    }
    if matches!(reason, EndReason::Shutdown) {
        close(&mut tx, CLOSE_GOING_AWAY, "server shutting down").await;
    }
    let _ = tx.close().await;

    let table = state.table.load_full();
    if let Some(path) = &table.close_sessions_path {
        crate::handler::signaling::close_sessions(&state.backend, path, &conn).await;
    }
    metrics::gauge!("scope_router_connections_open").decrement(1.0);
    tracing::info!(
        reason = ?reason,
        duration_ms = started.elapsed().as_millis() as u64,
        messages,
        bytes_in,
        bytes_out,
        "disconnected"
    );
}

/// The next batch of backend log lines: waits for one, then takes what else is queued, up to `batch`.
/// `None` when the log channel is gone.
async fn next_logs(rx: &mut Option<broadcast::Receiver<Arc<str>>>, batch: usize) -> Option<Vec<Arc<str>>> {
    let rx = rx.as_mut()?;
    let mut lines = Vec::new();
    loop {
        match rx.recv().await {
            Ok(l) => {
                lines.push(l);
                break;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(dropped = n, "client is behind on backend logs; dropped the oldest");
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

async fn send<S>(tx: &mut S, text: String) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    match tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "send failed");
            false
        }
        Err(_) => {
            tracing::warn!("client is not reading its replies; closing");
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
    let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(Message::Close(Some(frame)))).await;
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

//! One connection: admission and auth, frames in through the snapshot's route table, replies out, then cleanup.
//!
//! The loop is written over a generic `Sink`/`Stream` of WebSocket messages, so it runs
//! the same over a real socket and over channels in a unit test.

pub mod admission;
mod io;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use self::admission::Slots;
use self::io::{
    Bucket, CLOSE_ACCESS_DENIED, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER, classify, close, feed, flush, send, send_text,
};
use crate::conn::{ConnHandle, Outbound};
use crate::envelope::{Answer, ProtocolError, Reply, Request, decode, refuse};
use crate::handler::transfer::Uploads;
use crate::publish::{LogFeed, View};
use crate::snapshot::Snapshot;

/// What every connection shares: the published snapshot, the upload store, log lines, slots.
pub struct Shared {
    pub snapshot: View<Snapshot>,
    pub uploads: Arc<Uploads>,
    pub logs: LogFeed,
    pub slots: Slots,
}

/// What the upgrade request carried that the session needs.
#[derive(Default)]
pub struct Upgrade {
    /// The auth token (query parameter or header), if any. Never logged.
    pub token: Option<String>,
    /// The connection's place among the handshakes in progress, given up once the token
    /// has been checked.
    pub handshake: Option<admission::HandshakePermit>,
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

/// Serves one connection until it ends, then runs the disconnect steps.
pub async fn serve<S>(
    socket: S,
    shared: Arc<Shared>,
    conn: Arc<ConnHandle>,
    upgrade: Upgrade,
    shutdown: watch::Receiver<bool>,
) where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let span = tracing::info_span!("conn", id = %conn.id);
    shared.slots.opened();
    run(socket, &shared, conn, upgrade, shutdown)
        .instrument(span)
        .await;
    shared.slots.closed();
}

async fn run<S>(
    socket: S,
    shared: &Shared,
    conn: Arc<ConnHandle>,
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
    // The connection's limits and hooks are those of the snapshot it was admitted under;
    // each message is routed by the snapshot current when it arrives.
    let snap = shared.snapshot.load_full();
    let policy = &snap.policy;
    let write_timeout = policy.write_timeout;

    // Auth first: a connection takes a slot only once it is let in, so clients that are
    // still being checked (a slow authorizer) cannot lock real users out. Their number is
    // bounded by the handshake cap instead.
    let Upgrade { token, handshake } = upgrade;
    let checked = tokio::select! {
        r = crate::policy::auth::authorize(&policy.auth, token.as_deref(), &conn.id, snap.upstream.pool()) => r,
        // A stopping router does not wait on a slow authorizer.
        _ = shutdown.changed() => {
            close(&mut tx, CLOSE_GOING_AWAY, "server shutting down").await;
            return;
        }
    };
    if let Err(denied) = checked {
        tracing::warn!(reason = %denied, "access denied");
        metrics::counter!("scope_router_auth_denied_total").increment(1);
        let r = refuse(None, &ProtocolError::AccessDenied);
        let _ = send_text(&mut tx, r.text, write_timeout).await;
        close(&mut tx, CLOSE_ACCESS_DENIED, "access denied").await;
        return;
    }
    drop(handshake);

    // Admission: the slot is held until this connection's cleanup has finished.
    let Some(slot) = shared.slots.admit(policy.max_connections) else {
        tracing::warn!(
            limit = policy.max_connections,
            "refused: too many connections"
        );
        let r = refuse(None, &ProtocolError::TooManyConnections);
        let _ = send_text(&mut tx, r.text, write_timeout).await;
        close(&mut tx, CLOSE_TRY_AGAIN_LATER, "too many connections").await;
        return;
    };

    // The next user's `ready` waits until the previous user's cleanup is done (their files are gone).
    shared
        .slots
        .wait_for_cleanups(Duration::from_secs(120))
        .await;

    let (mut bytes_in, mut bytes_out, mut messages) = (0u64, 0u64, 0u64);
    let open_gauge = metrics::gauge!("scope_router_connections_open");
    open_gauge.increment(1.0);
    tracing::info!(table = %snap.meta.version, "connected");

    let ready = policy.connect_message(&conn.id);
    let log_batch = policy.logs.batch;
    let mut logs = policy.logs.enabled.then(|| shared.logs.subscribe());
    bytes_out += ready.len() as u64;
    let mut ok = send_text(&mut tx, ready, write_timeout).await;

    let (push_tx, mut push_rx) = tokio::sync::mpsc::channel::<Outbound>(16);
    conn.set_push(push_tx);
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Answer>> = FuturesUnordered::new();
    let mut bucket = policy.rate.map(Bucket::new);
    let max_duration = sleep_opt(policy.max_duration);
    tokio::pin!(max_duration);
    // Far enough to never fire when there is no idle limit (the branch is disabled then too).
    let idle = tokio::time::sleep(
        policy
            .idle_timeout
            .unwrap_or(Duration::from_secs(86_400 * 365)),
    );
    tokio::pin!(idle);
    let mut keepalive = policy.keepalive.map(|k| {
        let mut i = tokio::time::interval(k.interval);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let keepalive_grace = policy
        .keepalive
        .map_or(Duration::MAX, |k| k.interval + k.timeout);
    let mut last_heard = Instant::now();

    let reason = loop {
        if !ok {
            break EndReason::SendFailed;
        }
        // Replies, pushes and log lines are fed unflushed; one flush after the branch sends
        // them with whatever else is ready by then.
        let mut fed = false;
        tokio::select! {
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if let Answer::Reply(reply) = answer {
                    bytes_out += reply.text.len() as u64;
                    ok = feed(&mut tx, Message::Text(reply.text.into()), write_timeout).await;
                    fed = true;
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
                ok = feed(&mut tx, msg, write_timeout).await;
                fed = true;
            }
            frame = rx.next() => {
                last_heard = Instant::now();
                // Only a client's messages count as activity: a browser answers pings by
                // itself, so an abandoned tab would otherwise never be idle.
                if let (Some(d), Some(Ok(Message::Text(_) | Message::Binary(_)))) = (policy.idle_timeout, &frame) {
                    idle.as_mut().reset(tokio::time::Instant::now() + d);
                }
                // Every message takes a token, whether it decodes or not.
                let limited = matches!(&frame, Some(Ok(Message::Text(_) | Message::Binary(_))))
                    && bucket.as_mut().is_some_and(|b| !b.take());
                let reply: Option<Reply> = match frame {
                    None => break EndReason::ClientGone,
                    Some(Ok(Message::Text(text))) => {
                        bytes_in += text.len() as u64;
                        messages += 1;
                        let decoded = decode(text.as_str());
                        drop(text);
                        match decoded {
                            Err(_) if limited => Some(refuse(None, &ProtocolError::RateLimited)),
                            Err(err) => {
                                tracing::debug!(error = %err, "undecodable message");
                                Some(refuse(None, &err))
                            }
                            Ok((_, request_id)) if limited => {
                                Some(refuse(request_id.as_ref(), &ProtocolError::RateLimited))
                            }
                            Ok((msg, request_id)) => {
                                if in_flight.len() >= policy.max_in_flight {
                                    Some(refuse(request_id.as_ref(), &ProtocolError::TooManyInFlight(policy.max_in_flight)))
                                } else {
                                    let req = Request { msg, request_id, conn: conn.clone() };
                                    // Each message uses the table current when it arrived.
                                    in_flight.push(shared.snapshot.load().table.dispatch(req));
                                    None
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        bytes_in += b.len() as u64;
                        if limited {
                            Some(refuse(None, &ProtocolError::RateLimited))
                        } else if !policy.binary_uploads {
                            Some(refuse(None, &ProtocolError::BinaryFrame))
                        } else if in_flight.len() >= policy.max_in_flight {
                            Some(refuse(None, &ProtocolError::TooManyInFlight(policy.max_in_flight)))
                        } else {
                            // The chunk is written to disk off this loop, so replies, pushes
                            // and keepalive of the connection go on meanwhile.
                            let (uploads, conn) = (shared.uploads.clone(), conn.clone());
                            in_flight.push(Box::pin(async move {
                                let reply = crate::handler::transfer::handler::binary_chunk(&uploads, &conn, &b)
                                    .await
                                    .unwrap_or_else(|| refuse(None, &ProtocolError::BinaryFrame));
                                Answer::Reply(reply)
                            }));
                            None
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
                    ok = feed(&mut tx, Message::Text(r.text.into()), write_timeout).await;
                    fed = true;
                }
            }
            lines = next_logs(&mut logs, log_batch), if logs.is_some() => {
                match lines {
                    Some(lines) => {
                        let text = serde_json::json!({"type": "logs", "lines": lines}).to_string();
                        bytes_out += text.len() as u64;
                        ok = feed(&mut tx, Message::Text(text.into()), write_timeout).await;
                        fed = true;
                    }
                    None => logs = None,
                }
            }
            _ = tick(&mut keepalive), if keepalive.is_some() => {
                if last_heard.elapsed() > keepalive_grace {
                    close(&mut tx, CLOSE_GOING_AWAY, "keepalive timeout: no pong").await;
                    break EndReason::KeepaliveTimeout;
                }
                ok = send(&mut tx, Message::Ping(bytes::Bytes::new()), write_timeout).await;
            }
            _ = &mut idle, if policy.idle_timeout.is_some() => {
                let r = refuse(None, &ProtocolError::IdleTimeout);
                let _ = send_text(&mut tx, r.text, write_timeout).await;
                close(&mut tx, CLOSE_NORMAL, "idle timeout").await;
                break EndReason::Idle;
            }
            _ = &mut max_duration => {
                let r = refuse(None, &ProtocolError::MaxDuration);
                let _ = send_text(&mut tx, r.text, write_timeout).await;
                close(&mut tx, CLOSE_NORMAL, "max duration exceeded").await;
                break EndReason::MaxDuration;
            }
            _ = shutdown.changed() => break EndReason::Shutdown,
        }
        if fed && ok {
            ok = flush_ready(
                &mut tx,
                &mut in_flight,
                &mut push_rx,
                &mut bytes_out,
                write_timeout,
            )
            .await;
        }
    };

    let hold = shared.slots.leave(slot);
    // Nothing reads pushes any more: a download in progress stops here.
    drop(push_rx);
    let deliver = reason == EndReason::Shutdown;
    // A client that closed (or was told why it is closed) gets its close now, not after the
    // drain below. One that stopped reading cannot take a graceful close: don't wait on it.
    if !deliver && ok {
        let _ = tokio::time::timeout(Duration::from_secs(5), tx.close()).await;
        ok = false;
    }

    // The user's data goes first (directories, hook calls, sessions known so far), under
    // the hold when this was the last connection: the next user's `ready` waits for this,
    // not for this connection's in-flight drain below. Cleanup follows the snapshot current
    // now (a reload may have changed the hooks).
    let now = shared.snapshot.load_full();
    crate::policy::cleanup::run(
        &now.policy.on_disconnect,
        &now.upstream,
        &conn,
        hold.is_some(),
    )
    .await;
    if let Some(hold) = hold {
        shared.slots.cleaned(hold);
    }

    // Let in-flight work finish: an offer may still open a session that must be
    // closed below, and on shutdown the client still gets its replies.
    if !in_flight.is_empty() {
        let drain = async {
            while let Some(answer) = in_flight.next().await {
                if let (true, true, Answer::Reply(reply)) = (deliver, ok, answer) {
                    ok = send_text(&mut tx, reply.text, write_timeout).await;
                }
            }
        };
        if tokio::time::timeout(policy.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!("in-flight messages still running after the drain timeout; dropped");
        }
    }
    if deliver {
        close(&mut tx, CLOSE_GOING_AWAY, "server shutting down").await;
        if ok {
            let _ = tokio::time::timeout(Duration::from_secs(5), tx.close()).await;
        }
    }
    drop(tx);
    drop(rx);
    shared.uploads.detach(&conn.id).await;
    open_gauge.decrement(1.0);
    // Sessions opened by offers that were still in flight at the disconnect.
    crate::policy::cleanup::close_late_sessions(&now.policy.on_disconnect, &now.upstream, &conn)
        .await;

    tracing::info!(
        reason = ?reason,
        duration_ms = started.elapsed().as_millis() as u64,
        messages,
        bytes_in,
        bytes_out,
        "disconnected"
    );
}

/// How many more ready frames one flush may take, so a flood of pushes cannot hold off reads.
const READY_BATCH: usize = 32;

/// Feeds the replies and pushes that are ready now (nothing waits), then flushes once:
/// frames that are ready together leave the router in one write.
async fn flush_ready<T>(
    tx: &mut T,
    in_flight: &mut FuturesUnordered<BoxFuture<'static, Answer>>,
    push_rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
    bytes_out: &mut u64,
    timeout: Duration,
) -> bool
where
    T: Sink<Message, Error = axum::Error> + Unpin,
{
    for _ in 0..READY_BATCH {
        let (len, msg) = match in_flight.next().now_or_never() {
            Some(Some(Answer::Reply(r))) => (r.text.len(), Message::Text(r.text.into())),
            Some(Some(Answer::Streamed)) => continue,
            _ => match push_rx.try_recv() {
                Ok(Outbound::Text(t)) => (t.len(), Message::Text(t.into())),
                Ok(Outbound::Binary(b)) => (b.len(), Message::Binary(b)),
                Err(_) => break,
            },
        };
        *bytes_out += len as u64;
        if !feed(tx, msg, timeout).await {
            return false;
        }
    }
    flush(tx, timeout).await
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_batch;

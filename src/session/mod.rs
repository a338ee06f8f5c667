//! One connection: admission and auth, frames in through the snapshot's route table, replies out, then cleanup.
//!
//! The loop is written over a generic `Sink`/`Stream` of WebSocket messages, so it runs
//! the same over a real socket and over channels in a unit test.

pub mod admission;
mod gate;
mod io;
pub mod upgrade_meta;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use self::admission::Slots;
use self::gate::Decision;
use self::io::{
    Bucket, CLOSE_ACCESS_DENIED, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER, classify, close, feed, flush, send, send_text,
};
use crate::conn::{ConnHandle, Outbound};
use crate::envelope::{Answer, ProtocolError, Reply, Request, decode, refuse};
use crate::handler::transfer::Uploads;
use crate::policy::gate::GateError;
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
    /// The `manifest-id` and `daydream-user-id` headers (a Livepeer orchestrator's), for log fields.
    pub meta: upgrade_meta::UpgradeMeta,
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
    AccessDenied,
    /// The tunnel's upstream closed on purpose, or could not be kept.
    TunnelClosed,
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
    let span = tracing::info_span!("conn", id = %conn.id, manifest_id = tracing::field::Empty, user_id = tracing::field::Empty);
    upgrade.meta.record(&span);
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
    let Upgrade {
        token,
        handshake,
        meta,
    } = upgrade;
    // An orchestrator names its user and job in the upgrade headers: they are the
    // connection's user id (as a `set_user_id` would be) and its id in lifecycle events.
    if let Some(user) = &meta.user_id {
        conn.set_user_id(user);
    }
    let event_id = meta.manifest_id.clone();
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
        .wait_for_cleanups(policy.cleanup_hold_limit())
        .await;

    let (mut bytes_in, mut bytes_out, mut messages) = (0u64, 0u64, 0u64);
    let open_gauge = metrics::gauge!("scope_router_connections_open");
    open_gauge.increment(1.0);
    tracing::info!(table = %snap.meta.version, "connected");

    if let Some(info) = &policy.info {
        conn.set_info(info.clone());
    }
    let log_batch = policy.logs.batch;
    // With an access check, log lines wait for the grant.
    let checks = policy.gate.as_ref().is_some_and(|g| g.checks());
    let defer_logs = checks && policy.gate.as_ref().is_some_and(|g| g.logs_after_grant);
    let mut logs = (policy.logs.enabled && !defer_logs).then(|| shared.logs.subscribe());
    let mut ok = true;
    if let Some(ready) = policy.connect_message(&conn.id) {
        bytes_out += ready.len() as u64;
        ok = send_text(&mut tx, ready, write_timeout).await;
    }
    let connected_ms = crate::policy::events::now_ms();
    if !checks {
        emit_connected(&snap, &conn, event_id.as_deref());
    }
    if !policy.after_connect.is_empty() {
        // Best effort, in order, without delaying anything the client sent.
        let (snap, conn) = (snap.clone(), conn.clone());
        tokio::spawn(
            async move {
                for call in &snap.policy.after_connect {
                    call.run(&snap.upstream, &conn).await;
                }
            }
            .in_current_span(),
        );
    }
    let mut gate = gate::GateState::default();
    let mut gate_check: Option<BoxFuture<'static, Result<(), GateError>>> = None;
    // Frames no named route takes go through the tunnel, when `$default` is one.
    let mut tunnel = snap
        .table
        .tunnel()
        .map(|spec| crate::handler::tunnel::Link::open(spec.clone(), policy.max_message_bytes));

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
            ev = crate::handler::tunnel::next(&mut tunnel), if tunnel.is_some() => match ev {
                crate::handler::tunnel::Event::Frame(msg) => {
                    bytes_out += frame_len(&msg);
                    ok = send(&mut tx, msg, write_timeout).await;
                }
                crate::handler::tunnel::Event::Close(code, reason) => {
                    close(&mut tx, code, &reason).await;
                    break EndReason::TunnelClosed;
                }
                crate::handler::tunnel::Event::Resumed => {}
            },
            // A tunnel frame waiting for room holds the client's reads (backpressure).
            frame = rx.next(), if !tunnel.as_ref().is_some_and(|t| t.blocked()) => {
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
                    Some(Ok(Message::Text(text))) if !limited && tunnel.is_some() && {
                        let table = &shared.snapshot.load().table;
                        crate::route::tunnels_text(&text, &table.key, |t| table.has_named_route(t))
                    } => {
                        bytes_in += text.len() as u64;
                        messages += 1;
                        if let Some(t) = tunnel.as_mut() {
                            t.offer_text(text);
                        }
                        None
                    }
                    Some(Ok(Message::Binary(b))) if !limited && tunnel.is_some() => {
                        bytes_in += b.len() as u64;
                        messages += 1;
                        if let Some(t) = tunnel.as_mut() {
                            t.offer_binary(b);
                        }
                        None
                    }
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
                                let req = Request { msg, request_id, conn: conn.clone() };
                                match gate.decide(policy.gate.as_ref(), req, policy.max_in_flight) {
                                    Decision::Dispatch(req) => dispatch(&mut in_flight, shared, req, policy.max_in_flight),
                                    Decision::Reply(r) => Some(r),
                                    Decision::Held => None,
                                    Decision::Check => {
                                        gate_check = gate.checking.as_ref().map(|r| start_check(&snap, &r.msg));
                                        None
                                    }
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
            checked = poll_opt(&mut gate_check), if gate_check.is_some() => {
                gate_check = None;
                let Some(g) = policy.gate.as_ref() else { continue };
                if let Err(e) = checked {
                    tracing::warn!(reason = %e, "access denied");
                    metrics::counter!("scope_router_auth_denied_total").increment(1);
                    let rid = gate.checking.as_ref().and_then(|r| r.request_id.clone());
                    let r = refuse(rid.as_ref(), &ProtocolError::AccessDenied);
                    let _ = send_text(&mut tx, r.text, write_timeout).await;
                    close(&mut tx, CLOSE_ACCESS_DENIED, "access denied").await;
                    break EndReason::AccessDenied;
                }
                let Some((reply, mut rest)) = gate.granted(g) else { continue };
                tracing::info!("user id set, access granted");
                bytes_out += reply.text.len() as u64;
                ok = send_text(&mut tx, reply.text, write_timeout).await;
                if policy.logs.enabled && logs.is_none() {
                    logs = Some(shared.logs.subscribe());
                }
                emit_connected(&snap, &conn, event_id.as_deref());
                // The messages that waited, in order.
                while let Some(req) = rest.pop_front() {
                    let reply = match gate.decide(Some(g), req, policy.max_in_flight) {
                        Decision::Dispatch(req) => dispatch(&mut in_flight, shared, req, policy.max_in_flight),
                        Decision::Reply(r) => Some(r),
                        Decision::Held => None,
                        Decision::Check => {
                            gate_check = gate.checking.as_ref().map(|r| start_check(&snap, &r.msg));
                            gate.hold_front(std::mem::take(&mut rest));
                            None
                        }
                    };
                    if let (Some(r), true) = (reply, ok) {
                        bytes_out += r.text.len() as u64;
                        ok = send_text(&mut tx, r.text, write_timeout).await;
                    }
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
                // A client whose reads are held by a full tunnel queue cannot have its pongs
                // read either: that is backpressure, not a dead peer.
                if last_heard.elapsed() > keepalive_grace && !tunnel.as_ref().is_some_and(|t| t.blocked()) {
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

    emit_disconnected(&snap, &conn, event_id.as_deref(), connected_ms);
    // The runner sees its socket close before any cleanup step runs.
    if let Some(t) = tunnel.take() {
        t.close().await;
    }
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

/// Routes one message, unless the connection has `max` in flight already.
fn dispatch(
    in_flight: &mut FuturesUnordered<BoxFuture<'static, Answer>>,
    shared: &Shared,
    req: Request,
    max: usize,
) -> Option<Reply> {
    if in_flight.len() >= max {
        return Some(refuse(
            req.request_id.as_ref(),
            &ProtocolError::TooManyInFlight(max),
        ));
    }
    // Each message uses the table current when it arrived.
    in_flight.push(shared.snapshot.load().table.dispatch(req));
    None
}

/// The access check of a user-id message, under the connection's snapshot.
fn start_check(
    snap: &Arc<Snapshot>,
    msg: &serde_json::Value,
) -> BoxFuture<'static, Result<(), GateError>> {
    let (snap, msg) = (snap.clone(), msg.clone());
    Box::pin(async move {
        match &snap.policy.gate {
            Some(g) => g.check(&msg, snap.upstream.pool()).await,
            None => Ok(()),
        }
    })
}

/// Awaits the future when there is one (the select branch is disabled otherwise).
async fn poll_opt<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// What lifecycle events say about a connection.
fn event_data(
    conn: &ConnHandle,
    event_id: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut data = serde_json::Map::new();
    data.insert(
        "user_id".to_owned(),
        conn.user_id().map_or(serde_json::Value::Null, |u| {
            serde_json::Value::from(u.as_str())
        }),
    );
    data.insert(
        "connection_id".to_owned(),
        serde_json::Value::from(event_id.unwrap_or(&conn.id)),
    );
    data.insert(
        "connection_info".to_owned(),
        conn.info().cloned().unwrap_or(serde_json::Value::Null),
    );
    data
}

fn emit_connected(snap: &Snapshot, conn: &ConnHandle, event_id: Option<&str>) {
    snap.policy.events.emit(
        "websocket_connected",
        serde_json::Value::Object(event_data(conn, event_id)),
        &snap.upstream.pool_arc(),
    );
}

fn emit_disconnected(snap: &Snapshot, conn: &ConnHandle, event_id: Option<&str>, start_ms: u64) {
    let end_ms = crate::policy::events::now_ms();
    let mut data = event_data(conn, event_id);
    data.insert(
        "duration_ms".to_owned(),
        serde_json::Value::from(end_ms.saturating_sub(start_ms)),
    );
    data.insert(
        "session_start_time_ms".to_owned(),
        serde_json::Value::from(start_ms),
    );
    data.insert(
        "session_end_time_ms".to_owned(),
        serde_json::Value::from(end_ms),
    );
    snap.policy.events.emit(
        "websocket_disconnected",
        serde_json::Value::Object(data),
        &snap.upstream.pool_arc(),
    );
}

/// Payload bytes of a frame, for the byte counts.
fn frame_len(m: &Message) -> u64 {
    match m {
        Message::Text(t) => t.len() as u64,
        Message::Binary(b) => b.len() as u64,
        _ => 0,
    }
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

//! The `tunnel` handler: per client connection one upstream WebSocket, frames relayed both ways unchanged, with bounded queues, reconnects and keepalive.
//!
//! The session loop hands a [`Link`] every frame no named route takes (typed or not, text
//! or binary) and writes what the link gives back. The link's task owns the upstream
//! socket: it connects, relays, pings, and when the upstream drops while the client is
//! still there it reconnects after `reconnect_delay`, until more than `max_failures`
//! failures fall within `failure_window`; then the client is closed with 1011.
//!
//! Frames are never re-serialized: a text frame's bytes go out as they came in. Each
//! direction is a bounded channel; a full one stops the router reading the side that
//! fills it, so a slow reader slows its sender and memory stays bounded.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::Message as ClientMessage;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as UpMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::Handle;
use crate::config::TunnelConfig;
use crate::envelope::{Answer, ProtocolError, Request, refuse};

/// The close code a client gets when the upstream could not be kept (too many failures).
pub const CLOSE_UPSTREAM_LOST: u16 = 1011;

/// Initial read buffer of the upstream socket (it grows for big messages).
const READ_BUFFER: usize = 8 * 1024;

/// A tunnel, compiled at load.
#[derive(Debug)]
pub struct TunnelSpec {
    pub url: String,
    pub queue: usize,
    pub connect_timeout: Duration,
    pub reconnect_delay: Duration,
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Ping interval and the time an answer may take.
    pub keepalive: Option<(Duration, Duration)>,
    frame_types: Vec<String>,
    counters: OnceLock<Counters>,
}

impl TunnelSpec {
    pub fn compile(cfg: &TunnelConfig) -> Result<TunnelSpec, String> {
        let url = cfg.url.trim();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(format!(
                "tunnel.url {:?} must be a ws:// or wss:// URL",
                cfg.url
            ));
        }
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        url.into_client_request()
            .map_err(|e| format!("tunnel.url {:?}: {e}", cfg.url))?;
        if cfg.queue == 0 {
            return Err("tunnel.queue must be at least 1".to_owned());
        }
        if cfg.frame_types.len() > 64 {
            return Err("tunnel.frame_types: at most 64 types are counted by name".to_owned());
        }
        Ok(TunnelSpec {
            url: url.to_owned(),
            queue: cfg.queue,
            connect_timeout: cfg.connect_timeout.0,
            reconnect_delay: cfg.reconnect_delay.0,
            max_failures: cfg.max_failures,
            failure_window: cfg.failure_window.0,
            keepalive: cfg.keepalive.map(|k| (k.interval.0, k.timeout.0)),
            frame_types: cfg.frame_types.clone(),
            counters: OnceLock::new(),
        })
    }

    /// The metric handles, made on first use (after the recorder is installed).
    fn counters(&self) -> &Counters {
        self.counters
            .get_or_init(|| Counters::new(&self.frame_types))
    }

    /// Counts a frame going to the runner (`up`) or to the client.
    fn count(&self, up: bool, frame: Frame<'_>) {
        self.counters().count(up, frame);
    }
}

/// A frame as the metrics see it.
#[derive(Clone, Copy)]
enum Frame<'a> {
    Text(&'a str),
    Binary(usize),
}

/// Frame and byte counters per direction, one per named type plus `other`, `untyped`, `binary`.
#[derive(Debug)]
struct Counters {
    by_type: [HashMap<String, metrics::Counter>; 2],
    other: [metrics::Counter; 2],
    untyped: [metrics::Counter; 2],
    binary: [metrics::Counter; 2],
    bytes: [metrics::Counter; 2],
}

const DIRECTIONS: [&str; 2] = ["to_client", "to_runner"];

impl Counters {
    fn new(types: &[String]) -> Counters {
        const NAME: &str = "scope_router_tunnel_frames_total";
        let per = |t: &'static str| {
            DIRECTIONS.map(|d| metrics::counter!(NAME, "direction" => d, "type" => t))
        };
        Counters {
            by_type: DIRECTIONS.map(|d| {
                types
                    .iter()
                    .map(|t| {
                        let c = metrics::counter!(NAME, "direction" => d, "type" => t.clone());
                        (t.clone(), c)
                    })
                    .collect()
            }),
            other: per("other"),
            untyped: per("untyped"),
            binary: per("binary"),
            bytes: DIRECTIONS
                .map(|d| metrics::counter!("scope_router_tunnel_bytes_total", "direction" => d)),
        }
    }

    fn count(&self, up: bool, frame: Frame<'_>) {
        let i = usize::from(up);
        let (counter, len) = match frame {
            Frame::Binary(len) => (self.binary.get(i), len),
            Frame::Text(text) => {
                let c = match type_field(text, "type") {
                    None => self.untyped.get(i),
                    Some(t) => self
                        .by_type
                        .get(i)
                        .and_then(|m| m.get(t.as_ref()))
                        .or(self.other.get(i)),
                };
                (c, text.len())
            }
        };
        if let Some(c) = counter {
            c.increment(1);
        }
        if let Some(b) = self.bytes.get(i) {
            b.increment(len as u64);
        }
    }
}

/// Describes the tunnel's metrics (`# HELP` lines).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "scope_router_tunnel_frames_total",
        "Frames relayed by tunnels, by direction (to_client, to_runner) and type (a name from tunnel.frame_types, other, untyped, binary)."
    );
    describe_counter!(
        "scope_router_tunnel_bytes_total",
        "Payload bytes relayed by tunnels, by direction."
    );
    describe_counter!(
        "scope_router_tunnel_backpressure_total",
        "Times a tunnel queue was full and its sender had to wait, by direction."
    );
    describe_counter!(
        "scope_router_tunnel_upstream_failures_total",
        "Upstream sockets of tunnels that dropped or could not be opened."
    );
    describe_counter!(
        "scope_router_tunnel_reconnects_total",
        "Upstream sockets reopened while their client stayed connected."
    );
    describe_gauge!(
        "scope_router_tunnels_open",
        "Tunnels (client connections with an upstream task) open right now."
    );
}

/// The routing key of a text frame without building a JSON tree: the value of the top-level
/// field `key` when the frame is a JSON object and that value is a string.
pub fn type_field<'a>(text: &'a str, key: &str) -> Option<Cow<'a, str>> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Seek<'k>(&'k str);
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = Option<Cow<'de, str>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if found.is_none() && k == self.0 {
                    found = map.next_value::<Option<Str<'de>>>()?.map(|s| s.0);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut s: A,
        ) -> Result<Self::Value, A::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    /// A string value, or nothing when the value is of another type.
    struct Str<'a>(Cow<'a, str>);
    impl<'de> serde::Deserialize<'de> for Str<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Option<Cow<'de, str>>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a value")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Owned(s.to_owned())))
                }
                fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Owned(s)))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(None)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut s: A,
                ) -> Result<Self::Value, A::Error> {
                    while s.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(None)
                }
            }
            match d.deserialize_any(V)? {
                Some(s) => Ok(Str(s)),
                None => Err(serde::de::Error::custom("not a string")),
            }
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let found = Seek(key).deserialize(&mut de).ok()?;
    de.end().ok()?;
    found
}

/// The route handler of a tunnel. Frames reach the tunnel from the session loop, never
/// through the route stack; this answers only if something dispatches to it anyway.
pub struct TunnelHandler;

impl Handle for TunnelHandler {
    fn handle(self: Arc<Self>, req: Request) -> impl Future<Output = Answer> + Send + 'static {
        let err = ProtocolError::UnknownType("(tunnel route dispatched directly)".to_owned());
        std::future::ready(Answer::Reply(refuse(req.request_id.as_ref(), &err)))
    }
}

/// What the link has for the session loop.
#[derive(Debug)]
pub enum Event {
    /// A frame from the upstream, for the client.
    Frame(ClientMessage),
    /// The tunnel is over: close the client with this code and reason.
    Close(u16, String),
    /// A frame that waited for room is in the queue now: reading the client may resume.
    Resumed,
}

/// One client connection's end of its tunnel.
pub struct Link {
    to_up: mpsc::Sender<UpMessage>,
    events: mpsc::Receiver<Event>,
    /// A frame from the client that found the queue full; the client is not read until it is queued.
    pending: Option<UpMessage>,
    task: tokio::task::JoinHandle<()>,
    spec: Arc<TunnelSpec>,
}

impl Link {
    /// Opens the upstream socket in a task of its own (the first connect counts like a reconnect).
    pub fn open(spec: Arc<TunnelSpec>, max_message_bytes: usize) -> Link {
        let (to_up, up_rx) = mpsc::channel(spec.queue);
        let (ev_tx, events) = mpsc::channel(spec.queue);
        let task = tokio::spawn(
            upstream(spec.clone(), max_message_bytes, up_rx, ev_tx).instrument_in_current_span(),
        );
        Link {
            to_up,
            events,
            pending: None,
            task,
            spec,
        }
    }

    /// Whether a frame waits for room: the session does not read the client meanwhile.
    pub fn blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// A text frame from the client, its bytes unchanged.
    pub fn offer_text(&mut self, text: axum::extract::ws::Utf8Bytes) {
        self.spec.count(true, Frame::Text(text.as_str()));
        match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(Bytes::from(text)) {
            Ok(t) => self.offer(UpMessage::Text(t)),
            // The socket checked the UTF-8 already; this cannot happen.
            Err(_) => tracing::warn!("tunnel: a text frame was not UTF-8; dropped"),
        }
    }

    /// A binary frame from the client.
    pub fn offer_binary(&mut self, b: Bytes) {
        self.spec.count(true, Frame::Binary(b.len()));
        self.offer(UpMessage::Binary(b));
    }

    fn offer(&mut self, m: UpMessage) {
        match self.to_up.try_send(m) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                metrics::counter!("scope_router_tunnel_backpressure_total", "direction" => "to_runner")
                    .increment(1);
                self.pending = Some(m);
            }
            // The task is over; its Close event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The next event: a frame for the client, the end of the tunnel, or room for a waiting frame.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            permit = self.to_up.reserve(), if self.pending.is_some() => {
                if let (Ok(permit), Some(m)) = (permit, self.pending.take()) {
                    permit.send(m);
                }
                self.pending = None;
                Event::Resumed
            }
            ev = self.events.recv() => ev.unwrap_or_else(|| {
                Event::Close(CLOSE_UPSTREAM_LOST, "tunnel ended".to_owned())
            }),
        }
    }

    /// Ends the tunnel: the upstream gets a close frame (within a second) before this returns,
    /// so the runner sees the session end before any cleanup step runs.
    pub async fn close(self) {
        let Link {
            to_up,
            events,
            task,
            ..
        } = self;
        drop(to_up);
        drop(events);
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// [`Link::next`] of an optional link; never resolves without one.
pub async fn next(link: &mut Option<Link>) -> Event {
    match link {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// Keeps a future in the span it was created in (the connection's).
trait InCurrentSpan: Future + Sized {
    fn instrument_in_current_span(self) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, tracing::Span::current())
    }
}
impl<F: Future> InCurrentSpan for F {}

/// How one upstream socket ended.
enum Ended {
    /// The client left (or the link was closed).
    ClientGone,
    /// Dropped, failed, or closed in a way worth a reconnect.
    Dropped(String),
    /// Closed on purpose (1000 or an application code 4000–4999): the client gets the same close.
    Closed(u16, String),
}

type UpSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(spec: &TunnelSpec, max_message_bytes: usize) -> Result<UpSocket, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let connecting =
        tokio_tungstenite::connect_async_with_config(spec.url.as_str(), Some(config), true);
    match tokio::time::timeout(spec.connect_timeout, connecting).await {
        Err(_) => Err(format!(
            "connect timed out after {} ms",
            spec.connect_timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// The link's task: connect, relay, reconnect, give up.
async fn upstream(
    spec: Arc<TunnelSpec>,
    max_message_bytes: usize,
    mut to_up: mpsc::Receiver<UpMessage>,
    events: mpsc::Sender<Event>,
) {
    /// Counts the task in `scope_router_tunnels_open` for as long as it lives, aborted or not.
    struct Open(metrics::Gauge);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    let open = Open(metrics::gauge!("scope_router_tunnels_open"));
    open.0.increment(1.0);
    let mut failures: VecDeque<Instant> = VecDeque::new();
    // A frame taken from the queue whose send failed: it goes first on the next socket.
    let mut carry: Option<UpMessage> = None;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            r = connect(&spec, max_message_bytes) => r,
            () = events.closed() => break,
        };
        let why = match connected {
            Ok(mut ws) => {
                if connected_before {
                    metrics::counter!("scope_router_tunnel_reconnects_total").increment(1);
                    tracing::info!(url = %spec.url, "tunnel: runner socket reopened");
                } else {
                    tracing::debug!(url = %spec.url, "tunnel: runner socket open");
                }
                connected_before = true;
                match relay(&mut ws, &spec, &mut to_up, &mut carry, &events).await {
                    Ended::ClientGone => {
                        let bye = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "client left".into(),
                        };
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), ws.close(Some(bye))).await;
                        break;
                    }
                    Ended::Closed(code, reason) => {
                        tracing::info!(code, %reason, "tunnel: runner closed the socket; closing the client the same way");
                        let _ = events.send(Event::Close(code, reason)).await;
                        break;
                    }
                    Ended::Dropped(why) => why,
                }
            }
            Err(why) => why,
        };
        metrics::counter!("scope_router_tunnel_upstream_failures_total").increment(1);
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.failure_window)
        {
            failures.pop_front();
        }
        if failures.len() > spec.max_failures as usize {
            tracing::warn!(
                failures = failures.len(),
                window_s = spec.failure_window.as_secs_f64(),
                error = %why,
                "tunnel: too many runner failures; closing the client"
            );
            let reason = format!(
                "runner unreachable: {} failures in {}s",
                failures.len(),
                spec.failure_window.as_secs()
            );
            let _ = events.send(Event::Close(CLOSE_UPSTREAM_LOST, reason)).await;
            break;
        }
        tracing::info!(
            error = %why,
            failures = failures.len(),
            delay_ms = spec.reconnect_delay.as_millis() as u64,
            "tunnel: runner socket dropped; reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(spec.reconnect_delay) => {}
            () = events.closed() => break,
        }
    }
    drop(open);
}

/// Relays over one open upstream socket until it ends or the client leaves.
async fn relay(
    ws: &mut UpSocket,
    spec: &TunnelSpec,
    to_up: &mut mpsc::Receiver<UpMessage>,
    carry: &mut Option<UpMessage>,
    events: &mpsc::Sender<Event>,
) -> Ended {
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    // Milliseconds since `started` when the upstream was last heard from.
    let heard = AtomicU64::new(0);
    let since_heard = || {
        let now = started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(heard.load(Ordering::Relaxed)))
    };

    let writer = async {
        if let Some(m) = carry.take()
            && let Err(e) = sink.send(m.clone()).await
        {
            *carry = Some(m);
            return Ended::Dropped(format!("send failed: {e}"));
        }
        let mut ping = spec.keepalive.map(|(every, _)| {
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let grace = spec
            .keepalive
            .map_or(Duration::MAX, |(every, answer)| every + answer);
        loop {
            tokio::select! {
                m = to_up.recv() => match m {
                    None => return Ended::ClientGone,
                    Some(m) => {
                        if let Err(e) = sink.send(m.clone()).await {
                            *carry = Some(m);
                            return Ended::Dropped(format!("send failed: {e}"));
                        }
                    }
                },
                () = tick(&mut ping), if ping.is_some() => {
                    if since_heard() > grace {
                        return Ended::Dropped("keepalive timeout: no pong".to_owned());
                    }
                    if let Err(e) = sink.send(UpMessage::Ping(Bytes::new())).await {
                        return Ended::Dropped(format!("ping failed: {e}"));
                    }
                }
            }
        }
    };

    let reader = async {
        loop {
            let msg = match stream.next().await {
                None => return Ended::Dropped("socket ended".to_owned()),
                Some(Err(e)) => return Ended::Dropped(format!("read failed: {e}")),
                Some(Ok(m)) => m,
            };
            heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let out = match msg {
                UpMessage::Text(t) => {
                    spec.count(false, Frame::Text(t.as_str()));
                    match axum::extract::ws::Utf8Bytes::try_from(Bytes::from(t)) {
                        Ok(t) => ClientMessage::Text(t),
                        Err(_) => continue,
                    }
                }
                UpMessage::Binary(b) => {
                    spec.count(false, Frame::Binary(b.len()));
                    ClientMessage::Binary(b)
                }
                UpMessage::Close(frame) => return closed(frame),
                UpMessage::Ping(_) | UpMessage::Pong(_) | UpMessage::Frame(_) => continue,
            };
            match events.try_send(Event::Frame(out)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    metrics::counter!("scope_router_tunnel_backpressure_total", "direction" => "to_client")
                        .increment(1);
                    if events.send(ev).await.is_err() {
                        return Ended::ClientGone;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ended::ClientGone,
            }
        }
    };

    tokio::select! {
        e = writer => e,
        e = reader => e,
        () = events.closed() => Ended::ClientGone,
    }
}

/// How an upstream close is handled: 1000 and application codes are the runner's decision
/// (4003 after a failed access check) and end the client's socket the same way; anything
/// else (going away, a restart, an error, no close frame) is a drop worth a reconnect.
fn closed(frame: Option<CloseFrame>) -> Ended {
    match frame {
        Some(f) => {
            let code = u16::from(f.code);
            if code == 1000 || (4000..=4999).contains(&code) {
                Ended::Closed(code, f.reason.as_str().to_owned())
            } else {
                Ended::Dropped(format!("closed with {code} {}", f.reason.as_str()))
            }
        }
        None => Ended::Dropped("closed without a code".to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_is_read_without_a_tree() {
        assert_eq!(
            type_field(r#"{"a":[1,{"type":"x"}],"type":"ping"}"#, "type").as_deref(),
            Some("ping")
        );
        assert_eq!(
            type_field(r#"{"type":"p\u0069ng"}"#, "type").as_deref(),
            Some("ping")
        );
        assert_eq!(
            type_field(r#"{"manifest_id":"m","params":{}}"#, "type"),
            None
        );
        assert_eq!(type_field(r#"{"type":7}"#, "type"), None);
        assert_eq!(type_field(r#"{"type":{"a":1}}"#, "type"), None);
        assert_eq!(type_field(r#"["type","ping"]"#, "type"), None);
        assert_eq!(type_field("not json", "type"), None);
        assert_eq!(type_field(r#"{"type":"ping"} trailing"#, "type"), None);
        assert_eq!(type_field(r#"{"type":"ping""#, "type"), None);
    }

    #[test]
    fn only_deliberate_closes_are_passed_on() {
        let f = |code: u16| {
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "r".into(),
            })
        };
        assert!(matches!(closed(f(4003)), Ended::Closed(4003, _)));
        assert!(matches!(closed(f(1000)), Ended::Closed(1000, _)));
        assert!(matches!(closed(f(1012)), Ended::Dropped(_)));
        assert!(matches!(closed(f(1001)), Ended::Dropped(_)));
        assert!(matches!(closed(None), Ended::Dropped(_)));
    }

    fn spec(url: &str, queue: usize) -> TunnelSpec {
        let cfg: TunnelConfig =
            serde_json::from_value(serde_json::json!({"url": url, "queue": queue})).unwrap();
        TunnelSpec::compile(&cfg).unwrap()
    }

    #[test]
    fn urls_must_be_websocket_urls() {
        for bad in ["http://127.0.0.1:8001/ws", "127.0.0.1:8001", "ws://"] {
            let cfg: TunnelConfig =
                serde_json::from_value(serde_json::json!({ "url": bad })).unwrap();
            assert!(TunnelSpec::compile(&cfg).is_err(), "{bad}");
        }
        assert_eq!(spec("ws://127.0.0.1:8001/ws", 4).queue, 4);
    }

    /// A full queue parks one frame and blocks the client's reads until there is room; it
    /// never grows past its bound.
    #[tokio::test]
    async fn a_full_queue_blocks_instead_of_growing() {
        // Nothing listens here: the task keeps failing to connect and never drains the queue.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = spec(&format!("ws://127.0.0.1:{port}/ws"), 2);
        s.reconnect_delay = Duration::from_secs(3600);
        let mut link = Link::open(Arc::new(s), 1024);
        link.offer_binary(Bytes::from_static(b"1"));
        link.offer_binary(Bytes::from_static(b"2"));
        assert!(!link.blocked());
        link.offer_binary(Bytes::from_static(b"3"));
        assert!(link.blocked(), "the third frame waits");
        assert_eq!(link.to_up.capacity(), 0);
        link.close().await;
    }
}

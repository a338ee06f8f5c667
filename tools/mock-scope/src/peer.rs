//! The real WebRTC peers: one str0m session per offer that sends the browser's video back while its frame processor runs (Scope's passthrough), and the test client of `/_mock/client` that sends synthetic video.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A session that never gets its ICE connected is given up on after this long (the browser left
/// without a DELETE, or could not reach us).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deleted session may take to send its goodbyes.
const CLOSE_DRAIN: Duration = Duration::from_millis(500);
/// Loss on the incoming stream asks for a keyframe at most this often.
const KEYFRAME_THROTTLE: Duration = Duration::from_secs(1);
/// Larger than any datagram a WebRTC peer sends (str0m's MTU is ~1150).
const DATAGRAM_MAX: usize = 2048;
const PACKET_QUEUE: usize = 256;
/// The test client's frame rate.
const CLIENT_FRAME: Duration = Duration::from_millis(33);

/// Where peers listen: one UDP socket per address, each announced as a host candidate.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub ips: Vec<IpAddr>,
    pub quiet: bool,
}

impl PeerConfig {
    /// Loopback always (tests run on one machine), plus `extra` when it differs.
    pub fn new(extra: IpAddr, quiet: bool) -> Self {
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        if !ips.contains(&extra) {
            ips.push(extra);
        }
        Self { ips, quiet }
    }
}

/// Owned by the session table; dropping it (DELETE) closes the peer connection.
pub struct PeerHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<PeerStatus>,
}

enum Command {
    Candidates(Vec<Candidate>),
    /// The test client's answer from the server.
    Answer(SdpAnswer),
}

/// Which side of the call a peer is.
pub(crate) enum Role {
    /// Behind an offer: loops video back only when `send_frames` (the frame processor runs).
    Server { send_frames: bool },
    /// The `/_mock/client` test client: sends a synthetic video stream on `mid` once connected.
    Client {
        mid: Mid,
        pending: Option<SdpPendingOffer>,
        sent: u64,
    },
}

/// What the peer has done so far, for `/_mock/sessions`.
#[derive(Default)]
pub(crate) struct PeerStatus {
    connected: AtomicBool,
    closed: AtomicBool,
    remote_candidates: AtomicU64,
    frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    keyframe_requests: AtomicU64,
}

impl PeerHandle {
    /// Adds trickled remote candidates; strings str0m cannot use (mDNS `.local` names, empty
    /// end-of-candidates markers) are skipped, as a browser would.
    pub fn add_candidates(&self, candidates: &[Value]) {
        let parsed: Vec<Candidate> = candidates
            .iter()
            .filter_map(|c| c.get("candidate").and_then(Value::as_str))
            .map(|s| s.trim().trim_start_matches("a="))
            .filter_map(|s| Candidate::from_sdp_string(s).ok())
            .collect();
        if !parsed.is_empty() {
            let _ = self.commands.send(Command::Candidates(parsed));
        }
    }

    /// Hands the server's answer to a test client.
    pub fn accept_answer(&self, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        self.commands
            .send(Command::Answer(answer))
            .map_err(|_| "the client peer has ended".to_owned())
    }

    /// The peer has ended by itself (ICE gave up, the other side closed, an error), as an
    /// aiortc connection becomes `closed` or `failed`.
    pub fn is_closed(&self) -> bool {
        self.status.closed.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// Video frames sent to the other side.
    pub fn frames_out(&self) -> u64 {
        self.status.frames_out.load(Ordering::Relaxed)
    }

    pub fn to_json(&self) -> Value {
        let s = &self.status;
        json!({
            "connected": s.connected.load(Ordering::Relaxed),
            "closed": s.closed.load(Ordering::Relaxed),
            "remote_candidates": s.remote_candidates.load(Ordering::Relaxed),
            "frames_in": s.frames_in.load(Ordering::Relaxed),
            "frames_out": s.frames_out.load(Ordering::Relaxed),
            "keyframe_requests": s.keyframe_requests.load(Ordering::Relaxed),
        })
    }
}

/// Why an offer got no real peer; the caller falls back to the fake answer.
#[derive(Debug)]
pub enum PeerError {
    Sdp(String),
    Socket(std::io::Error),
    Rejected(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Sdp(e) => write!(f, "unparsable offer: {e}"),
            PeerError::Socket(e) => write!(f, "cannot bind a UDP socket: {e}"),
            PeerError::Rejected(e) => write!(f, "offer not accepted: {e}"),
        }
    }
}

/// Accepts `offer_sdp` and starts the peer's task; returns the answer SDP.
pub async fn start(
    cfg: &PeerConfig,
    session_id: &str,
    offer_sdp: &str,
    send_frames: bool,
) -> Result<(String, PeerHandle), PeerError> {
    // Cheap refusals first: the router's tests send SDP fragments with no ICE credentials, and
    // those must not cost a socket.
    if !offer_sdp.contains("a=ice-ufrag:") || !offer_sdp.contains("a=fingerprint:") {
        return Err(PeerError::Rejected(
            "no ICE credentials or DTLS fingerprint".to_owned(),
        ));
    }
    let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;

    let (mut rtc, sockets) = new_rtc(&cfg.ips).await?;
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| PeerError::Rejected(e.to_string()))?;
    let handle = spawn(cfg, session_id, rtc, sockets, Role::Server { send_frames });
    Ok((answer.to_sdp_string(), handle))
}

pub(crate) type Sockets = Vec<(Arc<UdpSocket>, SocketAddr)>;

/// An `Rtc` with one UDP socket per address, each announced as a host candidate.
pub(crate) async fn new_rtc(ips: &[IpAddr]) -> Result<(Rtc, Sockets), PeerError> {
    let mut sockets = Vec::with_capacity(ips.len());
    for ip in ips {
        let socket = UdpSocket::bind(SocketAddr::new(*ip, 0))
            .await
            .map_err(PeerError::Socket)?;
        let local = socket.local_addr().map_err(PeerError::Socket)?;
        sockets.push((Arc::new(socket), local));
    }
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(Instant::now());
    for (_, local) in &sockets {
        let candidate =
            Candidate::host(*local, "udp").map_err(|e| PeerError::Rejected(e.to_string()))?;
        rtc.add_local_candidate(candidate);
    }
    Ok((rtc, sockets))
}

pub(crate) fn spawn(
    cfg: &PeerConfig,
    id: &str,
    rtc: Rtc,
    sockets: Sockets,
    role: Role,
) -> PeerHandle {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let status = Arc::new(PeerStatus::default());
    let peer = Peer {
        id: id.chars().take(8).collect(),
        rtc,
        sockets,
        status: Arc::clone(&status),
        quiet: cfg.quiet,
        video: Vec::new(),
        role,
    };
    tokio::spawn(peer.run(command_rx));
    PeerHandle { commands, status }
}

/// An incoming video m-line and its keyframe bookkeeping.
pub(crate) struct VideoTrack {
    mid: Mid,
    /// Whether we may send on the same m-line (the browser offered `sendrecv`).
    loops_back: bool,
    last_keyframe_request: Option<Instant>,
}

pub(crate) struct Peer {
    pub(crate) id: String,
    pub(crate) rtc: Rtc,
    pub(crate) sockets: Vec<(Arc<UdpSocket>, SocketAddr)>,
    pub(crate) status: Arc<PeerStatus>,
    pub(crate) quiet: bool,
    pub(crate) video: Vec<VideoTrack>,
    pub(crate) role: Role,
}

struct Datagram {
    data: Vec<u8>,
    source: SocketAddr,
    destination: SocketAddr,
}

// === impl Peer ===

impl Peer {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (packet_tx, mut packets) = mpsc::channel::<Datagram>(PACKET_QUEUE);
        // Dropping the set (when this task ends) aborts the readers and closes the sockets.
        let mut readers = JoinSet::new();
        for (socket, local) in &self.sockets {
            readers.spawn(read_socket(Arc::clone(socket), *local, packet_tx.clone()));
        }
        drop(packet_tx);
        let give_up = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut frames = tokio::time::interval(CLIENT_FRAME);
        let is_client = matches!(self.role, Role::Client { .. });
        let mut reason = "the peer ended";

        loop {
            let Some(deadline) = self.drive().await else {
                break;
            };
            let connected = self.status.connected.load(Ordering::Relaxed);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Candidates(list)) => {
                        for candidate in list {
                            self.status.remote_candidates.fetch_add(1, Ordering::Relaxed);
                            self.rtc.add_remote_candidate(candidate);
                        }
                    }
                    Some(Command::Answer(answer)) => self.accept_answer(answer),
                    // The handle was dropped: DELETE, a reset, or the process is stopping.
                    None => {
                        self.log(&format!("closed: session deleted ({})", self.summary()));
                        self.close_gracefully().await;
                        self.status.closed.store(true, Ordering::Relaxed);
                        readers.abort_all();
                        return;
                    }
                },
                _ = frames.tick(), if is_client && connected => self.send_synthetic_frame(),
                packet = packets.recv() => {
                    let Some(packet) = packet else { break };
                    self.receive(&packet);
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.input(Input::Timeout(Instant::now()));
                }
                () = tokio::time::sleep_until(give_up), if !connected => {
                    reason = "ICE did not connect in time";
                    break;
                }
            }
        }
        self.log(&format!("closed: {reason} ({})", self.summary()));
        self.rtc.disconnect();
        self.status.closed.store(true, Ordering::Relaxed);
        readers.abort_all();
    }

    /// Sends RTCP BYE and DTLS close_notify, so the browser sees the stream end at once instead
    /// of after its ICE timeout. Bounded: str0m does not wait for replies, and neither do we.
    async fn close_gracefully(&mut self) {
        if self.rtc.close().is_err() {
            return;
        }
        let until = Instant::now() + CLOSE_DRAIN;
        while let Some(deadline) = self.drive().await {
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline.min(until))).await;
            self.input(Input::Timeout(Instant::now()));
        }
    }

    /// Polls str0m until it only waits for time or input; `None` once the peer is gone.
    async fn drive(&mut self) -> Option<Instant> {
        loop {
            if !self.rtc.is_alive() {
                return None;
            }
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    self.log(&format!("failed: {e}"));
                    return None;
                }
            };
            match output {
                Output::Timeout(t) => return Some(t),
                Output::Transmit(t) => {
                    let socket = self
                        .sockets
                        .iter()
                        .find(|(_, local)| *local == t.source)
                        .or_else(|| self.sockets.first())
                        .map(|(s, _)| Arc::clone(s));
                    if let Some(socket) = socket {
                        // UDP: a lost datagram is the protocol's business, not ours.
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                }
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn receive(&mut self, packet: &Datagram) {
        let Ok(contents) = packet.data.as_slice().try_into() else {
            return;
        };
        self.input(Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source: packet.source,
                destination: packet.destination,
                contents,
            },
        ));
    }

    fn input(&mut self, input: Input<'_>) {
        if let Err(e) = self.rtc.handle_input(input) {
            self.log(&format!("input rejected, closing: {e}"));
            self.rtc.disconnect();
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::IceConnectionStateChange(state) => {
                self.log(&format!("ICE {state:?}"));
                match state {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        self.status.connected.store(true, Ordering::Relaxed);
                    }
                    IceConnectionState::Disconnected => self.rtc.disconnect(),
                    IceConnectionState::New | IceConnectionState::Checking => {}
                }
            }
            Event::Connected => self.log("DTLS connected; looping video back"),
            Event::MediaAdded(m) if m.kind == MediaKind::Video => {
                self.video.push(VideoTrack {
                    mid: m.mid,
                    loops_back: m.direction == Direction::SendRecv,
                    last_keyframe_request: None,
                });
            }
            Event::MediaData(data) => self.loop_back(data),
            // The browser wants a keyframe of what we send it: that is what it sends us, so ask it.
            Event::KeyframeRequest(req) => self.request_keyframe(req.mid, req.kind, true),
            _ => {}
        }
    }

    /// Writes an incoming video frame to the outgoing side of the same m-line.
    fn loop_back(&mut self, data: MediaData) {
        let send_frames = match self.role {
            Role::Server { send_frames } => send_frames,
            Role::Client { .. } => {
                // The server's copy of our stream coming back.
                self.status.frames_in.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(track) = self.video.iter().find(|t| t.mid == data.mid) else {
            return;
        };
        // Without a running frame processor the track is received but nothing goes back
        // (`tracks.py:VideoProcessingTrack.recv` waits forever for a processed frame).
        let loops_back = track.loops_back && send_frames;
        let first = self.status.frames_in.fetch_add(1, Ordering::Relaxed) == 0;
        if !loops_back {
            return;
        }
        if first {
            // The returned stream decodes from its first keyframe: ask for one at once.
            self.request_keyframe(data.mid, KeyframeRequestKind::Pli, true);
        } else if !data.contiguous {
            self.request_keyframe(data.mid, KeyframeRequestKind::Pli, false);
        }
        let Some(writer) = self.rtc.writer(data.mid) else {
            return;
        };
        let Some(pt) = writer.match_params(data.params) else {
            return;
        };
        match writer.write(pt, data.network_time, data.time, data.data) {
            Ok(()) => {
                self.status.frames_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.log(&format!("cannot write video: {e}")),
        }
    }

    fn request_keyframe(&mut self, mid: Mid, kind: KeyframeRequestKind, force: bool) {
        let now = Instant::now();
        let Some(track) = self.video.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let recent = track
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_THROTTLE);
        if recent && !force {
            return;
        }
        let Some(mut writer) = self.rtc.writer(mid) else {
            return;
        };
        // Fails until the first packet has told str0m the incoming stream's SSRC.
        if writer.request_keyframe(None, kind).is_ok() {
            track.last_keyframe_request = Some(now);
            self.status
                .keyframe_requests
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> String {
        let s = &self.status;
        format!(
            "frames_in={} frames_out={} keyframe_requests={}",
            s.frames_in.load(Ordering::Relaxed),
            s.frames_out.load(Ordering::Relaxed),
            s.keyframe_requests.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn log(&self, what: &str) {
        if !self.quiet {
            eprintln!("INFO scope.webrtc: session {}: {what}", self.id);
        }
    }
}

/// Forwards every datagram of one socket to the peer's task until it goes away.
async fn read_socket(socket: Arc<UdpSocket>, local: SocketAddr, out: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (n, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port-unreachable from an abandoned candidate pair surfaces here on Linux.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
        let datagram = Datagram {
            data,
            source,
            destination: local,
        };
        if out.send(datagram).await.is_err() {
            return;
        }
    }
}

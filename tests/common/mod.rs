//! Test harness: start the real `scope-router` and `mock-scope` binaries on free ports and talk to them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ROUTER: &str = env!("CARGO_BIN_EXE_scope-router");
pub const MOCK: &str = env!("CARGO_BIN_EXE_mock-scope");

/// How long any single wait may take before a test fails (generous: CI machines are noisy).
pub const WAIT: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (with its group) when dropped, with its output lines collected.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` and waits for a stdout line containing `marker` followed by `http://ADDR`.
    pub fn start(mut cmd: Command, marker: &str) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let marker = marker.to_owned();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains(&marker)
                        && let Some(rest) = line.split("http://").nth(1)
                        && let Ok(a) = rest.split_whitespace().next().unwrap_or("").parse()
                    {
                        let _ = tx.send(a);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var_os("TEST_ECHO_LOGS").is_some() {
                        eprintln!("{line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("process did not announce its address; output:\n{}", lines.lock().unwrap().join("\n"));
            }
        };
        Proc { child, addr, lines }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until some output line contains `needle`.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "no line containing {needle:?} in:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Starts `mock-scope` on a free port.
pub fn mock(extra: &[&str]) -> Proc {
    let mut cmd = Command::new(MOCK);
    cmd.args(["--listen", "127.0.0.1:0", "--quiet"]).args(extra);
    Proc::start(cmd, "mock-scope listening on")
}

/// Starts the router on a free port in front of `backend`, with `routes` (default: the repo's).
pub fn router(routes: &Path, backend: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"])
        .arg(routes)
        .args(["--listen", "127.0.0.1:0", "--backend-url", backend, "--no-supervise"])
        .args(extra)
        .env("RUST_LOG", "info,scope_router=debug");
    Proc::start(cmd, "scope-router listening on")
}

/// The repo's default routes in front of a fresh mock.
pub fn stack() -> (Proc, Proc) {
    let m = mock(&[]);
    let r = router(&repo().join("routes.yaml"), &m.http(), &[]);
    (m, r)
}

/// A WebSocket client speaking JSON text frames.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Replies read while waiting for another one.
    pub stash: Vec<Value>,
    pub connection_id: String,
}

impl Ws {
    /// Connects and waits for `ready`.
    pub async fn connect(url: &str) -> Ws {
        let (inner, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let mut ws = Ws {
            inner,
            stash: Vec::new(),
            connection_id: String::new(),
        };
        let ready = ws.recv().await;
        assert_eq!(ready["type"], "ready", "first message must be ready: {ready}");
        ws.connection_id = ready["connection_id"].as_str().unwrap().to_owned();
        ws
    }

    pub async fn send(&mut self, v: &Value) {
        self.inner.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.inner.send(Message::text(t.to_owned())).await.unwrap();
    }

    /// The next JSON message (from the stash first).
    pub async fn recv(&mut self) -> Value {
        if !self.stash.is_empty() {
            return self.stash.remove(0);
        }
        self.recv_raw().await
    }

    async fn recv_raw(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for a message")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the message whose `request_id` is `rid`, stashing others.
    pub async fn reply_to(&mut self, rid: &str) -> Value {
        if let Some(i) = self.stash.iter().position(|v| v["request_id"] == rid) {
            return self.stash.remove(i);
        }
        loop {
            let v = self.recv_raw().await;
            if v["request_id"] == rid {
                return v;
            }
            self.stash.push(v);
        }
    }

    /// Sends `v` with `request_id = rid` and returns its reply.
    pub async fn call(&mut self, rid: &str, mut v: Value) -> Value {
        v["request_id"] = json!(rid);
        self.send(&v).await;
        self.reply_to(rid).await
    }

    /// Waits for the close frame; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.inner.next()).await.expect("timed out waiting for close") {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// GET a URL on a process, returning status and JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = http(url, "GET", None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A tiny HTTP/1.1 client over a raw TCP stream (tests must not depend on the code under test).
pub async fn http(url: &str, method: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(host)).await.unwrap().unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Polls `f` until it returns Some, or fails the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The mock's request counters.
pub async fn mock_stats(m: &Proc) -> Value {
    get_json(&format!("{}/_mock/stats", m.http())).await.1
}

/// The deterministic byte pattern of the mock's binary endpoints.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers added for the protocol, error, custom-route and validate suites.

/// A routes file written into a temporary directory (kept alive as long as this value).
pub struct TempRoutes {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempRoutes {
    /// Writes `text` as `routes.yaml` in a fresh temporary directory.
    pub fn new(text: &str) -> TempRoutes {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, text).expect("write routes");
        TempRoutes { dir, path }
    }

    /// Writes another file (e.g. a schema) relative to the directory.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write file");
        p
    }
}

/// The repo's default routes.yaml with each `(from, to)` replacement applied (each `from` must occur
/// exactly once), its schema directory pointed at the repo's `schemas/`, written to a tempdir.
pub fn default_routes_with(replacements: &[(&str, &str)]) -> TempRoutes {
    let mut text = std::fs::read_to_string(repo().join("routes.yaml")).expect("read routes.yaml");
    let schemas = format!("schemas: {:?}", repo().join("schemas").display().to_string());
    text = replace_once(&text, "\nschemas: schemas\n", &format!("\n{schemas}\n"));
    for (from, to) in replacements {
        text = replace_once(&text, from, to);
    }
    TempRoutes::new(&text)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur exactly once in routes.yaml");
    text.replacen(from, to, 1)
}

/// A default-routes router (with replacements) in front of a fresh mock.
pub fn stack_with(replacements: &[(&str, &str)]) -> (Proc, Proc, TempRoutes) {
    let routes = default_routes_with(replacements);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    (m, r, routes)
}

/// A base URL on which nothing listens (a port bound and released).
pub fn dead_backend_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// Sets the mock's fault rules (`{"delay_ms": {...}, "status": {...}}`), replacing earlier ones.
pub async fn set_faults(m: &Proc, faults: Value) {
    let (status, body) = http(&format!("{}/_mock/faults", m.http()), "POST", Some(&faults.to_string())).await;
    assert_eq!(status, 200, "setting faults failed: {body}");
}

/// Requests the mock has counted so far (health probes and `/_mock/*` excluded).
pub async fn mock_total(m: &Proc) -> u64 {
    mock_stats(m).await["total"].as_u64().expect("stats.total")
}

/// The recorded requests (`/_mock/stats` `recent`) matching method and path prefix.
pub async fn mock_recent(m: &Proc, method: &str, path_prefix: &str) -> Vec<Value> {
    let stats = mock_stats(m).await;
    stats["recent"]
        .as_array()
        .expect("stats.recent")
        .iter()
        .filter(|r| r["method"] == method && r["path"].as_str().is_some_and(|p| p.starts_with(path_prefix)))
        .cloned()
        .collect()
}

/// The mock's live WebRTC sessions.
pub async fn mock_sessions(m: &Proc) -> Vec<Value> {
    let (_, v) = get_json(&format!("{}/_mock/sessions", m.http())).await;
    v["sessions"].as_array().expect("sessions").clone()
}

/// Session ids the mock has seen DELETEd.
pub async fn mock_deleted(m: &Proc) -> Vec<String> {
    let (_, v) = get_json(&format!("{}/_mock/deleted", m.http())).await;
    v["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|s| s.as_str().expect("id").to_owned())
        .collect()
}

/// A minimal SDP offer.
pub const SDP_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n";

impl Ws {
    /// Proves the connection is still open and served: a ping gets its pong.
    pub async fn assert_open(&mut self) {
        let rid = format!("alive-{}", rand::random::<u32>());
        let pong = self.call(&rid, json!({"type": "ping"})).await;
        assert_eq!(pong, json!({"type": "pong", "request_id": rid}), "connection must stay open");
    }

    /// Sends `v` with an arbitrary JSON `request_id` and waits for the reply carrying that exact id.
    pub async fn call_with_id(&mut self, rid: Value, mut v: Value) -> Value {
        v["request_id"] = rid.clone();
        self.send(&v).await;
        if let Some(i) = self.stash.iter().position(|m| m["request_id"] == rid) {
            return self.stash.remove(i);
        }
        loop {
            let m = self.recv_raw().await;
            if m["request_id"] == rid {
                return m;
            }
            self.stash.push(m);
        }
    }

    /// Sends an offer and returns its `answer` (asserting success).
    pub async fn offer(&mut self, rid: &str) -> Value {
        let a = self
            .call(rid, json!({"type": "offer", "sdp": SDP_OFFER, "initialParameters": {"prompts": [{"text": "a cat", "weight": 1.0}]}}))
            .await;
        assert_eq!(a["type"], "answer", "offer failed: {a}");
        a
    }

    /// Closes the socket from the client side (normal close).
    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
        // Drain until the server's close arrives or the stream ends.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.inner.next().await {}
        })
        .await;
    }
}

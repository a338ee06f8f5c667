//! Test harness: start the real `scope-router` and `mock-scope` binaries on free ports and talk to them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ROUTER: &str = env!("CARGO_BIN_EXE_scope-router");
/// The `mock-scope` binary. It is its own package (tools/mock-scope), so Cargo gives these tests no
/// `CARGO_BIN_EXE_mock-scope`: this is the one in the tests' own target directory, built first
/// (`cargo build --workspace --bin mock-scope`, the binary `cargo build --bins` makes) when it is
/// missing or older than its sources. Resolved once per test process; Cargo's lock on the target
/// directory serialises concurrent test processes.
pub static MOCK: LazyLock<String> = LazyLock::new(|| {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test>-<hash> → <target>/<profile>, where `cargo build` puts binaries.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary sits in <target>/<profile>/deps");
    let bin = dir.join(format!("mock-scope{}", std::env::consts::EXE_SUFFIX));
    if !is_fresh(&bin) {
        build_mock(dir);
        assert!(
            bin.is_file(),
            "building mock-scope did not produce {}",
            bin.display()
        );
    }
    bin.to_str().expect("a UTF-8 path").to_owned()
});

/// Whether `bin` exists and is no older than mock-scope's sources, manifest and the lock file.
fn is_fresh(bin: &Path) -> bool {
    fn newest(path: &Path) -> SystemTime {
        let mut t = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                t = t.max(newest(&e.path()));
            }
        }
        t
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let sources = newest(&repo().join("tools/mock-scope")).max(newest(&repo().join("Cargo.lock")));
    built >= sources
}

/// Builds mock-scope into `dir` (<target>/<profile>), so into the target directory these tests
/// were built in, whether it came from CARGO_TARGET_DIR, `--target-dir` or neither. With the
/// workspace's features, as `cargo build --bins` does (`-p mock-scope` alone would resolve other
/// features, rebuild dependencies, and replace the binary `cargo build --bins` made).
fn build_mock(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = dir.parent().expect("<target>/<profile> has a parent");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo())
        .args(["build", "--workspace", "--bin", "mock-scope"])
        .arg("--target-dir")
        .arg(target_dir);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let out = cmd.output().expect("run cargo to build mock-scope");
    assert!(
        out.status.success(),
        "building mock-scope failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

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
    /// SIGTERM first, so a router stops its supervised backend (no orphans); SIGKILL after 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` and waits for a stdout line containing `marker` followed by `http://ADDR`.
    pub fn start(mut cmd: Command, marker: &str) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
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
                panic!(
                    "process did not announce its address; output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
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
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line containing {needle:?} in:\n{}",
                self.output()
            );
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
    let mut cmd = Command::new(MOCK.as_str());
    cmd.args(["--listen", "127.0.0.1:0", "--quiet"]).args(extra);
    Proc::start(cmd, "mock-scope listening on")
}

/// Starts the router on a free port in front of `backend`, with `routes` (default: the repo's).
pub fn router(routes: &Path, backend: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"])
        .arg(routes)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend-url",
            backend,
            "--no-supervise",
        ])
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
        assert_eq!(
            ready["type"], "ready",
            "first message must be ready: {ready}"
        );
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
            match tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for close")
            {
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
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(host))
        .await
        .unwrap()
        .unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
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
    let schemas = format!(
        "schemas: {:?}",
        repo().join("schemas").display().to_string()
    );
    text = replace_once(&text, "\nschemas: schemas\n", &format!("\n{schemas}\n"));
    for (from, to) in replacements {
        text = replace_once(&text, from, to);
    }
    TempRoutes::new(&text)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur exactly once in routes.yaml"
    );
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
    let (status, body) = http(
        &format!("{}/_mock/faults", m.http()),
        "POST",
        Some(&faults.to_string()),
    )
    .await;
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
        .filter(|r| {
            r["method"] == method
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(path_prefix))
        })
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
        assert_eq!(
            pong,
            json!({"type": "pong", "request_id": rid}),
            "connection must stay open"
        );
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

// ---------------------------------------------------------------------------------------------
// Helpers added for the limits, hostile-input and chaos suites.

/// Starts the router (unsupervised, in front of `backend`) with extra environment variables.
pub fn router_env(routes: &Path, backend: &str, envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"])
        .arg(routes)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend-url",
            backend,
            "--no-supervise",
        ])
        .env("RUST_LOG", "info,scope_router=debug");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc::start(cmd, "scope-router listening on")
}

/// Starts the router supervising the backend its routes file names.
pub fn router_supervising(routes: &Path) -> Proc {
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"])
        .arg(routes)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,scope_router=debug");
    Proc::start(cmd, "scope-router listening on")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until `/readyz` answers 200 and returns its body.
pub async fn wait_backend_ready(r: &Proc) -> Value {
    eventually("backend ready", || async {
        let (code, body) = get_json(&format!("{}/readyz", r.http())).await;
        (code == 200).then_some(body)
    })
    .await
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

impl Proc {
    /// Waits until one output line contains every one of `needles`.
    pub async fn wait_for_line_with(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line containing all of {needles:?} in:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails the test unless the process is still running.
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "process exited; output:\n{}",
            self.output()
        );
    }
}

/// A WebSocket client written by hand over TCP, for what a well-behaved client library will not
/// do: stop reading, send half a frame, send invalid UTF-8, unmasked or reserved frames.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read past the last parsed frame.
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `addr`, sends the upgrade request for `target` (e.g. `/ws`) and reads the
    /// response head; returns the client and the head.
    pub async fn handshake(addr: SocketAddr, target: &str, extra_headers: &str) -> (RawWs, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake timeout")
                .unwrap();
            assert!(
                n > 0,
                "connection closed during the handshake: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let rest = buf[head_end..].to_vec();
        (RawWs { stream, buf: rest }, head)
    }

    /// Connects, upgrades and reads `ready`; returns the client and the connection id.
    pub async fn connect(addr: SocketAddr) -> (RawWs, String) {
        let (mut raw, head) = RawWs::handshake(addr, "/ws", "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let (op, payload) = raw.read_frame().await.expect("ready frame");
        assert_eq!(op, 1, "ready must be a text frame");
        let ready: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(ready["type"], "ready", "{ready}");
        let id = ready["connection_id"].as_str().unwrap().to_owned();
        (raw, id)
    }

    /// Encodes one client frame: `first` is FIN/RSV/opcode byte; masked unless `masked` is false.
    pub fn encode(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key: [u8; 4] = rand::random();
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timeout")
            .unwrap();
    }

    /// Sends one masked, final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.write(&RawWs::encode(0x81, text.as_bytes(), true))
            .await;
    }

    /// Reads the next server frame (opcode, payload); `None` when the stream ends.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("read timeout")
            {
                Ok(n) => n,
                Err(_) => return None,
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame arrives; returns its code (`None` if the stream ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.read_frame().await {
            if op == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// Parses one unmasked server frame from the front of `buf`: (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0F;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // servers never mask, but skip a key if one is there
    }
    if buf.len() < at + len {
        return None;
    }
    Some((op, buf[at..at + len].to_vec(), at + len))
}

/// The command line of a supervised `mock-scope` on `port`, as a routes file's `backend.command` wants it.
pub fn mock_command(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        MOCK.as_str().to_owned(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

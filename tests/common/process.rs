//! Processes under test: the `scope-router` and `mock-scope` binaries, started on free ports and stopped on drop.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{WAIT, eventually, get_json};

pub const ROUTER: &str = env!("CARGO_BIN_EXE_scope-router");
/// The `mock-scope` binary. It is its own package (tools/mock-scope), so Cargo gives these tests no
/// `CARGO_BIN_EXE_mock-scope`: this is the one in the tests' own target directory, built first
/// (`cargo build --workspace --bin mock-scope`, the binary `cargo build --bins` makes) when it is
/// missing or older than its sources. Resolved once per test process; Cargo's lock on the target
/// directory serialises concurrent test processes.
pub static MOCK: LazyLock<String> = LazyLock::new(|| tool_binary("mock-scope"));

/// A workspace tool's binary (`tools/<name>`, binary `<name>`) in the tests' own target
/// directory, built first when it is missing or older than its sources or the lock file.
pub fn tool_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test>-<hash> → <target>/<profile>, where `cargo build` puts binaries.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary sits in <target>/<profile>/deps");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !is_fresh(&bin, name) {
        build_tool(dir, name);
        assert!(
            bin.is_file(),
            "building {name} did not produce {}",
            bin.display()
        );
    }
    bin.to_str().expect("a UTF-8 path").to_owned()
}

/// Whether `bin` exists and is no older than its tool's sources, manifest and the lock file.
fn is_fresh(bin: &Path, name: &str) -> bool {
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
    let sources = newest(&repo().join("tools").join(name)).max(newest(&repo().join("Cargo.lock")));
    built >= sources
}

/// Builds a tool into `dir` (<target>/<profile>), so into the target directory these tests
/// were built in, whether it came from CARGO_TARGET_DIR, `--target-dir` or neither. With the
/// workspace's features, as `cargo build --bins` does (`-p <tool>` alone would resolve other
/// features, rebuild dependencies, and replace the binary `cargo build --bins` made).
fn build_tool(dir: &Path, name: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = dir.parent().expect("<target>/<profile> has a parent");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo())
        .args(["build", "--workspace", "--bin", name])
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
    let out = cmd.output().expect("run cargo to build a workspace tool");
    assert!(
        out.status.success(),
        "building {name} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The repository root (the product crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (with its group) when dropped, with its output lines collected.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The process's own `TMPDIR` (routers get one), removed after the process is stopped.
    pub tmp: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    /// SIGTERM first, so a router stops its supervised backend (no orphans); SIGKILL after 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            // `drop` cannot await, so this one wait (for the exit, at most 3 s) polls by itself.
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
        Proc {
            child,
            addr,
            lines,
            tmp: None,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until some output line contains `needle`.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_line_with(&[needle]).await
    }

    /// Waits until one output line contains every one of `needles`.
    pub async fn wait_for_line_with(&self, needles: &[&str]) -> String {
        eventually(
            LineWanted {
                proc: self,
                needles,
            },
            async || {
                self.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .cloned()
            },
        )
        .await
    }

    /// Fails the test unless the process is still running.
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "process exited; output:\n{}",
            self.output()
        );
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// What [`Proc::wait_for_line_with`] waits for, with the output as it is when the wait fails.
struct LineWanted<'a> {
    proc: &'a Proc,
    needles: &'a [&'a str],
}

impl fmt::Display for LineWanted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a line containing all of {:?} in:\n{}",
            self.needles,
            self.proc.output()
        )
    }
}

/// Starts `mock-scope` on a free port.
pub fn mock(extra: &[&str]) -> Proc {
    mock_env(extra, &[])
}

/// Starts `mock-scope` on a free port with extra environment variables.
pub fn mock_env(extra: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(MOCK.as_str());
    // Offers need a loaded pipeline, as on the real server: the tests' backend starts with
    // one (a test that wants none passes `--require-pipeline`).
    cmd.args(["--listen", "127.0.0.1:0", "--quiet"])
        .args(extra)
        .env("PIPELINE", "passthrough")
        .envs(envs.iter().copied());
    Proc::start(cmd, "mock-scope listening on")
}

/// The command line of a supervised `mock-scope` on `port`, as a routes file's `backend.command` wants it.
pub fn mock_command(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        MOCK.as_str().to_owned(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--pipeline".into(),
        "passthrough".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `scope-router serve --routes ROUTES --listen 127.0.0.1:0` with debug logs.
fn serve(routes: &Path) -> Command {
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"])
        .arg(routes)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,scope_router=debug");
    cmd
}

/// Starts a router command with a `TMPDIR` of its own: what it keeps in the system temp dir by
/// default (uploads being assembled, which a starting router sweeps) is not shared with the other
/// routers of tests running in parallel.
fn start_router(mut cmd: Command) -> Proc {
    let tmp = tempfile::tempdir().expect("the router's TMPDIR");
    cmd.env("TMPDIR", tmp.path());
    let mut p = Proc::start(cmd, "scope-router listening on");
    p.tmp = Some(tmp);
    p
}

/// Starts the router on a free port in front of `backend` (unsupervised), with `routes`.
pub fn router(routes: &Path, backend: &str, extra: &[&str]) -> Proc {
    let mut cmd = serve(routes);
    cmd.args(["--backend-url", backend, "--no-supervise"])
        .args(extra);
    start_router(cmd)
}

/// Starts the router (unsupervised, in front of `backend`) with extra environment variables.
pub fn router_env(routes: &Path, backend: &str, envs: &[(&str, &str)]) -> Proc {
    let mut cmd = serve(routes);
    cmd.args(["--backend-url", backend, "--no-supervise"])
        .envs(envs.iter().copied());
    start_router(cmd)
}

/// Starts the router (unsupervised, in front of `backend`) with extra arguments and environment variables.
pub fn router_with(routes: &Path, backend: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = serve(routes);
    cmd.args(["--backend-url", backend, "--no-supervise"])
        .args(extra)
        .envs(envs.iter().copied());
    start_router(cmd)
}

/// Starts the router supervising the backend its routes file names, with extra environment variables.
pub fn router_supervising(routes: &Path, envs: &[(&str, &str)]) -> Proc {
    let mut cmd = serve(routes);
    cmd.envs(envs.iter().copied());
    start_router(cmd)
}

/// The router is still running and `/healthz` answers.
pub async fn assert_router_alive(r: &mut Proc) {
    r.assert_running();
    let (code, body) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200, "/healthz: {body}");
}

/// The router's `/readyz`: status and body.
pub async fn readyz(r: &Proc) -> (u16, Value) {
    get_json(&format!("{}/readyz", r.http())).await
}

/// Waits until `/readyz` answers 200 and returns its body.
pub async fn wait_backend_ready(r: &Proc) -> Value {
    eventually("backend ready", async || {
        let (code, body) = readyz(r).await;
        (code == 200).then_some(body)
    })
    .await
}

/// The supervised backend's pid (also its process group) in a `/readyz` body.
pub fn backend_pid(readyz: &Value) -> Option<i32> {
    readyz["backend"]["supervisor"]["pid"]
        .as_i64()
        .map(|p| p as i32)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A base URL on which nothing listens (a port bound and released).
pub fn dead_backend_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Open file descriptors of a process (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc fd")
        .count()
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process in KiB (`VmHWM` of /proc/<pid>/status).
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Runs `scope-router check --url URL --routes ROUTES EXTRA…` to completion: its exit code,
/// stdout and stderr.
pub fn router_check(url: &str, routes: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ROUTER)
        .args(["check", "--url", url, "--routes"])
        .arg(routes)
        .args(extra)
        .output()
        .expect("run scope-router check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

//! The fake Livepeer runner (`mock-runner`), located and built like `mock-scope`, and the tunnel profile's routes for tests.

use std::process::Command;
use std::sync::LazyLock;

use serde_json::Value;

use super::{Proc, TempRoutes, get_json, http, tool_binary};

/// The `mock-runner` binary in the tests' own target directory, built first when missing or
/// older than its sources (as `mock-scope` is).
pub static RUNNER: LazyLock<String> = LazyLock::new(|| tool_binary("mock-runner"));

/// Starts `mock-runner` on a free port with extra arguments.
pub fn runner(extra: &[&str]) -> Proc {
    let mut cmd = Command::new(RUNNER.as_str());
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
    Proc::start(cmd, "mock-runner listening on")
}

/// The runner's `/_mock/stats`.
pub async fn runner_stats(r: &Proc) -> Value {
    let (code, v) = get_json(&format!("{}/_mock/stats", r.http())).await;
    assert_eq!(code, 200, "{v}");
    v
}

/// `POST /_mock/<what>` on the runner (`set?ready=false`, `drop`, `flood?frames=…`).
pub async fn runner_knob(r: &Proc, what: &str) {
    let (code, body) = http(&format!("{}/_mock/{what}", r.http()), "POST", None).await;
    assert!((200..300).contains(&code), "/_mock/{what}: {code} {body}");
}

/// A routes file of the Livepeer profile (examples/livepeer/routes.yaml) with test-sized
/// timings, fronting the runner at `runner` (`http://HOST:PORT`). `connection` and `tunnel`
/// are extra YAML lines (indented 2 and 6 spaces) added to those sections; `routes` extra
/// routes (indented 2).
pub fn tunnel_routes(runner: &str, connection: &str, tunnel: &str, routes: &str) -> TempRoutes {
    let ws = runner.replacen("http://", "ws://", 1);
    let text = format!(
        r#"version: 1
backend:
  url: {runner}
  health: {{ path: /docs, interval: 200ms, timeout: 1s }}
connection:
  max_connections: 1
  on_connect: false
  write_timeout: 10m
  admission:
    path: /internal/status
    expect: {{ listener_ready: true, connection_active: false }}
    attempts: 3
    interval: 100ms
    timeout: 2s
  on_disconnect:
    - http: {{ method: POST, path: /internal/cleanup-session, timeout: 180s }}
{connection}
routes:
{routes}
  $default:
    tunnel:
      url: {ws}/ws
      reconnect_delay: 100ms
{tunnel}
"#
    );
    TempRoutes::new(&text)
}

/// The job info an orchestrator sends first (it has no `type`).
pub fn job_info(user: &str) -> Value {
    serde_json::json!({
        "manifest_id": "manifest-1",
        "control_url": "http://orchestrator.invalid/control",
        "events_url": "http://orchestrator.invalid/events",
        "params": {"daydream_user_id": user, "pipeline": "passthrough"},
    })
}

/// How many output lines of a process contain `needle`.
pub fn count_lines(p: &Proc, needle: &str) -> usize {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// The value of the first sample of `name` whose labels include every one of `labels`
/// (`direction="to_client"`), in a Prometheus text page; 0 when there is none.
pub fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

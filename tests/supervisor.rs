//! The supervised backend: real child processes started, probed, killed, restarted and stopped by the router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// Writes a routes file whose backend is `command`, listening on `port`.
fn routes_file(dir: &Path, port: u16, command: &[String], extra_backend: &str) -> PathBuf {
    let schemas = repo().join("schemas");
    let cmd = serde_json::to_string(command).unwrap();
    let text = format!(
        r#"version: 1
schemas: {schemas}
backend:
  url: http://127.0.0.1:{port}
  command: {cmd}
  health: {{ path: /health, interval: 200ms, timeout: 1s, startup_timeout: 60s, failure_threshold: 2 }}
{extra_backend}
connection:
  on_disconnect: [ {{ signaling: close_sessions }} ]
routes:
  ping: {{ reply: {{ type: pong }} }}
  offer: {{ schema: offer.json, signaling: {{ action: offer }} }}
  api:
    schema: api.json
    forward:
      from_message: true
      reply: {{ type: api_response, status: "${{response.status}}", data: "${{response.json}}" }}
      on_error: {{ type: api_response, status: "${{error.status}}", error: "${{error.message}}", code: "${{error.code}}" }}
"#,
        schemas = schemas.display()
    );
    let p = dir.join("routes.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn kill(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Pids of live (non-zombie) processes in process group `pgid`, from /proc.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<i32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn killed_backend_is_restarted_and_the_gap_gets_a_fast_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = routes_file(
        dir.path(),
        port,
        &mock_command(port, &[]),
        "  restart: { policy: always, backoff: { initial: 1500ms, max: 3s } }",
    );
    let r = router_supervising(&routes, &[]);
    let first = wait_backend_ready(&r).await;
    let pid = backend_pid(&first).expect("pid in /readyz");
    let mut ws = Ws::connect(&r.ws_url()).await;
    let ok = ws
        .call(
            "a1",
            json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
        )
        .await;
    assert_eq!(ok["status"], 200);

    kill(pid, "-9");
    eventually("router notices the exit", || async {
        (readyz(&r).await.0 == 503).then_some(())
    })
    .await;
    // In the gap: a backend-bound message is refused fast, a local one still answers.
    let gap = ws
        .call(
            "a2",
            json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
        )
        .await;
    assert_eq!(gap["type"], "api_response");
    assert_eq!(gap["status"], 503, "{gap}");
    assert_eq!(gap["code"], "BACKEND_UNAVAILABLE");
    let offer = ws
        .call("o1", json!({"type": "offer", "sdp": "v=0\r\n"}))
        .await;
    assert_eq!(offer["type"], "error");
    assert_eq!(offer["code"], "BACKEND_UNAVAILABLE");
    assert_eq!(ws.call("p1", json!({"type": "ping"})).await["type"], "pong");

    let after = wait_backend_ready(&r).await;
    let new_pid = backend_pid(&after).expect("new pid");
    assert_ne!(new_pid, pid);
    assert!(
        after["backend"]["supervisor"]["restarts_total"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // The same connection routes again once the backend is back.
    let back = ws
        .call(
            "a3",
            json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
        )
        .await;
    assert_eq!(back["status"], 200, "{back}");
}

#[tokio::test]
async fn crash_loop_backs_off_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo crashing; exit 3".to_owned(),
    ];
    let routes = routes_file(
        dir.path(),
        port,
        &cmd,
        "  restart: { policy: always, backoff: { initial: 200ms, max: 10s }, max_restarts_per_minute: 2 }",
    );
    let r = router_supervising(&routes, &[]);
    // Five starts: gaps of about 0.2, 0.4, 0.8, 1.6 s (±20% jitter).
    eventually("five starts", || async {
        let n = r.output().matches("backend started").count();
        (n >= 5).then_some(())
    })
    .await;
    let log = r.output();
    let times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("backend started"))
        .take(5)
        .map(|l| {
            // RFC 3339 timestamp first: 2026-01-01T00:00:00.123456Z
            let ts = l.split_whitespace().next().unwrap();
            let t = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
            let parts: Vec<f64> = t.split(':').map(|p| p.parse().unwrap()).collect();
            parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
        })
        .collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 4);
    // Each gap at least the jittered backoff floor; and the sequence grows.
    for (i, g) in gaps.iter().enumerate() {
        let floor = 0.2 * 2f64.powi(i as i32) * 0.8;
        assert!(
            *g >= floor * 0.95,
            "gap {i} = {g:.3}s < {floor:.3}s; gaps {gaps:?}"
        );
    }
    assert!(gaps[3] > gaps[0] * 2.0, "no backoff growth: {gaps:?}");
    let (code, body) = readyz(&r).await;
    assert_eq!(code, 503);
    assert_eq!(body["backend"]["supervisor"]["crash_loop"], true, "{body}");
    let (_, metrics) = http(&format!("{}/metrics", r.http()), "GET", None).await;
    assert!(
        metrics.contains("scope_router_backend_crash_loop 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_start_stays_not_ready_until_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = routes_file(
        dir.path(),
        port,
        &mock_command(port, &["--startup-delay-ms", "2000"]),
        "",
    );
    let r = router_supervising(&routes, &[]);
    let (code, body) = readyz(&r).await;
    assert_eq!(code, 503, "{body}");
    let mut ws = Ws::connect(&r.ws_url()).await;
    let early = ws
        .call(
            "e1",
            json!({"type": "api", "method": "GET", "path": "/health"}),
        )
        .await;
    assert_eq!(early["status"], 503, "{early}");
    assert_eq!(early["code"], "BACKEND_UNAVAILABLE");
    wait_backend_ready(&r).await;
    let later = ws
        .call(
            "e2",
            json!({"type": "api", "method": "GET", "path": "/health"}),
        )
        .await;
    assert_eq!(later["status"], 200, "{later}");
}

#[tokio::test]
async fn sigterm_leaves_no_process_of_the_child_group() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A shell that starts the backend and a grandchild, like `uv` starting python.
    let mock = MOCK.as_str();
    let script = format!("{mock} --host 127.0.0.1 --port {port} & sleep 600 & wait");
    let cmd = vec!["sh".to_owned(), "-c".to_owned(), script];
    let routes = routes_file(
        dir.path(),
        port,
        &cmd,
        "  stop: { signal: SIGTERM, grace: 2s }",
    );
    let mut r = router_supervising(&routes, &[]);
    let body = wait_backend_ready(&r).await;
    let pgid = backend_pid(&body).unwrap();
    let members = group_members(pgid);
    assert!(
        members.len() >= 3,
        "sh, mock-scope and sleep expected in group {pgid}: {members:?}"
    );
    let mut ws = Ws::connect(&r.ws_url()).await;

    kill(r.child.id() as i32, "-TERM");
    assert_eq!(ws.closed().await, Some(1001));
    let status = tokio::task::spawn_blocking(move || {
        let s = r.child.wait().unwrap();
        (s, r)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "router exit: {:?}", status.0);
    let left = group_members(pgid);
    assert!(left.is_empty(), "processes left in group {pgid}: {left:?}");
}

#[tokio::test]
async fn backend_logs_reach_clients_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = routes_file(
        dir.path(),
        port,
        &mock_command(port, &["--log-interval-ms", "50"]),
        "  logs: { push_to_clients: true, batch: 50, exclude: [kafka_publisher] }",
    );
    let r = router_supervising(&routes, &[]);
    wait_backend_ready(&r).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("heartbeat 7")) {
        let m = ws.recv().await;
        if m["type"] == "logs" {
            let lines = m["lines"].as_array().unwrap();
            assert!(!lines.is_empty() && lines.len() <= 50);
            seen.extend(lines.iter().map(|l| l.as_str().unwrap().to_owned()));
        }
    }
    assert!(seen.iter().any(|l| l.contains("heartbeat")));
    assert!(
        !seen.iter().any(|l| l.contains("kafka_publisher")),
        "excluded logger leaked: {seen:?}"
    );
    // The router's own log has the excluded lines (they are only kept from clients).
    r.wait_for_line("kafka_publisher").await;
}

#[tokio::test]
async fn environment_passes_through_to_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = routes_file(
        dir.path(),
        port,
        &mock_command(port, &[]),
        "  env: { DECLARED_VAR: from-routes, DAYDREAM_SCOPE_LOGS_DIR: /tmp/scope-logs }",
    );
    let r = router_supervising(
        &routes,
        &[("HF_TOKEN", "hf_test_token"), ("PIPELINE", "passthrough")],
    );
    wait_backend_ready(&r).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (name, want) in [
        ("HF_TOKEN", "hf_test_token"),
        ("PIPELINE", "passthrough"),
        ("DECLARED_VAR", "from-routes"),
        ("DAYDREAM_SCOPE_LOGS_DIR", "/tmp/scope-logs"),
    ] {
        let v = ws
            .call(
                name,
                json!({"type": "api", "method": "GET", "path": format!("/api/v1/mock/env/{name}")}),
            )
            .await;
        assert_eq!(v["data"]["value"], want, "{name}: {v}");
    }
}

#[tokio::test]
async fn unhealthy_backend_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = routes_file(
        dir.path(),
        port,
        &mock_command(port, &[]),
        "  restart: { policy: always, backoff: { initial: 100ms, max: 1s } }\n  stop: { grace: 1s }",
    );
    let r = router_supervising(&routes, &[]);
    let body = wait_backend_ready(&r).await;
    let pid = backend_pid(&body).unwrap();
    // Freeze the backend: it stops answering probes without exiting.
    kill(pid, "-STOP");
    let after = eventually("a new healthy backend", || async {
        let (code, body) = readyz(&r).await;
        (code == 200 && backend_pid(&body).is_some_and(|p| p != pid)).then_some(body)
    })
    .await;
    assert!(
        after["backend"]["supervisor"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("health probes failed")
    );
    r.wait_for_line("backend unhealthy; restarting").await;
}

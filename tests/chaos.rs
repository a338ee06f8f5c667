//! Chaos: the supervised backend is SIGKILLed 20 times under load; every request gets exactly one reply and routing resumes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KILLS: usize = 20;
const CLIENTS: usize = 4;

fn chaos_routes(dir: &Path, port: u16) -> PathBuf {
    let cmd = serde_json::to_string(&mock_command(port, &["--quiet"])).unwrap();
    let text = format!(
        r#"version: 1
schemas: {schemas:?}
backend:
  url: http://127.0.0.1:{port}
  command: {cmd}
  health: {{ path: /health, interval: 100ms, timeout: 1s, startup_timeout: 30s, failure_threshold: 2 }}
  restart: {{ policy: always, backoff: {{ initial: 100ms, max: 500ms }} }}
  stop: {{ signal: SIGTERM, grace: 2s }}
connection:
  on_connect: {{ type: ready, connection_id: "${{connection.id}}" }}
routes:
  ping: {{ schema: ping.json, reply: {{ type: pong }} }}
  api:
    schema: api.json
    forward:
      from_message: true
      timeout: 3s
      reply: {{ type: api_response, status: "${{response.status}}", data: "${{response.json}}" }}
      on_error: {{ type: api_response, status: "${{error.status}}", error: "${{error.message}}", code: "${{error.code}}" }}
"#,
        schemas = repo().join("schemas").display().to_string(),
    );
    let p = dir.join("routes.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// What the clients saw, by kind of reply.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// Checks one reply and counts it; anything but the four allowed outcomes fails the test.
fn classify(tally: &Tally, rid: &str, v: &Value) {
    assert_eq!(v["type"], "api_response", "{rid} → {v}");
    assert_eq!(v["request_id"], rid, "{v}");
    match v["status"].as_u64() {
        Some(200) => {
            assert!(v.get("error").is_none(), "{v}");
            tally.ok.fetch_add(1, Ordering::SeqCst);
        }
        Some(503) => {
            assert_eq!(v["code"], "BACKEND_UNAVAILABLE", "{v}");
            tally.unavailable.fetch_add(1, Ordering::SeqCst);
        }
        Some(500) => {
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            tally.failed.fetch_add(1, Ordering::SeqCst);
        }
        Some(504) => {
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            tally.timed_out.fetch_add(1, Ordering::SeqCst);
        }
        _ => panic!("{rid}: unexpected reply {v}"),
    }
}

async fn client(url: String, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> u64 {
    let mut ws = Ws::connect(&url).await;
    let mut sent = 0u64;
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let rid = format!("c{n}-{i}");
        let msg = match i % 3 {
            0 => json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
            1 => json!({"type": "api", "method": "GET", "path": "/api/v1/mock/slow?ms=40"}),
            _ => {
                json!({"type": "api", "method": "POST", "path": "/api/v1/mock/echo", "body": {"n": i}})
            }
        };
        // `call` fails the test if no reply comes within the harness timeout.
        let v = ws.call(&rid, msg).await;
        classify(&tally, &rid, &v);
        sent += 1;
        if v["status"] != 200 {
            // Pace the retries while the backend is down (the machine is shared).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Nothing extra arrived: no request was answered twice.
    ws.assert_open().await;
    assert!(
        ws.stash.is_empty(),
        "client {n}: stray replies {:?}",
        ws.stash
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sigkilled_20_times_under_load_every_request_gets_one_reply() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut r = router_supervising(&chaos_routes(dir.path(), port), &[]);
    wait_backend_ready(&r).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(r.ws_url(), n, stop.clone(), tally.clone())))
        .collect();

    let mut killed: Vec<i32> = Vec::new();
    for k in 0..KILLS {
        // Healthy again, with a process we have not killed yet.
        let pid = eventually("the backend is healthy with a new pid", || async {
            let (code, body) = readyz(&r).await;
            let pid = backend_pid(&body)?;
            (code == 200 && !killed.contains(&pid)).then_some(pid)
        })
        .await;
        // Routing resumed: a client got a 200 from this backend.
        let before = tally.ok.load(Ordering::SeqCst);
        eventually(&format!("a 200 after restart {k}"), || async {
            (tally.ok.load(Ordering::SeqCst) > before).then_some(())
        })
        .await;
        // A random moment: often mid-request.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..150))).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        killed.push(pid);
        r.assert_running();
    }
    // The last restart is routed too.
    eventually("the backend is healthy after the last kill", || async {
        let (code, body) = readyz(&r).await;
        let pid = backend_pid(&body)?;
        (code == 200 && !killed.contains(&pid)).then_some(())
    })
    .await;
    let before = tally.ok.load(Ordering::SeqCst);
    eventually("a 200 after the last restart", || async {
        (tally.ok.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for c in clients {
        sent += c.await.expect("a client failed");
    }
    let (ok, unavailable, failed, timed_out) = (
        tally.ok.load(Ordering::SeqCst),
        tally.unavailable.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.timed_out.load(Ordering::SeqCst),
    );
    eprintln!(
        "chaos: {sent} requests: {ok} ok, {unavailable} unavailable, {failed} failed, {timed_out} timed out"
    );
    assert_eq!(
        ok + unavailable + failed + timed_out,
        sent,
        "every request got exactly one reply"
    );
    assert!(ok > KILLS as u64);

    r.assert_running();
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
    let (_, body) = readyz(&r).await;
    assert!(
        body["backend"]["supervisor"]["restarts_total"]
            .as_u64()
            .unwrap()
            >= KILLS as u64,
        "{body}"
    );
}

//! The tunnel profile against real processes: a test client plays the Livepeer orchestrator, `mock-runner` the runner, the router the Python wrapper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connects (the upgrade must be accepted), with the orchestrator's upgrade headers.
async fn connect(router: &Proc) -> Socket {
    let mut req = router.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("manifest-id", "manifest-7".parse().unwrap());
    req.headers_mut()
        .insert("daydream-user-id", "user-7".parse().unwrap());
    let (s, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timeout")
        .expect("the upgrade is accepted");
    s
}

/// The next text or binary frame (pings and pongs skipped).
async fn frame(s: &mut Socket) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// The next frame, which must be JSON text.
async fn json_frame(s: &mut Socket) -> Value {
    match frame(s).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn send(s: &mut Socket, v: &Value) {
    s.send(Message::text(v.to_string())).await.unwrap();
}

/// `ready`, the job info, `started`, both `create_channels` answered with a `response`.
async fn handshake(s: &mut Socket, runner: &Proc) {
    let ready = json_frame(s).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["connection_id"].as_str().unwrap().len(), 8, "{ready}");
    send(s, &job_info("user-7")).await;
    after_job_info(s, runner).await;
}

/// `started` and both `create_channels`, each answered; the runner has both responses.
async fn after_job_info(s: &mut Socket, runner: &Proc) {
    let before = runner_stats(runner).await["responses"]
        .as_array()
        .unwrap()
        .len();
    let started = json_frame(s).await;
    assert_eq!(started, json!({"type": "started"}));
    let mut ids = Vec::new();
    for direction in ["in", "out"] {
        let cc = json_frame(s).await;
        assert_eq!(cc["type"], "create_channels", "{cc}");
        assert_eq!(cc["direction"], direction, "{cc}");
        assert_eq!(cc["mime_type"], "video/MP2T", "{cc}");
        let rid = cc["request_id"].clone();
        ids.push(rid.clone());
        send(
            s,
            &json!({"type": "response", "request_id": rid, "channel_url": format!("http://o.invalid/{direction}")}),
        )
        .await;
    }
    let responses = eventually("the runner got both responses", async || {
        let st = runner_stats(runner).await;
        let r = st["responses"].as_array().unwrap().clone();
        (r.len() == before + 2).then_some(r)
    })
    .await;
    let got: Vec<Value> = responses[before..]
        .iter()
        .map(|r| r["request_id"].clone())
        .collect();
    assert_eq!(got, ids);
}

async fn metrics_page(router: &Proc) -> String {
    http(&format!("{}/metrics", router.http()), "GET", None)
        .await
        .1
}

#[tokio::test]
async fn handshake_end_to_end_with_ping_and_local_routes() {
    let runner = runner(&[]);
    let routes = tunnel_routes(
        &runner.http(),
        "",
        "",
        "  router_ping: { reply: { type: router_pong } }",
    );
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;

    // A ping with a timestamp goes to the runner and its pong comes back as the runner wrote it.
    send(
        &mut s,
        &json!({"type": "ping", "request_id": "p1", "timestamp": 1_700_000_000_123u64}),
    )
    .await;
    assert_eq!(
        json_frame(&mut s).await,
        json!({"type": "pong", "request_id": "p1", "timestamp": 1_700_000_000_123u64})
    );

    // A type with a route of its own is answered by the router; the runner never sees it.
    let frames_in = runner_stats(&runner).await["frames_in"].as_u64().unwrap();
    send(&mut s, &json!({"type": "router_ping", "request_id": 9})).await;
    assert_eq!(
        json_frame(&mut s).await,
        json!({"request_id": 9, "type": "router_pong"})
    );
    send(
        &mut s,
        &json!({"type": "ping", "request_id": "p2", "timestamp": 2}),
    )
    .await;
    assert_eq!(json_frame(&mut s).await["request_id"], "p2");
    assert_eq!(
        runner_stats(&runner).await["frames_in"].as_u64().unwrap(),
        frames_in + 1,
        "only the second ping reached the runner"
    );

    // Frames are counted per type in each direction, and the job info as untyped.
    let page = metrics_page(&router).await;
    let count = |dir: &str, ty: &str| {
        metric(
            &page,
            "scope_router_tunnel_frames_total",
            &[&format!("direction=\"{dir}\""), &format!("type=\"{ty}\"")],
        )
    };
    assert_eq!(count("to_client", "ready"), 1.0, "{page}");
    assert_eq!(count("to_client", "create_channels"), 2.0, "{page}");
    assert_eq!(count("to_runner", "response"), 2.0, "{page}");
    assert_eq!(count("to_runner", "untyped"), 1.0, "{page}");
    assert_eq!(count("to_runner", "ping"), 2.0, "{page}");

    // The upgrade headers are log fields of the connection.
    router
        .wait_for_line_with(&["manifest_id=manifest-7", "user_id=user-7", "connected"])
        .await;
}

#[tokio::test]
async fn access_denied_is_passed_on_with_4003() {
    let runner = runner(&["--deny-user", "user-7"]);
    let routes = tunnel_routes(&runner.http(), "", "", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    assert_eq!(json_frame(&mut s).await["type"], "ready");
    send(&mut s, &job_info("user-7")).await;
    assert_eq!(
        json_frame(&mut s).await,
        json!({"type": "error", "error": "Access denied", "code": "ACCESS_DENIED"})
    );
    assert_eq!(close_code(&mut s).await, Some(4003));
}

/// A job info without `control_url` gets the runner's untyped error, and the runner's
/// normal close reaches the client as it was sent (no reconnect).
#[tokio::test]
async fn a_job_without_control_url_is_answered_and_closed_by_the_runner() {
    let runner = runner(&[]);
    let routes = tunnel_routes(&runner.http(), "", "", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    assert_eq!(json_frame(&mut s).await["type"], "ready");
    let mut job = job_info("user-7");
    job.as_object_mut().unwrap().remove("control_url");
    send(&mut s, &job).await;
    assert_eq!(
        json_frame(&mut s).await,
        json!({"error": "control_url is required but was not provided"})
    );
    assert_eq!(close_code(&mut s).await, Some(1000));
    assert_eq!(runner_stats(&runner).await["connections_total"], 1);
}

#[tokio::test]
async fn binary_frames_both_ways_and_unusual_json_byte_for_byte() {
    let runner = runner(&["--echo"]);
    let routes = tunnel_routes(&runner.http(), "", "", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;

    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    s.send(Message::binary(bytes.clone())).await.unwrap();
    match frame(&mut s).await {
        Message::Binary(b) => assert_eq!(b.as_ref(), bytes.as_slice()),
        other => panic!("expected binary, got {other:?}"),
    }

    let unusual = [
        r#"{"z":1,"a":2,"m":{"y":[3,2,1],"b":null}}"#,
        "{ \"type\" : \"custom\" ,\n\t\"n\" : 1.0e+2 }",
        r#"{"big":123456789012345678901234567890,"tiny":1e-400,"huge":1e400}"#,
        r#"{"dup":1,"dup":2,"esc":"\u00e9\ud83d\ude00\/"}"#,
        r#"[1, "two", {"three": 3}]"#,
        "not json at all {",
        "",
        r#"{"type":"custom","request_id":123456789012345678901234567890}"#,
    ];
    for text in unusual {
        s.send(Message::text(text)).await.unwrap();
        match frame(&mut s).await {
            Message::Text(t) => assert_eq!(t.as_str(), text),
            other => panic!("expected text for {text:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_second_client_waits_for_the_first_and_its_cleanup() {
    let runner = runner(&["--hold-cleanup"]);
    let routes = tunnel_routes(&runner.http(), "", "", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let mut first = connect(&router).await;
    handshake(&mut first, &runner).await;

    // Refused before the upgrade while the first session is active.
    let err = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .expect_err("a second client is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "RUNNER_NOT_READY", "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }

    // The first leaves; its cleanup starts and is held by the runner.
    first.close(None).await.unwrap();
    eventually("the cleanup started", async || {
        (runner_stats(&runner).await["cleanups_started"] == 1).then_some(())
    })
    .await;

    // The next client is admitted, but not tunnelled until the cleanup has finished.
    let mut next = connect(&router).await;
    router
        .wait_for_line("waiting for the previous user's cleanup")
        .await;
    let st = runner_stats(&runner).await;
    assert_eq!(st["connections_total"], 1, "{st}");
    assert_eq!(st["cleanups_done"], 0, "{st}");
    runner_knob(&runner, "release_cleanup").await;
    handshake(&mut next, &runner).await;
    let st = runner_stats(&runner).await;
    assert_eq!(st["cleanups_done"], 1, "{st}");
    assert_eq!(st["connections_total"], 2, "{st}");
}

#[tokio::test]
async fn a_runner_not_ready_refuses_then_admits() {
    let runner = runner(&["--not-ready"]);
    let routes = tunnel_routes(&runner.http(), "", "", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let err = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .expect_err("refused while the runner is not ready");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 503),
        "{err}"
    );
    // Three attempts (the profile's `attempts`), then the refusal.
    assert_eq!(runner_stats(&runner).await["status_calls"], 3);
    assert_eq!(runner_stats(&runner).await["connections_total"], 0);

    runner_knob(&runner, "set?ready=true").await;
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;
}

#[tokio::test]
async fn inner_drops_keep_the_client_and_gap_frames_arrive_after() {
    let runner = runner(&["--echo"]);
    let routes = tunnel_routes(&runner.http(), "", "      max_failures: 1000", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;

    for round in 1..=3u64 {
        // The runner refuses new sockets, then drops this one: the router is in the gap.
        runner_knob(&runner, "set?refuse_ws=true").await;
        runner_knob(&runner, "drop").await;
        eventually("the router noticed the drop", async || {
            (count_lines(&router, "runner socket dropped") as u64 >= round).then_some(())
        })
        .await;
        // Frames sent now wait in the queue: the job info again, then a text and a binary frame.
        send(&mut s, &job_info("user-7")).await;
        send(&mut s, &json!({"round": round})).await;
        s.send(Message::binary(vec![round as u8; 3])).await.unwrap();
        runner_knob(&runner, "set?refuse_ws=false").await;

        let ready = json_frame(&mut s).await;
        assert_eq!(
            ready["type"], "ready",
            "a new runner socket after the gap: {ready}"
        );
        after_job_info(&mut s, &runner).await;
        assert_eq!(json_frame(&mut s).await, json!({"round": round}));
        match frame(&mut s).await {
            Message::Binary(b) => assert_eq!(b.as_ref(), &[round as u8; 3]),
            other => panic!("expected the binary frame, got {other:?}"),
        }
    }
    let st = runner_stats(&runner).await;
    assert_eq!(st["connections_total"], 4, "{st}");
    let page = metrics_page(&router).await;
    assert_eq!(
        metric(&page, "scope_router_tunnel_reconnects_total", &[]),
        3.0,
        "{page}"
    );
}

#[tokio::test]
async fn too_many_inner_failures_close_the_client_with_1011() {
    let runner = runner(&[]);
    let routes = tunnel_routes(
        &runner.http(),
        "",
        "      max_failures: 3\n      failure_window: 60s",
        "",
    );
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;
    runner_knob(&runner, "set?refuse_ws=true").await;
    runner_knob(&runner, "drop").await;
    let close = loop {
        match tokio::time::timeout(WAIT, s.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => break f.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1011);
    assert!(
        close
            .reason
            .as_str()
            .contains("runner unreachable: 4 failures"),
        "{}",
        close.reason
    );
    // The drop and three refused reconnects.
    assert_eq!(runner_stats(&runner).await["ws_refused"], 3);
}

#[tokio::test]
async fn keepalive_pings_on_both_legs() {
    let runner = runner(&[]);
    let routes = tunnel_routes(
        &runner.http(),
        "  keepalive: { interval: 100ms, timeout: 10s }",
        "      keepalive: { interval: 100ms, timeout: 10s }",
        "",
    );
    let router = router(&routes.path, &runner.http(), &[]);
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;
    // The client sees WebSocket pings from the router...
    let mut pings = 0;
    while pings < 2 {
        match tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // ...and the runner sees them from the router.
    eventually("the runner saw pings", async || {
        (runner_stats(&runner).await["pings_seen"].as_u64().unwrap() >= 2).then_some(())
    })
    .await;
}

/// A client that reads nothing while the runner sends 256 MiB: the router's queue fills,
/// it stops reading the runner, and its memory stays far below what it was sent.
#[tokio::test]
async fn a_slow_client_slows_the_runner_and_memory_stays_bounded() {
    let runner = runner(&[]);
    let routes = tunnel_routes(&runner.http(), "", "      queue: 8", "");
    let router = router(&routes.path, &runner.http(), &[]);
    let pid = router.child.id();
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;
    let before = rss_kib(pid);
    let (frames, size) = (1024u64, 256 * 1024u64);
    runner_knob(&runner, &format!("flood?frames={frames}&size={size}")).await;
    eventually("the queue to the client filled", async || {
        let page = metrics_page(&router).await;
        let full = metric(
            &page,
            "scope_router_tunnel_backpressure_total",
            &["direction=\"to_client\""],
        );
        (full >= 1.0).then_some(())
    })
    .await;
    // Let the runner send until the socket buffers are full too, as far as it gets.
    let sent = runner_stats(&runner).await["flood_sent_bytes"]
        .as_u64()
        .unwrap();
    let grown_kib = rss_kib(pid).saturating_sub(before);
    eprintln!(
        "slow client: runner sent {} MiB of {} MiB; router RSS grew {} KiB",
        sent >> 20,
        (frames * size) >> 20,
        grown_kib
    );
    assert!(
        grown_kib < 64 * 1024,
        "router RSS grew {grown_kib} KiB for a client that reads nothing"
    );
    let st = runner_stats(&runner).await;
    assert_eq!(st["floods_done"], 0, "the runner was slowed: {st}");
    assert!(
        st["flood_sent_bytes"].as_u64().unwrap() < frames * size / 2,
        "{st}"
    );
    drop(s);
}

/// Routes for a router that supervises the runner itself, as the profile does.
fn supervised_routes(port: u16) -> TempRoutes {
    let base = format!("http://127.0.0.1:{port}");
    let routes = tunnel_routes(&base, "", "", "");
    let text = std::fs::read_to_string(&routes.path).unwrap();
    let cmd = serde_json::to_string(&[
        RUNNER.as_str(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .unwrap();
    let text = text.replacen(
        "  health: { path: /docs, interval: 200ms, timeout: 1s }",
        &format!(
            "  command: {cmd}\n  env_allowlist: [PATH, HOME]\n  health: {{ path: /docs, interval: 200ms, timeout: 1s, startup_timeout: 30s }}\n  restart: {{ policy: always, backoff: {{ initial: 100ms, max: 1s }} }}"
        ),
        1,
    );
    TempRoutes::new(&text)
}

#[tokio::test]
async fn a_killed_runner_is_restarted_and_the_next_client_admitted() {
    let port = free_port();
    let routes = supervised_routes(port);
    let router = router_supervising(&routes.path, &[]);
    let first_pid = backend_pid(&wait_backend_ready(&router).await).unwrap();
    let runner = Proc {
        child: std::process::Command::new("true").spawn().unwrap(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        lines: Default::default(),
        tmp: None,
    };
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;

    std::process::Command::new("kill")
        .args(["-9", &first_pid.to_string()])
        .status()
        .unwrap();
    let second_pid = eventually("a new runner", async || {
        let (code, body) = readyz(&router).await;
        let pid = backend_pid(&body)?;
        (code == 200 && pid != first_pid).then_some(pid)
    })
    .await;
    assert_ne!(second_pid, first_pid);
    // The tunnel reconnects to the new runner with the client's socket kept.
    assert_eq!(json_frame(&mut s).await["type"], "ready");
    s.close(None).await.unwrap();
    drop(s);

    // The next client is admitted once the runner reports no session.
    let mut next = eventually("the next client is admitted", async || {
        let mut req = router.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("manifest-id", "m".parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .ok()
            .map(|(s, _)| s)
    })
    .await;
    handshake(&mut next, &runner).await;
}

/// The shipped profile, with only the runner's command and port swapped for mock-runner's,
/// serves a whole session; the default routes.yaml stays the relay.
#[tokio::test]
async fn the_shipped_livepeer_profile_fronts_the_runner() {
    let text = std::fs::read_to_string(repo().join("examples/livepeer/routes.yaml")).unwrap();
    let port = free_port().to_string();
    let cmd =
        serde_json::to_string(&[RUNNER.as_str(), "--host", "127.0.0.1", "--port", &port]).unwrap();
    let command_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("command:"))
        .unwrap();
    let text = text
        .replacen(command_line, &format!("  command: {cmd}"), 1)
        .replace("127.0.0.1:8001", &format!("127.0.0.1:{port}"));
    let routes = TempRoutes::new(&text);
    let router = router_supervising(
        &routes.path,
        &[
            ("HF_TOKEN", "hf-test"),
            ("SCOPE_ROUTER_TEST_SECRET", "kept out"),
            ("NOMAD_DC", "eu-west"),
        ],
    );
    wait_backend_ready(&router).await;
    // The runner's environment: the allowlist and `env`, nothing else of the router's.
    let (_, env) = get_json(&format!("http://127.0.0.1:{port}/_mock/env")).await;
    assert_eq!(env["HF_TOKEN"], "hf-test", "{env}");
    assert_eq!(env["PYTHONUNBUFFERED"], "1", "{env}");
    assert!(env.get("SCOPE_ROUTER_TEST_SECRET").is_none(), "{env}");
    assert!(env.get("RUST_LOG").is_none(), "{env}");
    let runner = Proc {
        child: std::process::Command::new("true").spawn().unwrap(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        lines: Default::default(),
        tmp: None,
    };
    let mut s = connect(&router).await;
    handshake(&mut s, &runner).await;
    s.close(None).await.unwrap();
    eventually("the runner was cleaned", async || {
        (runner_stats(&runner).await["cleanups_done"] == 1).then_some(())
    })
    .await;
    // The lifecycle events name the orchestrator's user and manifest.
    for kind in ["websocket_connected", "websocket_disconnected"] {
        let line = router.wait_for_line_with(&["lifecycle event", kind]).await;
        assert!(line.contains(r#""user_id":"user-7""#), "{line}");
        assert!(line.contains(r#""connection_id":"manifest-7""#), "{line}");
        assert!(line.contains(r#""fal_region":"eu-west""#), "{line}");
    }

    let relay = std::fs::read_to_string(repo().join("routes.yaml")).unwrap();
    assert!(
        !relay.contains("tunnel:"),
        "the default routes stay the relay"
    );
}

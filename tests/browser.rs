//! Browser end to end: headless Chromium streams its fake camera through the router's example page to mock-scope's WebRTC peer and plays the looped-back video.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run (launch, load, negotiate, decode, screenshot, close); it takes seconds.
const BROWSER_RUN: Duration = Duration::from_secs(45);

/// Fails (never skips) when the browser tooling is missing, saying how to get it.
fn require_browser_tooling() -> PathBuf {
    let script = repo().join("tests/browser/e2e.mjs");
    let modules = repo().join("tests/browser/node_modules/playwright-core");
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_owned());
    }
    if !modules.exists() {
        missing.push(modules.display().to_string());
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (Node.js)".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the browser end-to-end test needs {}: run ./scripts/test.sh, which installs Debian's \
         chromium and runs `npm ci --prefix tests/browser`",
        missing.join(", ")
    );
    script
}

/// examples/local/routes.yaml with its relative paths made absolute, in a tempdir. The router is
/// started with --no-supervise and --backend-url, so it talks to the mock this test started.
fn example_routes() -> TempRoutes {
    let text = std::fs::read_to_string(repo().join("examples/local/routes.yaml"))
        .expect("read examples/local/routes.yaml");
    let mut text = text;
    for (from, to) in [
        ("\nschemas: ../../schemas\n", repo().join("schemas")),
        (
            "\nstatic_files: ../browser\n",
            repo().join("examples/browser"),
        ),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} must occur once in examples/local/routes.yaml"
        );
        let key = from.trim().split(':').next().unwrap();
        text = text.replacen(
            from,
            &format!("\n{key}: {:?}\n", to.display().to_string()),
            1,
        );
    }
    TempRoutes::new(&text)
}

/// Waits for an output line of `proc` that contains every needle.
async fn line_with(proc: &Proc, needles: &[String], what: &str) -> String {
    eventually(what, || {
        let found = proc
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n.as_str())))
            .cloned();
        async move { found }
    })
    .await
}

/// Runs the Playwright script against `url`; returns its JSON result line, or why it failed.
async fn run_browser(script: &Path, url: &str) -> Result<Value, String> {
    let screenshot = repo().join("tests/artifacts/browser-e2e.png");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .arg(url)
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--timeout-ms")
        .arg((BROWSER_RUN.as_millis() - 5000).to_string())
        .current_dir(repo())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_RUN, cmd.output())
        .await
        .map_err(|_| "the browser run did not finish in time".to_owned())?
        .map_err(|e| format!("cannot run node: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        return Err(format!(
            "no JSON result from e2e.mjs\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ));
    };
    let result: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    if !out.status.success() || result["ok"] != true {
        return Err(format!(
            "the browser run failed: {result:#}\nstderr:\n{stderr}"
        ));
    }
    Ok(result)
}

#[tokio::test]
async fn camera_streams_through_the_router_and_the_looped_back_video_plays() {
    let script = require_browser_tooling();
    let routes = example_routes();
    // Not --quiet: the peer's log lines are asserted on below.
    let mut cmd = Command::new(MOCK);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let mock = Proc::start(cmd, "mock-scope listening on");
    let router = router(&routes.path, &mock.http(), &[]);

    // Default WebSocket URL (this page's host, /ws); ice=none keeps ICE on this machine's own
    // addresses instead of the mock's public STUN server.
    let url = format!("{}/?ice=none", router.http());
    let result = run_browser(&script, &url).await.unwrap_or_else(|why| {
        panic!(
            "{why}\n--- mock-scope ---\n{}\n--- scope-router ---\n{}",
            mock.output(),
            router.output()
        )
    });

    // The returned video played.
    assert!(result["videoWidth"].as_u64().unwrap() > 0, "{result:#}");
    assert!(result["framesDecoded"].as_u64().unwrap() > 0, "{result:#}");
    let session = result["sessionId"].as_str().expect("sessionId").to_owned();
    let conn = result["connectionId"]
        .as_str()
        .expect("connectionId")
        .to_owned();

    // It was negotiated through the router, on the page's own connection: its debug log names
    // each route a message took (`conn{id=…}:msg{route=…}: … routed result="ok"`).
    for route in ["get_ice_servers", "offer", "icecandidate"] {
        let needles = [
            format!("conn{{id={conn}}}"),
            format!("msg{{route={route}}}"),
            "routed".to_owned(),
            "ok".to_owned(),
        ];
        line_with(&router, &needles, &format!("the {route} route to be used")).await;
    }
    let opened = line_with(
        &router,
        &["WebRTC session opened".to_owned(), session.clone()],
        "the session to open",
    )
    .await;
    assert!(opened.contains(&format!("conn{{id={conn}}}")), "{opened}");
    // And the backend saw the calls those routes make.
    let stats = mock_stats(&mock).await;
    let by_route = &stats["by_route"];
    let count = |key: &str| by_route[key].as_u64().unwrap_or(0);
    assert!(count("GET /api/v1/webrtc/ice-servers") >= 1, "{by_route:#}");
    assert_eq!(count("POST /api/v1/webrtc/offer"), 1, "{by_route:#}");
    assert!(
        count(&format!("PATCH /api/v1/webrtc/offer/{session}")) >= 1,
        "trickled ICE candidates must reach the backend: {by_route:#}"
    );

    // Closing the page closed the socket, and the router DELETEd the session.
    eventually("the session to be DELETEd after the page closed", || {
        let mock = &mock;
        let session = session.clone();
        async move { mock_deleted(mock).await.contains(&session).then_some(()) }
    })
    .await;
    line_with(
        &router,
        &["WebRTC session closed".to_owned(), session.clone()],
        "the router to log the closed session",
    )
    .await;

    // The mock's peer really looped video: it received frames and sent them back.
    let short: String = session.chars().take(8).collect();
    let peer_closed = mock
        .wait_for_line(&format!("session {short}: closed: session deleted"))
        .await;
    let frames_out: u64 = peer_closed
        .split("frames_out=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no frames_out in {peer_closed:?}"));
    assert!(frames_out > 0, "{peer_closed}");
}

//! Browser end to end: headless Chromium streams its fake camera through the router's example page to mock-scope's WebRTC peer (strict as real Scope: the page loads passthrough and names it in the offer's pipeline_ids) and plays the looped-back video; moves files through the page's client (chunked uploads, binary and JSON, one resumed after a dropped socket; chunked downloads of an uploaded asset; the page's upload control); and an offer without pipeline_ids connects but gets no frame.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// `transfers.chunk_size` in examples/local/routes.yaml.
const CHUNK_SIZE: usize = 262_144;

/// The files e2e.mjs uploads: (key in its `transfers` result, file name, size, content seed).
const UPLOADS: [(&str, &str, usize, u32); 4] = [
    ("binary", "e2e-binary.mp4", 5_000_000, 1),
    ("json", "e2e-json.mp4", 1_500_000, 2),
    ("resumed", "e2e-resumed.mp4", 3_000_000, 3),
    ("control", "e2e-control.png", 200_000, 4),
];

/// What e2e.mjs downloads (twice): the asset it uploaded as "resumed".
const DOWNLOAD: (&str, usize, u32) = ("e2e-resumed.mp4", 3_000_000, 3);

/// The content e2e.mjs generates for a test file (its `e2eBytes`): xorshift32 from `seed`, the low
/// byte of each step.
fn e2e_bytes(size: usize, seed: u32) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Output lines of `proc` that contain every needle.
fn lines_with(proc: &Proc, needles: &[&str]) -> Vec<String> {
    proc.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .cloned()
        .collect()
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
    // Nothing loaded (whatever PIPELINE says), so that the page must load its pipeline.
    let mut cmd = Command::new(MOCK.as_str());
    cmd.args(["--listen", "127.0.0.1:0"]).env_remove("PIPELINE");
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
    // The page's offer and e2e.mjs's own without pipeline_ids.
    assert_eq!(count("POST /api/v1/webrtc/offer"), 2, "{by_route:#}");
    // The router percent-encodes the id's hyphens; the backend decodes them.
    let patches: u64 = by_route
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.replace("%2D", "-") == format!("PATCH /api/v1/webrtc/offer/{session}"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert!(
        patches >= 1,
        "trickled ICE candidates must reach the backend: {by_route:#}"
    );
    // The page loaded passthrough and named it in its offer, as the Scope frontend does; the
    // other offer named no pipeline.
    let offers = mock_recent(&mock, "POST", "/api/v1/webrtc/offer").await;
    assert_eq!(offers.len(), 2, "{offers:#?}");
    assert_eq!(
        offers[0]["body_json"]["initialParameters"]["pipeline_ids"],
        serde_json::json!(["passthrough"]),
        "{:#}",
        offers[0]
    );
    assert!(
        offers[1]["body_json"]["initialParameters"]
            .get("pipeline_ids")
            .is_none(),
        "{:#}",
        offers[1]
    );
    assert!(
        !mock_recent(&mock, "POST", "/api/v1/pipeline/load")
            .await
            .is_empty(),
        "the page loads a pipeline before its offer"
    );

    check_transfers(&result["transfers"], &conn, &mock, &router).await;

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
    let (frames_in, frames_out) = peer_frames(&mock, &session).await;
    assert!(
        frames_in > 0 && frames_out > 0,
        "{frames_in} in, {frames_out} out"
    );

    // Without pipeline_ids: connected, the camera's video received, nothing sent back, and the
    // mock said why in Scope's words.
    let n = &result["noPipelineIds"];
    assert_eq!(n["connected"], true, "{n:#}");
    assert_eq!(n["framesDecoded"], 0, "{n:#}");
    assert_eq!(
        n["sentParameters"],
        serde_json::json!({"input_mode": "video"}),
        "{n:#}"
    );
    let other = n["sessionId"].as_str().expect("sessionId").to_owned();
    let (frames_in, frames_out) = peer_frames(&mock, &other).await;
    assert!(
        frames_in > 0,
        "the browser's video reached the mock: {frames_in}"
    );
    assert_eq!(
        frames_out, 0,
        "no frame may be sent back without pipeline_ids"
    );
    mock.wait_for_line(
        " - scope.server.frame_processor - ERROR - No pipeline IDs provided, cannot start",
    )
    .await;
}

/// (frames_in, frames_out) from the mock peer's closing line for `session`.
async fn peer_frames(mock: &Proc, session: &str) -> (u64, u64) {
    let short: String = session.chars().take(8).collect();
    let closed = mock
        .wait_for_line(&format!("session {short}: closed: "))
        .await;
    let field = |name: &str| -> u64 {
        closed
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {closed:?}"))
    };
    (field("frames_in"), field("frames_out"))
}

/// The files the page moved: each upload reached the backend exactly once, complete (size and
/// sha256 recomputed here from the same generator), through the transfer routes; each download
/// matched its header and the backend's bytes.
async fn check_transfers(t: &Value, conn: &str, mock: &Proc, router: &Proc) {
    let stats = mock_stats(mock).await;
    let recent = stats["recent"].as_array().expect("stats.recent");
    for (key, name, size, seed) in UPLOADS {
        let u = &t[key];
        let want = sha256_hex(&e2e_bytes(size, seed));
        assert_eq!(u["name"], name, "{key}: {u:#}");
        assert_eq!(u["size"], size, "{key}: {u:#}");
        assert_eq!(
            u["sha256"], want,
            "{key}: the page's bytes or sha256 differ: {u:#}"
        );
        assert_eq!(u["status"], 200, "{key}: {u:#}");
        let sent: Vec<&Value> = recent
            .iter()
            .filter(|r| {
                r["method"] == "POST" && r["path"] == format!("/api/v1/assets?filename={name}")
            })
            .collect();
        assert_eq!(
            sent.len(),
            1,
            "{name} must reach the backend exactly once: {sent:#?}"
        );
        assert_eq!(sent[0]["body_len"], size, "{name}: {:#}", sent[0]);
        assert_eq!(sent[0]["body_sha256"], want, "{name}: {:#}", sent[0]);
        if key == "control" {
            // The page shows the backend's answer.
            assert_eq!(u["state"], "done", "{u:#}");
            assert_eq!(u["sha256"], want, "{u:#}");
            assert_eq!(u["shownSize"], size, "{u:#}");
            continue;
        }
        // Scope's AssetFileInfo, plus mock-scope's test-only sha256 and size_bytes.
        assert_eq!(
            u["data"]["name"],
            name.trim_end_matches(".mp4"),
            "{key}: {u:#}"
        );
        assert_eq!(u["data"]["type"], "video", "{key}: {u:#}");
        assert_eq!(u["data"]["sha256"], want, "{key}: {u:#}");
        assert_eq!(u["data"]["size_bytes"], size, "{key}: {u:#}");
        assert_eq!(
            u["pendingUploads"], 0,
            "{key}: the client forgets a finished upload"
        );
        eprintln!("{name}: {size} bytes uploaded in {} ms", u["ms"]);
        // Chunked: assembled by the router, which forwarded it as one request.
        router
            .wait_for_line_with(&[
                "upload assembled; forwarding",
                &format!("bytes={size} "),
                &format!("filename={name}"),
            ])
            .await;
    }
    assert_eq!(
        stats["by_route"]["POST /api/v1/assets"],
        UPLOADS.len(),
        "{:#}",
        stats["by_route"]
    );

    // The page's connection used the transfer routes. Binary chunks bypass the route table, so
    // the only upload_chunk messages routed are the JSON upload's chunks, one line each.
    for route in ["upload_start", "upload_finish"] {
        router
            .wait_for_line_with(&[
                &format!("conn{{id={conn}}}"),
                &format!("msg{{route={route}}}"),
                "routed",
                "result=\"ok\"",
            ])
            .await;
    }
    let json_chunks = lines_with(router, &["msg{route=upload_chunk}", "routed"]);
    assert_eq!(
        json_chunks.len(),
        UPLOADS[1].2.div_ceil(CHUNK_SIZE),
        "one routed upload_chunk per JSON chunk, none for binary ones: {json_chunks:#?}"
    );
    assert!(
        json_chunks
            .iter()
            .all(|l| l.contains(&format!("conn{{id={conn}}}")) && l.contains("result=\"ok\"")),
        "{json_chunks:#?}"
    );

    // The dropped socket: started on one connection, resumed and finished on the next.
    let r = &t["resumed"];
    assert_eq!(r["dropped"], true, "{r:#}");
    assert!(r["resumes"].as_u64().unwrap() >= 1, "{r:#}");
    let connections: Vec<&str> = r["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(connections.len() >= 2, "{r:#}");
    let (first, last) = (connections[0], connections[connections.len() - 1]);
    assert_ne!(first, last, "{r:#}");
    let upload = r["uploadId"].as_str().unwrap();
    for (on, needle) in [
        (first, "upload started"),
        (last, "upload resumed by a new connection"),
    ] {
        router
            .wait_for_line_with(&[
                &format!("conn{{id={on}}}"),
                needle,
                &format!("upload={upload}"),
            ])
            .await;
    }
    router
        .wait_for_line_with(&[
            &format!("conn{{id={last}}}"),
            "msg{route=upload_finish}",
            "upload assembled",
        ])
        .await;

    // Downloads: the page checked length and sha256 against download_done and the bytes it had
    // uploaded; both must also be the backend's bytes. Each was acknowledged to the end.
    let (download_name, download_size, download_seed) = DOWNLOAD;
    let want = sha256_hex(&e2e_bytes(download_size, download_seed));
    for (key, binary) in [("downloadBinary", true), ("downloadJson", false)] {
        let d = &t[key];
        assert_eq!(d["length"], download_size, "{key}: {d:#}");
        assert_eq!(d["headerLength"], download_size, "{key}: {d:#}");
        assert_eq!(d["sha256"], want, "{key}: {d:#}");
        assert_eq!(d["headerSha256"], want, "{key}: {d:#}");
        assert_eq!(d["binary"], binary, "{key}: {d:#}");
        assert_eq!(d["type"], "video/mp4", "{key}: {d:#}");
        let chunks = download_size.div_ceil(CHUNK_SIZE);
        assert_eq!(d["chunks"], chunks, "{key}: {d:#}");
        // One per chunk, and one for download_done (which brings the sha256).
        assert_eq!(d["progressCalls"], chunks + 1, "{key}: {d:#}");
        eprintln!("download ({key}): {download_size} bytes in {} ms", d["ms"]);
        let id = d["downloadId"].as_str().unwrap();
        router
            .wait_for_line_with(&[
                "download sent",
                &format!("download={id}"),
                &format!("chunks={chunks}"),
            ])
            .await;
    }
    router
        .wait_for_line_with(&[
            &format!("conn{{id={conn}}}"),
            "msg{route=download_ack}",
            "routed",
        ])
        .await;
    assert_eq!(
        stats["by_route"][format!("GET /api/v1/assets/{download_name}")],
        2,
        "{:#}",
        stats["by_route"]
    );
}

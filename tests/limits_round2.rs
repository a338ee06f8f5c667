//! Limits and hostile input, round two: findings of the second attack on the router, each
//! with the test that failed before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn send_binary(ws: &mut Ws, bytes: &'static [u8]) {
    ws.inner.send(Message::binary(bytes)).await.unwrap();
}

#[tokio::test]
async fn queries_are_percent_encoded_on_the_way_to_the_backend() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call(
            "q",
            json!({"type": "api", "method": "GET", "path": "/api/v1/assets?filename=clip one é.png&x=1#2"}),
        )
        .await;
    assert_ne!(v["status"], 400, "{v}");
    let seen = mock_recent(&m, "GET", "/api/v1/assets").await;
    assert_eq!(
        seen.last().unwrap()["path"],
        "/api/v1/assets?filename=clip%20one%20%C3%A9.png&x=1%232",
        "{seen:?}"
    );
    // Control characters stay refused.
    let v = ws
        .call(
            "c",
            json!({"type": "api", "method": "GET", "path": "/api/v1/assets?x=\u{7}"}),
        )
        .await;
    assert_eq!(v["status"], 400, "{v}");
}

#[tokio::test]
async fn backend_statuses_that_are_not_final_answers_become_502() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for status in [600, 999] {
        set_faults(&m, json!({"status": {"GET /api/v1/hardware/info": status}})).await;
        let v = ws
            .call(
                "s",
                json!({"type": "api", "method": "GET", "path": "/api/v1/hardware/info"}),
            )
            .await;
        assert_eq!(v["status"], 502, "{status}: {v}");
        assert_eq!(v["type"], "api_response", "{v}");
    }
}

#[tokio::test]
async fn api_paths_outside_api_v1_are_refused_after_normalization() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for path in ["/api/v1/../internal/x", "/api/v2/x", "/docs"] {
        let v = ws
            .call("p", json!({"type": "api", "method": "GET", "path": path}))
            .await;
        assert_eq!(v["status"], 403, "{path}: {v}");
    }
    let v = ws
        .call(
            "h",
            json!({"type": "api", "method": "GET", "path": "/health"}),
        )
        .await;
    assert_eq!(v["status"], 200, "{v}");
}

#[tokio::test]
async fn undecodable_and_binary_frames_count_against_the_rate_limit() {
    let (_m, r, _t) = stack_with(&[(
        "rate: { per_second: 200, burst: 400 }",
        "rate: { per_second: 0.001, burst: 3 }",
    )]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.send_text("{not json").await;
    assert!(
        ws.recv().await["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON")
    );
    send_binary(&mut ws, b"junk").await;
    assert_eq!(ws.recv().await["code"], "BINARY_NOT_SUPPORTED");
    ws.send_text("[1]").await;
    assert_eq!(ws.recv().await["type"], "error");
    // The bucket is empty now, whatever the next frame is; a request_id is still echoed.
    ws.send_text("{not json either").await;
    assert_eq!(ws.recv().await["code"], "RATE_LIMITED");
    send_binary(&mut ws, b"junk").await;
    assert_eq!(ws.recv().await["code"], "RATE_LIMITED");
    let v = ws.call_with_id(json!(9), json!({"type": "ping"})).await;
    assert_eq!(v["code"], "RATE_LIMITED", "{v}");
    assert_eq!(v["request_id"], 9, "{v}");
}

#[tokio::test]
async fn idle_timeout_counts_client_messages_not_pongs() {
    // Keepalive pings every 100 ms are answered by the client library itself.
    let (_m, r, _t) = stack_with(&[
        ("idle_timeout: 10m", "idle_timeout: 800ms"),
        (
            "keepalive: { interval: 20s, timeout: 20s }",
            "keepalive: { interval: 100ms, timeout: 5s }",
        ),
    ]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "IDLE_TIMEOUT", "{v}");
    assert_eq!(ws.closed().await, Some(1000));
}

#[tokio::test]
async fn a_content_type_that_cannot_be_a_header_is_refused_at_upload_start() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call(
            "u",
            json!({"type": "upload_start", "path": "/api/v1/assets?filename=a.png",
                   "content_type": "image/png\r\nX-Evil: 1", "size": 10, "sha256": "0".repeat(64)}),
        )
        .await;
    assert_eq!(v["code"], "TRANSFER_INVALID", "{v}");
}

#[tokio::test]
async fn partial_uploads_left_by_a_killed_router_are_removed_at_startup() {
    let uploads = tempfile::tempdir().unwrap();
    let orphan = uploads.path().join("0123456789abcdef0123456789abcdef.part");
    std::fs::write(&orphan, vec![0u8; 4096]).unwrap();
    // Older than any upload may sit idle; a fresh one (another router's) must stay.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let live = uploads.path().join("fedcba9876543210fedcba9876543210.part");
    std::fs::write(&live, vec![0u8; 16]).unwrap();
    let keep = uploads.path().join("notes.txt");
    std::fs::write(&keep, "not ours").unwrap();
    let dir = uploads.path().display().to_string();
    let (_m, r, _t) = stack_with(&[("\ntransfers:\n", &format!("\ntransfers:\n  dir: {dir:?}\n"))]);
    r.wait_for_line("removed partial uploads").await;
    assert!(!orphan.exists());
    assert!(keep.exists(), "only .part files are the router's");
    assert!(live.exists(), "a part file in use elsewhere stays");
}

//! Error paths past validation, served by the default routes.yaml (or a copy with one knob turned): unknown types, refused api calls, a backend that is down, slow, failing or dying, and the health endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Unknown message types

#[tokio::test]
async fn unknown_type_is_refused_with_request_id_echoed() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for rid in [json!("u1"), json!(99), json!({"nested": ["x", 1]})] {
        let v = ws
            .call_with_id(rid.clone(), json!({"type": "frobnicate", "x": 1}))
            .await;
        assert_eq!(
            v,
            json!({"type": "error", "error": "Unknown message type: frobnicate", "request_id": rid})
        );
    }
    // Without a request_id the reply has none.
    ws.send(&json!({"type": "launch_rockets"})).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "error", "error": "Unknown message type: launch_rockets"})
    );
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

// ---------------------------------------------------------------------------------------------
// api refusals

#[tokio::test]
async fn unsupported_method_is_a_400_api_response_without_backend_call() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (i, method) in ["TRACE", "CONNECT", "OPTIONS", "HEAD", "FROB"]
        .iter()
        .enumerate()
    {
        let rid = format!("m{i}");
        let v = ws.call(&rid, api(method, "/api/v1/pipeline/status")).await;
        assert_eq!(v["type"], "api_response", "{method}: {v}");
        assert_eq!(v["status"], 400, "{method}: {v}");
        assert_eq!(v["request_id"], rid.as_str());
        assert!(!error_text(&v).is_empty());
    }
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

#[tokio::test]
async fn invalid_base64_upload_is_refused_without_backend_call() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let msg = json!({
        "type": "api", "method": "POST", "path": "/api/v1/assets?filename=x.png",
        "body": {"_base64_content": "this is not base64!!", "_content_type": "image/png"},
    });
    let v = ws.call("b64", msg).await;
    assert_eq!(v["request_id"], "b64", "{v}");
    match v["type"].as_str() {
        Some("api_response") => {
            let s = v["status"].as_u64().expect("status");
            assert!((400..500).contains(&s), "{v}");
            assert!(!error_text(&v).is_empty(), "{v}");
        }
        Some("error") => assert!(!error_text(&v).is_empty()),
        _ => panic!("unexpected {v}"),
    }
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Backend down

#[tokio::test]
async fn backend_down_gives_503_backend_unavailable_and_ping_still_pongs() {
    let r = router(&repo().join("routes.yaml"), &dead_backend_url(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;

    let v = ws.call("a", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 503, "{v}");
    assert_eq!(v["code"], "BACKEND_UNAVAILABLE", "{v}");
    assert_eq!(v["request_id"], "a");
    assert!(!error_text(&v).is_empty());

    let v = ws.call("i", json!({"type": "get_ice_servers"})).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "BACKEND_UNAVAILABLE", "{v}");
    assert_eq!(v["request_id"], "i");

    let v = ws
        .call_with_id(json!(3), json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "BACKEND_UNAVAILABLE", "{v}");
    assert_eq!(v["request_id"], 3);

    ws.assert_open().await;
}

#[tokio::test]
async fn backend_killed_mid_connection_gives_503() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("before", api("GET", "/api/v1/pipeline/status"))
        .await;
    assert_eq!(v["status"], 200);
    drop(m);
    let v = ws
        .call("after", api("GET", "/api/v1/pipeline/status"))
        .await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 503, "{v}");
    assert_eq!(v["code"], "BACKEND_UNAVAILABLE", "{v}");
    ws.assert_open().await;
}

// ---------------------------------------------------------------------------------------------
// Backend timeouts and failures

const API_TIMEOUT_30S: &str = "      base64_uploads: true\n      timeout: 30s\n";
const API_TIMEOUT_1S: &str = "      base64_uploads: true\n      timeout: 1s\n";
const OFFER_30S: &str = "signaling: { action: offer, path: /api/v1/webrtc/offer, timeout: 30s, add_connection_id: true }";
const OFFER_1S: &str = "signaling: { action: offer, path: /api/v1/webrtc/offer, timeout: 1s, add_connection_id: true }";

#[tokio::test]
async fn api_timeout_is_504_request_timeout() {
    let (m, r, _routes) = stack_with(&[(API_TIMEOUT_30S, API_TIMEOUT_1S)]);
    set_faults(
        &m,
        json!({"delay_ms": {"GET /api/v1/pipeline/status": 2000}}),
    )
    .await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call_with_id(json!({"t": 1}), api("GET", "/api/v1/pipeline/status"))
        .await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 504, "{v}");
    assert_eq!(v["error"], "Request timeout", "{v}");
    assert_eq!(v["request_id"], json!({"t": 1}));
    ws.assert_open().await;
    // Other paths are unaffected.
    let v = ws.call("ok", api("GET", "/api/v1/hardware/info")).await;
    assert_eq!(v["status"], 200, "{v}");
}

#[tokio::test]
async fn offer_timeout_is_webrtc_offer_timeout() {
    let (m, r, _routes) = stack_with(&[(OFFER_30S, OFFER_1S)]);
    set_faults(&m, json!({"delay_ms": {"POST /api/v1/webrtc/offer": 2000}})).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("o", json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(error_text(&v).starts_with("WebRTC offer timeout"), "{v}");
    assert_eq!(v["request_id"], "o");
    ws.assert_open().await;
}

#[tokio::test]
async fn offer_non_200_is_offer_failed_with_detail() {
    let (m, r) = stack();
    set_faults(&m, json!({"status": {"POST /api/v1/webrtc/offer": 500}})).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("o", json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "Offer failed: 500", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .expect("detail text")
            .contains("injected fault"),
        "{v}"
    );
    assert_eq!(v["request_id"], "o");
    // No session is remembered: a candidate now has none.
    let c = ws
        .call(
            "c",
            json!({"type": "icecandidate", "candidate": candidate()}),
        )
        .await;
    assert_eq!(
        c["error"], "No session ID available for ICE candidate",
        "{c}"
    );
    ws.assert_open().await;
}

#[tokio::test]
async fn offer_400_pipeline_not_loaded_passes_the_backend_detail() {
    let m = mock(&["--require-pipeline"]);
    let r = router(&repo().join("routes.yaml"), &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("o", json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "Offer failed: 400", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("Pipeline not loaded"),
        "{v}"
    );
}

#[tokio::test]
async fn ice_non_204_is_ice_candidate_failed() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.offer("o").await;
    set_faults(&m, json!({"status": {"PATCH /api/v1/webrtc/offer/": 404}})).await;
    let v = ws
        .call(
            "c",
            json!({"type": "icecandidate", "candidate": candidate()}),
        )
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "ICE candidate failed: 404", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("injected fault"),
        "{v}"
    );
    assert_eq!(v["request_id"], "c");
    set_faults(&m, json!({"status": {"PATCH /api/v1/webrtc/offer/": 500}})).await;
    let v = ws
        .call(
            "c2",
            json!({"type": "icecandidate", "candidate": candidate()}),
        )
        .await;
    assert_eq!(v["error"], "ICE candidate failed: 500", "{v}");
    ws.assert_open().await;
}

#[tokio::test]
async fn get_ice_servers_backend_error_status_is_reported() {
    let (m, r) = stack();
    set_faults(
        &m,
        json!({"status": {"GET /api/v1/webrtc/ice-servers": 500}}),
    )
    .await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("i", json!({"type": "get_ice_servers"})).await;
    // The table's success shape carries the status code; a 500 must not look like a healthy answer.
    assert_eq!(v["request_id"], "i");
    match v["type"].as_str() {
        Some("ice_servers") => assert_eq!(v["status"], 500, "{v}"),
        Some("error") => assert!(!error_text(&v).is_empty()),
        _ => panic!("unexpected {v}"),
    }
}

#[tokio::test]
async fn per_path_timeouts_of_the_original_apply() {
    // Default api timeout cut to 1 s; the recordings (120 s), LoRA install (300 s) and upload (60 s)
    // rules of the default routes must still give those requests their longer time.
    let (m, r, _routes) = stack_with(&[(API_TIMEOUT_30S, API_TIMEOUT_1S)]);
    set_faults(
        &m,
        json!({"delay_ms": {
            "GET /api/v1/recordings/": 1500,
            "POST /api/v1/loras": 1500,
            "POST /api/v1/assets": 1500,
            "POST /api/v1/mock/echo": 1500,
        }}),
    )
    .await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    let msgs = [
        ("rec", api("GET", "/api/v1/recordings/abc?size=1000")),
        (
            "lora",
            json!({"type": "api", "method": "POST", "path": "/api/v1/loras", "body": {"url": "x"}}),
        ),
        (
            "upload",
            json!({"type": "api", "method": "POST", "path": "/api/v1/assets?filename=a.png",
                   "body": {"_base64_content": "aGVsbG8=", "_content_type": "image/png"}}),
        ),
        (
            "json",
            json!({"type": "api", "method": "POST", "path": "/api/v1/mock/echo", "body": {"a": 1}}),
        ),
    ];
    for (rid, mut msg) in msgs {
        msg["request_id"] = json!(rid);
        ws.send(&msg).await;
    }
    let rec = ws.reply_to("rec").await;
    assert_eq!(rec["status"], 200, "recordings have 120 s: {rec}");
    assert_eq!(rec["_content_length"], 1000);
    let lora = ws.reply_to("lora").await;
    assert_eq!(lora["status"], 200, "POST /api/v1/loras has 300 s: {lora}");
    let up = ws.reply_to("upload").await;
    assert_eq!(up["status"], 200, "uploads have 60 s: {up}");
    let plain = ws.reply_to("json").await;
    assert_eq!(
        plain["status"], 504,
        "a plain JSON POST keeps the 1 s default: {plain}"
    );
    assert_eq!(plain["error"], "Request timeout");
}

#[tokio::test]
async fn backend_dying_mid_request_is_a_500_with_error() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut slow = api("GET", "/api/v1/mock/slow?ms=10000");
    slow["request_id"] = json!("cut");
    ws.send(&slow).await;
    eventually("the slow request to reach the mock", || async {
        (!mock_recent(&m, "GET", "/api/v1/mock/slow").await.is_empty()).then_some(())
    })
    .await;
    mock_exit(&m).await;
    let v = ws.reply_to("cut").await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 500, "{v}");
    assert!(!error_text(&v).is_empty(), "{v}");
    ws.assert_open().await;
}

// ---------------------------------------------------------------------------------------------
// Health endpoints

#[tokio::test]
async fn readyz_is_503_with_the_backend_down_while_healthz_is_200() {
    let r = router(&repo().join("routes.yaml"), &dead_backend_url(), &[]);
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
    let (code, body) = get_json(&format!("{}/readyz", r.http())).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
}

#[tokio::test]
async fn readyz_is_200_with_a_healthy_backend_and_turns_503_when_it_dies() {
    let health = "health: { path: /health, interval: 2s, timeout: 2s, startup_timeout: 120s, failure_threshold: 3 }";
    let fast = "health: { path: /health, interval: 100ms, timeout: 1s, startup_timeout: 120s, failure_threshold: 2 }";
    let (m, r, _routes) = stack_with(&[(health, fast)]);
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
    let body = wait_backend_ready(&r).await;
    assert_eq!(body["ready"], true, "{body}");
    drop(m);
    eventually("readyz 503", || async {
        (get_json(&format!("{}/readyz", r.http())).await.0 == 503).then_some(())
    })
    .await;
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
}

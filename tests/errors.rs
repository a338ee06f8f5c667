//! Every error path of the protocol, served by the default routes.yaml (or a copy with one knob turned).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Malformed frames

#[tokio::test]
async fn not_json_gets_invalid_json_error_and_connection_stays_open() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for bad in ["{nope", "", "ping", "{\"type\": \"ping\"", "\u{1F600}"] {
        ws.send_text(bad).await;
        let v = ws.recv().await;
        assert_eq!(v["type"], "error", "{bad:?}: {v}");
        let e = error_text(&v);
        assert!(e.starts_with("Invalid JSON: "), "{bad:?}: {v}");
        assert!(e.len() > "Invalid JSON: ".len(), "the error says why: {v}");
        ws.assert_open().await;
    }
    assert_eq!(mock_total(&m).await, 0);
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_connection_stays_open() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    ws.send_text(&deep).await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(error_text(&v).starts_with("Invalid JSON: "), "{v}");
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

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

#[tokio::test]
async fn json_non_object_is_an_error_and_connection_stays_open() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for bad in ["[1,2,3]", "42", "\"ping\"", "null", "true"] {
        ws.send_text(bad).await;
        let v = ws.recv().await;
        assert_eq!(v["type"], "error", "{bad}: {v}");
        assert!(!error_text(&v).is_empty());
        ws.assert_open().await;
    }
}

#[tokio::test]
async fn message_without_string_type_is_an_error_with_request_id() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call_with_id(json!("nt"), json!({"path": "/api/v1/pipeline/status"}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(error_text(&v).contains("type"), "{v}");
    let v = ws.call_with_id(json!(5), json!({"type": 5})).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["request_id"], 5);
    let v = ws
        .call_with_id(json!({"o": 1}), json!({"type": null}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["request_id"], json!({"o": 1}));
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

#[tokio::test]
async fn binary_frame_is_an_error_and_connection_stays_open() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.inner
        .send(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await
        .expect("send binary");
    let v = ws.recv().await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(!error_text(&v).is_empty());
    ws.assert_open().await;
}

// ---------------------------------------------------------------------------------------------
// Schema validation: refused before any backend call

async fn assert_rejected(ws: &mut Ws, m: &Proc, rid: &str, msg: Value, field: &str) {
    let before = mock_total(m).await;
    let v = ws.call(rid, msg.clone()).await;
    assert_eq!(v["type"], "error", "{msg} → {v}");
    assert_eq!(v["request_id"], rid, "{v}");
    assert!(
        error_text(&v).contains(field),
        "the error must name {field:?}: {v}"
    );
    ws.assert_open().await;
    assert_eq!(
        mock_total(m).await,
        before,
        "{msg} must not reach the backend"
    );
}

#[tokio::test]
async fn offer_schema_rejections_never_reach_the_backend() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_rejected(&mut ws, &m, "o1", json!({"type": "offer"}), "sdp").await;
    assert_rejected(
        &mut ws,
        &m,
        "o2",
        json!({"type": "offer", "sdp": 42}),
        "sdp",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "o3",
        json!({"type": "offer", "sdp": "v=0", "initialParameters": "fast"}),
        "initialParameters",
    )
    .await;
    assert!(mock_sessions(&m).await.is_empty());
}

#[tokio::test]
async fn icecandidate_schema_rejections_never_reach_the_backend() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let sid = ws.offer("o").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    assert_rejected(
        &mut ws,
        &m,
        "i1",
        json!({"type": "icecandidate", "candidate": "candidate:1 1 UDP 1 192.0.2.1 1 typ host"}),
        "candidate",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "i2",
        json!({"type": "icecandidate", "candidate": {"sdpMid": "0"}}),
        "candidate",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "i3",
        json!({"type": "icecandidate", "candidate": {"candidate": "c", "sdpMLineIndex": "zero"}}),
        "sdpMLineIndex",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "i4",
        json!({"type": "icecandidate", "sessionId": 7, "candidate": null}),
        "sessionId",
    )
    .await;
    let sessions = mock_sessions(&m).await;
    assert_eq!(sessions[0]["id"], sid.as_str());
    assert_eq!(sessions[0]["candidates"], json!([]));
}

#[tokio::test]
async fn api_schema_rejections_never_reach_the_backend() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_rejected(
        &mut ws,
        &m,
        "a1",
        json!({"type": "api", "method": "GET"}),
        "path",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "a2",
        json!({"type": "api", "method": 5, "path": "/api/v1/pipeline/status"}),
        "method",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "a3",
        api("GET", "api/v1/pipeline/status"),
        "path",
    )
    .await;
    assert_rejected(
        &mut ws,
        &m,
        "a4",
        json!({"type": "api", "method": "POST", "path": "/api/v1/assets?filename=x.png", "body": {"_base64_content": 12}}),
        "_base64_content",
    )
    .await;
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
async fn denied_and_unsafe_paths_never_reach_the_backend() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let paths = [
        "/api/v1/internal/x",
        "/api/v1/internal/",
        "/api/v1/assets/../internal/x",
        "/api/v1/assets/%2e%2e/internal/x",
        "/api//v1/internal/x",
        "//evil.example/x",
        "http://evil/x",
        "/../etc/passwd",
        "/api/v1/mock/echo\\..\\..\\x",
        "/api/v1/mock/echo%5c..%5cx",
        "/api/v1/mock/echo\r\nHost: evil",
        "/_mock/exit",
        "/metrics",
    ];
    for (i, path) in paths.iter().enumerate() {
        let rid = format!("p{i}");
        let v = ws.call(&rid, api("GET", path)).await;
        assert_eq!(v["request_id"], rid.as_str(), "{v}");
        match v["type"].as_str() {
            Some("api_response") => {
                let s = v["status"].as_u64().expect("status");
                assert!((400..500).contains(&s), "{path:?} → {v}");
                assert!(!error_text(&v).is_empty(), "{path:?} → {v}");
                assert!(v.get("data").is_none(), "{path:?} → {v}");
            }
            Some("error") => assert!(!error_text(&v).is_empty()),
            _ => panic!("{path:?} → unexpected reply {v}"),
        }
    }
    ws.assert_open().await;
    let stats = mock_stats(&m).await;
    assert_eq!(stats["total"], 0, "nothing may reach the backend: {stats}");
    // The control plane is never counted; check that the mock is still alive (no /_mock/exit got through).
    let (code, _) = get_json(&format!("{}/health", m.http())).await;
    assert_eq!(code, 200);
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

// ---------------------------------------------------------------------------------------------
// Connection limits

#[tokio::test]
async fn too_large_message_closes_with_1009() {
    let (_m, r, _routes) =
        stack_with(&[("max_message_bytes: 134217728", "max_message_bytes: 1024")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    // Just under the limit is fine.
    let v = ws
        .call("small", json!({"type": "api", "method": "POST", "path": "/api/v1/mock/echo", "body": {"x": "a".repeat(800)}}))
        .await;
    assert_eq!(v["status"], 200, "{v}");
    let big = json!({"type": "ping", "pad": "x".repeat(4096)});
    ws.send(&big).await;
    assert_eq!(ws.closed().await, Some(1009));
}

#[tokio::test]
async fn max_in_flight_refuses_the_excess_and_completes_the_rest() {
    let (_m, r, _routes) = stack_with(&[("max_in_flight: 64", "max_in_flight: 2")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    for rid in ["s1", "s2", "s3"] {
        let mut msg = api("GET", "/api/v1/mock/slow?ms=1500");
        msg["request_id"] = json!(rid);
        ws.send(&msg).await;
    }
    let third = ws.reply_to("s3").await;
    assert_eq!(third["type"], "error", "{third}");
    assert_eq!(third["code"], "TOO_MANY_IN_FLIGHT", "{third}");
    for rid in ["s1", "s2"] {
        let v = ws.reply_to(rid).await;
        assert_eq!(
            v,
            json!({"type": "api_response", "status": 200, "data": {"slept_ms": 1500}, "request_id": rid})
        );
    }
    // Once they are done, new messages are served again.
    ws.assert_open().await;
}

// ---------------------------------------------------------------------------------------------
// Session ownership

#[tokio::test]
async fn another_connections_session_is_not_usable() {
    let (m, r) = stack();
    let mut a = Ws::connect(&r.ws_url()).await;
    let mut b = Ws::connect(&r.ws_url()).await;
    let sid = a.offer("o").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    let before = mock_total(&m).await;
    let v = b
        .call(
            "steal",
            json!({"type": "icecandidate", "sessionId": sid, "candidate": candidate()}),
        )
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    assert_eq!(v["request_id"], "steal");
    b.assert_open().await;
    assert_eq!(
        mock_total(&m).await,
        before,
        "no PATCH may reach the backend"
    );
    assert!(mock_recent(&m, "PATCH", "/").await.is_empty());
    assert_eq!(mock_sessions(&m).await[0]["candidates"], json!([]));
    // An unknown id is refused the same way.
    let v = b
        .call(
            "bogus",
            json!({"type": "icecandidate", "sessionId": "nope", "candidate": candidate()}),
        )
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    // B closing does not delete A's session.
    b.close().await;
    r.wait_for_line("disconnected").await;
    let a_ok = a
        .call(
            "mine",
            json!({"type": "icecandidate", "sessionId": sid, "candidate": candidate()}),
        )
        .await;
    assert_eq!(a_ok["status"], "ok", "{a_ok}");
    assert!(mock_deleted(&m).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Health endpoints

#[tokio::test]
async fn healthz_and_readyz_with_a_healthy_backend() {
    let (_m, r) = stack();
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
    let body = eventually("readyz 200", || async {
        let (code, body) = get_json(&format!("{}/readyz", r.http())).await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
}

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
async fn readyz_turns_503_when_the_backend_dies() {
    let health = "health: { path: /health, interval: 2s, timeout: 2s, startup_timeout: 120s, failure_threshold: 3 }";
    let fast = "health: { path: /health, interval: 100ms, timeout: 1s, startup_timeout: 120s, failure_threshold: 2 }";
    let (m, r, _routes) = stack_with(&[(health, fast)]);
    eventually("readyz 200", || async {
        (get_json(&format!("{}/readyz", r.http())).await.0 == 200).then_some(())
    })
    .await;
    drop(m);
    eventually("readyz 503", || async {
        (get_json(&format!("{}/readyz", r.http())).await.0 == 503).then_some(())
    })
    .await;
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
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

#[tokio::test]
async fn max_duration_sends_the_error_and_closes() {
    let (_m, r, _routes) = stack_with(&[("max_duration: 2h", "max_duration: 1s")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.assert_open().await;
    let v = ws.recv().await;
    assert_eq!(
        v,
        json!({"type": "error", "error": "Max duration exceeded", "code": "MAX_DURATION_EXCEEDED"})
    );
    assert!(
        ws.closed().await.is_some(),
        "the server closes the socket after the error"
    );
}

//! The signaling rows of the protocol table (`get_ice_servers`, `offer`, `icecandidate`), served by the default routes.yaml in front of mock-scope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// get_ice_servers

#[tokio::test]
async fn get_ice_servers_carries_backend_json_and_status() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("i1", json!({"type": "get_ice_servers"})).await;
    assert_eq!(v["type"], "ice_servers");
    assert_eq!(v["status"], 200);
    assert!(v["data"]["iceServers"].is_array(), "{v}");
    // The data is exactly what the backend answers.
    let (code, direct) = get_json(&format!("{}/api/v1/webrtc/ice-servers", m.http())).await;
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!({"type": "ice_servers", "data": direct, "status": 200, "request_id": "i1"})
    );
    assert_eq!(
        mock_recent(&m, "GET", "/api/v1/webrtc/ice-servers")
            .await
            .len(),
        2
    );
}

// ---------------------------------------------------------------------------------------------
// offer / icecandidate

#[tokio::test]
async fn offer_relays_sdp_and_answers_with_session() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let params = json!({"prompts": [{"text": "a cat", "weight": 1.0}]});
    let a = ws
        .call(
            "o1",
            json!({"type": "offer", "sdp": SDP_OFFER, "initialParameters": params}),
        )
        .await;
    assert_eq!(
        sorted_keys(&a),
        ["request_id", "sdp", "sdp_type", "sessionId", "type"],
        "{a}"
    );
    assert_eq!(a["type"], "answer");
    assert_eq!(a["sdp_type"], "answer");
    assert_eq!(a["request_id"], "o1");
    assert!(
        a["sdp"].as_str().expect("sdp string").starts_with("v=0"),
        "{a}"
    );
    let sid = a["sessionId"].as_str().expect("sessionId").to_owned();

    // The backend got {sdp, type: "offer" (the default), initialParameters, connection_id,
    // connection_info} (no user id was given).
    let recent = mock_recent(&m, "POST", "/api/v1/webrtc/offer").await;
    assert_eq!(recent.len(), 1);
    assert_eq!(
        recent[0]["body_json"],
        json!({"sdp": SDP_OFFER, "type": "offer", "initialParameters": params, "connection_id": ws.connection_id,
               "connection_info": json!({"gpu_type": "unknown", "fal_region": "unknown", "fal_runner_id": "unknown", "fal_log_labels": "unknown"})})
    );
    let sessions = mock_sessions(&m).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], sid.as_str());
    assert_eq!(sessions[0]["sdp"], SDP_OFFER);
    assert_eq!(sessions[0]["initialParameters"], params);
}

#[tokio::test]
async fn offer_with_explicit_sdp_type_and_numeric_request_id() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let a = ws
        .call_with_id(
            json!(7),
            json!({"type": "offer", "sdp": SDP_OFFER, "sdp_type": "offer"}),
        )
        .await;
    assert_eq!(a["type"], "answer", "{a}");
    assert_eq!(a["request_id"], 7);
    let recent = mock_recent(&m, "POST", "/api/v1/webrtc/offer").await;
    assert_eq!(recent[0]["body_json"]["type"], "offer");
    assert_eq!(recent[0]["body_json"]["sdp"], SDP_OFFER);
}

#[tokio::test]
async fn icecandidate_uses_the_remembered_session() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let sid = ws.offer("o1").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    let cand = json!({"candidate": "candidate:1 1 UDP 2122252543 192.0.2.10 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let ack = ws
        .call("c1", json!({"type": "icecandidate", "candidate": cand}))
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "ok", "request_id": "c1"})
    );

    // `"sessionId": null` means the same: this connection's latest session.
    let ack = ws
        .call("c2", icecandidate_for(Value::Null, cand.clone()))
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "ok", "request_id": "c2"})
    );

    let patches = mock_recent(&m, "PATCH", "/api/v1/webrtc/offer/").await;
    assert_eq!(patches.len(), 2);
    for p in &patches {
        assert_eq!(p["path"], format!("/api/v1/webrtc/offer/{sid}"));
        assert_eq!(p["body_json"], json!({"candidates": [cand]}));
    }
    let sessions = mock_sessions(&m).await;
    assert_eq!(sessions[0]["id"], sid.as_str());
    assert_eq!(sessions[0]["candidates"], json!([cand, cand]));
}

#[tokio::test]
async fn icecandidate_with_explicit_own_session_id() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let first = ws.offer("o1").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    let second = ws.offer("o2").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    assert_ne!(first, second);
    // Name the older session explicitly: the candidate must go there, not to the latest.
    let cand = json!({"candidate": "candidate:2 1 UDP 1 192.0.2.11 5000 typ host", "sdpMid": "0", "sdpMLineIndex": null});
    let ack = ws
        .call_with_id(
            json!({"k": 1}),
            json!({"type": "icecandidate", "sessionId": first, "candidate": cand}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "ok", "request_id": {"k": 1}})
    );
    let sessions = mock_sessions(&m).await;
    let by_id = |id: &str| {
        sessions
            .iter()
            .find(|s| s["id"] == id)
            .expect("session")
            .clone()
    };
    assert_eq!(by_id(&first)["candidates"], json!([cand]));
    assert_eq!(by_id(&second)["candidates"], json!([]));
    // Without a sessionId, the latest offer's session is used.
    let cand2 = json!({"candidate": "candidate:3 1 UDP 1 192.0.2.12 5001 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let ack = ws
        .call("c2", json!({"type": "icecandidate", "candidate": cand2}))
        .await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let sessions = mock_sessions(&m).await;
    let s2 = sessions
        .iter()
        .find(|s| s["id"] == second.as_str())
        .expect("session");
    assert_eq!(s2["candidates"], json!([cand2]));
}

#[tokio::test]
async fn null_candidate_is_end_of_candidates_without_backend_call() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.offer("o1").await;
    let before = mock_stats(&m).await;
    let ack = ws
        .call("end", json!({"type": "icecandidate", "candidate": null}))
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "end_of_candidates", "request_id": "end"})
    );
    // Same with an explicit session id.
    let sid = mock_sessions(&m).await[0]["id"]
        .as_str()
        .expect("sid")
        .to_owned();
    let ack = ws
        .call(
            "end2",
            json!({"type": "icecandidate", "sessionId": sid, "candidate": null}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "end_of_candidates", "request_id": "end2"})
    );
    ws.assert_open().await;
    let after = mock_stats(&m).await;
    assert_eq!(
        after["total"], before["total"],
        "no backend call for end of candidates"
    );
    assert!(mock_recent(&m, "PATCH", "/").await.is_empty());
}

#[tokio::test]
async fn icecandidate_before_any_offer_is_an_error() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let cand = json!({"candidate": "candidate:1 1 UDP 1 192.0.2.1 1 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let v = ws
        .call("c0", json!({"type": "icecandidate", "candidate": cand}))
        .await;
    assert_eq!(
        v,
        json!({"type": "error", "error": "No session ID available for ICE candidate", "request_id": "c0"})
    );
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

//! Every row of the protocol table, served by the default routes.yaml in front of mock-scope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

// ---------------------------------------------------------------------------------------------
// Connection basics

#[tokio::test]
async fn ready_then_ping_pong() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(ws.connection_id.len(), 8);
    assert!(ws.connection_id.chars().all(|c| c.is_ascii_hexdigit()));
    let pong = ws.call("p1", json!({"type": "ping"})).await;
    assert_eq!(pong, json!({"type": "pong", "request_id": "p1"}));
    ws.send(&json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn ready_is_exactly_type_and_connection_id() {
    let (_m, r) = stack();
    let (mut inner, _) = tokio_tungstenite::connect_async(r.ws_url())
        .await
        .expect("connect");
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(WAIT, inner.next())
        .await
        .expect("ready in time")
        .expect("a frame")
        .expect("no error");
    let v: Value = serde_json::from_str(first.to_text().expect("text frame")).expect("JSON");
    assert_eq!(keys(&v), ["connection_id", "type"], "{v}");
    assert_eq!(v["type"], "ready");
    let id = v["connection_id"].as_str().expect("string id");
    assert_eq!(id.len(), 8, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    // Two connections get different ids.
    let other = Ws::connect(&r.ws_url()).await;
    assert_ne!(other.connection_id, id);
}

#[tokio::test]
async fn auth_token_query_parameter_is_accepted() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&format!(
        "{}?fal_jwt_token=eyJhbGciOiJIUzI1NiJ9.e30.sig",
        r.ws_url()
    ))
    .await;
    ws.assert_open().await;
}

#[tokio::test]
async fn request_ids_of_every_json_type_come_back_unchanged() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for rid in [
        json!("str-1"),
        json!(""),
        json!(42),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!(["x"]),
        json!({}),
        json!({"a": [1, "two", null], "b": {"c": true}}),
    ] {
        // Answered locally...
        let pong = ws.call_with_id(rid.clone(), json!({"type": "ping"})).await;
        assert_eq!(pong, json!({"type": "pong", "request_id": rid}));
        // ...and after a backend round trip.
        let v = ws
            .call_with_id(rid.clone(), json!({"type": "get_ice_servers"}))
            .await;
        assert_eq!(v["type"], "ice_servers", "{v}");
        assert_eq!(v["request_id"], rid, "{v}");
    }
}

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
        keys(&a),
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

    // The backend got {sdp, type: "offer" (the default), initialParameters, connection_id}.
    let recent = mock_recent(&m, "POST", "/api/v1/webrtc/offer").await;
    assert_eq!(recent.len(), 1);
    assert_eq!(
        recent[0]["body_json"],
        json!({"sdp": SDP_OFFER, "type": "offer", "initialParameters": params, "connection_id": ws.connection_id})
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
    let cand = json!({"candidate": "candidate:2 1 UDP 1 192.0.2.11 5000 typ host", "sdpMid": null, "sdpMLineIndex": null});
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

#[tokio::test]
async fn disconnect_deletes_every_session_of_that_connection_only() {
    let (m, r) = stack();
    let mut a = Ws::connect(&r.ws_url()).await;
    let mut b = Ws::connect(&r.ws_url()).await;
    let a1 = a.offer("a1").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    let a2 = a.offer("a2").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    let b1 = b.offer("b1").await["sessionId"]
        .as_str()
        .expect("sid")
        .to_owned();
    assert!(mock_deleted(&m).await.is_empty());

    a.close().await;
    let deleted = eventually("both of A's sessions deleted", || async {
        let d = mock_deleted(&m).await;
        (d.contains(&a1) && d.contains(&a2)).then_some(d)
    })
    .await;
    assert!(
        !deleted.contains(&b1),
        "B is still open; its session must live: {deleted:?}"
    );
    let deletes = mock_recent(&m, "DELETE", "/api/v1/webrtc/offer/").await;
    let mut paths: Vec<String> = deletes
        .iter()
        .map(|d| d["path"].as_str().expect("path").to_owned())
        .collect();
    paths.sort();
    let mut want = vec![
        format!("/api/v1/webrtc/offer/{a1}"),
        format!("/api/v1/webrtc/offer/{a2}"),
    ];
    want.sort();
    assert_eq!(paths, want);

    // B is unaffected and still served; its own session goes when it closes.
    b.assert_open().await;
    let live: Vec<Value> = mock_sessions(&m).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], b1.as_str());
    b.close().await;
    eventually("B's session deleted", || async {
        mock_deleted(&m).await.contains(&b1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn disconnect_with_an_offer_in_flight_still_deletes_its_session() {
    let (m, r) = stack();
    set_faults(&m, json!({"delay_ms": {"POST /api/v1/webrtc/offer": 1000}})).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.send(&json!({"type": "offer", "sdp": SDP_OFFER, "request_id": "late"}))
        .await;
    eventually("the offer to reach the backend", || async {
        (!mock_recent(&m, "POST", "/api/v1/webrtc/offer")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    ws.close().await;
    // The session the backend opens after the client left must not leak.
    let deleted = eventually("the late session deleted", || async {
        let d = mock_deleted(&m).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(deleted.len(), 1);
    assert!(
        mock_sessions(&m).await.is_empty(),
        "no live session may remain"
    );
}

#[tokio::test]
async fn log_lines_about_a_connection_carry_its_id() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let id = ws.connection_id.clone();
    ws.assert_open().await;
    ws.close().await;
    r.wait_for_line("disconnected").await;
    let out = r.output();
    let about: Vec<&str> = out.lines().filter(|l| l.contains("connected")).collect();
    assert!(
        about.len() >= 2,
        "expected connected and disconnected lines:\n{out}"
    );
    for l in about {
        assert!(
            l.contains(&id),
            "log line without the connection id {id}: {l}"
        );
    }
}

#[tokio::test]
async fn disconnect_without_sessions_deletes_nothing() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.assert_open().await;
    ws.close().await;
    // A second connection still works (the router survived the disconnect), and nothing was deleted.
    let mut other = Ws::connect(&r.ws_url()).await;
    other.assert_open().await;
    r.wait_for_line("disconnected").await;
    assert!(mock_recent(&m, "DELETE", "/").await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// api

#[tokio::test]
async fn api_get_json() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("a1", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(
        v,
        json!({"type": "api_response", "status": 200, "data": {"status": "not_loaded"}, "request_id": "a1"})
    );
    let got = mock_recent(&m, "GET", "/api/v1/pipeline/status").await;
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn api_backend_health_is_reachable() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("h", api("GET", "/health")).await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["status"], "healthy", "{v}");
}

#[tokio::test]
async fn api_method_defaults_to_get_when_absent() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call(
            "a1",
            json!({"type": "api", "path": "/api/v1/hardware/info"}),
        )
        .await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["data"].is_object(), "{v}");
    assert_eq!(
        mock_recent(&m, "GET", "/api/v1/hardware/info").await.len(),
        1
    );
}

#[tokio::test]
async fn api_query_string_passes_through_unchanged() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("q", api("GET", "/api/v1/models/status?pipeline_id=abc"))
        .await;
    assert_eq!(v["type"], "api_response");
    assert_eq!(v["status"], 200);
    assert_eq!(v["data"]["pipeline_id"], "abc", "{v}");
    let got = mock_recent(&m, "GET", "/api/v1/models/status").await;
    assert_eq!(got[0]["path"], "/api/v1/models/status?pipeline_id=abc");

    // Encoded characters and several parameters arrive byte for byte.
    let v = ws
        .call("q2", api("GET", "/api/v1/mock/echo?x=a%20b&y=%2Fz&x=2"))
        .await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["data"]["query"], "x=a%20b&y=%2Fz&x=2", "{v}");
    assert_eq!(v["data"]["path"], "/api/v1/mock/echo");
}

#[tokio::test]
async fn api_post_json_body_then_status_shows_loaded() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let body = json!({"pipeline_ids": ["streamdiffusionv2"], "load_params": {"height": 512, "width": 512}});
    let v = ws
        .call(
            "load",
            json!({"type": "api", "method": "POST", "path": "/api/v1/pipeline/load", "body": body}),
        )
        .await;
    assert_eq!(v["type"], "api_response");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["data"]["message"].is_string(), "{v}");
    let sent = mock_recent(&m, "POST", "/api/v1/pipeline/load").await;
    assert_eq!(sent[0]["content_type"], "application/json");
    // The routes add the connection id to pipeline loads.
    let mut want = body.clone();
    want["connection_id"] = json!(ws.connection_id);
    assert_eq!(sent[0]["body_json"], want);

    let s = ws.call("st", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(s["status"], 200);
    assert_eq!(s["data"]["status"], "loaded", "{s}");
    assert_eq!(s["data"]["pipeline_id"], "streamdiffusionv2");
    assert_eq!(s["data"]["load_params"], body["load_params"]);
    assert_eq!(s["data"]["connection_id"], ws.connection_id.as_str());
}

#[tokio::test]
async fn api_patch_delete_put_reach_the_backend_with_method_and_body() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (i, method) in ["PATCH", "DELETE", "PUT", "POST", "GET"].iter().enumerate() {
        let body = json!({"n": i, "method": method, "nested": {"list": [1, 2, 3]}});
        let rid = format!("m{i}");
        let v = ws
            .call(&rid, json!({"type": "api", "method": method, "path": "/api/v1/mock/echo/sub/path", "body": body}))
            .await;
        assert_eq!(v["type"], "api_response", "{v}");
        assert_eq!(v["status"], 200, "{method}: {v}");
        assert_eq!(v["data"]["method"], *method);
        assert_eq!(v["data"]["path"], "/api/v1/mock/echo/sub/path");
        assert_eq!(v["data"]["body_json"], body, "{method}");
        assert_eq!(v["data"]["headers"]["content-type"], "application/json");
        assert_eq!(
            mock_recent(&m, method, "/api/v1/mock/echo/sub/path")
                .await
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn api_lowercase_method_works() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call(
            "lc",
            json!({"type": "api", "method": "post", "path": "/api/v1/mock/echo", "body": {"a": 1}}),
        )
        .await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["method"], "POST");
    assert_eq!(v["data"]["body_json"], json!({"a": 1}));
    let v = ws.call("lc2", api("Get", "/api/v1/pipeline/status")).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(mock_recent(&m, "POST", "/api/v1/mock/echo").await.len(), 1);
}

#[tokio::test]
async fn api_non_object_json_bodies_are_sent_as_json() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (i, body) in [json!([1, 2, 3]), json!("text"), json!(5), json!(true)]
        .into_iter()
        .enumerate()
    {
        let rid = format!("b{i}");
        let v = ws
            .call(
                &rid,
                json!({"type": "api", "method": "POST", "path": "/api/v1/mock/echo", "body": body}),
            )
            .await;
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["data"]["body_json"], body);
    }
}

#[tokio::test]
async fn api_text_response_is_a_string() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("t", api("GET", "/api/v1/mock/text")).await;
    assert_eq!(
        v,
        json!({"type": "api_response", "status": 200, "data": "hello from mock-scope", "request_id": "t"})
    );
    let v = ws.call("logs", api("GET", "/api/v1/logs/current")).await;
    assert_eq!(v["status"], 200);
    assert!(
        v["data"]
            .as_str()
            .expect("text data")
            .contains("mock-scope started"),
        "{v}"
    );
}

#[tokio::test]
async fn api_backend_error_status_passes_through() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for code in [400u16, 404, 422, 500, 503] {
        let rid = format!("s{code}");
        let v = ws
            .call(&rid, api("GET", &format!("/api/v1/mock/status/{code}")))
            .await;
        assert_eq!(
            v,
            json!({"type": "api_response", "status": code, "data": {"detail": format!("mock status {code}")}, "request_id": rid})
        );
    }
    // An unknown backend path is the backend's 404, passed through.
    let v = ws.call("nf", api("GET", "/api/v1/does/not/exist")).await;
    assert_eq!(v["status"], 404);
    assert_eq!(v["data"], json!({"detail": "Not Found"}));
    ws.assert_open().await;
}

#[tokio::test]
async fn api_empty_204_response() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("nc", api("DELETE", "/api/v1/mock/status/204"))
        .await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 204, "{v}");
    assert_eq!(v["request_id"], "nc");
    // No body: empty text (or null), never an error.
    assert!(v["data"] == json!("") || v["data"].is_null(), "{v}");
    assert!(v.get("error").is_none(), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Binary payloads

#[tokio::test]
async fn api_base64_upload_of_20_mb_arrives_raw_with_content_type() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut payload = vec![0u8; 20 * 1024 * 1024];
    rand::Rng::fill(&mut rand::rng(), payload.as_mut_slice());
    let digest = sha256_hex(&payload);
    let msg = json!({
        "type": "api", "method": "POST", "path": "/api/v1/assets?filename=x.png",
        "body": {"_base64_content": b64(&payload), "_content_type": "image/png"},
    });
    let v = ws.call("up", msg).await;
    assert_eq!(
        v["type"],
        "api_response",
        "{}",
        v.to_string().chars().take(500).collect::<String>()
    );
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["sha256"], digest.as_str());
    assert_eq!(v["data"]["size_bytes"], payload.len());
    assert_eq!(v["data"]["content_type"], "image/png");
    assert_eq!(v["data"]["filename"], "x.png");
    let rec = mock_recent(&m, "POST", "/api/v1/assets").await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["path"], "/api/v1/assets?filename=x.png");
    assert_eq!(rec[0]["content_type"], "image/png");
    assert_eq!(rec[0]["body_len"], payload.len());
    assert_eq!(rec[0]["body_sha256"], digest.as_str());
}

#[tokio::test]
async fn api_base64_upload_defaults_to_octet_stream() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let payload = pattern(100_000);
    let msg = json!({
        "type": "api", "method": "POST", "path": "/api/v1/assets?filename=blob.bin",
        "body": {"_base64_content": b64(&payload)},
    });
    let v = ws.call("up", msg).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["content_type"], "application/octet-stream");
    assert_eq!(v["data"]["sha256"], sha256_hex(&payload).as_str());
    assert_eq!(v["data"]["size_bytes"], payload.len());
    let rec = mock_recent(&m, "POST", "/api/v1/assets").await;
    assert_eq!(rec[0]["content_type"], "application/octet-stream");
    // And it can be read back through the binary download path.
    let v = ws.call("down", api("GET", "/api/v1/assets/blob.bin")).await;
    assert_eq!(
        v["status"],
        200,
        "{}",
        v.to_string().chars().take(300).collect::<String>()
    );
    assert_eq!(v["_content_type"], "application/octet-stream");
    let back = unb64(&v["_base64_content"]);
    assert_eq!(back, payload);
}

#[tokio::test]
async fn api_binary_download_is_base64() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("rec", api("GET", "/api/v1/recordings/abc?size=3000000"))
        .await;
    assert_eq!(v["type"], "api_response");
    assert_eq!(v["status"], 200);
    assert_eq!(v["_content_type"], "video/mp4");
    assert_eq!(v["_content_length"], 3_000_000);
    assert!(
        v.get("data").is_none(),
        "binary replies carry no data field"
    );
    assert_eq!(
        keys(&v),
        [
            "_base64_content",
            "_content_length",
            "_content_type",
            "request_id",
            "status",
            "type"
        ]
    );
    let bytes = unb64(&v["_base64_content"]);
    assert_eq!(bytes.len(), 3_000_000);
    assert!(
        bytes == pattern(3_000_000),
        "decoded bytes differ from the mock's pattern"
    );
}

#[tokio::test]
async fn api_binary_download_other_binary_types() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (i, ct) in ["image/png", "audio/wav", "application/octet-stream"]
        .iter()
        .enumerate()
    {
        let rid = format!("b{i}");
        let v = ws
            .call(
                &rid,
                api("GET", &format!("/api/v1/mock/binary?size=1000&type={ct}")),
            )
            .await;
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["_content_type"], *ct);
        assert_eq!(v["_content_length"], 1000);
        assert!(v.get("data").is_none(), "{v}");
        let bytes = unb64(&v["_base64_content"]);
        assert_eq!(bytes, pattern(1000));
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency and ordering

#[tokio::test]
async fn slow_call_does_not_block_a_later_ping() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut slow = api("GET", "/api/v1/mock/slow?ms=1500");
    slow["request_id"] = json!("slow");
    ws.send(&slow).await;
    ws.send(&json!({"type": "ping", "request_id": "fast"}))
        .await;
    let first = ws.recv().await;
    assert_eq!(
        first,
        json!({"type": "pong", "request_id": "fast"}),
        "the pong must overtake the slow call"
    );
    let second = ws.recv().await;
    assert_eq!(
        second,
        json!({"type": "api_response", "status": 200, "data": {"slept_ms": 1500}, "request_id": "slow"})
    );
}

#[tokio::test]
async fn many_concurrent_api_calls_each_get_their_own_reply() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let n = 50;
    for i in 0..n {
        // Varying delays so replies come back out of order.
        let ms = (n - i) * 7;
        let msg = json!({
            "type": "api", "method": "POST", "path": format!("/api/v1/mock/echo/{i}?ms={ms}"),
            "body": {"i": i}, "request_id": format!("r{i}"),
        });
        ws.send(&msg).await;
        if i % 10 == 0 {
            let slow = json!({"type": "api", "method": "GET", "path": format!("/api/v1/mock/slow?ms={ms}"), "request_id": i});
            ws.send(&slow).await;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(n + n / 10) {
        let v = ws.recv().await;
        assert_eq!(v["type"], "api_response", "{v}");
        assert_eq!(v["status"], 200, "{v}");
        match &v["request_id"] {
            Value::String(rid) => {
                let i: u64 = rid.trim_start_matches('r').parse().expect("rid");
                assert_eq!(
                    v["data"]["path"],
                    format!("/api/v1/mock/echo/{i}"),
                    "reply matched to the wrong request"
                );
                assert_eq!(v["data"]["body_json"], json!({"i": i}));
            }
            Value::Number(num) => {
                let i = num.as_u64().expect("num");
                assert_eq!(v["data"]["slept_ms"], (n - i) * 7);
            }
            other => panic!("unexpected request_id {other}"),
        }
        assert!(
            seen.insert(v["request_id"].to_string()),
            "duplicate reply {v}"
        );
    }
    assert_eq!(seen.len(), (n + n / 10) as usize);
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, n + n / 10);
}

#[tokio::test]
async fn connections_are_independent() {
    let (_m, r) = stack();
    let mut a = Ws::connect(&r.ws_url()).await;
    let mut b = Ws::connect(&r.ws_url()).await;
    let mut slow = api("GET", "/api/v1/mock/slow?ms=1000");
    slow["request_id"] = json!("same");
    a.send(&slow).await;
    // B uses the same request_id; it must get only its own reply.
    let v = b.call("same", json!({"type": "ping"})).await;
    assert_eq!(v, json!({"type": "pong", "request_id": "same"}));
    let v = a.reply_to("same").await;
    assert_eq!(v["type"], "api_response");
    assert_eq!(v["data"]["slept_ms"], 1000);
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn upload(ws: &mut Ws, rid: &str, name: &str, bytes: &[u8]) {
    let v = ws
        .call(
            rid,
            json!({
                "type": "api", "method": "POST", "path": format!("/api/v1/assets?filename={name}"),
                "body": {"_base64_content": b64(bytes), "_content_type": "image/png"},
            }),
        )
        .await;
    assert_eq!(v["status"], 200, "upload failed: {v}");
}

#[tokio::test]
async fn disconnect_closes_sessions_and_empties_the_assets_dir_before_the_next_ready() {
    // PROTOCOL.md, "What happens on disconnect": a connection's sessions are closed; when the last
    // connection leaves, the assets directory (DAYDREAM_SCOPE_ASSETS_DIR) is emptied, and the next
    // connection's `ready` is held back until that is done.
    let tmp = tempfile::tempdir().expect("tempdir");
    let assets = tmp.path().join("assets");
    let routes = default_routes_with(&[(
        "DAYDREAM_SCOPE_ASSETS_DIR: /tmp/daydream-scope/assets",
        &format!(
            "DAYDREAM_SCOPE_ASSETS_DIR: {:?}",
            assets.display().to_string()
        ),
    )]);
    let m = mock_env(
        &[],
        &[("DAYDREAM_SCOPE_ASSETS_DIR", assets.to_str().unwrap())],
    );
    let r = router(&routes.path, &m.http(), &[]);

    // User 1 opens a session and uploads a file.
    let mut a = Ws::connect(&r.ws_url()).await;
    let sid = a.offer_session("o1").await;
    upload(&mut a, "up1", "a.png", b"\x89PNG user one").await;
    assert_eq!(
        std::fs::read(assets.join("a.png")).unwrap(),
        b"\x89PNG user one",
        "the mock wrote the asset"
    );

    // User 1 leaves; user 2 connects at once and must not see user 1's files.
    a.close().await;
    let mut b = Ws::connect(&r.ws_url()).await;
    assert!(assets.is_dir(), "the directory itself stays");
    assert_eq!(
        entries(&assets),
        Vec::<String>::new(),
        "ready arrived before the directory was emptied"
    );
    let deleted = mock_deleted(&m).await;
    assert!(
        deleted.contains(&sid),
        "session {sid} must be DELETEd: {deleted:?}"
    );
    b.assert_open().await;

    // Two tabs of one user: closing one keeps the files.
    let mut c = Ws::connect(&r.ws_url()).await;
    upload(&mut b, "up2", "b.png", b"\x89PNG user two").await;
    let b_id = b.connection_id.clone();
    b.close().await;
    r.wait_for_line_with(&[&b_id, "disconnected"]).await;
    assert_eq!(
        entries(&assets),
        vec!["b.png".to_owned()],
        "another connection is still open"
    );
    c.assert_open().await;

    // The last one leaving empties it.
    c.close().await;
    eventually(
        "the assets dir is emptied after the last connection",
        async || entries(&assets).is_empty().then_some(()),
    )
    .await;
    assert!(assets.is_dir());
}

//! The connection itself, served by the default routes.yaml in front of mock-scope: `ready`, ping, request ids, replies' order and independence, and what a disconnect cleans up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Connection basics

#[tokio::test]
async fn ready_then_ping_pong() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let pong = ws.call("p1", json!({"type": "ping"})).await;
    assert_eq!(pong, json!({"type": "pong", "request_id": "p1"}));
    ws.send(&json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn ready_is_exactly_type_and_connection_id() {
    let (_m, r) = stack();
    let (_s, v) = first_message(r.ws_url()).await;
    assert_eq!(sorted_keys(&v), ["connection_id", "type"], "{v}");
    assert_eq!(v["type"], "ready");
    let id = v["connection_id"].as_str().expect("string id");
    assert_eq!(id.len(), 8, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    // Two connections get different ids.
    let other = Ws::connect(&r.ws_url()).await;
    assert_ne!(other.connection_id, id);
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

/// Numbers serde_json would turn into floats (integers past 64 bits, negative ones, a
/// fraction with a trailing zero) come back as the very text the client sent: from a local
/// reply, a backend round trip, the `$default` template, a schema refusal and the header of a
/// chunked download.
#[tokio::test]
async fn request_ids_past_64_bits_come_back_digit_for_digit() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for id in [
        "123456789012345678901234567890",
        "18446744073709551616",
        "-123456789012345678901234567890",
        "1.50",
    ] {
        for (frame, reply_type) in [
            (r#"{"type":"ping","request_id":ID}"#, "pong"),
            (
                r#"{"type":"api","method":"GET","path":"/api/v1/pipeline/status","request_id":ID}"#,
                "api_response",
            ),
            (r#"{"type":"no_such_type","request_id":ID}"#, "error"),
            (r#"{"type":"api","method":7,"request_id":ID}"#, "error"),
        ] {
            ws.send_text(&frame.replace("ID", id)).await;
            let text = ws.recv_text().await;
            assert!(
                text.contains(&format!(r#""request_id":{id}"#)),
                "{frame}: {text}"
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], reply_type, "{text}");
        }
        // A chunked download's header (its chunks follow on this socket: a fresh one per id).
        let mut dl = Ws::connect(&r.ws_url()).await;
        dl.send_text(&format!(
            r#"{{"type":"api","method":"GET","path":"/api/v1/recordings/x?size=2000000","_chunked":true,"request_id":{id}}}"#
        ))
        .await;
        let text = dl.recv_text().await;
        assert!(text.contains(&format!(r#""request_id":{id}"#)), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["_chunked"], true, "{text}");
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

// ---------------------------------------------------------------------------------------------
// Disconnect

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
    assert!(mock_recent(&m, "DELETE", "/api/v1/webrtc").await.is_empty());
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

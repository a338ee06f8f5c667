//! Requests aimed past the router: unsafe API paths, SSRF probes and session hijacking reach neither the backend nor another connection's session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Traversal, SSRF and hijacking

#[tokio::test]
async fn unsafe_and_denied_api_paths_with_every_method_never_reach_the_backend() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mock_host = m.addr.to_string();
    let paths = [
        // Traversal, plain and percent-encoded in every case mix.
        "/api/v1/assets/../../../etc/passwd".to_owned(),
        "/api/../../etc/passwd".to_owned(),
        "/../etc/passwd".to_owned(),
        "/api/v1/%2e%2e/%2e%2e/%2e%2e/etc/shadow".to_owned(),
        "/api/v1/assets/%2e%2e/%2e%2e/%2e%2e/_mock/exit".to_owned(),
        "/api/v1/assets/%2E%2e/internal/secret".to_owned(),
        "/api/v1/assets/%2e%2E/%2E%2E/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/api/v1/assets/..%2f..%2f..%2f_mock/exit".to_owned(),
        "/api/v1/assets/..%2finternal/secret".to_owned(),
        "/api/v1/assets/..%2Finternal/keys".to_owned(),
        "/api/v1/assets/.%2e/.%2e/.%2e/_mock/reset".to_owned(),
        "/api/v1/assets/%c0%ae%c0%ae/internal".to_owned(),
        // Backslashes, raw and encoded.
        "/api/v1/assets\\..\\..\\internal\\secret".to_owned(),
        "/api/v1/assets\\..\\..\\internal".to_owned(),
        "/api/v1/mock/echo\\..\\..\\x".to_owned(),
        "/api/v1/assets%5c..%5c..%5cinternal".to_owned(),
        "/api/v1/assets%5C..%5Cinternal".to_owned(),
        "/api/v1/assets%5c..%5cinternal".to_owned(),
        "/api/v1/mock/echo%5c..%5cx".to_owned(),
        // Empty segments, and other hosts.
        "/api//v1//internal//secret".to_owned(),
        "/api//v1/internal/x".to_owned(),
        "//api/v1/pipeline/status".to_owned(),
        format!("//{mock_host}/api/v1/pipeline/status"),
        "//evil.example/api/v1/pipeline/status".to_owned(),
        "//evil.example/x".to_owned(),
        format!("http://{mock_host}/api/v1/pipeline/status"),
        "http://127.0.0.1/api/v1/pipeline/status".to_owned(),
        "http://evil/x".to_owned(),
        "https://evil.example/api/v1/pipeline/status".to_owned(),
        "file:///etc/passwd".to_owned(),
        // Header injection, NUL, DEL and bytes that are not UTF-8.
        "/api/v1/pipeline/status%0d%0aHost:%20evil".to_owned(),
        "/api/v1/pipeline/status%0d%0aX-Injected:%201".to_owned(),
        "/api/v1/pipeline/status%0aX-Injected:%201".to_owned(),
        "/api/v1/pipeline/status\r\nX-Injected: 1".to_owned(),
        "/api/v1/mock/echo\r\nHost: evil".to_owned(),
        "/api/v1/pipeline/status%00".to_owned(),
        "/api/v1/pipeline/status%00.json".to_owned(),
        "/api/v1/pipeline/status\u{0}.json".to_owned(),
        "/api/v1/pipeline/status\u{7f}".to_owned(),
        "/api/v1/assets/%ff%fe".to_owned(),
        // Well-formed, but denied or outside the allow list.
        "/api/v1/internal/x".to_owned(),
        "/api/v1/internal/".to_owned(),
        "/api/v1/assets/../internal/x".to_owned(),
        "/api/v1/assets/%2e%2e/internal/x".to_owned(),
        "/_mock/exit".to_owned(),
        "/metrics".to_owned(),
    ];
    let mut i = 0;
    // POST among them: a probe that reached `/_mock/exit` would stop the mock (checked at the end).
    for method in ["GET", "POST", "PATCH", "DELETE", "PUT"] {
        for path in &paths {
            i += 1;
            let rid = format!("tr{i}");
            let mut msg = api(method, path);
            msg["body"] = json!({"x": 1});
            let v = ws.call(&rid, msg).await;
            assert_eq!(v["request_id"], rid.as_str(), "{method} {path:?} → {v}");
            match v["type"].as_str() {
                Some("api_response") => {
                    let s = v["status"].as_u64().unwrap();
                    assert!(s == 400 || s == 403, "{method} {path:?} → {v}");
                    assert!(!error_text(&v).is_empty(), "{method} {path:?} → {v}");
                    assert!(v.get("data").is_none(), "{method} {path:?} → {v}");
                }
                Some("error") => {
                    assert_eq!(v["code"], "VALIDATION_FAILED", "{method} {path:?} → {v}");
                    assert!(!error_text(&v).is_empty(), "{method} {path:?} → {v}");
                }
                _ => panic!("{method} {path:?} → {v}"),
            }
            assert_eq!(
                mock_total(&m).await,
                0,
                "{method} {path:?} reached the backend: {}",
                mock_stats(&m).await
            );
        }
    }
    // The deny list sees the normalized path.
    for (rid, path) in [
        ("deny1", "/api/v1/assets/../internal/secret"),
        ("deny2", "/api/v1/internal/x"),
    ] {
        let v = ws.call(rid, api("GET", path)).await;
        assert_eq!(v["type"], "api_response", "{path} → {v}");
        assert_eq!(v["status"], 403, "{path} → {v}");
        assert_eq!(v["request_id"], rid);
    }
    ws.assert_open().await;
    assert_eq!(
        mock_total(&m).await,
        0,
        "nothing may reach the backend: {}",
        mock_stats(&m).await
    );
    assert!(mock_recent(&m, "GET", "/api/v1/internal").await.is_empty());
    let (code, _) = get_json(&format!("{}/health", m.http())).await;
    assert_eq!(code, 200, "the mock is alive (no /_mock/exit got through)");
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn ssrf_probes_make_the_router_fetch_nothing() {
    let (m, mut r) = stack();
    // A second mock-scope stands at the address the probes name: its request log records any
    // request the router makes there.
    let canary = mock(&[]);
    let canary_addr = canary.addr;
    let url = format!("http://{canary_addr}/weights.safetensors");
    let mut ws = Ws::connect(&r.ws_url()).await;

    // `_cdn_url` bodies: at most passed to the backend as they are; the router fetches nothing.
    let bodies = [
        ("/api/v1/assets?filename=x.png", json!({"_cdn_url": url})),
        (
            "/api/v1/assets?filename=y.png",
            json!({"_cdn_url": url, "_content_type": "image/png"}),
        ),
        ("/api/v1/loras", json!({"_cdn_url": url, "url": url})),
        (
            "/api/v1/models/download",
            json!({"_cdn_url": url, "pipeline_id": "x"}),
        ),
        (
            "/api/v1/assets?filename=z.png",
            json!({"_base64_content": "aGk=", "_cdn_url": url}),
        ),
        (
            "/api/v1/pipeline/load",
            json!({"pipeline_ids": ["x"], "load_params": {"lora": url}}),
        ),
    ];
    for (i, (path, body)) in bodies.iter().enumerate() {
        let rid = format!("cdn{i}");
        let mut msg = api("POST", path);
        msg["body"] = body.clone();
        let v = ws.call(&rid, msg).await;
        assert_eq!(v["request_id"], rid.as_str(), "{v}");
        match v["type"].as_str() {
            Some("error") => {}
            Some("api_response") if v.get("error").is_some() => {}
            Some("api_response") => {
                // Passed through: the backend got the URL as plain data.
                let recent = mock_recent(&m, "POST", path.split('?').next().unwrap()).await;
                let last = recent
                    .last()
                    .unwrap_or_else(|| panic!("{path}: answered without the backend: {v}"));
                if body.get("_base64_content").is_none() {
                    assert_eq!(last["content_type"], "application/json", "{last}");
                    assert_eq!(last["body_json"]["_cdn_url"], body["_cdn_url"], "{last}");
                }
            }
            _ => panic!("{path} → {v}"),
        }
    }
    // URLs and host tricks in the path.
    let host = canary_addr.to_string();
    let paths = [
        format!("http://{host}/x"),
        format!("https://{host}/x"),
        format!("//{host}/x"),
        format!("///{host}/x"),
        format!("@{host}/api/v1/pipeline/status"),
        format!(":{}/api/v1/pipeline/status", canary_addr.port()),
        format!("/\\{host}/x"),
        format!("/%5c{host}/x"),
        format!("\\\\{host}\\x"),
        format!("/api/v1/mock/echo/@{host}"),
        format!("/api/v1/mock/echo?url=http://{host}/"),
    ];
    for (i, path) in paths.iter().enumerate() {
        let rid = format!("url{i}");
        let v = ws.call(&rid, api("GET", path)).await;
        assert_eq!(v["request_id"], rid.as_str(), "{path:?} → {v}");
        match v["type"].as_str() {
            Some("error") => assert_eq!(v["code"], "VALIDATION_FAILED", "{path:?} → {v}"),
            Some("api_response") if v.get("error").is_some() => {
                assert!(
                    (400..500).contains(&v["status"].as_u64().unwrap()),
                    "{path:?} → {v}"
                );
            }
            Some("api_response") => {
                // Only a path on the backend itself may be answered.
                assert!(path.starts_with("/api/v1/mock/echo"), "{path:?} → {v}");
                assert_eq!(v["status"], 200, "{v}");
            }
            _ => panic!("{path:?} → {v}"),
        }
    }
    // Signaling fields carrying URLs are data too.
    let v = ws
        .call("sid-url", json!({"type": "icecandidate", "sessionId": format!("@{host}/x"), "candidate": candidate()}))
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    ws.assert_open().await;
    // Every probe has been answered (and a ping after them): a fetch made while handling one would
    // be in the canary's log by now.
    assert_eq!(
        mock_total(&canary).await,
        0,
        "the router requested a client-supplied address: {}",
        mock_stats(&canary).await
    );
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn a_session_is_usable_only_by_the_connection_that_opened_it() {
    let (m, mut r) = stack();
    let mut owner = Ws::connect(&r.ws_url()).await;
    let sid = owner.offer_session("own-offer").await;
    let mut thief = Ws::connect(&r.ws_url()).await;
    let backend_calls = mock_total(&m).await;

    // Without a session of its own, a bare candidate has nowhere to go.
    let v = thief
        .call(
            "bare",
            json!({"type": "icecandidate", "candidate": candidate()}),
        )
        .await;
    assert_eq!(
        v,
        json!({"type": "error", "error": "No session ID available for ICE candidate", "request_id": "bare"})
    );
    // The owner's id, near misses, traversal and unknown ids: candidates and end-of-candidates alike.
    let guesses = [
        sid.clone(),
        sid.to_uppercase(),
        format!("{sid} "),
        format!(" {sid}"),
        format!("{sid}/"),
        format!("{sid}/../{sid}"),
        format!("../offer/{sid}"),
        "../../pipeline/load".to_owned(),
        "%2e%2e%2f%2e%2e%2fpipeline%2fload".to_owned(),
        "*".to_owned(),
        "null".to_owned(),
        "0".to_owned(),
        "nope".to_owned(),
    ];
    for (i, guess) in guesses.iter().enumerate() {
        for cand in [candidate(), Value::Null] {
            let rid = format!("hj{i}-{}", cand.is_null());
            let v = thief
                .call(&rid, icecandidate_for(guess.as_str(), cand))
                .await;
            assert_eq!(v["type"], "error", "{guess:?} → {v}");
            assert_eq!(v["code"], "SESSION_NOT_OWNED", "{guess:?} → {v}");
            assert_eq!(v["request_id"], rid.as_str());
        }
    }
    thief.assert_open().await;
    assert_eq!(
        mock_total(&m).await,
        backend_calls,
        "a refused candidate reached the backend"
    );
    assert_eq!(mock_sessions(&m).await[0]["candidates"], json!([]));

    // The owner can.
    let v = owner
        .call("own", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(
        v,
        json!({"type": "icecandidate_ack", "status": "ok", "request_id": "own"})
    );
    let patches = || async { mock_recent(&m, "PATCH", "/api/v1/webrtc/offer").await.len() };
    assert_eq!(patches().await, 1);

    // The thief's own session does not make the owner's usable.
    let own = thief.offer_session("thief-offer").await;
    let v = thief
        .call("after-own", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");

    // A connection that tried and left takes nothing with it (its cleanup is done when it logs
    // `disconnected`): the owner's session lives on and is still the owner's.
    let mut passer = Ws::connect(&r.ws_url()).await;
    let v = passer
        .call("passer", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    let passer_id = passer.connection_id.clone();
    passer.close().await;
    r.wait_for_line_with(&[&passer_id, "disconnected"]).await;
    assert!(mock_deleted(&m).await.is_empty());
    let v = owner
        .call("still-mine", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(patches().await, 2, "only the owner's candidates were sent");

    // Once the owner leaves, its session is closed and still not the thief's.
    owner.close().await;
    eventually("the owner's session is deleted", async || {
        mock_deleted(&m).await.contains(&sid).then_some(())
    })
    .await;
    let v = thief
        .call("after-leave", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    assert_eq!(patches().await, 2);
    assert_eq!(
        mock_deleted(&m).await,
        vec![sid.clone()],
        "only the owner's session is closed"
    );
    let live: Vec<Value> = mock_sessions(&m).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], own.as_str());
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn session_hijack_through_the_api_passthrough_is_refused() {
    // The `api` route must not become a way around session ownership: another connection's
    // session cannot be patched or torn down by naming its backend path.
    let (m, mut r) = stack();
    let mut owner = Ws::connect(&r.ws_url()).await;
    let sid = owner.offer("own-offer").await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut thief = Ws::connect(&r.ws_url()).await;
    let path = format!("/api/v1/webrtc/offer/{sid}");
    for (i, (method, body)) in [
        ("PATCH", json!({"candidates": [candidate()]})),
        ("DELETE", Value::Null),
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("api-hj{i}");
        let mut msg = api(method, &path);
        msg["body"] = body;
        let v = thief.call(&rid, msg).await;
        assert_eq!(v["request_id"], rid.as_str(), "{v}");
        let refused = v["type"] == "error"
            || (v["type"] == "api_response"
                && v["status"]
                    .as_u64()
                    .is_some_and(|s| (400..500).contains(&s))
                && v.get("error").is_some());
        assert!(
            refused,
            "{method} {path} from another connection must be refused: {v}"
        );
    }
    assert!(
        mock_recent(&m, "PATCH", "/api/v1/webrtc/offer")
            .await
            .is_empty(),
        "a PATCH reached the backend"
    );
    assert!(
        mock_deleted(&m).await.is_empty(),
        "another connection tore the session down"
    );
    assert_eq!(mock_sessions(&m).await.len(), 1);
    owner.assert_open().await;
    assert_router_alive(&mut r).await;
}

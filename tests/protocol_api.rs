//! The `api` rows of the protocol table, served by the default routes.yaml in front of mock-scope: methods, paths, bodies, statuses, and binary payloads both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// api

#[tokio::test]
async fn api_get_json() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("a1", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["request_id"], "a1", "{v}");
    // The tests' backend starts with `passthrough` loaded (PIPELINE), as a warm runner does.
    assert_eq!(v["data"]["status"], "loaded", "{v}");
    assert_eq!(v["data"]["pipeline_id"], "passthrough", "{v}");
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
    // The routes add the connection id and the deployment's info (its variables unset here:
    // `unknown`) to pipeline loads; no user id was given.
    let mut want = body.clone();
    want["connection_id"] = json!(ws.connection_id);
    want["connection_info"] = json!({"gpu_type": "unknown", "fal_region": "unknown", "fal_runner_id": "unknown", "fal_log_labels": "unknown"});
    assert_eq!(sent[0]["body_json"], want);

    // Loading runs in the background, as on the real server: wait until the backend says
    // it is done, then read the status through the router.
    let status_url = format!("{}/api/v1/pipeline/status", m.http());
    eventually("the pipeline to be loaded", || async {
        let (_, s) = get_json(&status_url).await;
        (s["status"] == "loaded" && s["pipeline_id"] == "streamdiffusionv2").then_some(())
    })
    .await;
    let s = ws.call("st", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(s["data"]["pipeline_id"], "streamdiffusionv2", "{s}");
    assert_eq!(s["status"], 200);
    assert_eq!(s["data"]["load_params"], body["load_params"]);
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
    assert_eq!(v["data"], json!({"detail": "Frontend not built"}));
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
        "type": "api", "method": "POST", "path": "/api/v1/assets?filename=blob.wav",
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
    let v = ws.call("down", api("GET", "/api/v1/assets/blob.wav")).await;
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
        sorted_keys(&v),
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

#[tokio::test]
async fn plugin_installs_are_denied_by_the_default_routes_and_listing_stays_open() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut install = api("POST", "/api/v1/plugins");
    install["body"] = json!({"package": "git+https://example.com/evil/plugin.git"});
    let v = ws.call("inst", install).await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 403, "{v}");
    assert_eq!(v["request_id"], "inst", "{v}");
    assert_eq!(error_text(&v), "Request not allowed: POST /api/v1/plugins");
    // Not through a chunked upload either, nor by a path that normalizes to it.
    let v = ws
        .call("up", json!({"type": "upload_start", "method": "POST", "path": "/api/v1/x/../plugins",
                           "content_type": "application/json", "size": 10, "sha256": "0".repeat(64)}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(error_text(&v).contains("Request not allowed"), "{v}");
    assert!(
        mock_recent(&m, "POST", "/api/v1/plugins").await.is_empty(),
        "an install reached the backend"
    );
    let v = ws.call("list", api("GET", "/api/v1/plugins")).await;
    assert_eq!(v["status"], 200, "{v}");
}

#[tokio::test]
async fn set_user_id_is_answered_user_id_set() {
    // Scope 0.2.3's cloud-mode client sends it right after `ready`, without waiting.
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.send(&json!({"type": "set_user_id", "user_id": "user_123"}))
        .await;
    let v = ws.call("s", api("GET", "/api/v1/pipeline/status")).await;
    assert_eq!(v["status"], 200, "{v}");
    let set = ws.recv().await;
    assert_eq!(set, json!({"type": "user_id_set", "user_id": "user_123"}));
    let v = ws
        .call("r", json!({"type": "set_user_id", "user_id": "u2"}))
        .await;
    assert_eq!(
        v,
        json!({"type": "user_id_set", "user_id": "u2", "request_id": "r"})
    );
}

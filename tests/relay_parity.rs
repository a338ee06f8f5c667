//! What Scope 0.2.3's relay did that its clients rely on: the `set_user_id` gate, log push after
//! the grant with skipped loggers, the plugin allowlist, plugin cleanup between users, connection
//! metadata in backend bodies, the fal connection id hooks, and lifecycle events.
//!
//! The fal example's routes run here against mock-scope, whose fake Daydream API
//! (`/daydream/v1/…`) stands in for the real one through `DAYDREAM_API_BASE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

/// The fal example's routes (schemas made absolute), with `(from, to)` replacements.
fn fal_routes(replacements: &[(&str, &str)]) -> TempRoutes {
    let mut text = std::fs::read_to_string(repo().join("examples/fal/routes.yaml")).unwrap();
    text = text.replace(
        "schemas: ../../schemas",
        &format!(
            "schemas: {:?}",
            repo().join("schemas").display().to_string()
        ),
    );
    for (from, to) in replacements {
        assert_eq!(text.matches(from).count(), 1, "{from:?} in the fal routes");
        text = text.replacen(from, to, 1);
    }
    TempRoutes::new(&text)
}

/// The fal routes in front of a fresh mock whose fake Daydream API they use.
fn fal_stack(mock_args: &[&str], replacements: &[(&str, &str)]) -> (Proc, Proc, TempRoutes) {
    let m = mock(mock_args);
    let routes = fal_routes(replacements);
    let api = format!("{}/daydream", m.http());
    let r = router_with(
        &routes.path,
        &m.http(),
        &[],
        &[
            ("DAYDREAM_API_BASE", api.as_str()),
            ("SCOPE_ROUTER_OPERATOR_TOKEN", "op"),
            ("NOMAD_DC", "us-east"),
            ("FAL_RUNNER_ID", "runner-7"),
            ("FAL_LOG_LABELS", "{\"app\":\"scope\"}"),
        ],
    );
    (m, r, routes)
}

/// The fal routes in front of a fresh mock, with the Daydream API unreachable.
fn fal_stack_without_api() -> (Proc, Proc, TempRoutes) {
    let m = mock(&[]);
    let routes = fal_routes(&[]);
    let r = router_with(
        &routes.path,
        &m.http(),
        &[],
        &[("DAYDREAM_API_BASE", dead_backend_url().as_str())],
    );
    (m, r, routes)
}

fn set_user(user: &str) -> Value {
    json!({"type": "set_user_id", "user_id": user})
}

#[tokio::test]
async fn the_gate_grants_and_then_serves_what_was_sent_meanwhile_in_order() {
    let (m, r, _t) = fal_stack(&[], &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    // As the local server in cloud mode does: no wait for user_id_set.
    ws.send(&json!({"type": "set_user_id", "user_id": "user_123", "request_id": "u"}))
        .await;
    ws.send(&json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status", "request_id": "a"}))
        .await;
    ws.send(&json!({"type": "ping", "request_id": "p"})).await;
    let first = ws.recv().await;
    assert_eq!(
        first,
        json!({"request_id": "u", "type": "user_id_set", "user_id": "user_123"})
    );
    let a = ws.reply_to("a").await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(ws.reply_to("p").await["type"], "pong");
    assert_eq!(
        mock_recent(&m, "GET", "/daydream/v1/users/user_123")
            .await
            .len(),
        1,
        "one access check"
    );
}

#[tokio::test]
async fn an_unknown_user_or_an_unreachable_api_is_access_denied_and_4003() {
    let (_m, r, _t) = fal_stack(&[], &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.send(&json!({"type": "set_user_id", "user_id": "nobody", "request_id": "u"}))
        .await;
    ws.send(&json!({"type": "ping", "request_id": "p"})).await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "ACCESS_DENIED", "{v}");
    assert_eq!(v["request_id"], "u", "{v}");
    assert_eq!(ws.closed().await, Some(4003));

    // A user id that would climb out of the users path is one path segment.
    let (m2, r2, _t2) = fal_stack(&[], &[]);
    let mut ws = Ws::connect(&r2.ws_url()).await;
    let v = ws.call("u", set_user("../plugins")).await;
    assert_eq!(v["code"], "ACCESS_DENIED", "{v}");
    assert!(
        mock_recent(&m2, "GET", "/daydream/v1/plugins")
            .await
            .is_empty()
    );

    let (_m3, r3, _t3) = fal_stack_without_api();
    let mut ws = Ws::connect(&r3.ws_url()).await;
    let v = ws.call("u", set_user("user_123")).await;
    assert_eq!(v["code"], "ACCESS_DENIED", "{v}");
    assert_eq!(ws.closed().await, Some(4003));
}

#[tokio::test]
async fn a_required_gate_refuses_messages_before_set_user_id_and_stays_open() {
    let (_m, r, _t) = fal_stack(&[], &[("    required: false\n", "    required: true\n")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("early", json!({"type": "ping"})).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "AUTH_REQUIRED", "{v}");
    assert!(error_text(&v).contains("set_user_id"), "{v}");
    let v = ws
        .call("bad", json!({"type": "set_user_id", "user_id": ""}))
        .await;
    assert_eq!(v["code"], "VALIDATION_FAILED", "{v}");
    let v = ws.call("u", set_user("user_123")).await;
    assert_eq!(v["type"], "user_id_set", "{v}");
    assert_eq!(ws.call("p", json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn without_a_check_set_user_id_is_answered_and_goes_into_backend_bodies() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("u", set_user("u9")).await;
    assert_eq!(
        v,
        json!({"request_id": "u", "type": "user_id_set", "user_id": "u9"})
    );
    let mut load = api("POST", "/api/v1/pipeline/load");
    load["body"] = json!({"pipeline_ids": ["passthrough"]});
    let v = ws.call("load", load).await;
    assert_eq!(v["status"], 200, "{v}");
    ws.offer_session("o").await;
    let load = mock_recent(&m, "POST", "/api/v1/pipeline/load").await;
    let body = &load.last().unwrap()["body_json"];
    assert_eq!(body["user_id"], "u9", "{body}");
    assert_eq!(body["connection_id"], ws.connection_id.as_str(), "{body}");
    assert_eq!(body["connection_info"]["fal_region"], "unknown", "{body}");
    let offer = mock_recent(&m, "POST", "/api/v1/webrtc/offer").await;
    let body = &offer.last().unwrap()["body_json"];
    assert_eq!(body["user_id"], "u9", "{body}");
    assert!(body["connection_info"].is_object(), "{body}");
}

#[tokio::test]
async fn the_fal_routes_send_connection_info_and_the_connection_id_hooks() {
    let (m, r, _t) = fal_stack(&[], &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(
        ws.call("u", set_user("user_123")).await["type"],
        "user_id_set"
    );
    let mut load = api("POST", "/api/v1/pipeline/load");
    load["body"] = json!({"pipeline_ids": ["passthrough"]});
    assert_eq!(ws.call("load", load).await["status"], 200);
    let load = mock_recent(&m, "POST", "/api/v1/pipeline/load").await;
    let info = &load.last().unwrap()["body_json"]["connection_info"];
    assert_eq!(info["fal_region"], "us-east", "{info}");
    assert_eq!(info["fal_runner_id"], "runner-7", "{info}");
    assert_eq!(info["fal_log_labels"], json!({"app": "scope"}), "{info}");
    let id = ws.connection_id.clone();
    let put = eventually("the connection id PUT", async || {
        mock_recent(&m, "PUT", "/api/v1/internal/fal-connection-id")
            .await
            .pop()
    })
    .await;
    assert_eq!(put["body_json"], json!({"connection_id": id}), "{put}");
    ws.close().await;
    eventually("the connection id DELETE", async || {
        (!mock_recent(&m, "DELETE", "/api/v1/internal/fal-connection-id")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn plugin_installs_follow_the_daydream_allowlist() {
    // 150 entries: the allowed package is on the second page.
    let mut list: Vec<String> = (0..149)
        .map(|i| format!("https://github.com/daydreamlive/p{i}"))
        .collect();
    list.push("https://github.com/DaydreamLive/Scope-Plugin-Z".to_owned());
    let list = list.join(",");
    let (m, r, _t) = fal_stack(&["--daydream-plugins", &list], &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let install = |package: &str| {
        let mut v = api("POST", "/api/v1/plugins");
        v["body"] = json!({ "package": package });
        v
    };
    let v = ws
        .call(
            "ok",
            install("git+https://github.com/daydreamlive/scope-plugin-z.git"),
        )
        .await;
    assert_eq!(v["status"], 200, "{v}");
    let v = ws.call("evil", install("https://github.com/evil/x")).await;
    assert_eq!(v["status"], 403, "{v}");
    assert_eq!(
        error_text(&v),
        "Plugin 'https://github.com/evil/x' is not in the allowed list for cloud mode"
    );
    let v = ws.call("none", api("POST", "/api/v1/plugins")).await;
    assert_eq!(v["status"], 400, "{v}");
    // Two pages fetched once for all three checks (the list is cached).
    let pages = mock_recent(&m, "GET", "/daydream/v1/plugins").await;
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert_eq!(
        mock_recent(&m, "POST", "/api/v1/plugins").await.len(),
        1,
        "only the allowed install reached the backend"
    );

    let (_m2, r2, _t2) = fal_stack_without_api();
    let mut ws = Ws::connect(&r2.ws_url()).await;
    let v = ws
        .call(
            "down",
            install("https://github.com/daydreamlive/scope-plugin-a"),
        )
        .await;
    assert_eq!(v["status"], 503, "{v}");
    assert!(
        error_text(&v).starts_with("Unable to verify plugin allowlist"),
        "{v}"
    );
    ws.assert_open().await;
}

#[tokio::test]
async fn between_users_only_plugins_not_bundled_are_removed_and_ready_waits_for_it() {
    let (m, r, _t) = fal_stack(&["--bundled-plugins", "core-plugin"], &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.call("u", set_user("user_123")).await;
    let mut v = api("POST", "/api/v1/plugins");
    v["body"] = json!({"package": "https://github.com/daydreamlive/scope-plugin-a"});
    assert_eq!(ws.call("i", v).await["status"], 200);
    // The removal is slow: the next user's `ready` must still come after it.
    set_faults(
        &m,
        json!({"delay_ms": {"DELETE /api/v1/plugins/scope-plugin-a": 1500}}),
    )
    .await;
    ws.close().await;
    let mut next = Ws::connect(&r.ws_url()).await;
    let v = next.call("l", api("GET", "/api/v1/plugins")).await;
    let names: Vec<&str> = v["data"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core-plugin"], "{v}");
}

#[tokio::test]
async fn lifecycle_events_reach_the_sink_and_a_stalled_sink_delays_nothing() {
    let m = mock(&[]);
    let sink = format!("{}/daydream/events", m.http());
    let events_line = format!("  events: {{ url: \"{sink}\", queue: 2 }}\n  on_disconnect:\n");
    let routes = default_routes_with(&[("  on_disconnect:\n", events_line.as_str())]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.call("u", set_user("u1")).await;
    let id = ws.connection_id.clone();
    ws.close().await;
    let events = eventually("both events at the sink", async || {
        let (_, v) = get_json(&sink).await;
        let list = v["events"].as_array().cloned().unwrap_or_default();
        (list.len() >= 2).then_some(list)
    })
    .await;
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(data[0]["type"], "websocket_connected", "{data:?}");
    assert_eq!(data[0]["connection_id"], id.as_str());
    assert_eq!(data[1]["type"], "websocket_disconnected", "{data:?}");
    assert_eq!(data[1]["user_id"], "u1");
    assert!(data[1]["duration_ms"].is_u64(), "{data:?}");
    assert!(data[1]["session_end_time_ms"].as_u64() >= data[1]["session_start_time_ms"].as_u64());

    // The sink stalls: connections and replies go on, and the overflow is dropped and counted.
    set_faults(&m, json!({"delay_ms": {"POST /daydream/events": 600000}})).await;
    for i in 0..6 {
        let mut ws = Ws::connect(&r.ws_url()).await;
        assert_eq!(
            ws.call(&format!("p{i}"), json!({"type": "ping"})).await["type"],
            "pong"
        );
        ws.close().await;
    }
    let (_, body) = http(&format!("{}/metrics", r.http()), "GET", None).await;
    let dropped = body
        .lines()
        .find(|l| l.starts_with("scope_router_events_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "dropped events are counted:\n{body}");
}

#[tokio::test]
async fn log_lines_come_only_after_the_grant_without_the_info_of_skipped_loggers() {
    // The fal routes supervising a mock that logs in Scope's format every 50 ms.
    let port = free_port();
    let command = serde_json::to_string(&mock_command(port, &["--log-interval-ms", "50"])).unwrap();
    let original = r#"  command: ["uv", "run", "daydream-scope", "--no-browser", "--host", "127.0.0.1", "--port", "8000"]"#;
    let url = format!("  url: http://127.0.0.1:{port}\n");
    let routes = fal_routes(&[
        ("  url: http://127.0.0.1:8000\n", url.as_str()),
        (original, &format!("  command: {command}")),
    ]);
    let api = format!("http://127.0.0.1:{port}/daydream");
    let r = router_supervising(
        &routes.path,
        &[
            ("DAYDREAM_API_BASE", api.as_str()),
            // Extends the routes' list: the heartbeat's logger is skipped too.
            ("CLOUD_LOG_SKIP_LOGGERS", " scope.server.app ,other.logger"),
        ],
    );
    wait_backend_ready(&r).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    // Lines flow in the router's own log, and none reaches the client before the grant.
    r.wait_for_line("broker slow at event 10").await;
    assert_eq!(ws.call("p", json!({"type": "ping"})).await["type"], "pong");
    assert!(
        ws.stash.iter().all(|m| m["type"] != "logs"),
        "logs before the grant: {:?}",
        ws.stash
    );
    assert_eq!(
        ws.call("u", set_user("user_123")).await["type"],
        "user_id_set"
    );
    let mut lines: Vec<String> = Vec::new();
    while !lines.iter().any(|l| l.contains("broker slow")) {
        let m = ws.recv().await;
        if m["type"] == "logs" {
            lines.extend(
                m["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_owned()),
            );
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("scope.server.kafka_publisher - WARNING")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("published event")),
        "INFO of a skipped logger: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("heartbeat")),
        "INFO of a logger from CLOUD_LOG_SKIP_LOGGERS: {lines:?}"
    );
}

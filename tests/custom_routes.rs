//! Routes added in YAML alone (no code change) are served: local replies, forwards, `$default`, routing on a JSON pointer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const ECHO_NAME_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "echo_name.json",
  "title": "echo_name",
  "description": "Echoes a name back, with the connection id.",
  "type": "object",
  "properties": {
    "type": { "const": "echo_name" },
    "name": { "type": "string", "minLength": 1, "maxLength": 64 },
    "request_id": { "description": "Echoed unchanged in the reply." }
  },
  "required": ["type", "name"],
  "examples": [
    { "type": "echo_name", "name": "Ada" },
    { "type": "echo_name", "name": "Grace", "request_id": "n1" }
  ],
  "x-invalid-examples": [
    { "type": "echo_name" },
    { "type": "echo_name", "name": 5 }
  ]
}
"#;

const CUSTOM_ROUTES: &str = r#"# A routes file written by a test: new message types, defined in YAML only.
version: 1
schemas: schemas
backend:
  url: http://127.0.0.1:9
connection:
  on_connect: { type: ready, connection_id: "${connection.id}", flavour: custom }
routes:
  ping:
    reply: { type: pong }

  echo_name:
    schema: echo_name.json
    reply:
      type: name_echo
      name: "${message.name}"
      connection: "${connection.id}"
      greeting: "hello ${message.name}, you are ${connection.id}"

  tag:
    forward:
      method: POST
      path: /api/v1/mock/echo/${message.id}
      body:
        name: "${message.name}"
        conn: "${connection.id}"
        fixed: [1, "two", null]
        nested: { id: "${message.id}", label: "id=${message.id}" }
      reply: { type: tagged, status: "${response.status}", echoed: "${response.json}" }

  $default:
    reply: { type: nope, unknown: "${message.type}", hint: "try echo_name" }
"#;

fn custom_stack() -> (Proc, Proc, TempRoutes) {
    let routes = TempRoutes::new(CUSTOM_ROUTES);
    routes.write("schemas/echo_name.json", ECHO_NAME_SCHEMA);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    (m, r, routes)
}

#[tokio::test]
async fn custom_routes_file_validates() {
    let routes = TempRoutes::new(CUSTOM_ROUTES);
    routes.write("schemas/echo_name.json", ECHO_NAME_SCHEMA);
    let out = Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(&routes.path)
        .output()
        .expect("run validate");
    assert!(
        out.status.success(),
        "validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn yaml_only_reply_route_is_served() {
    let (m, r, _routes) = custom_stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let id = ws.connection_id.clone();
    let v = ws
        .call("n1", json!({"type": "echo_name", "name": "Ada"}))
        .await;
    assert_eq!(
        v,
        json!({
            "type": "name_echo", "name": "Ada", "connection": id,
            "greeting": format!("hello Ada, you are {id}"), "request_id": "n1",
        })
    );
    // Object request ids are echoed as well.
    let v = ws
        .call_with_id(
            json!({"seq": [1, 2]}),
            json!({"type": "echo_name", "name": "Grace"}),
        )
        .await;
    assert_eq!(v["name"], "Grace");
    assert_eq!(v["request_id"], json!({"seq": [1, 2]}));
    assert_eq!(
        mock_total(&m).await,
        0,
        "a reply route never calls the backend"
    );
}

#[tokio::test]
async fn on_connect_template_is_used() {
    let (_m, r, _routes) = custom_stack();
    let (_s, v) = first_message(r.ws_url()).await;
    assert_eq!(v["type"], "ready");
    assert_eq!(v["flavour"], "custom");
    assert_eq!(v["connection_id"].as_str().expect("id").len(), 8);
}

#[tokio::test]
async fn yaml_only_schema_rejects_invalid_messages() {
    let (m, r, _routes) = custom_stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (rid, msg) in [
        ("bad1", json!({"type": "echo_name"})),
        ("bad2", json!({"type": "echo_name", "name": 5})),
        ("bad3", json!({"type": "echo_name", "name": ""})),
    ] {
        let v = ws.call(rid, msg.clone()).await;
        assert_eq!(v["type"], "error", "{msg} → {v}");
        assert_eq!(v["request_id"], rid);
        assert!(
            v["error"].as_str().expect("error text").contains("name"),
            "{v}"
        );
    }
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
}

#[tokio::test]
async fn yaml_only_forward_route_renders_path_and_body() {
    let (m, r, _routes) = custom_stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let conn = ws.connection_id.clone();
    let v = ws
        .call("t1", json!({"type": "tag", "id": "abc123", "name": "Ada"}))
        .await;
    assert_eq!(v["type"], "tagged", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["request_id"], "t1");
    let want_body = json!({
        "name": "Ada", "conn": conn, "fixed": [1, "two", null],
        "nested": {"id": "abc123", "label": "id=abc123"},
    });
    assert_eq!(v["echoed"]["method"], "POST");
    assert_eq!(v["echoed"]["path"], "/api/v1/mock/echo/abc123");
    assert_eq!(v["echoed"]["body_json"], want_body);

    // The backend saw the same thing.
    let rec = mock_recent(&m, "POST", "/api/v1/mock/echo/").await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["path"], "/api/v1/mock/echo/abc123");
    assert_eq!(rec[0]["content_type"], "application/json");
    assert_eq!(rec[0]["body_json"], want_body);

    // A number id keeps its JSON type in the body and is text in the path; a missing name drops its key.
    let v = ws.call("t2", json!({"type": "tag", "id": 42})).await;
    assert_eq!(v["echoed"]["path"], "/api/v1/mock/echo/42", "{v}");
    assert_eq!(
        v["echoed"]["body_json"],
        json!({"conn": conn, "fixed": [1, "two", null], "nested": {"id": 42, "label": "id=42"}})
    );
}

#[tokio::test]
async fn yaml_only_forward_path_cannot_be_steered_out_by_the_message() {
    let (m, r, _routes) = custom_stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for (i, id) in [
        "../../internal/x",
        "..%2f..%2finternal%2fx",
        "../../../../../etc/passwd",
    ]
    .iter()
    .enumerate()
    {
        let rid = format!("e{i}");
        let v = ws.call(&rid, json!({"type": "tag", "id": id})).await;
        assert_eq!(v["type"], "error", "{id:?} → {v}");
        assert_eq!(v["request_id"], rid.as_str());
    }
    ws.assert_open().await;
    assert_eq!(
        mock_total(&m).await,
        0,
        "no steered request may reach the backend"
    );
}

#[tokio::test]
async fn default_route_can_be_overridden() {
    let (_m, r, _routes) = custom_stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("d1", json!({"type": "whatever", "x": 1})).await;
    assert_eq!(
        v,
        json!({"type": "nope", "unknown": "whatever", "hint": "try echo_name", "request_id": "d1"})
    );
    let v = ws
        .call_with_id(
            json!(17),
            json!({"type": "api", "path": "/api/v1/pipeline/status"}),
        )
        .await;
    assert_eq!(
        v,
        json!({"type": "nope", "unknown": "api", "hint": "try echo_name", "request_id": 17})
    );
    let pong = ws.call("p", json!({"type": "ping"})).await;
    assert_eq!(pong, json!({"type": "pong", "request_id": "p"}));
}

const POINTER_ROUTES: &str = r#"version: 1
backend:
  url: http://127.0.0.1:9
connection:
  route_on: /meta/kind
routes:
  hello:
    reply: { type: hi, who: "${message.meta.who}", kind: "${message.meta.kind}" }
  status:
    forward:
      method: GET
      path: /api/v1/pipeline/status
      reply: { type: status, data: "${response.json}" }
  $default:
    reply: { type: error, error: "no route for ${message.meta.kind}" }
"#;

#[tokio::test]
async fn route_on_json_pointer() {
    let routes = TempRoutes::new(POINTER_ROUTES);
    std::fs::create_dir_all(routes.dir.path().join("schemas")).expect("mkdir");
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;

    let v = ws
        .call("h", json!({"meta": {"kind": "hello", "who": "Ada"}}))
        .await;
    assert_eq!(
        v,
        json!({"type": "hi", "who": "Ada", "kind": "hello", "request_id": "h"})
    );

    // `type` means nothing here: only /meta/kind routes.
    let v = ws
        .call("s", json!({"type": "hello", "meta": {"kind": "status"}}))
        .await;
    assert_eq!(v["type"], "status", "{v}");
    assert_eq!(v["request_id"], "s", "{v}");
    assert_eq!(v["data"]["status"], "loaded", "{v}");
    assert_eq!(
        mock_recent(&m, "GET", "/api/v1/pipeline/status")
            .await
            .len(),
        1
    );

    let v = ws.call("z", json!({"meta": {"kind": "zzz"}})).await;
    assert_eq!(
        v,
        json!({"type": "error", "error": "no route for zzz", "request_id": "z"})
    );

    // No routing key at all: an error naming the pointer, request_id echoed, connection open.
    for (rid, msg) in [
        ("m1", json!({"type": "hello"})),
        ("m2", json!({"meta": {"kind": 5}})),
        ("m3", json!({"meta": "hello"})),
    ] {
        let v = ws.call(rid, msg.clone()).await;
        assert_eq!(v["type"], "error", "{msg} → {v}");
        assert_eq!(v["request_id"], rid);
        assert!(
            v["error"].as_str().expect("text").contains("/meta/kind"),
            "{v}"
        );
    }
    let v = ws
        .call("h2", json!({"meta": {"kind": "hello", "who": "Grace"}}))
        .await;
    assert_eq!(v["who"], "Grace");
}

#[tokio::test]
async fn routes_file_that_names_no_schema_needs_no_schemas_dir() {
    // `schemas:` defaults to `schemas`; a file whose routes name no schema must not need that directory
    // (`validate` accepts it, so `serve` must too).
    let routes = TempRoutes::new(POINTER_ROUTES);
    assert!(!routes.dir.path().join("schemas").exists());
    let out = Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(&routes.path)
        .output()
        .expect("run validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("h", json!({"meta": {"kind": "hello", "who": "Ada"}}))
        .await;
    assert_eq!(v["type"], "hi", "{v}");
}

//! Every row of the protocol table, served by the default routes.yaml in front of mock-scope.

mod common;

use common::*;
use serde_json::json;

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
async fn get_ice_servers_carries_backend_json_and_status() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("i1", json!({"type": "get_ice_servers"})).await;
    assert_eq!(v["type"], "ice_servers");
    assert_eq!(v["status"], 200);
    assert!(v["data"]["iceServers"].is_array(), "{v}");
}

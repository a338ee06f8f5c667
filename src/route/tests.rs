//! In-process tests of the compiled route stack: the shipped routes, no sockets, no backend.

use serde_json::{Value, json};

use crate::conn::ConnHandle;
use crate::envelope::{Answer, Request, decode};
use crate::publish::Readiness;
use crate::snapshot::{self, Overrides, Runtime, Snapshot};

fn shipped(readiness: Readiness) -> Snapshot {
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    snapshot::load(
        &routes,
        &Overrides::default(),
        &Runtime::standalone(readiness),
    )
    .unwrap()
    .snapshot
}

async fn answer(snap: &Snapshot, text: &str) -> Value {
    let (msg, request_id) = decode(text).unwrap();
    let req = Request {
        msg,
        request_id,
        conn: ConnHandle::new("0badc0de"),
    };
    match snap.table.dispatch(req).await {
        Answer::Reply(r) => serde_json::from_str(&r.text).unwrap(),
        Answer::Streamed => panic!("{text} was answered by a stream"),
    }
}

#[tokio::test]
async fn local_reply_unknown_type_and_missing_key() {
    let snap = shipped(Readiness::new(true, true, "healthy"));
    assert_eq!(
        answer(&snap, r#"{"type":"ping","request_id":7}"#).await,
        json!({"type": "pong", "request_id": 7})
    );
    let v = answer(&snap, r#"{"type":"nope","request_id":"r"}"#).await;
    assert_eq!(v["error"], "Unknown message type: nope");
    assert_eq!(v["request_id"], "r");
    let v = answer(&snap, r#"{"request_id":1}"#).await;
    assert_eq!(
        v["error"],
        "Invalid message: missing string field \"type\" to route on"
    );
}

#[tokio::test]
async fn schema_refuses_before_the_readiness_gate() {
    // The backend is down and gated: a bad message still gets the validation error.
    let snap = shipped(Readiness::new(false, true, "starting"));
    let v = answer(&snap, r#"{"type":"api","request_id":3,"method":7}"#).await;
    assert_eq!(v["code"], "VALIDATION_FAILED", "{v}");
    assert_eq!(v["request_id"], 3);
    // A valid one is refused by the gate, through the route's own `on_error` template.
    let v = answer(
        &snap,
        r#"{"type":"api","request_id":4,"method":"GET","path":"/api/v1/hardware/info"}"#,
    )
    .await;
    assert_eq!(
        v,
        json!({"type": "api_response", "status": 503, "error": "backend unavailable",
               "code": "BACKEND_UNAVAILABLE", "request_id": 4})
    );
}

#[tokio::test]
async fn ice_with_null_session_and_no_offer_says_so() {
    let snap = shipped(Readiness::new(true, true, "healthy"));
    let v = answer(
        &snap,
        r#"{"type":"icecandidate","request_id":5,"sessionId":null,"candidate":null}"#,
    )
    .await;
    assert_eq!(
        v["error"], "No session ID available for ICE candidate",
        "{v}"
    );
}

#[test]
fn frames_without_a_named_route_are_tunnelled() {
    let key = super::RouteKey::parse("type");
    let has = |t: &str| t == "local";
    assert!(!super::tunnels_text(r#"{"type":"local"}"#, &key, has));
    assert!(super::tunnels_text(r#"{"type":"other"}"#, &key, has));
    assert!(super::tunnels_text(r#"{"manifest_id":"m"}"#, &key, has));
    assert!(super::tunnels_text("{ not json", &key, has));
    let pointer = super::RouteKey::parse("/meta/kind");
    assert!(!super::tunnels_text(
        r#"{"meta":{"kind":"local"}}"#,
        &pointer,
        has
    ));
    assert!(super::tunnels_text(r#"{"meta":{}}"#, &pointer, has));
}

//! The router's backend connections seen from the backend: a client's calls share one
//! keep-alive connection, and a backend that closes idle connections (uvicorn does after
//! 5 s) costs the client nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

async fn counters(m: &Proc) -> (u64, u64) {
    let s = mock_stats(m).await;
    (
        s["connections_accepted"]
            .as_u64()
            .expect("connections_accepted"),
        s["connections_closed"]
            .as_u64()
            .expect("connections_closed"),
    )
}

async fn get_status(ws: &mut Ws, rid: &str) -> Value {
    ws.call(
        rid,
        json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
    )
    .await
}

#[tokio::test]
async fn a_clients_sequential_calls_share_one_backend_connection() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(get_status(&mut ws, "warm").await["status"], 200);
    let (before, _) = counters(&m).await;
    for i in 0..30 {
        let v = get_status(&mut ws, &format!("s{i}")).await;
        assert_eq!(v["status"], 200, "{v}");
    }
    let (after, _) = counters(&m).await;
    // The one connection more is the counters' own request (the test's client closes each).
    assert_eq!(
        after - before,
        1,
        "30 calls after the first opened {} backend connections",
        after - before - 1
    );
}

#[tokio::test]
async fn a_backend_that_closes_idle_connections_costs_the_client_nothing() {
    let m = mock(&["--keep-alive-timeout-ms", "100"]);
    let r = router(&repo().join("routes.yaml"), &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    for round in 0..4 {
        let v = get_status(&mut ws, &format!("g{round}")).await;
        assert_eq!(v["status"], 200, "round {round}: {v}");
        let v = ws
            .call(
                &format!("p{round}"),
                json!({"type": "api", "method": "POST", "path": "/api/v1/mock/echo", "body": {"n": round}}),
            )
            .await;
        assert_eq!(v["status"], 200, "round {round}: {v}");
        assert_eq!(v["data"]["body_json"]["n"], round, "{v}");
        // Every connection the mock had accepted by now, the router's included, is closed by it.
        let (accepted, _) = counters(&m).await;
        eventually("the mock closed the idle connections", async || {
            let (_, closed) = counters(&m).await;
            (closed >= accepted).then_some(())
        })
        .await;
    }
    let v = get_status(&mut ws, "last").await;
    assert_eq!(v["status"], 200, "{v}");
}

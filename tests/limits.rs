//! Per-connection limits (message size, connections, in-flight, rate, idle, duration, keepalive, a client that stops reading), each turned small in a copy of the default routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A ping text frame of exactly `len` bytes.
fn padded_ping(rid: &str, len: usize) -> String {
    let base = json!({"type": "ping", "request_id": rid, "pad": ""}).to_string();
    assert!(len >= base.len());
    let text =
        json!({"type": "ping", "request_id": rid, "pad": "x".repeat(len - base.len())}).to_string();
    assert_eq!(text.len(), len);
    text
}

// ---------------------------------------------------------------------------------------------
// Size, count, in-flight and rate limits

#[tokio::test]
async fn frame_over_max_message_bytes_closes_1009_and_one_just_under_passes() {
    let (_m, r, _t) = stack_with(&[("max_message_bytes: 67108864", "max_message_bytes: 4096")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.send_text(&padded_ping("under", 4095)).await;
    assert_eq!(
        ws.reply_to("under").await,
        json!({"type": "pong", "request_id": "under"})
    );
    ws.send_text(&padded_ping("limit", 4096)).await;
    assert_eq!(
        ws.reply_to("limit").await,
        json!({"type": "pong", "request_id": "limit"})
    );
    ws.send_text(&padded_ping("over", 4097)).await;
    assert_eq!(ws.closed().await, Some(1009));
    r.wait_for_line_with(&[&ws.connection_id, "disconnected", "reason=TooLarge"])
        .await;
    // Others are still served.
    Ws::connect(&r.ws_url()).await.assert_open().await;
}

#[tokio::test]
async fn max_connections_refuses_the_second_with_1013_and_admits_after_the_first_leaves() {
    let (_m, r, _t) = stack_with(&[("max_connections: 8", "max_connections: 1")]);
    let mut first = Ws::connect(&r.ws_url()).await;
    first.assert_open().await;

    let (mut second, msg) = first_message(r.ws_url()).await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert_eq!(msg["code"], "TOO_MANY_CONNECTIONS", "{msg}");
    assert_eq!(close_code(&mut second).await, Some(1013));
    // The refused connection did not disturb the admitted one.
    first.assert_open().await;

    first.close().await;
    let mut third = eventually(
        "a new connection is admitted after the first left",
        || async {
            let (s, msg) = first_message(r.ws_url()).await;
            (msg["type"] == "ready").then(|| Ws::from_ready(s, &msg))
        },
    )
    .await;
    third.assert_open().await;
}

#[tokio::test]
async fn max_in_flight_refuses_the_third_and_completes_the_others() {
    let (_m, r, _t) = stack_with(&[("max_in_flight: 64", "max_in_flight: 2")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    for rid in ["s1", "s2", "s3"] {
        let mut msg = api("GET", "/api/v1/mock/slow?ms=1500");
        msg["request_id"] = json!(rid);
        ws.send(&msg).await;
    }
    let third = ws.reply_to("s3").await;
    assert_eq!(third["type"], "error", "{third}");
    assert_eq!(third["code"], "TOO_MANY_IN_FLIGHT", "{third}");
    assert_eq!(third["request_id"], "s3");
    for rid in ["s1", "s2"] {
        assert_eq!(
            ws.reply_to(rid).await,
            json!({"type": "api_response", "status": 200, "data": {"slept_ms": 1500}, "request_id": rid})
        );
    }
    // The slots are free again.
    let v = ws.call("s4", api("GET", "/api/v1/mock/slow?ms=10")).await;
    assert_eq!(v["status"], 200, "{v}");
    assert!(
        ws.stash.is_empty(),
        "unexpected extra replies: {:?}",
        ws.stash
    );
}

#[tokio::test]
async fn rate_limit_answers_the_burst_then_rate_limited_and_recovers() {
    let (_m, r, _t) = stack_with(&[(
        "rate: { per_second: 200, burst: 400 }",
        "rate: { per_second: 5, burst: 5 }",
    )]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    for i in 0..20 {
        let msg = json!({"type": "ping", "request_id": format!("p{i}")});
        ws.inner.feed(Message::text(msg.to_string())).await.unwrap();
    }
    ws.inner.flush().await.unwrap();
    let mut pongs = 0;
    for i in 0..20 {
        let rid = format!("p{i}");
        let v = ws.reply_to(&rid).await;
        match v["type"].as_str() {
            Some("pong") => {
                assert_eq!(v, json!({"type": "pong", "request_id": rid}));
                pongs += 1;
            }
            Some("error") => {
                assert_eq!(v["code"], "RATE_LIMITED", "{v}");
                assert_eq!(v["request_id"], rid.as_str(), "{v}");
                assert!(i >= 5, "the first 5 fit in the burst: {rid} → {v}");
            }
            _ => panic!("{rid} → {v}"),
        }
    }
    assert!((5..=7).contains(&pongs), "{pongs} pongs out of 20");
    assert!(
        ws.stash.is_empty(),
        "unexpected extra replies: {:?}",
        ws.stash
    );
    // Still open, and the bucket refills.
    let mut n = 0;
    eventually("a ping passes after the refill", async || {
        n += 1;
        let v = ws.call(&format!("later{n}"), json!({"type": "ping"})).await;
        if v["type"] == "pong" {
            return Some(());
        }
        assert_eq!(v["code"], "RATE_LIMITED", "{v}");
        None
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Time limits

#[tokio::test]
async fn idle_timeout_closes_a_silent_client_but_not_a_pinging_one() {
    let (_m, r, _t) = stack_with(&[("idle_timeout: 10m", "idle_timeout: 1s")]);
    let mut silent = Ws::connect(&r.ws_url()).await;
    let mut busy = Ws::connect(&r.ws_url()).await;
    let silent_side = async {
        let v = silent.recv().await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "IDLE_TIMEOUT", "{v}");
        assert_eq!(silent.closed().await, Some(1000));
    };
    let busy_side = async {
        for i in 0..8 {
            let rid = format!("b{i}");
            assert_eq!(
                busy.call(&rid, json!({"type": "ping"})).await,
                json!({"type": "pong", "request_id": rid})
            );
            // The client's own pace: a message every 300 ms, well inside the 1 s idle timeout,
            // for 2.4 s in all (past the silent client's timeout).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::join!(silent_side, busy_side);
    busy.assert_open().await;
    r.wait_for_line_with(&[&silent.connection_id, "disconnected", "reason=Idle"])
        .await;
    assert!(
        !r.output()
            .lines()
            .any(|l| l.contains(&busy.connection_id) && l.contains("disconnected")),
        "the pinging client must not be closed:\n{}",
        r.output()
    );
}

#[tokio::test]
async fn max_duration_sends_the_error_then_closes() {
    let (_m, r, _t) = stack_with(&[("max_duration: 2h", "max_duration: 2s")]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    ws.assert_open().await;
    let v = ws.recv().await;
    assert_eq!(
        v,
        json!({"type": "error", "error": "Max duration exceeded", "code": "MAX_DURATION_EXCEEDED"})
    );
    assert!(ws.closed().await.is_some(), "a close frame follows");
    r.wait_for_line_with(&[&ws.connection_id, "disconnected", "reason=MaxDuration"])
        .await;
}

#[tokio::test]
async fn keepalive_keeps_an_answering_client_and_drops_a_silent_one() {
    let (_m, r, _t) = stack_with(&[(
        "keepalive: { interval: 20s, timeout: 20s }",
        "keepalive: { interval: 200ms, timeout: 300ms }",
    )]);
    // Completes the handshake by hand, reads `ready`, then never reads or answers again.
    let (_deaf, deaf_id) = RawWs::connect(r.addr).await;
    let mut ws = Ws::connect(&r.ws_url()).await;
    // Polling the stream makes tungstenite answer the router's pings; nothing else is sent. The
    // test watches for a fixed 1.5 s (five keepalive intervals) and counts what arrives.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(m) = tokio::time::timeout_at(until, ws.inner.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected while idle: {other:?}"),
        }
    }
    assert!(pings >= 3, "the router pings every 200 ms; saw {pings}");
    ws.assert_open().await;
    let line = r
        .wait_for_line_with(&[&deaf_id, "disconnected", "reason=KeepaliveTimeout"])
        .await;
    assert!(line.contains(&deaf_id), "{line}");
    assert!(
        !r.output()
            .lines()
            .any(|l| l.contains(&ws.connection_id) && l.contains("disconnected")),
        "the answering client must stay:\n{}",
        r.output()
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_and_memory_stays_bounded() {
    let (_m, mut r, _t) = stack_with(&[("write_timeout: 30s", "write_timeout: 1s")]);
    let (mut deaf, deaf_id) = RawWs::connect(r.addr).await;
    // Many big replies (1 MB binary → 1.33 MB of base64 each), none of them read.
    for i in 0..40 {
        let msg = json!({"type": "api", "method": "GET", "path": "/api/v1/mock/binary?size=1000000", "request_id": format!("big{i}")});
        deaf.send_text(&msg.to_string()).await;
    }
    r.wait_for_line_with(&[&deaf_id, "client is not reading"])
        .await;
    let rss = rss_kib(r.child.id());
    assert!(
        rss < 300 * 1024,
        "router RSS {rss} KiB with a stalled client"
    );
    // The router closes it: the connection ends (and its cleanup runs) while the client still
    // holds the socket without reading.
    r.wait_for_line_with(&[&deaf_id, "disconnected"]).await;
    // Everyone else is still served.
    let mut other = Ws::connect(&r.ws_url()).await;
    other.assert_open().await;
    let v = other
        .call("small", api("GET", "/api/v1/pipeline/status"))
        .await;
    assert_eq!(v["status"], 200, "{v}");
    let rss = rss_kib(r.child.id());
    assert!(
        rss < 300 * 1024,
        "router RSS {rss} KiB after the stalled client"
    );
    r.assert_running();
    drop(deaf);
}

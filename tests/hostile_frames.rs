//! Hostile WebSocket frames and clients: binary, invalid UTF-8 and protocol-violating frames, slowloris and floods; each answered or closed exactly, and the router stays up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::collections::HashMap;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

// ---------------------------------------------------------------------------------------------
// Frames

#[tokio::test]
async fn binary_frames_are_refused_and_the_connection_stays() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let expected = json!({"type": "error", "error": "Binary frames are not supported: send JSON text frames", "code": "BINARY_NOT_SUPPORTED"});
    for payload in [
        Vec::new(),
        br#"{"type":"ping","request_id":"bin"}"#.to_vec(),
        vec![0xff; 1024],
        vec![7u8; 1024 * 1024],
    ] {
        ws.inner.send(Message::binary(payload)).await.unwrap();
        assert_eq!(ws.recv().await, expected);
        ws.assert_open().await;
    }
    assert_eq!(mock_total(&m).await, 0);
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let (_m, mut r) = stack();
    for bytes in [
        b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec(),
        b"\xc0\xaf".to_vec(),                    // overlong encoding of '/'
        b"{\"s\":\"\xed\xa0\x80\"}".to_vec(),    // a UTF-16 surrogate
        b"\xf4\x90\x80\x80".to_vec(),            // above U+10FFFF
        b"{\"type\":\"ping\"}\xe2\x82".to_vec(), // truncated sequence at the end
    ] {
        let mut ws = Ws::connect(&r.ws_url()).await;
        ws.assert_open().await;
        let frame = Frame::message(bytes.clone(), OpCode::Data(Data::Text), true);
        ws.inner.send(Message::Frame(frame)).await.unwrap();
        assert_eq!(ws.closed().await, Some(1007), "{bytes:?}");
    }
    // Invalid UTF-8 split across fragments of one text message.
    let (mut raw, _) = RawWs::connect(r.addr).await;
    raw.write(&RawWs::encode(
        0x01,
        b"{\"type\":\"ping\",\"x\":\"\xe2",
        true,
    ))
    .await;
    raw.write(&RawWs::encode(0x80, b"\x28\xa1\"}", true)).await;
    assert_eq!(raw.close_code().await, Some(1007));
    Ws::connect(&r.ws_url()).await.assert_open().await;
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let (_m, mut r) = stack();
    let ping = br#"{"type":"ping"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked client frame", RawWs::encode(0x81, ping, false)),
        ("reserved data opcode 0x3", RawWs::encode(0x83, ping, true)),
        (
            "reserved control opcode 0xB",
            RawWs::encode(0x8B, b"", true),
        ),
        ("RSV1 without an extension", RawWs::encode(0xC1, ping, true)),
        ("RSV3 without an extension", RawWs::encode(0x91, ping, true)),
        (
            "continuation without a start",
            RawWs::encode(0x80, ping, true),
        ),
        ("fragmented ping", RawWs::encode(0x09, b"x", true)),
        (
            "ping payload over 125 bytes",
            RawWs::encode(0x89, &[b'x'; 126], true),
        ),
        ("text frame inside a fragmented message", {
            let mut v = RawWs::encode(0x01, b"{\"type\":", true);
            v.extend(RawWs::encode(0x81, ping, true));
            v
        }),
    ];
    for (what, bytes) in cases {
        let (mut raw, _) = RawWs::connect(r.addr).await;
        raw.write(&bytes).await;
        assert_eq!(raw.close_code().await, Some(1002), "{what}");
    }
    Ws::connect(&r.ws_url()).await.assert_open().await;
    assert_router_alive(&mut r).await;
}

// ---------------------------------------------------------------------------------------------
// Slow and fast clients

#[tokio::test]
async fn slowloris_connections_do_not_stop_others_being_served() {
    let (m, mut r) = stack();
    let mut held: Vec<TcpStream> = Vec::new();
    // Half an upgrade request, held open.
    for _ in 0..20 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConn")
            .await
            .unwrap();
        held.push(s);
    }
    // A connection that says nothing at all.
    for _ in 0..10 {
        held.push(TcpStream::connect(r.addr).await.unwrap());
    }
    // Upgraded connections holding half a frame: a header promising 100 bytes, then 10. They
    // count against `max_connections` (8), so a few stay free for the clients below.
    let mut raws = Vec::new();
    for i in 0..4 {
        let (mut raw, _) = RawWs::connect(r.addr).await;
        let full = RawWs::encode(0x81, &[b' '; 100], true);
        let cut = if i % 2 == 0 { 16 } else { 1 };
        raw.write(&full[..cut]).await;
        raws.push(raw);
    }
    // A slow HTTP request body on a plain endpoint.
    let mut slow = TcpStream::connect(r.addr).await.unwrap();
    slow.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        .await
        .unwrap();

    // Meanwhile everyone else is served: WebSocket, backend calls and HTTP endpoints.
    for i in 0..3 {
        let mut ws = Ws::connect(&r.ws_url()).await;
        ws.assert_open().await;
        let v = ws
            .call(&format!("st{i}"), api("GET", "/api/v1/pipeline/status"))
            .await;
        assert_eq!(v["status"], 200, "{v}");
    }
    assert_router_alive(&mut r).await;
    let (code, _) = get_json(&format!("{}/readyz", r.http())).await;
    assert_eq!(code, 200);
    // Let go of them all; the router carries on.
    drop(held);
    drop(raws);
    drop(slow);
    Ws::connect(&r.ws_url()).await.assert_open().await;
    assert!(mock_total(&m).await >= 3);
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn a_flood_of_10000_pipelined_pings_gets_exactly_one_reply_each() {
    let (m, mut r) = stack();
    let ws = Ws::connect(&r.ws_url()).await;
    let (mut tx, mut rx) = ws.inner.split();
    const N: usize = 10_000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let msg = json!({"type": "ping", "request_id": format!("f{i}")});
            tx.feed(Message::text(msg.to_string())).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut pongs, mut limited, mut busy) = (0, 0, 0);
    while seen.len() < N {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("a reply went missing")
            .expect("socket ended")
            .expect("socket error");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let rid = v["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("reply without request_id: {v}"))
            .to_owned();
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("RATE_LIMITED")) => limited += 1,
            (Some("error"), Some("TOO_MANY_IN_FLIGHT")) => busy += 1,
            _ => panic!("unexpected reply {v}"),
        }
        *seen.entry(rid).or_default() += 1;
    }
    let tx = sender.await.unwrap();
    assert!(
        seen.values().all(|&c| c == 1),
        "a request got more than one reply"
    );
    assert!((0..N).all(|i| seen.contains_key(&format!("f{i}"))));
    assert_eq!(pongs + limited + busy, N);
    // The first 400 fit the burst: each is a pong, or refused for being over `max_in_flight`.
    assert!(
        pongs + busy >= 400,
        "the burst of 400: {pongs} pongs, {busy} over max_in_flight"
    );
    // The connection is still open and served once the bucket refills.
    let mut ws = Ws {
        inner: tx.reunite(rx).unwrap(),
        stash: Vec::new(),
        connection_id: String::new(),
    };
    let mut n = 0;
    eventually("a pong once the bucket refills", async || {
        n += 1;
        let v = ws.call(&format!("after{n}"), json!({"type": "ping"})).await;
        if v["type"] == "pong" {
            return Some(());
        }
        assert_eq!(v["code"], "RATE_LIMITED", "{v}");
        None
    })
    .await;
    assert!(ws.stash.is_empty(), "stray replies: {:?}", ws.stash);
    assert_eq!(mock_total(&m).await, 0);
    assert_router_alive(&mut r).await;
}

//! Hostile input against the default routes.yaml: every case gets its exact answer and the router stays up.
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

/// The router is still running and `/healthz` answers.
async fn assert_router_alive(r: &mut Proc) {
    r.assert_running();
    let (code, body) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200, "/healthz: {body}");
}

// ---------------------------------------------------------------------------------------------
// Malformed JSON

#[tokio::test]
async fn malformed_json_of_every_kind_is_an_invalid_json_error() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let bad = [
        "{",
        "{nope",
        "}",
        "{\"type\":\"ping\",}",
        "{'type':'ping'}",
        "{type:\"ping\"}",
        "{\"type\":\"ping\"} trailing",
        "{\"type\":\"ping\"}{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"request_id\":\"cut",
        "{\"type\":\"ping\",\"request_id\":\"r\"",
        "\u{feff}{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"n\":NaN}",
        "{\"type\":\"ping\",\"n\":Infinity}",
        "{\"type\":\"ping\",\"n\":01}",
        "{\"type\":\"ping\",\"n\":1e999999}",
        "{\"type\":\"ping\",\"s\":\"\\ud800\"}",
        "{\"type\":\"ping\",\"s\":\"\\x41\"}",
        "{\"type\":\"ping\",\"s\":\"tab\there\"}",
        "{\"type\":\"ping\",\"s\":\"\u{0}\"}",
        "{\"type\" \"ping\"}",
        "{\"type\":undefined}",
        "{\"a\":[1,2,}",
        "// comment\n{\"type\":\"ping\"}",
        "",
        " ",
        "\u{0}",
        "ping",
        "\u{1F600}",
    ];
    for text in bad {
        ws.send_text(text).await;
        let v = ws.recv().await;
        assert_eq!(v["type"], "error", "{text:?} → {v}");
        let e = error_text(&v);
        assert!(
            e.starts_with("Invalid JSON: ") && e.len() > 14,
            "{text:?} → {v}"
        );
        assert!(v.get("request_id").is_none(), "{text:?} → {v}");
        ws.assert_open().await;
    }
    // Well-formed JSON that is not an object.
    for (text, kind) in [
        ("[]", "an array"),
        ("[1,2,3]", "an array"),
        ("[{\"type\":\"ping\",\"request_id\":\"x\"}]", "an array"),
        ("\"ping\"", "a string"),
        ("42", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        ws.send_text(text).await;
        assert_eq!(
            ws.recv().await,
            json!({"type": "error", "error": format!("Invalid message: expected a JSON object, got {kind}")}),
            "{text:?}"
        );
        ws.assert_open().await;
    }
    assert_eq!(mock_total(&m).await, 0);
    assert_router_alive(&mut r).await;
}

// ---------------------------------------------------------------------------------------------
// Schema violations: missing fields, wrong JSON types

#[tokio::test]
async fn missing_fields_and_wrong_types_are_refused_with_request_id_echoed() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let odd = [
        json!(5),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!(["x"]),
        json!({}),
        json!({"a": 1}),
    ];

    // The routing key itself: missing or not a string. Each refusal echoes its request_id,
    // whatever JSON value it is.
    let no_type = "Invalid message: missing string field \"type\" to route on";
    let v = ws
        .call("nt", json!({"path": "/api/v1/pipeline/status"}))
        .await;
    assert_eq!(
        v,
        json!({"type": "error", "error": no_type, "request_id": "nt"})
    );
    for (i, t) in odd.iter().enumerate() {
        let rid = format!("t{i}");
        let v = ws.call(&rid, json!({"type": t})).await;
        assert_eq!(
            v,
            json!({"type": "error", "error": no_type, "request_id": rid}),
            "type {t}"
        );
        let v = ws.call_with_id(t.clone(), json!({"type": t})).await;
        assert_eq!(
            v,
            json!({"type": "error", "error": no_type, "request_id": t}),
            "type and request_id {t}"
        );
    }
    assert_eq!(mock_total(&m).await, 0);

    let mut cases: Vec<(Value, &str)> = Vec::new();
    let with = |base: Value, field: &str, value: &Value| {
        let mut msg = base;
        msg[field] = value.clone();
        msg
    };
    // Required fields missing.
    cases.push((json!({"type": "offer"}), "sdp"));
    cases.push((json!({"type": "api", "method": "GET"}), "path"));
    cases.push((
        json!({"type": "icecandidate", "candidate": {"sdpMid": "0"}}),
        "candidate",
    ));
    let offer = json!({"type": "offer", "sdp": SDP_OFFER});
    for v in [
        json!(42),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!(""),
    ] {
        cases.push((with(offer.clone(), "sdp", &v), "sdp"));
    }
    for v in [
        json!(1),
        json!(""),
        json!("x".repeat(33)),
        json!(null),
        json!([]),
        json!({}),
    ] {
        cases.push((with(offer.clone(), "sdp_type", &v), "sdp_type"));
    }
    for v in [json!("fast"), json!(1), json!([]), json!(true)] {
        cases.push((
            with(offer.clone(), "initialParameters", &v),
            "initialParameters",
        ));
    }
    // `sessionId` is a non-empty string, or null for "this connection's latest".
    let ice = json!({"type": "icecandidate", "candidate": candidate()});
    for v in [json!(7), json!(true), json!({}), json!([]), json!("")] {
        cases.push((with(ice.clone(), "sessionId", &v), "sessionId"));
    }
    for v in [
        json!("candidate:1 1 UDP 1 192.0.2.1 1 typ host"),
        json!(1),
        json!([]),
        json!(true),
    ] {
        cases.push((with(ice.clone(), "candidate", &v), "candidate"));
    }
    for (field, values) in [
        (
            "candidate",
            vec![json!(1), json!(null), json!({}), json!([])],
        ),
        ("sdpMid", vec![json!(1), json!({}), json!([]), json!(true)]),
        (
            "sdpMLineIndex",
            vec![json!("zero"), json!(-1), json!(1.5), json!({}), json!(true)],
        ),
    ] {
        for v in values {
            let mut c = candidate();
            c[field] = v;
            cases.push((json!({"type": "icecandidate", "candidate": c}), field));
        }
    }
    let get = api("GET", "/api/v1/pipeline/status");
    for v in [
        json!(5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!(""),
        json!("GETGETGETGETGETGE"),
    ] {
        cases.push((with(get.clone(), "method", &v), "method"));
    }
    for v in [
        json!(5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!(""),
        json!("api/v1/pipeline/status"),
    ] {
        cases.push((with(get.clone(), "path", &v), "path"));
    }
    let upload = api("POST", "/api/v1/assets?filename=x.png");
    for v in [json!(12), json!(null), json!([]), json!({}), json!(true)] {
        cases.push((
            with(upload.clone(), "body", &json!({"_base64_content": v})),
            "_base64_content",
        ));
    }
    for v in [json!(5), json!([]), json!({}), json!(false)] {
        cases.push((
            with(
                upload.clone(),
                "body",
                &json!({"_base64_content": "aGk=", "_content_type": v}),
            ),
            "_content_type",
        ));
    }

    for (i, (msg, field)) in cases.iter().enumerate() {
        let rid = format!("w{i}");
        let v = ws.call(&rid, msg.clone()).await;
        assert_eq!(v["type"], "error", "{msg} → {v}");
        assert_eq!(v["code"], "VALIDATION_FAILED", "{msg} → {v}");
        assert_eq!(v["request_id"], rid.as_str(), "{msg} → {v}");
        assert!(
            error_text(&v).contains(field),
            "the error must name {field:?}: {msg} → {v}"
        );
    }
    ws.assert_open().await;
    assert_eq!(
        mock_total(&m).await,
        0,
        "no refused message may reach the backend"
    );
    assert!(mock_sessions(&m).await.is_empty());
    assert_router_alive(&mut r).await;
}

// ---------------------------------------------------------------------------------------------
// Size and depth

#[tokio::test]
async fn huge_strings_are_refused_without_reaching_the_backend_or_being_echoed() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let five_mb = "v".repeat(5 * 1024 * 1024);

    let cases = [
        (json!({"type": "offer", "sdp": five_mb}), "sdp"),
        (api("GET", &format!("/api/{five_mb}")), "path"),
        (
            json!({"type": "icecandidate", "sessionId": five_mb, "candidate": null}),
            "sessionId",
        ),
        (
            json!({"type": "api", "method": five_mb, "path": "/api/v1/pipeline/status"}),
            "method",
        ),
        (
            json!({"type": "icecandidate", "candidate": {"candidate": five_mb, "sdpMid": "0", "sdpMLineIndex": 0}}),
            "candidate",
        ),
    ];
    for (i, (msg, field)) in cases.iter().enumerate() {
        let rid = format!("huge{i}");
        let v = ws.call(&rid, msg.clone()).await;
        assert_eq!(v["type"], "error", "{field}");
        assert_eq!(
            v["code"],
            "VALIDATION_FAILED",
            "{field}: {}",
            &v.to_string()[..300.min(v.to_string().len())]
        );
        assert_eq!(v["request_id"], rid.as_str());
        assert!(error_text(&v).contains(field));
        assert!(
            v.to_string().len() < 4096,
            "a 5 MB value must not be echoed in the error ({field})"
        );
    }
    // A huge unknown type is answered (its name is the reply), and the connection stays.
    let v = ws.call("huge-type", json!({"type": five_mb})).await;
    assert_eq!(v["type"], "error");
    assert!(error_text(&v).starts_with("Unknown message type: vvv"));
    // A huge request_id is echoed unchanged, as every request_id is.
    let v = ws
        .call_with_id(json!(five_mb), json!({"type": "ping"}))
        .await;
    assert_eq!(v["type"], "pong");
    ws.assert_open().await;
    assert_eq!(mock_total(&m).await, 0);
    assert_router_alive(&mut r).await;
}

#[tokio::test]
async fn deep_nesting_is_an_invalid_json_error_and_moderate_nesting_passes() {
    let (m, mut r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let n = 100_000;
    let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    let in_a_body = |body: &str| {
        format!(
            r#"{{"type":"api","method":"POST","path":"/api/v1/mock/echo","request_id":"deep","body":{body}}}"#
        )
    };
    // The whole message, or the body of an otherwise valid one.
    for text in [arrays.clone(), in_a_body(&arrays), in_a_body(&objects)] {
        ws.send_text(&text).await;
        let v = ws.recv().await;
        assert_eq!(v["type"], "error", "{v}");
        assert!(error_text(&v).starts_with("Invalid JSON: "), "{v}");
        assert!(error_text(&v).contains("recursion limit"), "{v}");
        ws.assert_open().await;
    }
    // Deep nesting in a field that is never parsed as JSON is just a string.
    let v = ws
        .call("deep-string", json!({"type": "ping", "note": arrays}))
        .await;
    assert_eq!(v, json!({"type": "pong", "request_id": "deep-string"}));
    assert_eq!(mock_total(&m).await, 0);

    // Nesting within serde_json's limit goes through to the backend and back unchanged.
    let mut body = json!("leaf");
    for _ in 0..100 {
        body = json!([body]);
    }
    let mut msg = api("POST", "/api/v1/mock/echo");
    msg["body"] = body.clone();
    let v = ws.call("nested-ok", msg).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["body_json"], body);
    assert_router_alive(&mut r).await;
}

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
    let stats = mock_stats(&m).await;
    assert_eq!(stats["total"], 0, "nothing may reach the backend: {stats}");
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

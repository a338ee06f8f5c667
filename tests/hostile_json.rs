//! Hostile JSON against the default routes.yaml: malformed, mistyped, huge and deeply nested messages each get their exact error, reach no backend, and the router stays up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};

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

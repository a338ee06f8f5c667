//! Unit tests of the template language: compile-time errors and rendered output.

use super::*;
use serde_json::json;

fn all() -> Scope {
    Scope::MESSAGE
        .with(Scope::CONNECTION)
        .with(Scope::RESPONSE)
        .with(Scope::ERROR)
}

fn render(t: &Value, ctx: &Ctx<'_>) -> Value {
    let t = Template::compile(t, all()).unwrap();
    serde_json::from_str(&t.render_to_string(ctx)).unwrap()
}

#[test]
fn whole_expression_keeps_type() {
    let msg = json!({"n": 3, "o": {"a": [1, true]}, "s": "x"});
    let ctx = Ctx {
        message: Some(&msg),
        ..Default::default()
    };
    let out = render(
        &json!({"n": "${message.n}", "o": "${message.o}", "a1": "${message.o.a.1}"}),
        &ctx,
    );
    assert_eq!(out, json!({"n": 3, "o": {"a": [1, true]}, "a1": true}));
}

#[test]
fn interpolation_is_text() {
    let msg = json!({"type": "nope", "n": 3});
    let ctx = Ctx {
        message: Some(&msg),
        connection_id: Some("abcd1234"),
        ..Default::default()
    };
    let out = render(
        &json!({"e": "Unknown message type: ${message.type}", "c": "${connection.id}/${message.n}!"}),
        &ctx,
    );
    assert_eq!(
        out,
        json!({"e": "Unknown message type: nope", "c": "abcd1234/3!"})
    );
}

#[test]
fn absent_values_drop_their_key() {
    let msg = json!({});
    let ctx = Ctx {
        message: Some(&msg),
        ..Default::default()
    };
    let out = render(
        &json!({"type": "x", "sid": "${message.sessionId}", "t": "a${message.missing}b"}),
        &ctx,
    );
    assert_eq!(out, json!({"type": "x", "t": "ab"}));
}

#[test]
fn dollar_escape_and_lone_dollar() {
    let ctx = Ctx::default();
    let out = render(&json!({"a": "$${x} costs $5"}), &ctx);
    assert_eq!(out, json!({"a": "${x} costs $5"}));
}

#[test]
fn response_body_json_or_text_and_base64() {
    let r = ResponseVars {
        status: 200,
        body: b"{\"a\": 1}",
        content_type: "application/json",
        parsed: None,
    };
    let ctx = Ctx {
        response: Some(&r),
        ..Default::default()
    };
    assert_eq!(
        render(
            &json!({"d": "${response.json}", "s": "${response.status}"}),
            &ctx
        ),
        json!({"d": {"a": 1}, "s": 200})
    );
    let r = ResponseVars {
        status: 500,
        body: b"oops \"x\"",
        content_type: "text/plain",
        parsed: None,
    };
    let ctx = Ctx {
        response: Some(&r),
        ..Default::default()
    };
    assert_eq!(
        render(&json!({"d": "${response.json}"}), &ctx),
        json!({"d": "oops \"x\""})
    );
    let r = ResponseVars {
        status: 200,
        body: &[0, 1, 2, 255],
        content_type: "video/mp4",
        parsed: None,
    };
    let ctx = Ctx {
        response: Some(&r),
        ..Default::default()
    };
    assert_eq!(
        render(
            &json!({"b": "${response.base64}", "l": "${response.length}", "c": "${response.content_type}"}),
            &ctx
        ),
        json!({"b": "AAEC/w==", "l": 4, "c": "video/mp4"})
    );
}

#[test]
fn request_id_goes_first_and_is_kept_verbatim() {
    let t = Template::compile(&json!({"type": "pong"}), all()).unwrap();
    assert!(matches!(t, Template::Const(_)));
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), Some(&json!({"k": [1]}).into()), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":{"k":[1]},"type":"pong"}"#
    );
    let t = Template::compile(&json!({}), all()).unwrap();
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), Some(&json!("r1").into()), &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), r#"{"request_id":"r1"}"#);
    let msg = json!({"x": 1});
    let t = Template::compile(
        &json!({"type": "t", "x": "${message.x}", "y": "${message.y}"}),
        all(),
    )
    .unwrap();
    let mut out = Vec::new();
    t.render_reply(
        &Ctx {
            message: Some(&msg),
            ..Default::default()
        },
        Some(&json!(7).into()),
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":7,"type":"t","x":1}"#
    );
}

/// Found by `cargo fuzz run template`: a backend body that `IgnoredAny` accepts but that is
/// not JSON (bad UTF-8 in a string, a lone surrogate, an out-of-range number) was copied verbatim.
#[test]
fn response_json_is_always_valid_json() {
    let t = Template::compile(&json!({"d": "${response.json}"}), all()).unwrap();
    let bodies: [&[u8]; 5] = [
        b"\"\xff\"",
        b"\"\\ud800\"",
        b"1e400",
        b"{\"a\":[-1e999]}",
        b"{\"\xc3\":1}",
    ];
    for body in bodies {
        let r = ResponseVars {
            status: 200,
            body,
            content_type: "application/json",
            parsed: None,
        };
        let ctx = Ctx {
            response: Some(&r),
            ..Default::default()
        };
        let mut out = Vec::new();
        t.render(&ctx, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "{:?} rendered as invalid JSON ({e}): {:?}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&out)
            )
        });
        assert!(v["d"].is_string(), "{v}");
    }
    // Valid JSON still passes through verbatim.
    let r = ResponseVars {
        status: 200,
        body: b" {\"a\": [1, \"\\ud83d\\ude00\", 1e300]} ",
        content_type: "",
        parsed: None,
    };
    let mut out = Vec::new();
    t.render(
        &Ctx {
            response: Some(&r),
            ..Default::default()
        },
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"d":{"a": [1, "\ud83d\ude00", 1e300]}}"#
    );
}

/// An id with a number past 64 bits is written as the client sent it, in both the folded
/// (constant) and the field-by-field path.
#[test]
fn a_raw_request_id_is_written_as_sent() {
    let frame = r#"{"type":"ping","request_id":-123456789012345678901234567890}"#;
    let (msg, rid) = crate::envelope::decode(frame).unwrap();
    let rid = rid.unwrap();
    let t = Template::compile(&json!({"type": "pong"}), all()).unwrap();
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), Some(&rid), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":-123456789012345678901234567890,"type":"pong"}"#
    );
    let t = Template::compile(&json!({"type": "t", "k": "${message.type}"}), all()).unwrap();
    let mut out = Vec::new();
    let ctx = Ctx {
        message: Some(&msg),
        ..Default::default()
    };
    t.render_reply(&ctx, Some(&rid), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":-123456789012345678901234567890,"k":"ping","type":"t"}"#
    );
}

/// Found by `cargo fuzz run template`: a constant reply template with its own `request_id`
/// was folded, and `render_reply` then sent `request_id` twice (the template's won in most parsers).
#[test]
fn constant_template_request_id_is_replaced_not_duplicated() {
    let t = Template::compile(&json!({"type": "pong", "request_id": "fixed"}), all()).unwrap();
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), Some(&json!("r1").into()), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":"r1","type":"pong"}"#
    );
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), None, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"request_id":"fixed","type":"pong"}"#
    );
}

#[test]
fn env_expressions_are_read_at_load() {
    let t = Template::compile(
        &json!({
            "a": "${env.SCOPE_ROUTER_TEST_UNSET|SCOPE_ROUTER_TEST_UNSET2:-fallback}",
            "b": "x-${env.PATH}",
            "n": "${env_json.SCOPE_ROUTER_TEST_UNSET:-7}",
            "s": "${env_json.SCOPE_ROUTER_TEST_UNSET:-unknown}",
        }),
        all(),
    )
    .unwrap();
    let mut out = Vec::new();
    t.render(&Ctx::default(), &mut out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["a"], "fallback");
    assert!(v["b"].as_str().unwrap().starts_with("x-/"), "{v}");
    assert_eq!(v["n"], 7, "a JSON value stays JSON: {v}");
    assert_eq!(v["s"], "unknown", "other text is a string: {v}");
}

#[test]
fn load_time_errors() {
    let e = |v: Value, s: Scope| Template::compile(&v, s).unwrap_err().to_string();
    insta::assert_snapshot!(e(json!("${message.x"), all()), @r#"unterminated `${` in "${message.x""#);
    insta::assert_snapshot!(e(json!("${}"), all()), @r#"empty expression `${}` in "${}""#);
    insta::assert_snapshot!(e(json!("${foo.bar}"), all()), @"unknown variable `${foo.bar}`: variables start with message, connection, response, error, item, env or env_json");
    insta::assert_snapshot!(e(json!("${response.nope}"), all()), @"unknown variable `${response.nope}`: response has status, json[.field…], text, base64, content_type, length");
    insta::assert_snapshot!(e(json!("${response.status}"), Scope::MESSAGE.with(Scope::CONNECTION)), @"`${response.status}` is not available here (available: message.*, connection.id, connection.user_id, connection.info)");
    assert_eq!(
        Template::compile_reply(&json!("x"), all()).unwrap_err(),
        TemplateError::NotObject("a string")
    );
}

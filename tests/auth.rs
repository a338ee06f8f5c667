//! Client authentication before `ready`: token and HTTP-authorizer modes admit the right clients, deny the rest with 4003, and never log a token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TOKENS: &str = "tok-alpha-5a1f93c2,tok-beta-77e0b4d1";

async fn assert_denied(s: &mut Socket, first: &Value) {
    assert_eq!(
        first,
        &json!({"type": "error", "error": "Access denied", "code": "ACCESS_DENIED"})
    );
    assert_eq!(close_code(s).await, Some(4003));
}

#[tokio::test]
async fn without_auth_a_token_query_parameter_is_accepted_and_ignored() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&format!(
        "{}?fal_jwt_token=eyJhbGciOiJIUzI1NiJ9.e30.sig",
        r.ws_url()
    ))
    .await;
    ws.assert_open().await;
}

#[tokio::test]
async fn token_auth_accepts_query_or_bearer_and_denies_the_rest_without_logging_tokens() {
    let t = default_routes_with(&[(
        "auth: { mode: none }",
        "auth: { mode: token, env: SCOPE_TEST_TOKENS }",
    )]);
    let m = mock(&[]);
    let r = router_env(&t.path, &m.http(), &[("SCOPE_TEST_TOKENS", TOKENS)]);
    let url = r.ws_url();

    // Right token in the query.
    let mut ok = Ws::connect(&format!("{url}?fal_jwt_token=tok-beta-77e0b4d1")).await;
    ok.assert_open().await;

    // Right token as a Bearer header.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        "Bearer tok-alpha-5a1f93c2".parse().unwrap(),
    );
    let (s, first) = first_message(req).await;
    let mut ok2 = Ws::from_ready(s, &first);
    ok2.assert_open().await;

    // Wrong token in the query, wrong token in the header, no token at all.
    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=tok-wrong-0c9d2e11")).await;
    assert_denied(&mut s, &first).await;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        "Bearer tok-wrong-3b8a6f05".parse().unwrap(),
    );
    let (mut s, first) = first_message(req).await;
    assert_denied(&mut s, &first).await;
    let (mut s, first) = first_message(url.clone()).await;
    assert_denied(&mut s, &first).await;
    // A prefix of a right token is not the token.
    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=tok-alpha")).await;
    assert_denied(&mut s, &first).await;

    eventually("the four denials are logged", || async {
        (r.output().matches("access denied").count() >= 4).then_some(())
    })
    .await;
    let ok2_id = ok2.connection_id.clone();
    ok.close().await;
    ok2.close().await;
    r.wait_for_line_with(&[&ok2_id, "disconnected"]).await;
    let out = r.output();
    for secret in [
        "tok-alpha-5a1f93c2",
        "tok-beta-77e0b4d1",
        "tok-wrong-0c9d2e11",
        "tok-wrong-3b8a6f05",
        "5a1f93c2",
        "77e0b4d1",
    ] {
        assert!(
            !out.contains(secret),
            "token {secret:?} leaked into the router's output:\n{out}"
        );
    }
    assert_eq!(mock_total(&m).await, 0);
}

/// A tiny HTTP authorizer: 200 for `Bearer good`, 403 otherwise; records every request's
/// `Authorization` header, JSON body and whole request head.
async fn authorizer() -> (
    u16,
    Arc<Mutex<Vec<(String, Value, String)>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_owned())
                    })
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                let auth = header("authorization").unwrap_or_default();
                let status = if auth == "Bearer good" {
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                seen.lock().unwrap().push((auth, body, head.clone()));
                let resp =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, seen, task)
}

#[tokio::test]
async fn http_auth_asks_the_authorizer_and_denies_when_it_refuses_or_is_down() {
    let (port, seen, task) = authorizer().await;
    let t = default_routes_with(&[(
        "auth: { mode: none }",
        &format!("auth: {{ mode: http, url: \"http://127.0.0.1:{port}/auth\", timeout: 2s }}"),
    )]);
    let m = mock(&[]);
    let r = router(&t.path, &m.http(), &[]);
    let url = r.ws_url();

    let mut ok = Ws::connect(&format!("{url}?fal_jwt_token=good")).await;
    ok.assert_open().await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, "Bearer good");
        assert_eq!(seen[0].1["token"], "good", "{:?}", seen[0].1);
        assert_eq!(
            seen[0].1["connection_id"],
            ok.connection_id.as_str(),
            "{:?}",
            seen[0].1
        );
    }

    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=bad")).await;
    assert_denied(&mut s, &first).await;
    assert_eq!(seen.lock().unwrap().last().unwrap().0, "Bearer bad");

    // No token: denied without asking.
    let asked = seen.lock().unwrap().len();
    let (mut s, first) = first_message(url.clone()).await;
    assert_denied(&mut s, &first).await;
    assert_eq!(seen.lock().unwrap().len(), asked);

    // A token carrying CR/LF cannot smuggle headers into the authorizer request.
    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=good%0d%0aX-Evil:%201")).await;
    assert_denied(&mut s, &first).await;
    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=good%0aX-Evil:%201")).await;
    assert_denied(&mut s, &first).await;
    for (_, _, head) in seen.lock().unwrap().iter() {
        assert!(
            !head.to_ascii_lowercase().contains("\nx-evil"),
            "header smuggled into the authorizer request:\n{head}"
        );
    }

    // Authorizer down: even the good token is denied.
    task.abort();
    let _ = task.await;
    let (mut s, first) = first_message(format!("{url}?fal_jwt_token=good")).await;
    assert_denied(&mut s, &first).await;

    // The admitted connection was never disturbed.
    ok.assert_open().await;
}

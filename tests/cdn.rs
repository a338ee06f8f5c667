//! Uploads by URL (`_cdn_url`): fetched only from allowed hosts, never otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A tiny HTTP server: `/file` answers 200 with `body` as `content_type`, `/big` 200 with 5000
/// bytes, `/redirect` a 302 to `location`, anything else 404; counts connections.
async fn tiny_server(
    body: Vec<u8>,
    content_type: &'static str,
    location: String,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            hits2.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let target = head.split_whitespace().nth(1).unwrap_or("");
                let body = if target.starts_with("/big") {
                    Some(vec![b'x'; 5000])
                } else if target.starts_with("/file") {
                    Some(body)
                } else {
                    None
                };
                let mut resp = if let Some(body) = &body {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
                        body.len()
                    )
                    .into_bytes()
                } else if target.starts_with("/redirect") {
                    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n")
                        .into_bytes()
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".to_vec()
                };
                resp.extend_from_slice(b"Connection: close\r\n\r\n");
                if let Some(body) = &body {
                    resp.extend_from_slice(body);
                }
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// The default routes with uploads by URL allowed from `allow` only, up to `max_bytes`.
fn routes_with_cdn(allow: &str, max_bytes: u64) -> TempRoutes {
    default_routes_with(&[(
        "      base64_uploads: true\n",
        &format!(
            "      base64_uploads: true\n      cdn_uploads: {{ allow_hosts: [\"{allow}\"], allow_http: true, max_bytes: {max_bytes}, timeout: 5s }}\n"
        ),
    )])
}

fn upload(url: &str) -> Value {
    json!({"type": "api", "method": "POST", "path": "/api/v1/assets?filename=clip.mp4", "body": {"_cdn_url": url}})
}

#[tokio::test]
async fn an_allowed_host_is_fetched_and_uploaded() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (cdn, hits) = tiny_server(body.clone(), "video/mp4", String::new()).await;
    let routes = routes_with_cdn(&cdn.to_string(), 1024 * 1024);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("u1", upload(&format!("http://{cdn}/file"))).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["size_bytes"], body.len());
    assert_eq!(v["data"]["sha256"], sha256_hex(&body));
    assert_eq!(v["data"]["content_type"], "video/mp4");
    let posted = mock_recent(&m, "POST", "/api/v1/assets").await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["body_len"], body.len());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn other_hosts_tricks_redirects_and_oversized_files_are_refused() {
    let (canary, canary_hits) = tiny_server(b"canary".to_vec(), "image/png", String::new()).await;
    let (cdn, cdn_hits) = tiny_server(
        b"\x89PNG from the allowed CDN".to_vec(),
        "image/png",
        format!("http://{canary}/file"),
    )
    .await;
    let routes = routes_with_cdn(&cdn.to_string(), 4096);
    let m = mock(&[]);
    let mut r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;

    // Positive control: the allowed host is fetched and its bytes go to the backend.
    let v = ws.call("ok", upload(&format!("http://{cdn}/file"))).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(cdn_hits.load(Ordering::SeqCst), 1);
    let backend_calls = mock_total(&m).await;

    let c = canary.to_string();
    let port = canary.port();
    let refused = [
        format!("http://{c}/file"),
        format!("http://{cdn}@{c}/file"),
        format!("http://user:pw@{c}/file"),
        format!("http://{c}#@{cdn}/file"),
        format!("http://{c}/file?from={cdn}"),
        format!("http://localhost:{port}/file"),
        format!("http://[::ffff:127.0.0.1]:{port}/file"),
        format!("http://2130706433:{port}/file"),
        format!("http://0x7f000001:{port}/file"),
        format!("http://127.1:{port}/file"),
        format!("ftp://{cdn}/file"),
        format!("gopher://{cdn}/file"),
        "file:///etc/passwd".to_owned(),
        format!("//{c}/file"),
        "/file".to_owned(),
        "/api/v1/internal".to_owned(),
        String::new(),
    ];
    for (i, url) in refused.iter().enumerate() {
        let rid = format!("no{i}");
        let v = ws.call(&rid, upload(url)).await;
        assert_eq!(v["type"], "api_response", "{url:?} → {v}");
        assert_eq!(v["request_id"], rid.as_str(), "{url:?} → {v}");
        assert_eq!(v["status"], 403, "{url:?} → {v}");
        assert!(error_text(&v).contains("_cdn_url"), "{url:?} → {v}");
    }
    for (rid, bad) in [
        ("type1", json!(5)),
        ("type2", json!(null)),
        ("type3", json!([format!("http://{cdn}/file")])),
    ] {
        let mut msg = upload("");
        msg["body"]["_cdn_url"] = bad.clone();
        let v = ws.call(rid, msg).await;
        assert!(
            v["type"] == "error" || (400..500).contains(&v["status"].as_u64().unwrap_or(0)),
            "{bad} → {v}"
        );
    }

    // An allowed host redirecting elsewhere is not followed.
    let v = ws
        .call("redirect", upload(&format!("http://{cdn}/redirect")))
        .await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert!(
        v["status"].as_u64().unwrap() >= 400,
        "a redirect is a failure, not a fetch: {v}"
    );
    // Over the size cap (4096): refused, nothing uploaded.
    let v = ws.call("big", upload(&format!("http://{cdn}/big"))).await;
    assert_eq!(v["type"], "api_response", "{v}");
    assert_eq!(v["status"], 413, "{v}");

    ws.assert_open().await;
    // Every answer came after the fetch it needed, and a server counts a connection before it
    // answers: the counts and the backend's request log are complete now.
    assert_eq!(
        cdn_hits.load(Ordering::SeqCst),
        3,
        "only the control, the redirect and the big file were requested from the allowed host"
    );
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the router fetched from a host not on the allowlist"
    );
    assert_eq!(
        mock_total(&m).await,
        backend_calls,
        "a refused upload reached the backend"
    );
    assert_eq!(
        mock_recent(&m, "POST", "/api/v1/assets").await.len(),
        1,
        "only the allowed fetch was uploaded"
    );
    r.assert_running();
    let (code, _) = get_json(&format!("{}/healthz", r.http())).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn uploads_by_url_are_off_by_default() {
    let (cdn, hits) = tiny_server(b"x".to_vec(), "image/png", String::new()).await;
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("u", upload(&format!("http://{cdn}/file"))).await;
    assert_eq!(v["status"], 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not enabled"), "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirects_are_followed_only_to_allowed_hosts_when_asked() {
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let (canary, canary_hits) = tiny_server(b"canary".to_vec(), "image/png", String::new()).await;
    // `/redirect` on the allowed host points at its own `/file`, and a second allowed-looking
    // server points at the canary, which is not on the list.
    let (cdn, _) = tiny_server(body.clone(), "video/mp4", "/file".to_owned()).await;
    let (evil, _) = tiny_server(Vec::new(), "video/mp4", format!("http://{canary}/file")).await;
    let routes = default_routes_with(&[(
        "      base64_uploads: true\n",
        &format!(
            "      base64_uploads: true\n      cdn_uploads: {{ allow_hosts: [\"{cdn}\", \"{evil}\"], allow_http: true, max_bytes: 1048576, timeout: 5s, follow_redirects: 2 }}\n"
        ),
    )]);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("ok", upload(&format!("http://{cdn}/redirect")))
        .await;
    assert_eq!(
        v["status"], 200,
        "a relative redirect on an allowed host: {v}"
    );
    assert_eq!(v["data"]["sha256"], sha256_hex(&body), "{v}");
    let v = ws
        .call("no", upload(&format!("http://{evil}/redirect")))
        .await;
    assert_eq!(v["status"], 403, "{v}");
    assert!(error_text(&v).contains("redirect refused"), "{v}");
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "a redirect took the router to a host not on the list"
    );
}

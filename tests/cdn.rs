//! Uploads by URL (`_cdn_url`): fetched only from allowed hosts, never otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny file server: answers every request with `body`, and counts connections.
async fn file_server(body: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (port, hits)
}

/// The default routes with uploads by URL allowed from `allow` only.
fn routes_with_cdn(allow: &str) -> TempRoutes {
    default_routes_with(&[(
        "      base64_uploads: true\n",
        &format!(
            "      base64_uploads: true\n      cdn_uploads: {{ allow_hosts: [\"{allow}\"], allow_http: true, max_bytes: 1048576, timeout: 5s }}\n"
        ),
    )])
}

fn upload(url: String) -> serde_json::Value {
    json!({"type": "api", "method": "POST", "path": "/api/v1/assets?filename=clip.mp4", "body": {"_cdn_url": url}})
}

#[tokio::test]
async fn an_allowed_host_is_fetched_and_uploaded() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (port, hits) = file_server(body.clone()).await;
    let routes = routes_with_cdn(&format!("127.0.0.1:{port}"));
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("u1", upload(format!("http://127.0.0.1:{port}/clip.mp4")))
        .await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["data"]["size_bytes"], body.len());
    assert_eq!(v["data"]["sha256"], sha256_hex(&body));
    assert_eq!(v["data"]["content_type"], "video/mp4");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn other_hosts_and_tricks_are_refused_without_a_fetch() {
    let (allowed_port, _) = file_server(b"ok".to_vec()).await;
    let (other_port, other_hits) = file_server(b"secret".to_vec()).await;
    let routes = routes_with_cdn(&format!("127.0.0.1:{allowed_port}"));
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let before = mock_stats(&m).await["total"].as_u64().unwrap();
    for (i, url) in [
        format!("http://127.0.0.1:{other_port}/x"),
        format!("http://127.0.0.1:{allowed_port}@127.0.0.1:{other_port}/x"),
        format!("http://localhost:{other_port}/x"),
        "file:///etc/passwd".to_owned(),
        format!("gopher://127.0.0.1:{other_port}/x"),
        "/api/v1/internal".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("bad{i}");
        let v = ws.call(&rid, upload(url.clone())).await;
        assert_eq!(v["request_id"], rid.as_str());
        assert_eq!(v["status"], 403, "{url}: {v}");
        assert!(v["error"].as_str().unwrap().contains("_cdn_url"), "{v}");
    }
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "a refused URL was fetched"
    );
    assert_eq!(
        mock_stats(&m).await["total"].as_u64().unwrap(),
        before,
        "a refused upload reached the backend"
    );
    assert_eq!(ws.call("p", json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn uploads_by_url_are_off_by_default() {
    let (port, hits) = file_server(b"x".to_vec()).await;
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("u", upload(format!("http://127.0.0.1:{port}/x")))
        .await;
    assert_eq!(v["status"], 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not enabled"), "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

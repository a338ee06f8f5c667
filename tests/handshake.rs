//! Before a connection is served: the Origin policy, the request-head timeout, the cap on
//! handshakes in progress, and a slot taken only after the token check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until the peer closes; `None` if it is still open after `limit` (generous: this
/// waits on the close, it measures nothing).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(got)
}

#[tokio::test]
async fn origins_outside_the_list_are_refused_and_clients_without_one_pass() {
    let (_m, r, _t) = stack_with(&[(
        "  auth: { mode: none }\n",
        "  auth: { mode: none }\n  allowed_origins: [\"http://127.0.0.1:8080\", \"http://localhost:8080\"]\n",
    )]);
    let (_, head) = RawWs::handshake(r.addr, "/ws", "Origin: https://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_, head) = RawWs::handshake(r.addr, "/ws", "Origin: http://localhost:8080\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // `self`: the router's own page (the quickstart's setting), on whatever port it listens.
    let (_m2, r2, _t2) = stack_with(&[(
        "  auth: { mode: none }\n",
        "  auth: { mode: none }\n  allowed_origins: [self]\n",
    )]);
    let own = format!("Origin: http://{}\r\n", r2.addr);
    let (_, head) = RawWs::handshake(r2.addr, "/ws", &own).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = RawWs::handshake(r2.addr, "/ws", "Origin: http://localhost:1\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_, head) = RawWs::handshake(r.addr, "/ws", "").await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "a client without an Origin: {head}"
    );
}

#[tokio::test]
async fn a_silent_or_half_sent_request_is_dropped_after_the_header_timeout() {
    let (_m, r, _t) = stack_with(&[(
        "  auth: { mode: none }\n",
        "  auth: { mode: none }\n  header_timeout: 300ms\n",
    )]);
    let mut silent = TcpStream::connect(r.addr).await.unwrap();
    let mut half = TcpStream::connect(r.addr).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20))
            .await
            .is_some(),
        "a silent socket stays open"
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(20))
            .await
            .is_some(),
        "a half-sent request stays open"
    );
    // A prompt client is served as ever.
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(
        ws.call("p", serde_json::json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_and_answered_503() {
    let (_m, r, _t) = stack_with(&[(
        "  auth: { mode: none }\n",
        "  auth: { mode: none }\n  max_handshakes: 2\n",
    )]);
    let _a = TcpStream::connect(r.addr).await.unwrap();
    let _b = TcpStream::connect(r.addr).await.unwrap();
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    let got = closed_within(&mut c, Duration::from_secs(20))
        .await
        .expect("refused and closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"),
        "{got:?}"
    );
    drop((_a, _b));
    // Once they are gone, clients are served again.
    eventually("a handshake slot to free up", || async {
        let (_, head) = RawWs::handshake(r.addr, "/ws", "").await;
        head.starts_with("HTTP/1.1 101").then_some(())
    })
    .await;
}

/// A tiny HTTP authorizer: grants every token after `delay_for(token)`.
async fn authorizer() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&req).contains("\"connection_id\"") {
                        break;
                    }
                }
                if String::from_utf8_lossy(&req).contains("slow-token") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_client_still_being_checked_holds_no_connection_slot() {
    let (url, _auth) = authorizer().await;
    let (_m, r, _t) = stack_with(&[
        (
            "  auth: { mode: none }\n",
            &format!("  auth: {{ mode: http, url: \"{url}\", timeout: 60s }}\n"),
        ),
        ("  max_connections: 8\n", "  max_connections: 1\n"),
    ]);
    // Ten clients whose tokens take the authorizer 30 s each.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let (ws, head) = RawWs::handshake(r.addr, "/ws?fal_jwt_token=slow-token", "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        pending.push(ws);
    }
    // A real user is let in at once: the one slot was not taken by them.
    let mut ws = Ws::connect(&format!("{}?fal_jwt_token=good", r.ws_url())).await;
    assert_eq!(
        ws.call("p", serde_json::json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn six_hundred_silent_sockets_cost_a_bounded_number_of_descriptors_and_then_nothing() {
    // The attack that locked out every user: many sockets that never send a request head.
    let (_m, r, _t) = stack_with(&[(
        "  auth: { mode: none }\n",
        "  auth: { mode: none }\n  header_timeout: 2s\n  max_handshakes: 128\n",
    )]);
    let pid = r.child.id();
    let before = open_fds(pid);
    let rss_before = rss_kib(pid);
    let mut silent = Vec::new();
    for _ in 0..600 {
        silent.push(TcpStream::connect(r.addr).await.unwrap());
    }
    // The router accepts each one, in order; those over the cap are answered 503 and closed at
    // once (or reset by the kernel when the accept queue overflows). The last one's close
    // means every socket has been dealt with.
    let last = silent.last_mut().unwrap();
    closed_within(last, Duration::from_secs(20))
        .await
        .expect("the last socket is refused and closed");
    let held = open_fds(pid);
    let rss = peak_rss_kib(pid);
    // The cap's sockets are closed by the header timeout, without any of them sending a byte.
    eventually(
        format!("the silent sockets to be closed ({before} fds before)"),
        async || (open_fds(pid) <= before + 2).then_some(()),
    )
    .await;
    eprintln!(
        "600 silent sockets: router fds {before} before, {held} while they were open, {} after; RSS {} MiB before, peak {} MiB",
        open_fds(pid),
        rss_before / 1024,
        rss / 1024
    );
    assert!(held <= before + 128 + 8, "{held} descriptors");
    // Still holding all 600 open on this side, a real user is served.
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(
        ws.call("p", serde_json::json!({"type": "ping"})).await["type"],
        "pong"
    );
    drop(silent);
}

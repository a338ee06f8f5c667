//! Backend calls over real sockets: connections reused and driven by the calling task, stale ones replaced, the cap kept.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::{Method, StatusCode};

use super::{Backend, Upstream};
use crate::config::PoolConfig;

/// A plain HTTP/1.1 server on its own thread: answers `ok` to every request with a
/// Content-Length and keeps the connection, unless `close_after_answer`, when it closes the
/// socket after each answer without saying so (as a backend whose keep-alive timeout passed).
/// Counts accepted connections.
fn server(close_after_answer: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head (the test sends no bodies).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                    if close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn upstream(addr: SocketAddr, max_connections: usize) -> Upstream {
    let pool = PoolConfig {
        max_connections,
        ..PoolConfig::default()
    };
    Upstream::new(Backend::new(&pool), &format!("http://{addr}"), 1 << 20).unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `GET /x?i=<i>`, which must answer `ok`.
async fn get_ok(up: &Upstream, i: usize) {
    let r = up
        .call(
            Method::GET,
            &format!("/x?i={i}"),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("call {i}: {e}"));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
}

#[test]
fn calls_reuse_one_connection_and_spawn_no_task() {
    let (addr, accepted) = server(false);
    current_thread().block_on(async {
        let up = upstream(addr, 64);
        for i in 0..50 {
            get_ok(&up, i).await;
            // The connection is driven inside the call: no connection task, no task per call.
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(tasks, 0, "tasks alive after call {i}");
        }
        let r = up
            .call(
                Method::POST,
                "/y",
                Some((bytes::Bytes::from_static(b"{}"), "application/json")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one keep-alive connection for 51 calls"
    );
}

#[test]
fn a_connection_the_backend_closed_while_idle_is_replaced() {
    let (addr, accepted) = server(true);
    current_thread().block_on(async {
        let up = upstream(addr, 64);
        for i in 0..20 {
            // Each answer's connection is closed by the server; the next call finds it closed
            // (or loses the race and repeats the GET on a new connection): never an error.
            get_ok(&up, i).await;
        }
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        20,
        "a new connection per call"
    );
}

#[test]
fn concurrent_calls_open_at_most_max_connections() {
    let (addr, accepted) = server(false);
    current_thread().block_on(async {
        let up = upstream(addr, 3);
        futures_util::future::join_all((0..24).map(|i| get_ok(&up, i))).await;
    });
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&n),
        "{n} connections for 24 calls with max_connections 3"
    );
}

#[test]
fn an_unreachable_backend_is_unavailable() {
    // A port nobody listens on (bound, then closed).
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    current_thread().block_on(async {
        let up = upstream(addr, 64);
        let e = up
            .call(Method::GET, "/x", None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, super::BackendError::Unavailable), "{e}");
        let e = up
            .call(Method::GET, "no-slash", None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, super::BackendError::BadRequest(_)), "{e}");
    });
}

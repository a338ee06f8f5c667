//! The accepted-socket wrapper through the real listener: TCP_NODELAY at accept, one write per frame.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::publish::{LogFeed, Publisher, Readiness, ReloadStatus};
use crate::server::{self, Listener};
use crate::session::Shared;
use crate::snapshot::{self, Overrides, Runtime};
use crate::sock::Probe;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The real listener and app over the shipped routes, with a probe on its sockets.
async fn router(probe: Arc<Probe>) -> std::net::SocketAddr {
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    let rt = Runtime::standalone(Readiness::new(false, true, "starting"));
    let compiled = snapshot::load(&routes, &Overrides::default(), &rt).unwrap();
    let state = Arc::new(Listener {
        sessions: Arc::new(Shared {
            snapshot: Publisher::new(compiled.snapshot).view(),
            uploads: rt.uploads.clone(),
            logs: LogFeed::new(16),
            slots: Default::default(),
        }),
        readiness: Publisher::new(Readiness::new(false, true, "starting")).view(),
        supervisor: Publisher::new(None).view(),
        reload: Publisher::new(ReloadStatus::default()).view(),
        metrics: None,
        shutdown: tokio::sync::watch::channel(false).0,
        connections_total: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_probed(
        listener,
        server::app(state),
        Duration::from_secs(5),
        64,
        std::future::pending(),
        Some(probe),
    ));
    addr
}

/// The next text frame, and how many (empty) keepalive pings came before it.
async fn next_text(ws: &mut Client) -> (String, usize) {
    let mut pings = 0;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the router answers")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Message::Text(t) => return (t.as_str().to_owned(), pings),
            Message::Ping(p) if p.is_empty() => pings += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Nothing here is timed: the probe sees `TCP_NODELAY` on the accepted socket, and each
/// reply frame, header and payload, goes out in exactly one write call.
#[tokio::test]
async fn accepted_socket_has_nodelay_and_each_frame_is_one_write() {
    let probe = Arc::new(Probe::default());
    let addr = router(probe.clone()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let (ready, _) = next_text(&mut ws).await;
    assert!(ready.contains(r#""ready""#), "{ready}");
    assert_eq!(probe.seen().nodelay, vec![true], "TCP_NODELAY on accept");

    for id in 1..=3 {
        let before = probe.seen().writes.len();
        ws.send(Message::text(format!(
            r#"{{"type":"ping","request_id":{id}}}"#
        )))
        .await
        .unwrap();
        let (pong, _) = next_text(&mut ws).await;
        let v: serde_json::Value = serde_json::from_str(&pong).unwrap();
        assert_eq!(v, serde_json::json!({"type": "pong", "request_id": id}));
        let writes = probe.seen().writes.split_off(before);
        // A server frame under 126 bytes has a 2-byte header and no mask. The session's
        // keepalive pings (empty: 2 bytes each) may be written around the reply, read
        // by the client or not yet.
        let whole = 2 + pong.len();
        assert_eq!(
            writes.iter().filter(|&&n| n == whole).count(),
            1,
            "the reply {id} in one write of header and payload: {writes:?}"
        );
        assert!(
            writes.iter().all(|&n| n == whole || n == 2),
            "nothing but the reply and empty pings: {writes:?}"
        );
    }
}

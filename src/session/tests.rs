//! The session loop driven through channels, without processes or sockets.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{Shared, Upgrade, serve};
use crate::conn::ConnHandle;
use crate::publish::{LogFeed, Publisher, Readiness};
use crate::snapshot::{self, Overrides, Runtime};

/// One end of an in-memory WebSocket: what the session reads and writes.
struct Duplex {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for Duplex {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Duplex {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing.send(item).map_err(axum::Error::new)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A client of the session: send frames, read what comes back.
struct Client {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Client {
    fn send(&self, text: &str) {
        self.tx.send(Message::Text(text.into())).unwrap();
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("the session answers")
            .expect("the session is still open")
    }

    /// The next text message (keepalive pings of the shipped routes are skipped).
    async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}

/// A session over the shipped routes, with the backend gated off.
fn start() -> (Client, tokio::task::JoinHandle<()>, Arc<Shared>) {
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    let rt = Runtime::standalone(Readiness::new(false, true, "starting"));
    let compiled = snapshot::load(&routes, &Overrides::default(), &rt).unwrap();
    let shared = Arc::new(Shared {
        snapshot: Publisher::new(compiled.snapshot).view(),
        uploads: rt.uploads.clone(),
        logs: LogFeed::new(16),
        slots: Default::default(),
    });
    let (to_session, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_session) = mpsc::unbounded_channel();
    let socket = Duplex { incoming, outgoing };
    let (_stop, shutdown) = watch::channel(false);
    let conn = ConnHandle::new("5e551011");
    let task = tokio::spawn({
        let shared = shared.clone();
        async move {
            let _stop = _stop;
            serve(socket, shared, conn, Upgrade::default(), shutdown).await
        }
    });
    (
        Client {
            tx: to_session,
            rx: from_session,
        },
        task,
        shared,
    )
}

#[tokio::test]
async fn ready_then_replies_in_order_of_completion() {
    let (mut c, task, shared) = start();
    assert_eq!(
        c.json().await,
        json!({"type": "ready", "connection_id": "5e551011"})
    );
    c.send(r#"{"type":"ping","request_id":1}"#);
    assert_eq!(c.json().await, json!({"type": "pong", "request_id": 1}));
    c.send("{not json");
    let v = c.json().await;
    assert!(
        v["error"].as_str().unwrap().starts_with("Invalid JSON"),
        "{v}"
    );
    // A binary frame that is not an upload chunk gets a clear error; the connection stays.
    c.tx.send(Message::Binary(bytes::Bytes::from_static(b"xyz")))
        .unwrap();
    assert_eq!(c.json().await["code"], "BINARY_NOT_SUPPORTED");
    c.send(r#"{"type":"ping","request_id":2}"#);
    assert_eq!(c.json().await["request_id"], 2);
    assert_eq!(shared.slots.open(), 1);
    drop(c);
    task.await.unwrap();
    assert_eq!(
        shared.slots.open(),
        0,
        "the slot is given back after cleanup"
    );
}

//! Frames that are ready together leave in one flush: the session loop over a sink that records its calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use tokio::sync::{mpsc, watch};

use super::{Shared, Upgrade, serve};
use crate::conn::{ConnHandle, Outbound};
use crate::publish::{LogFeed, Publisher, Readiness};
use crate::snapshot::{self, Overrides, Runtime};

/// What the session did to its sink, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Text(String),
    Other,
    Flush,
}

/// An in-memory socket whose sink records each `start_send` and each `poll_flush`.
struct Recording {
    incoming: mpsc::UnboundedReceiver<Message>,
    calls: Arc<Mutex<Vec<Call>>>,
    sent: mpsc::UnboundedSender<()>,
}

impl Stream for Recording {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Recording {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let call = match item {
            Message::Text(t) => Call::Text(t.as_str().to_owned()),
            _ => Call::Other,
        };
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.calls.lock().unwrap().push(Call::Flush);
        let _ = self.sent.send(());
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// The texts of the calls up to and including the flush that sent `last`.
fn flushed_with(calls: &[Call], last: &str) -> Option<Vec<String>> {
    let at = calls
        .iter()
        .position(|c| *c == Call::Text(last.to_owned()))?;
    let start = calls[..at]
        .iter()
        .rposition(|c| *c == Call::Flush)
        .map_or(0, |i| i + 1);
    let end = at + calls[at..].iter().position(|c| *c == Call::Flush)?;
    Some(
        calls[start..end]
            .iter()
            .filter_map(|c| match c {
                Call::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
    )
}

#[tokio::test]
async fn pushes_ready_together_share_one_flush() {
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    let rt = Runtime::standalone(Readiness::new(false, true, "starting"));
    let compiled = snapshot::load(&routes, &Overrides::default(), &rt).unwrap();
    let shared = Arc::new(Shared {
        snapshot: Publisher::new(compiled.snapshot).view(),
        uploads: rt.uploads.clone(),
        logs: LogFeed::new(16),
        slots: Default::default(),
    });
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (to_session, incoming) = mpsc::unbounded_channel();
    let (sent, mut flushes) = mpsc::unbounded_channel();
    let socket = Recording {
        incoming,
        calls: calls.clone(),
        sent,
    };
    let (_stop, shutdown) = watch::channel(false);
    let conn = ConnHandle::new("ba7c4ed0");
    let task = tokio::spawn(serve(
        socket,
        shared,
        conn.clone(),
        Upgrade::default(),
        shutdown,
    ));
    async fn wait_for(
        calls: &Mutex<Vec<Call>>,
        flushes: &mut mpsc::UnboundedReceiver<()>,
        text: &str,
    ) {
        loop {
            if calls.lock().unwrap().contains(&Call::Text(text.to_owned())) {
                return;
            }
            tokio::time::timeout(Duration::from_secs(10), flushes.recv())
                .await
                .expect("the session flushes")
                .expect("the session is running");
        }
    }
    // The session is up once its push channel is set (right after `ready`).
    let push = loop {
        if let Some(p) = conn.push_sender() {
            break p;
        }
        tokio::task::yield_now().await;
    };
    // Three pushes, queued while the session waits: they are all ready when it wakes.
    for text in ["one", "two", "three"] {
        push.try_send(Outbound::Text(text.to_owned())).unwrap();
    }
    wait_for(&calls, &mut flushes, "three").await;
    let seen = calls.lock().unwrap().clone();
    assert_eq!(
        flushed_with(&seen, "three"),
        Some(vec!["one".to_owned(), "two".to_owned(), "three".to_owned()]),
        "three ready pushes in one flush: {seen:?}"
    );

    // A push made after a flush goes out with its own flush: nothing waits for company.
    push.try_send(Outbound::Text("four".to_owned())).unwrap();
    wait_for(&calls, &mut flushes, "four").await;
    let seen = calls.lock().unwrap().clone();
    assert_eq!(
        flushed_with(&seen, "four"),
        Some(vec!["four".to_owned()]),
        "{seen:?}"
    );
    drop(to_session);
    task.await.unwrap();
}

//! Lifecycle events of connections (`websocket_connected`, `websocket_disconnected`): logged, and sent to an optional HTTP sink through a bounded queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, Uri};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::config::EventsConfig;

/// Where a snapshot's events go.
#[derive(Debug, Default)]
pub struct Events {
    sink: Option<Sink>,
}

#[derive(Debug)]
struct Sink {
    uri: Uri,
    timeout: Duration,
    tx: mpsc::Sender<Value>,
    /// Taken by the worker, started on the first event (inside the runtime).
    rx: Mutex<Option<mpsc::Receiver<Value>>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl Events {
    pub fn compile(cfg: Option<&EventsConfig>) -> Result<Events, String> {
        let Some(cfg) = cfg else {
            return Ok(Events::default());
        };
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| format!("events.url: not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err("events.url: must be an http:// or https:// URL with a host".to_owned());
        }
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        Ok(Events {
            sink: Some(Sink {
                uri,
                timeout: cfg.timeout.0,
                tx,
                rx: Mutex::new(Some(rx)),
            }),
        })
    }

    /// Logs the event and queues it for the sink; never waits. A full queue drops the event
    /// and counts it (`scope_router_events_dropped_total`).
    pub fn emit(&self, kind: &'static str, data: Value, pool: &Arc<Backend>) {
        tracing::info!(event = kind, data = %data, "lifecycle event");
        metrics::counter!("scope_router_events_total", "type" => kind).increment(1);
        let Some(sink) = &self.sink else {
            return;
        };
        sink.start(pool);
        let ts = now_ms();
        let mut inner =
            json!({"type": kind, "client_source": "scope", "timestamp": ts.to_string()});
        if let (Some(o), Value::Object(d)) = (inner.as_object_mut(), data) {
            o.extend(d);
        }
        let event = json!({
            "id": format!("{:032x}", rand::random::<u128>()),
            "type": "stream_trace",
            "timestamp": ts.to_string(),
            "data": inner,
        });
        if sink.tx.try_send(event).is_err() {
            metrics::counter!("scope_router_events_dropped_total").increment(1);
            tracing::warn!(event = kind, "event sink queue full; event dropped");
        }
    }
}

impl Sink {
    fn start(&self, pool: &Arc<Backend>) {
        let Some(mut rx) = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let (pool, uri, timeout) = (pool.clone(), self.uri.clone(), self.timeout);
        // Ends when the snapshot (and with it the sender) is replaced and the queue is empty.
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let body = Bytes::from(event.to_string());
                let sent = pool
                    .send_outbound(
                        Method::POST,
                        uri.clone(),
                        Some((body, "application/json")),
                        &[],
                        timeout,
                        64 * 1024,
                    )
                    .await;
                match sent {
                    Ok(r) if r.status.is_success() => {}
                    Ok(r) => {
                        metrics::counter!("scope_router_events_failed_total").increment(1);
                        tracing::warn!(status = r.status.as_u16(), "event sink answered an error");
                    }
                    Err(e) => {
                        metrics::counter!("scope_router_events_failed_total").increment(1);
                        tracing::warn!(error = %e, "event sink unreachable");
                    }
                }
            }
        });
    }
}

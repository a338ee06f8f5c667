//! Windowed downloads: a binary backend body sent as numbered chunks, paced by the client's acknowledgements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{Settings, hex};
use crate::conn::{ConnHandle, Outbound};
use crate::envelope::RequestId;

/// A download being sent, paced by the receiver's acknowledgements.
#[derive(Debug, Default)]
pub struct Download {
    /// Chunks acknowledged so far (the next expected ack is this number).
    acked: AtomicU64,
    notify: Notify,
}

impl Download {
    pub fn ack(&self, seq: u64) {
        self.acked
            .fetch_max(seq.saturating_add(1), Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// The downloads of one connection (a per-connection extension).
#[derive(Debug, Default)]
pub struct Downloads {
    by_id: Mutex<HashMap<String, Arc<Download>>>,
}

impl Downloads {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Download>>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, id: &str) -> Arc<Download> {
        let d = Arc::new(Download::default());
        self.map().insert(id.to_owned(), d.clone());
        d
    }

    fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Records an acknowledgement; false for an unknown download.
    pub fn ack(&self, id: &str, seq: u64) -> bool {
        match self.map().get(id) {
            Some(d) => {
                d.ack(seq);
                true
            }
            None => false,
        }
    }
}

/// Sends a binary body to the client as a header plus numbered chunks, `window` at a time.
pub fn start_download(
    conn: Arc<ConnHandle>,
    cfg: &Settings,
    request_id: Option<RequestId>,
    status: u16,
    content_type: String,
    body: Bytes,
    binary_frames: bool,
) -> bool {
    let Some(tx) = conn.push_sender() else {
        return false;
    };
    let cfg = cfg.clone();
    let id = format!("{:032x}", rand::random::<u128>());
    let chunk_size = cfg.chunk_size;
    let chunks = (body.len() as u64).div_ceil(chunk_size as u64);
    let header = json!({
        "type": "api_response",
        "status": status,
        "_chunked": true,
        "download_id": id,
        "_content_type": content_type,
        "_content_length": body.len(),
        "chunk_size": chunk_size,
        "chunks": chunks,
        "window": cfg.window,
        "sha256": hex(&Sha256::digest(&body)),
        "binary": binary_frames,
    });
    // The id as the client sent it (a number past 64 bits keeps its digits).
    let header = match header {
        Value::Object(obj) => crate::envelope::object_json(request_id.as_ref(), obj),
        other => other.to_string().into_bytes(),
    };
    let header = String::from_utf8(header).unwrap_or_default();
    let downloads = conn.state::<Downloads>();
    let state = downloads.add(&id);
    // The pump's log lines keep the connection's (and message's) span.
    let span = tracing::Span::current();
    let pump = async move {
        let window = u64::from(cfg.window);
        if tx.send(Outbound::Text(header)).await.is_err() {
            return;
        }
        for seq in 0..chunks {
            loop {
                let notified = state.notify.notified();
                if seq < state.acked.load(Ordering::Acquire).saturating_add(window) {
                    break;
                }
                if tokio::time::timeout(cfg.ack_timeout, notified)
                    .await
                    .is_err()
                {
                    tracing::warn!(download = %id, seq, "download not acknowledged in time; dropped");
                    let err = json!({"type": "error", "error": "Download acknowledgement timeout",
                                     "code": "DOWNLOAD_ACK_TIMEOUT", "download_id": id});
                    let _ = tx.send(Outbound::Text(err.to_string())).await;
                    downloads.remove(&id);
                    return;
                }
            }
            let start = usize::try_from(seq * chunk_size as u64)
                .unwrap_or(usize::MAX)
                .min(body.len());
            let end = start.saturating_add(chunk_size).min(body.len());
            let part = body.slice(start..end);
            let msg = if binary_frames {
                let mut frame = Vec::with_capacity(37 + part.len());
                frame.push(b'D');
                frame.extend_from_slice(id.as_bytes());
                frame.extend_from_slice(&u32::try_from(seq).unwrap_or(u32::MAX).to_be_bytes());
                frame.extend_from_slice(&part);
                Outbound::Binary(Bytes::from(frame))
            } else {
                let data = base64::engine::general_purpose::STANDARD.encode(&part);
                Outbound::Text(
                    json!({"type": "download_chunk", "download_id": id, "seq": seq, "data": data})
                        .to_string(),
                )
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        // Keep the state until the last chunk is acknowledged, for the client's final acks.
        let _ = tokio::time::timeout(cfg.ack_timeout, async {
            loop {
                let notified = state.notify.notified();
                if state.acked.load(Ordering::Acquire) >= chunks {
                    break;
                }
                notified.await;
            }
        })
        .await;
        downloads.remove(&id);
        tracing::info!(download = %id, chunks, "download sent");
    };
    tokio::spawn(tracing::Instrument::instrument(pump, span));
    true
}

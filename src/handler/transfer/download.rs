//! Windowed downloads: a binary backend body sent as numbered chunks, paced by the client's acknowledgements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

use super::{Settings, hex};
use crate::backend::Opened;
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

/// Why a chunked download did not start.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "Too many downloads on this connection (at most {0} at once); finish or drop one first"
    )]
    TooMany(usize),
    #[error("The connection is closing")]
    Closing,
}

impl crate::envelope::Refuse for DownloadError {
    fn code(&self) -> Option<&'static str> {
        match self {
            DownloadError::TooMany(_) => Some("TOO_MANY_DOWNLOADS"),
            DownloadError::Closing => None,
        }
    }
}

impl Downloads {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Download>>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new download, unless the connection already has `max` of them.
    fn add(&self, id: &str, max: usize) -> Result<Arc<Download>, DownloadError> {
        let mut map = self.map();
        if map.len() >= max {
            return Err(DownloadError::TooMany(max));
        }
        let d = Arc::new(Download::default());
        map.insert(id.to_owned(), d.clone());
        Ok(d)
    }

    fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Downloads being sent on this connection.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when none is being sent.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
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

/// A backend answer to send as a chunked download, read as the client acknowledges.
pub struct Source {
    pub opened: Opened,
    /// Longest wait for the backend's next bytes.
    pub idle: Duration,
}

/// How a download ended early.
enum Stop {
    /// The client is gone (or stopped reading): nothing more to send.
    Gone,
    /// An error to tell the client.
    Fail(&'static str, String),
}

/// Sends a backend body to the client as a header plus numbered chunks, `window` at a time.
///
/// The body is read from the backend only as fast as the client acknowledges, so one
/// download holds about `window` chunks whatever its length; it may be endless (an event
/// stream). The length, the chunk count and the sha256 come in `download_done` after the
/// last chunk; the header carries the length and chunk count when the backend said them.
pub fn start_download(
    conn: Arc<ConnHandle>,
    cfg: &Settings,
    request_id: Option<RequestId>,
    source: Source,
    binary_frames: bool,
) -> Result<(), DownloadError> {
    let tx = conn.push_sender().ok_or(DownloadError::Closing)?;
    let cfg = cfg.clone();
    let id = format!("{:032x}", rand::random::<u128>());
    let downloads = conn.state::<Downloads>();
    let state = downloads.add(&id, cfg.max_downloads)?;
    let chunk_size = cfg.chunk_size;
    let Source { opened, idle } = source;
    let length = opened.content_length;
    let header = json!({
        "type": "api_response",
        "status": opened.status.as_u16(),
        "_chunked": true,
        "download_id": id,
        "_content_type": opened.content_type,
        "_content_length": length,
        "chunk_size": chunk_size,
        "chunks": length.map(|n| n.div_ceil(chunk_size as u64)),
        "window": cfg.window,
        "sha256": null,
        "binary": binary_frames,
    });
    // The id as the client sent it (a number past 64 bits keeps its digits).
    let header = match header {
        Value::Object(obj) => crate::envelope::object_json(request_id.as_ref(), obj),
        other => other.to_string().into_bytes(),
    };
    let header = String::from_utf8(header).unwrap_or_default();
    // The pump's log lines keep the connection's (and message's) span.
    let span = tracing::Span::current();
    let pump = async move {
        let sent = pump(&tx, &state, &cfg, &id, header, opened, idle, binary_frames).await;
        downloads.remove(&id);
        match sent {
            Ok((chunks, bytes)) => {
                tracing::info!(download = %id, chunks, bytes, "download sent");
            }
            Err(Stop::Gone) => tracing::debug!(download = %id, "download dropped: client gone"),
            Err(Stop::Fail(code, why)) => {
                tracing::warn!(download = %id, code, reason = %why, "download ended early");
                let err = json!({"type": "error", "error": why, "code": code, "download_id": id});
                let _ = tx.send(Outbound::Text(err.to_string())).await;
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(pump, span));
    Ok(())
}

/// The download's body: header, chunks as the window allows, `download_done`, final acks.
#[allow(clippy::too_many_arguments)]
async fn pump(
    tx: &mpsc::Sender<Outbound>,
    state: &Download,
    cfg: &Settings,
    id: &str,
    header: String,
    mut opened: Opened,
    idle: Duration,
    binary_frames: bool,
) -> Result<(u64, u64), Stop> {
    let window = u64::from(cfg.window);
    let chunk_size = cfg.chunk_size;
    let expected = opened.content_length;
    send(tx, Outbound::Text(header)).await?;
    let mut hasher = Sha256::new();
    let mut buf = BytesMut::new();
    let (mut seq, mut total, mut eof) = (0u64, 0u64, false);
    loop {
        // One chunk's worth from the backend (or what is left at its end).
        while !eof && buf.len() < chunk_size {
            let next = tokio::select! {
                next = tokio::time::timeout(idle, opened.frame()) => next,
                () = tx.closed() => return Err(Stop::Gone),
            };
            match next {
                Err(_) => {
                    return Err(Stop::Fail(
                        "DOWNLOAD_FAILED",
                        format!("The backend sent nothing for {} s", idle.as_secs()),
                    ));
                }
                Ok(None) => eof = true,
                Ok(Some(Err(e))) => {
                    return Err(Stop::Fail(
                        "DOWNLOAD_FAILED",
                        format!("The backend's answer broke off: {e}"),
                    ));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        if buf.is_empty() {
            break;
        }
        let part = buf.split_to(chunk_size.min(buf.len())).freeze();
        wait_for_window(tx, state, cfg, seq, window).await?;
        hasher.update(&part);
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
        send(tx, msg).await?;
        seq += 1;
    }
    if let Some(n) = expected.filter(|n| *n != total) {
        return Err(Stop::Fail(
            "DOWNLOAD_FAILED",
            format!("The backend sent {total} bytes of the {n} it announced"),
        ));
    }
    let done = json!({"type": "download_done", "download_id": id, "chunks": seq,
                      "_content_length": total, "sha256": hex(&hasher.finalize())});
    send(tx, Outbound::Text(done.to_string())).await?;
    // Keep the state until the last chunk is acknowledged, for the client's final acks.
    let _ = tokio::time::timeout(cfg.ack_timeout, async {
        loop {
            let notified = state.notify.notified();
            if state.acked.load(Ordering::Acquire) >= seq {
                break;
            }
            tokio::select! {
                () = notified => {}
                () = tx.closed() => break,
            }
        }
    })
    .await;
    Ok((seq, total))
}

async fn send(tx: &mpsc::Sender<Outbound>, msg: Outbound) -> Result<(), Stop> {
    tx.send(msg).await.map_err(|_| Stop::Gone)
}

/// Waits until chunk `seq` is within the window of acknowledged chunks.
async fn wait_for_window(
    tx: &mpsc::Sender<Outbound>,
    state: &Download,
    cfg: &Settings,
    seq: u64,
    window: u64,
) -> Result<(), Stop> {
    loop {
        let notified = state.notify.notified();
        if seq < state.acked.load(Ordering::Acquire).saturating_add(window) {
            return Ok(());
        }
        tokio::select! {
            r = tokio::time::timeout(cfg.ack_timeout, notified) => if r.is_err() {
                return Err(Stop::Fail("DOWNLOAD_ACK_TIMEOUT", "Download acknowledgement timeout".to_owned()));
            },
            () = tx.closed() => return Err(Stop::Gone),
        }
    }
}

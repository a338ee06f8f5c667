//! Large files over the one socket: the process-wide store of chunked, acknowledged, resumable uploads.
//!
//! About 550 lines of code plus its unit tests: every step of an upload (start, chunk,
//! status, finish, removal, sweep) works on the one registry and its accounting, which is
//! kept in one place so that every removal gives its reserved bytes back exactly once.

pub mod download;
pub mod handler;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::conn::ConnHandle;
use crate::envelope::Refuse;

/// Transfer settings of one snapshot, compiled from `transfers:`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub chunk_size: usize,
    pub window: u32,
    pub max_upload_bytes: u64,
    pub max_total_bytes: u64,
    /// Where uploads are assembled.
    pub dir: PathBuf,
    pub resume_timeout: Duration,
    pub idle_timeout: Duration,
    pub download_chunk_over: usize,
    pub ack_timeout: Duration,
    pub max_downloads: usize,
    pub max_uploads: usize,
    pub max_uploads_total: usize,
}

impl Settings {
    pub fn compile(cfg: &crate::config::TransferConfig) -> Settings {
        Settings {
            chunk_size: cfg.chunk_size.max(1),
            window: cfg.window.max(1),
            max_upload_bytes: cfg.max_upload_bytes,
            max_total_bytes: cfg.max_total_bytes,
            dir: cfg
                .dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("scope-router-uploads")),
            resume_timeout: cfg.resume_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            download_chunk_over: cfg.download_chunk_over,
            ack_timeout: cfg.ack_timeout.0,
            max_downloads: cfg.max_downloads.max(1),
            max_uploads: cfg.max_uploads.max(1),
            max_uploads_total: cfg.max_uploads_total.max(1),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::compile(&crate::config::TransferConfig::default())
    }
}

/// Why a transfer step is refused; each becomes an `error` reply with its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("Unknown upload id")]
    Unknown,
    #[error("Upload belongs to another client")]
    NotOwned,
    #[error("Upload of {0} bytes is over the limit of {1} bytes")]
    TooLarge(u64, u64),
    #[error("Uploads in progress would exceed {0} bytes; try again later")]
    Busy(u64),
    #[error("Chunk {seq} is outside the window (expected {from}..{to})")]
    OutOfWindow { seq: u64, from: u64, to: u64 },
    #[error("Chunk {0} has the wrong size: {1} bytes, expected {2}")]
    BadChunkSize(u64, usize, usize),
    #[error("Chunk {0} is corrupt: its sha256 does not match")]
    CorruptChunk(u64),
    #[error("Upload incomplete: missing chunks {0:?}")]
    Incomplete(Vec<u64>),
    #[error("Upload checksum mismatch: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("Upload is already being finished")]
    Finishing,
    #[error("Invalid transfer message: {0}")]
    Invalid(String),
    #[error("Upload storage failed: {0}")]
    Io(String),
    #[error("Too many uploads: {0}")]
    TooMany(String),
}

impl Refuse for TransferError {
    fn code(&self) -> Option<&'static str> {
        Some(match self {
            TransferError::Unknown => "UPLOAD_UNKNOWN",
            TransferError::NotOwned => "UPLOAD_NOT_OWNED",
            TransferError::TooLarge(..) => "UPLOAD_TOO_LARGE",
            TransferError::Busy(_) => "UPLOAD_BUSY",
            TransferError::OutOfWindow { .. } => "UPLOAD_OUT_OF_WINDOW",
            TransferError::BadChunkSize(..) => "UPLOAD_BAD_CHUNK",
            TransferError::CorruptChunk(_) => "UPLOAD_CHUNK_CORRUPT",
            TransferError::Incomplete(_) => "UPLOAD_INCOMPLETE",
            TransferError::ChecksumMismatch { .. } => "UPLOAD_CHECKSUM_MISMATCH",
            TransferError::Finishing => "UPLOAD_FINISHING",
            TransferError::Invalid(_) => "TRANSFER_INVALID",
            TransferError::Io(_) => "UPLOAD_STORAGE",
            TransferError::TooMany(_) => "TOO_MANY_UPLOADS",
        })
    }
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        TransferError::Io(e.to_string())
    }
}

/// What an upload will become once assembled.
#[derive(Debug, Clone)]
pub struct Target {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// An upload being assembled on disk.
struct Upload {
    target: Target,
    /// Digest of the token of the connection that started it (resume needs the same token).
    owner: Option<[u8; 32]>,
    /// The connection it is attached to, or none after that connection ended.
    conn: Option<Box<str>>,
    chunk_size: usize,
    /// The window, resume and idle limits in force when the upload started.
    window: u64,
    resume_timeout: Duration,
    idle_timeout: Duration,
    received: Vec<bool>,
    received_count: u64,
    /// Open while a connection is attached; an upload waiting for a resume holds no descriptor.
    file: Option<tokio::fs::File>,
    disk: PathBuf,
    last_activity: Instant,
    detached_at: Option<Instant>,
    finishing: bool,
    /// The sha256 of chunks `0..hashed`, fed as they arrive in order (the usual case), so
    /// `upload_finish` need not read the file back; chunks out of order stop it, and then the
    /// file is hashed from disk at the end.
    hasher: Sha256,
    hashed: u64,
}

impl Upload {
    /// The upload's file, opened again if the upload was waiting for a resume.
    async fn open_file(&mut self) -> Result<&mut tokio::fs::File, TransferError> {
        if self.file.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&self.disk)
                .await?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| TransferError::Io("upload file not open".to_owned()))
    }

    fn chunks(&self) -> u64 {
        self.received.len() as u64
    }

    /// The first chunk not yet received.
    fn next_missing(&self) -> u64 {
        self.received
            .iter()
            .position(|r| !r)
            .map_or(self.chunks(), |p| p as u64)
    }

    fn status(&self, id: &str) -> Value {
        json!({
            "type": "upload_progress",
            "upload_id": id,
            "size": self.target.size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks(),
            "received_chunks": self.received_count,
            "next_seq": self.next_missing(),
            "complete": self.received_count == self.chunks(),
        })
    }
}

/// A finished upload, ready to be sent to the backend.
pub struct Assembled {
    pub target: Target,
    pub disk: PathBuf,
}

impl Drop for Assembled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.disk);
    }
}

/// One upload in the registry: what its removal must give back, beside the upload itself,
/// so that removing it never needs the upload's own lock.
struct Entry {
    size: u64,
    disk: PathBuf,
    /// The connection it is attached to (as in the upload), for the per-connection count.
    conn: Option<Box<str>>,
    upload: Arc<tokio::sync::Mutex<Upload>>,
}

/// All uploads of the process (they outlive connections, for resume).
#[derive(Default)]
pub struct Uploads {
    uploads: Mutex<HashMap<String, Entry>>,
    /// Bytes promised to uploads in progress.
    reserved: AtomicU64,
}

impl Uploads {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Uploads being assembled right now.
    pub fn uploads_in_progress(&self) -> usize {
        self.map().len()
    }

    /// Starts an upload; the reply tells the client the chunk size and window.
    pub async fn start(
        &self,
        cfg: &Settings,
        conn: &ConnHandle,
        target: Target,
    ) -> Result<Value, TransferError> {
        if target.size > cfg.max_upload_bytes {
            return Err(TransferError::TooLarge(target.size, cfg.max_upload_bytes));
        }
        if target.sha256.len() != 64 || !target.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TransferError::Invalid(
                "sha256 must be 64 hex characters".to_owned(),
            ));
        }
        let reserved = self.reserved.fetch_add(target.size, Ordering::AcqRel) + target.size;
        if reserved > cfg.max_total_bytes {
            self.reserved.fetch_sub(target.size, Ordering::AcqRel);
            return Err(TransferError::Busy(cfg.max_total_bytes));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = cfg.dir.clone();
        let disk = dir.join(format!("{id}.part"));
        let file = async {
            tokio::fs::create_dir_all(&dir).await?;
            let f = tokio::fs::File::create(&disk).await?;
            f.set_len(target.size).await?;
            Ok::<_, std::io::Error>(f)
        }
        .await
        .inspect_err(|_| {
            self.reserved.fetch_sub(target.size, Ordering::AcqRel);
        })?;
        let chunk_size = cfg.chunk_size;
        let chunks = target.size.div_ceil(chunk_size as u64).max(1);
        // Counted and inserted in one step under the map's lock, so concurrent starts
        // cannot pass the caps together.
        let mut map = self.map();
        let mine = map
            .values()
            .filter(|e| e.conn.as_deref() == Some(&*conn.id))
            .count();
        let refused = if mine >= cfg.max_uploads {
            Some(format!(
                "this connection has {mine} uploads in progress (at most {}); finish one first",
                cfg.max_uploads
            ))
        } else if map.len() >= cfg.max_uploads_total {
            Some(format!(
                "the router holds {} uploads (at most {}); try again later",
                map.len(),
                cfg.max_uploads_total
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            drop(map);
            drop(file);
            let _ = std::fs::remove_file(&disk);
            self.reserved.fetch_sub(target.size, Ordering::AcqRel);
            return Err(TransferError::TooMany(why));
        }
        let upload = Upload {
            target,
            owner: conn.token_digest,
            conn: Some(conn.id.clone()),
            chunk_size,
            window: u64::from(cfg.window),
            resume_timeout: cfg.resume_timeout,
            idle_timeout: cfg.idle_timeout,
            received: vec![false; usize::try_from(chunks).unwrap_or(usize::MAX)],
            received_count: 0,
            file: Some(file),
            disk,
            last_activity: Instant::now(),
            detached_at: None,
            finishing: false,
            hasher: Sha256::new(),
            hashed: 0,
        };
        tracing::info!(upload = %id, size = upload.target.size, chunks, path = %upload.target.path, "upload started");
        let reply = json!({
            "type": "upload_ready",
            "upload_id": id,
            "chunk_size": chunk_size,
            "chunks": chunks,
            "window": cfg.window,
        });
        let entry = Entry {
            size: upload.target.size,
            disk: upload.disk.clone(),
            conn: Some(conn.id.clone()),
            upload: Arc::new(tokio::sync::Mutex::new(upload)),
        };
        map.insert(id, entry);
        Ok(reply)
    }

    /// The upload, if this connection may use it (its own, or a detached one with the same token).
    async fn claim(
        &self,
        conn: &ConnHandle,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Upload>>, TransferError> {
        let entry = self
            .map()
            .get(id)
            .map(|e| e.upload.clone())
            .ok_or(TransferError::Unknown)?;
        {
            let mut u = entry.lock().await;
            if u.owner != conn.token_digest {
                return Err(TransferError::NotOwned);
            }
            match &u.conn {
                Some(c) if **c == *conn.id => {}
                // Attached to a live connection: only that one may use it.
                Some(_) => return Err(TransferError::NotOwned),
                None => {
                    tracing::info!(upload = %id, "upload resumed by a new connection");
                    u.conn = Some(conn.id.clone());
                    u.detached_at = None;
                    if let Some(e) = self.map().get_mut(id) {
                        e.conn = Some(conn.id.clone());
                    }
                }
            }
            u.last_activity = Instant::now();
        }
        Ok(entry)
    }

    /// Stores one chunk; duplicates are acknowledged again, out-of-window ones refused.
    pub async fn chunk(
        &self,
        conn: &ConnHandle,
        id: &str,
        seq: u64,
        data: &[u8],
        chunk_sha256: Option<&str>,
    ) -> Result<Value, TransferError> {
        let entry = self.claim(conn, id).await?;
        let mut u = entry.lock().await;
        if u.finishing {
            return Err(TransferError::Finishing);
        }
        let window = u.window;
        let from = u.next_missing();
        if seq >= u.chunks() || seq >= from.saturating_add(window) {
            return Err(TransferError::OutOfWindow {
                seq,
                from,
                to: from.saturating_add(window).min(u.chunks()),
            });
        }
        let offset = seq * u.chunk_size as u64;
        let expected = usize::try_from((u.target.size - offset).min(u.chunk_size as u64))
            .unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(TransferError::BadChunkSize(seq, data.len(), expected));
        }
        if let Some(want) = chunk_sha256
            && !hex(&Sha256::digest(data)).eq_ignore_ascii_case(want)
        {
            return Err(TransferError::CorruptChunk(seq));
        }
        let index = usize::try_from(seq).unwrap_or(usize::MAX);
        let duplicate = u.received.get(index).copied().unwrap_or(false);
        if !duplicate {
            let file = u.open_file().await?;
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            file.write_all(data).await?;
            if let Some(slot) = u.received.get_mut(index) {
                *slot = true;
            }
            u.received_count += 1;
            if seq == u.hashed {
                u.hasher.update(data);
                u.hashed += 1;
            }
        }
        Ok(json!({
            "type": "upload_ack",
            "upload_id": id,
            "seq": seq,
            "duplicate": duplicate,
            "received_chunks": u.received_count,
            "next_seq": u.next_missing(),
        }))
    }

    /// How far an upload got (a resuming client continues from `next_seq`).
    pub async fn status(&self, conn: &ConnHandle, id: &str) -> Result<Value, TransferError> {
        let entry = self.claim(conn, id).await?;
        let u = entry.lock().await;
        Ok(u.status(id))
    }

    /// Checks that every chunk arrived and the sha256 matches; hands over the assembled file.
    pub async fn finish(&self, conn: &ConnHandle, id: &str) -> Result<Assembled, TransferError> {
        let entry = self.claim(conn, id).await?;
        let mut u = entry.lock().await;
        if u.finishing {
            return Err(TransferError::Finishing);
        }
        let missing: Vec<u64> = u
            .received
            .iter()
            .enumerate()
            .filter(|(_, r)| !**r)
            .map(|(i, _)| i as u64)
            .take(32)
            .collect();
        if !missing.is_empty() {
            return Err(TransferError::Incomplete(missing));
        }
        u.finishing = true;
        // Flushed, not synced: the backend request reads it back through the page cache, and
        // an upload does not outlive the router (its state is in memory), so an fsync of the
        // whole file would only delay the request.
        let file = u.open_file().await?;
        file.flush().await?;
        u.file = None;
        let actual = if u.hashed == u.chunks() {
            hex(&std::mem::take(&mut u.hasher).finalize())
        } else {
            let disk = u.disk.clone();
            tokio::task::spawn_blocking(move || sha256_file(&disk))
                .await
                .map_err(|e| TransferError::Io(e.to_string()))??
        };
        let target = u.target.clone();
        let disk = u.disk.clone();
        drop(u);
        // From here the upload is no longer resumable: exactly one request reaches the backend.
        // The file now belongs to the `Assembled` value (removed when it is dropped).
        self.remove(id, false);
        let assembled = Assembled { target, disk };
        if !actual.eq_ignore_ascii_case(&assembled.target.sha256) {
            return Err(TransferError::ChecksumMismatch {
                expected: assembled.target.sha256.clone(),
                actual,
            });
        }
        Ok(assembled)
    }

    /// Removes an upload and gives its reserved bytes back, in one step under the map's
    /// lock: whoever else holds or waits for the upload, the budget is returned exactly once.
    fn remove(&self, id: &str, delete_file: bool) {
        let Some(entry) = self.map().remove(id) else {
            return;
        };
        self.reserved.fetch_sub(entry.size, Ordering::AcqRel);
        if delete_file {
            let _ = std::fs::remove_file(&entry.disk);
        }
    }

    /// Removes `.part` files left in `dir` by a router that crashed or was killed.
    ///
    /// Only files untouched for `older_than` (the longest an upload may sit idle or wait for
    /// a resume) go: another router sharing the directory may be writing the others, and
    /// a live upload is written, and so touched, with every chunk.
    pub fn remove_orphans(dir: &std::path::Path, older_than: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let stale = |e: &std::fs::DirEntry| {
            e.metadata()
                .ok()
                .filter(std::fs::Metadata::is_file)
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > older_than)
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .filter(stale)
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Bytes reserved by uploads in progress.
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// A connection ended: its uploads wait `resume_timeout` for another connection.
    pub async fn detach(&self, conn_id: &str) {
        let entries: Vec<_> = self
            .map()
            .values_mut()
            .filter(|e| e.conn.as_deref() == Some(conn_id))
            .map(|e| {
                e.conn = None;
                e.upload.clone()
            })
            .collect();
        for e in entries {
            let mut u = e.lock().await;
            if u.conn.as_deref() == Some(conn_id) {
                u.conn = None;
                u.detached_at = Some(Instant::now());
                // Written chunks reach the file before its descriptor is given back.
                if let Some(mut f) = u.file.take() {
                    let _ = f.flush().await;
                }
            }
        }
    }

    /// Removes uploads that were abandoned: detached past `resume_timeout`, or idle past `idle_timeout`.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let stale: Vec<String> = self
            .map()
            .iter()
            .filter_map(|(id, e)| {
                let u = e.upload.try_lock().ok()?;
                let gone = u
                    .detached_at
                    .is_some_and(|t| now.duration_since(t) > u.resume_timeout);
                let idle = now.duration_since(u.last_activity) > u.idle_timeout;
                (!u.finishing && (gone || idle)).then(|| id.clone())
            })
            .collect();
        for id in &stale {
            tracing::info!(upload = %id, "abandoned upload removed");
            self.remove(id, true);
        }
        stale.len()
    }

    /// Sweeps abandoned uploads forever.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(t) = me.upgrade() else { return };
                t.sweep();
            }
        });
    }
}

/// An upload chunk carried in a binary frame: `U`, 32 hex characters of upload id, big-endian u32 seq, payload.
pub fn parse_binary_chunk(frame: &[u8]) -> Option<(&str, u64, &[u8])> {
    let (kind, rest) = frame.split_first()?;
    if *kind != b'U' || rest.len() < 36 {
        return None;
    }
    let (id, rest) = rest.split_at(32);
    let (seq, data) = rest.split_at(4);
    let id = std::str::from_utf8(id).ok()?;
    let seq = u32::from_be_bytes(seq.try_into().ok()?);
    Some((id, u64::from(seq), data))
}

fn sha256_file(path: &std::path::Path) -> Result<String, TransferError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads an assembled upload as a body stream.
pub async fn body_stream(
    disk: &std::path::Path,
) -> Result<crate::backend::BodyStream, std::io::Error> {
    use futures_util::StreamExt;
    let file = tokio::fs::File::open(disk).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
        .map(|r| r.map(hyper::body::Frame::data));
    Ok(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removing_an_upload_someone_holds_still_returns_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Settings {
            dir: dir.path().to_owned(),
            ..Settings::default()
        };
        let uploads = Uploads::new();
        let conn = ConnHandle::new("0011aabb");
        let target = Target {
            method: "POST".into(),
            path: "/api/v1/assets".into(),
            content_type: "image/png".into(),
            size: 1000,
            sha256: "0".repeat(64),
        };
        let reply = uploads.start(&cfg, &conn, target).await.unwrap();
        let id = reply["upload_id"].as_str().unwrap().to_owned();
        assert_eq!(uploads.reserved_bytes(), 1000);
        // Another task (a status call, a closing tab's detach) holds the upload's lock.
        let held = uploads.map().get(&id).unwrap().upload.clone();
        let guard = held.lock().await;
        uploads.remove(&id, true);
        assert_eq!(uploads.reserved_bytes(), 0, "the budget leaked");
        assert_eq!(uploads.uploads_in_progress(), 0);
        drop(guard);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the part file is gone"
        );
    }

    /// The sha256 is checked the same whether the chunks came in order (hashed as they
    /// arrive) or not (hashed from disk at the end), and a wrong one is refused both ways.
    #[tokio::test]
    async fn finish_checks_the_sha256_in_order_and_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Settings {
            dir: dir.path().to_owned(),
            chunk_size: 4,
            ..Settings::default()
        };
        let data = b"0123456789";
        let right = hex(&Sha256::digest(data));
        let uploads = Uploads::new();
        let conn = ConnHandle::new("0011aabb");
        for (order, sha, ok) in [
            ([0u64, 1, 2], right.clone(), true),
            ([2, 0, 1], right.clone(), true),
            ([0, 1, 2], "0".repeat(64), false),
            ([1, 0, 2], "0".repeat(64), false),
        ] {
            let target = Target {
                method: "POST".into(),
                path: "/api/v1/assets".into(),
                content_type: "image/png".into(),
                size: data.len() as u64,
                sha256: sha,
            };
            let reply = uploads.start(&cfg, &conn, target).await.unwrap();
            let id = reply["upload_id"].as_str().unwrap().to_owned();
            for seq in order {
                let from = seq as usize * 4;
                let chunk = &data[from..(from + 4).min(data.len())];
                uploads.chunk(&conn, &id, seq, chunk, None).await.unwrap();
            }
            // A repeated chunk is stored once and changes nothing.
            uploads.chunk(&conn, &id, 1, b"4567", None).await.unwrap();
            match uploads.finish(&conn, &id).await {
                Ok(a) => {
                    assert!(ok, "{order:?} passed with a wrong sha256");
                    assert_eq!(std::fs::read(&a.disk).unwrap(), data);
                }
                Err(TransferError::ChecksumMismatch { actual, .. }) => {
                    assert!(!ok, "{order:?} refused");
                    assert_eq!(actual, right, "{order:?}");
                }
                Err(e) => panic!("{order:?}: {e}"),
            }
        }
    }

    #[test]
    fn binary_chunk_frames() {
        let mut f = vec![b'U'];
        f.extend_from_slice(b"0123456789abcdef0123456789abcdef");
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(b"payload");
        assert_eq!(
            parse_binary_chunk(&f),
            Some(("0123456789abcdef0123456789abcdef", 7, &b"payload"[..]))
        );
        assert_eq!(parse_binary_chunk(b"U123"), None);
        assert_eq!(parse_binary_chunk(b""), None);
        f[0] = b'X';
        assert_eq!(parse_binary_chunk(&f), None);
    }
}

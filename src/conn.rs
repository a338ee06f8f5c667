//! The narrow connection handle that handlers see: id, token digest, push sender and per-connection state.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A message pushed to the client outside request/reply (download chunks, their header).
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Binary(Bytes),
}

/// What a handler knows of the connection its message came from.
///
/// Handlers own their per-connection state (signaling sessions, downloads) as typed
/// extensions, so this type knows none of them and the session loop none of theirs.
pub struct ConnHandle {
    /// Short id (8 hex characters) that tags every log line about this connection.
    pub id: Box<str>,
    /// Digest of the connection's auth token (uploads resume only under the same token).
    pub token_digest: Option<[u8; 32]>,
    /// Where pushed messages go (set once by the session loop).
    push: OnceLock<mpsc::Sender<Outbound>>,
    /// Per-connection state of the handlers, one value per type, created on first use.
    extensions: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// The user id the client gave (`set_user_id`), once it gave one.
    user_id: arc_swap::ArcSwapOption<String>,
    /// The deployment's `connection.info`, set at admission.
    info: OnceLock<Arc<serde_json::Value>>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.id).finish()
    }
}

impl ConnHandle {
    /// A connection with the given id, without a token.
    pub fn new(id: impl Into<Box<str>>) -> Arc<Self> {
        Self::with_token(id, None)
    }

    /// A connection whose token is kept only as a digest.
    pub fn with_token(id: impl Into<Box<str>>, token: Option<&str>) -> Arc<Self> {
        use sha2::Digest;
        Arc::new(Self {
            id: id.into(),
            token_digest: token.map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
            push: OnceLock::new(),
            extensions: Mutex::new(HashMap::new()),
            user_id: arc_swap::ArcSwapOption::empty(),
            info: OnceLock::new(),
        })
    }

    /// The user id the client gave, if any.
    pub fn user_id(&self) -> Option<Arc<String>> {
        self.user_id.load_full()
    }

    /// Records the user id the client gave (a later one replaces it).
    pub fn set_user_id(&self, id: &str) {
        self.user_id.store(Some(Arc::new(id.to_owned())));
    }

    /// The deployment's connection info, if the routes declare one.
    pub fn info(&self) -> Option<&serde_json::Value> {
        self.info.get().map(|v| &**v)
    }

    /// Sets the connection info (once, at admission).
    pub fn set_info(&self, info: Arc<serde_json::Value>) {
        let _ = self.info.set(info);
    }

    /// A fresh random connection id.
    pub fn new_id() -> String {
        format!("{:08x}", rand::random::<u32>())
    }

    /// Sets the push channel; the session loop does this once, before any message runs.
    pub fn set_push(&self, tx: mpsc::Sender<Outbound>) {
        let _ = self.push.set(tx);
    }

    /// The push channel, if the connection has one (not in offline tools).
    pub fn push_sender(&self) -> Option<mpsc::Sender<Outbound>> {
        self.push.get().cloned()
    }

    /// This connection's value of `T`, created empty on first use.
    pub fn state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self
            .extensions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match entry.clone().downcast::<T>() {
            Ok(v) => v,
            // Unreachable (the key is T's TypeId), but a fresh value beats a panic.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// This connection's value of `T`, if a handler created one.
    pub fn existing_state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let map = self
            .extensions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&TypeId::of::<T>())?.clone().downcast::<T>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicU32);

    #[test]
    fn state_is_per_type_and_shared() {
        let c = ConnHandle::new("abcd1234");
        assert!(c.existing_state::<Counter>().is_none());
        c.state::<Counter>()
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let again = c.state::<Counter>();
        assert_eq!(again.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(c.existing_state::<Counter>().is_some());
    }
}

//! Per-user cleanup on disconnect, compiled at load: close WebRTC sessions, empty directories, call hooks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;

use crate::backend::Upstream;
use crate::config::{DisconnectStep, SignalingDisconnect};
use crate::conn::ConnHandle;

/// A disconnect step, compiled at load.
#[derive(Debug, Clone)]
pub enum Step {
    /// DELETE every WebRTC session the connection opened, under the offer route's path.
    CloseSessions { offer_path: String },
    /// Empty a directory; `None` when its variable was not set at load.
    ClearDir { spec: String, dir: Option<PathBuf> },
    /// Call the backend; `${connection.id}` in the path is the connection id.
    Http {
        method: Method,
        path: String,
        timeout: Duration,
    },
}

impl Step {
    /// Compiles one step; `offer_path` is the path of the table's offer route, if any.
    pub fn compile(
        step: &DisconnectStep,
        offer_path: Option<&str>,
        backend_env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Step, String> {
        Ok(match step {
            DisconnectStep::Signaling(SignalingDisconnect::CloseSessions) => Step::CloseSessions {
                offer_path: offer_path
                    .ok_or("close_sessions needs a route with `signaling: { action: offer }`")?
                    .trim_end_matches('/')
                    .to_owned(),
            },
            DisconnectStep::ClearDir(d) if d.trim().is_empty() || d.trim() == "/" => {
                return Err(format!("refusing to clear {d:?}"));
            }
            DisconnectStep::ClearDir(d) => Step::ClearDir {
                spec: d.clone(),
                dir: resolve_dir(d, backend_env),
            },
            DisconnectStep::Http(h) if !h.path.starts_with('/') => {
                return Err(format!("http path {:?} must start with '/'", h.path));
            }
            DisconnectStep::Http(h) => Step::Http {
                method: crate::route::method(&h.method)?,
                path: h.path.clone(),
                timeout: h.timeout.map_or(Duration::from_secs(10), |d| d.0),
            },
        })
    }
}

/// Closes the sessions opened since [`run`] (by offers still in flight at the disconnect).
pub async fn close_late_sessions(steps: &[Step], upstream: &Upstream, conn: &ConnHandle) {
    for step in steps {
        if let Step::CloseSessions { offer_path } = step {
            crate::handler::signaling::close_sessions(upstream, offer_path, conn).await;
        }
    }
}

/// Runs the steps in order; a failing step is logged and the next one runs.
///
/// `clear_dir` runs only when `last` (no other connection is being served): the
/// runner holds one user's data, and another open tab of that user still needs it.
pub async fn run(steps: &[Step], upstream: &Upstream, conn: &ConnHandle, last: bool) {
    for step in steps {
        match step {
            Step::CloseSessions { offer_path } => {
                crate::handler::signaling::close_sessions(upstream, offer_path, conn).await;
            }
            Step::ClearDir { .. } if !last => {
                tracing::debug!("other connections are open; directory kept");
            }
            Step::ClearDir { spec, dir: None } => {
                tracing::warn!(dir = %spec, "clear_dir: variable not set; nothing cleared");
            }
            Step::ClearDir { dir: Some(dir), .. } => {
                let shown = dir.display().to_string();
                let dir = dir.clone();
                match tokio::task::spawn_blocking(move || clear_dir(&dir)).await {
                    Ok(Ok(n)) => tracing::info!(dir = %shown, removed = n, "cleared"),
                    Ok(Err(e)) => tracing::warn!(dir = %shown, error = %e, "could not clear"),
                    Err(e) => tracing::warn!(dir = %shown, error = %e, "clear task failed"),
                }
            }
            Step::Http {
                method,
                path,
                timeout,
            } => {
                let path = path.replace("${connection.id}", &conn.id);
                match upstream.call(method.clone(), &path, None, *timeout).await {
                    Ok(r) if !r.status.is_success() => {
                        tracing::warn!(%path, status = r.status.as_u16(), "disconnect hook answered an error")
                    }
                    Ok(r) if says_not_ok(&r.body) => {
                        tracing::warn!(%path, status = r.status.as_u16(), "disconnect hook answered ok: false")
                    }
                    Ok(r) => {
                        tracing::info!(%path, status = r.status.as_u16(), "disconnect hook called")
                    }
                    Err(e) => tracing::warn!(%path, error = %e, "disconnect hook failed"),
                }
            }
        }
    }
}

/// Whether a hook's answer is a JSON object with `ok: false` (the runner's cleanup says so
/// when something could not be removed).
fn says_not_ok(body: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(body),
        Ok(serde_json::Value::Object(m)) if m.get("ok") == Some(&serde_json::Value::Bool(false))
    )
}

/// `$NAME` is looked up in the backend's declared env, then the router's environment.
fn resolve_dir(
    spec: &str,
    backend_env: &std::collections::BTreeMap<String, String>,
) -> Option<PathBuf> {
    let raw = match spec.strip_prefix('$') {
        Some(name) => {
            let name = name.trim_start_matches('{').trim_end_matches('}');
            backend_env
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())?
        }
        None => spec.to_owned(),
    };
    let expanded = match (raw.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => raw,
    };
    Some(PathBuf::from(expanded))
}

/// Removes everything inside `dir` (not `dir` itself); symlinks are removed, never followed.
pub fn clear_dir(dir: &Path) -> std::io::Result<usize> {
    if dir.as_os_str().is_empty() || dir.parent().is_none() {
        return Err(std::io::Error::other(
            "refusing to clear the root or an empty path",
        ));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_contents_keeps_dir_and_does_not_follow_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), "x").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.png"), "x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b.mp4"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        assert_eq!(clear_dir(d.path()).unwrap(), 3);
        assert!(d.path().is_dir());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert!(outside.path().join("keep.txt").exists());
        assert!(clear_dir(Path::new("/")).is_err());
        assert_eq!(clear_dir(&d.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn ok_false_is_noticed() {
        assert!(says_not_ok(br#"{"ok":false,"plugins":[],"assets":0}"#));
        assert!(!says_not_ok(br#"{"ok":true}"#));
        assert!(!says_not_ok(b"not json"));
        assert!(!says_not_ok(b"[false]"));
    }

    #[test]
    fn dir_from_backend_env_first() {
        let mut env = std::collections::BTreeMap::new();
        env.insert("ASSETS".to_owned(), "/tmp/a".to_owned());
        assert_eq!(resolve_dir("$ASSETS", &env), Some(PathBuf::from("/tmp/a")));
        assert_eq!(
            resolve_dir("${ASSETS}", &env),
            Some(PathBuf::from("/tmp/a"))
        );
        assert_eq!(resolve_dir("/x/y", &env), Some(PathBuf::from("/x/y")));
        assert_eq!(resolve_dir("$SCOPE_ROUTER_SURELY_UNSET", &env), None);
    }
}

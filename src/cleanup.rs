//! Per-user cleanup on disconnect: close WebRTC sessions, empty directories, call hooks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;

use crate::config::{DisconnectStep, SignalingDisconnect};
use crate::route::RouteTable;
use crate::server::AppState;
use crate::session::ConnCtx;

/// Runs the table's `on_disconnect` steps in order; a failing step is logged and the next one runs.
///
/// `clear_dir` runs only when `last` (no other connection is being served): the
/// runner holds one user's data, and another open tab of that user still needs it.
pub async fn run(table: &RouteTable, state: &AppState, conn: &ConnCtx, last: bool) {
    for step in &table.connection.on_disconnect {
        match step {
            DisconnectStep::Signaling(SignalingDisconnect::CloseSessions) => {
                if let Some(path) = &table.close_sessions_path {
                    crate::handler::signaling::close_sessions(&state.backend, path, conn).await;
                }
            }
            DisconnectStep::ClearDir(_) if !last => {
                tracing::debug!("other connections are open; directory kept");
            }
            DisconnectStep::ClearDir(dir) => {
                let Some(dir) = resolve_dir(dir, &table.source.file.backend.env) else {
                    tracing::warn!(dir, "clear_dir: variable not set; nothing cleared");
                    continue;
                };
                let shown = dir.display().to_string();
                match tokio::task::spawn_blocking(move || clear_dir(&dir)).await {
                    Ok(Ok(n)) => tracing::info!(dir = %shown, removed = n, "cleared"),
                    Ok(Err(e)) => tracing::warn!(dir = %shown, error = %e, "could not clear"),
                    Err(e) => tracing::warn!(dir = %shown, error = %e, "clear task failed"),
                }
            }
            DisconnectStep::Http(h) => {
                let path = h.path.replace("${connection.id}", &conn.id);
                let method = Method::from_bytes(h.method.to_ascii_uppercase().as_bytes())
                    .unwrap_or(Method::POST);
                match state
                    .backend
                    .call(method, &path, None, Duration::from_secs(10))
                    .await
                {
                    Ok(r) => {
                        tracing::info!(%path, status = r.status.as_u16(), "disconnect hook called")
                    }
                    Err(e) => tracing::warn!(%path, error = %e, "disconnect hook failed"),
                }
            }
        }
    }
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

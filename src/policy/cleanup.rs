//! Connection hooks, compiled at load: close WebRTC sessions, empty directories, and backend calls (once, or for each item of a list).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;

use serde_json::Value;

use crate::backend::Upstream;
use crate::config::{DisconnectStep, HttpStep, SignalingDisconnect};
use crate::conn::ConnHandle;
use crate::template::{Ctx, Scope, Template};

/// A disconnect step, compiled at load.
#[derive(Debug, Clone)]
pub enum Step {
    /// DELETE every WebRTC session the connection opened, under the offer route's path.
    CloseSessions { offer_path: String },
    /// Empty a directory; `None` when its variable was not set at load.
    ClearDir { spec: String, dir: Option<PathBuf> },
    /// Call the backend.
    Http(HttpCall),
}

/// A backend call of a hook, compiled at load.
#[derive(Debug, Clone)]
pub struct HttpCall {
    method: Method,
    path: Template,
    body: Option<Template>,
    timeout: Duration,
    /// Only when the last connection leaves.
    pub last_only: bool,
    quiet: Vec<u16>,
    for_each: Option<ForEach>,
}

/// One call per element of a list in the first call's answer.
#[derive(Debug, Clone)]
struct ForEach {
    items: Vec<String>,
    skip_if: Option<String>,
    method: Method,
    path: Template,
    timeout: Duration,
    max_items: usize,
}

/// A path or body template of a hook: the connection's variables and the environment.
fn hook_template(src: &Value, scope: Scope, what: &str) -> Result<Template, String> {
    Template::compile(src, scope).map_err(|e| format!("{what}: {e}"))
}

impl HttpCall {
    /// Compiles an `http` step (of `after_connect` or `on_disconnect`).
    pub fn compile(h: &HttpStep) -> Result<HttpCall, String> {
        if !h.path.starts_with('/') {
            return Err(format!("http path {:?} must start with '/'", h.path));
        }
        let for_each = match &h.for_each {
            None => None,
            Some(f) if !f.path.starts_with('/') => {
                return Err(format!("for_each path {:?} must start with '/'", f.path));
            }
            Some(f) => Some(ForEach {
                items: f
                    .items
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                skip_if: f.skip_if.clone(),
                method: crate::route::method(&f.method)?,
                path: hook_template(
                    &Value::from(f.path.as_str()),
                    Scope::CONNECTION.with(Scope::ITEM),
                    "for_each.path",
                )?,
                timeout: f.timeout.map_or(Duration::from_secs(10), |d| d.0),
                max_items: f.max_items,
            }),
        };
        Ok(HttpCall {
            method: crate::route::method(&h.method)?,
            path: hook_template(&Value::from(h.path.as_str()), Scope::CONNECTION, "path")?,
            body: h
                .body
                .as_ref()
                .map(|b| hook_template(b, Scope::CONNECTION, "body"))
                .transpose()?,
            timeout: h.timeout.map_or(Duration::from_secs(10), |d| d.0),
            last_only: h.last_only,
            quiet: h.quiet_statuses.clone(),
            for_each,
        })
    }

    /// The time the step may take in the usual case: its own timeout, plus those of the calls
    /// for up to 8 items (a list longer than that may outlast the hold; it is then logged).
    pub fn usual_time(&self) -> Duration {
        let each = self.for_each.as_ref().map_or(Duration::ZERO, |f| {
            f.timeout * u32::try_from(f.max_items.min(8)).unwrap_or(8)
        });
        self.timeout + each
    }

    /// Makes the call (and the calls for each item); failures are logged, never returned.
    pub async fn run(&self, upstream: &Upstream, conn: &ConnHandle) {
        let user = conn.user_id();
        let ctx = Ctx {
            connection_id: Some(&conn.id),
            user_id: user.as_deref().map(String::as_str),
            connection_info: conn.info(),
            ..Ctx::default()
        };
        let path = self.path.render_text(&ctx);
        let body = self.body.as_ref().map(|b| {
            let mut out = Vec::new();
            b.render(&ctx, &mut out);
            (bytes::Bytes::from(out), "application/json")
        });
        let resp = match upstream
            .call(self.method.clone(), &path, body, self.timeout)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(method = %self.method, %path, error = %e, "hook call failed");
                return;
            }
        };
        let status = resp.status.as_u16();
        if resp.status.is_success() && says_not_ok(&resp.body) {
            tracing::warn!(method = %self.method, %path, status, "hook answered ok: false");
        } else if resp.status.is_success() {
            tracing::info!(method = %self.method, %path, status, "hook called");
        } else if self.quiet.contains(&status) {
            tracing::debug!(method = %self.method, %path, status, "hook answered (expected)");
            return;
        } else {
            tracing::warn!(method = %self.method, %path, status, "hook answered an error");
            return;
        }
        let Some(each) = &self.for_each else {
            return;
        };
        let answer: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let list = each
            .items
            .iter()
            .try_fold(&answer, |v, k| v.get(k.as_str()))
            .and_then(Value::as_array);
        let Some(list) = list else {
            tracing::warn!(%path, "hook answer has no list to walk");
            return;
        };
        if list.len() > each.max_items {
            tracing::warn!(%path, items = list.len(), max = each.max_items, "hook list cut");
        }
        for item in list.iter().take(each.max_items) {
            let skip = each
                .skip_if
                .as_deref()
                .is_some_and(|f| item.get(f).and_then(Value::as_bool) == Some(true));
            if skip {
                continue;
            }
            let encoded = crate::pathsafe::encode_strings(item);
            let item_ctx = Ctx {
                item: Some(&encoded),
                ..Ctx {
                    connection_id: Some(&conn.id),
                    user_id: user.as_deref().map(String::as_str),
                    connection_info: conn.info(),
                    ..Ctx::default()
                }
            };
            let item_path = each.path.render_text(&item_ctx);
            match upstream
                .call(each.method.clone(), &item_path, None, each.timeout)
                .await
            {
                Ok(r) => {
                    tracing::info!(method = %each.method, path = %item_path, status = r.status.as_u16(), "hook called for an item")
                }
                Err(e) => {
                    tracing::warn!(method = %each.method, path = %item_path, error = %e, "hook call for an item failed")
                }
            }
        }
    }
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
            DisconnectStep::Http(h) => Step::Http(HttpCall::compile(h)?),
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
            Step::Http(call) if call.last_only && !last => {
                tracing::debug!("other connections are open; between-users hook skipped");
            }
            Step::Http(call) => call.run(upstream, conn).await,
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

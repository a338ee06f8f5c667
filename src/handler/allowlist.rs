//! Request guards of forward routes: an HTTP-fetched allowlist (paged, cached) that a field of the request body must be on before the request is sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use globset::GlobMatcher;
use hyper::Method;
use serde_json::Value;

use crate::backend::Backend;
use crate::config::GuardConfig;
use crate::template::{Ctx, Scope, Template};

/// One guard, compiled at load.
pub struct RequestGuard {
    method: Method,
    path: GlobMatcher,
    list: Allowlist,
}

struct Allowlist {
    url: String,
    items: String,
    field: String,
    more: String,
    page_size: usize,
    max_pages: usize,
    value: String,
    cache: Duration,
    timeout: Duration,
    denied: String,
    /// The last list fetched, and when.
    cached: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
    /// One fetch at a time: a burst of installs is one round of calls.
    fetching: tokio::sync::Mutex<()>,
}

/// Why a guarded request is not sent.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// Lower case, trimmed, without `git+`, the scheme, a trailing `.git` or `/`.
pub fn normalize(url: &str) -> String {
    let mut s = url.trim().to_ascii_lowercase();
    for prefix in ["git+", "https://", "http://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_owned();
        }
    }
    while let Some(rest) = s.strip_suffix('/').or_else(|| s.strip_suffix(".git")) {
        s = rest.to_owned();
    }
    s
}

impl RequestGuard {
    /// The guard of `method` and `path` (its `request`, parsed by the route's compiler).
    pub fn compile(
        method: Method,
        path: GlobMatcher,
        cfg: &GuardConfig,
    ) -> Result<RequestGuard, String> {
        let a = &cfg.allowlist;
        // The URL is read once, at load (`${env.*}`); it must then be absolute.
        let url = Template::compile(&Value::from(a.url.as_str()), Scope::CONNECTION)
            .map_err(|e| format!("guards.allowlist.url: {e}"))?
            .render_text(&Ctx::default());
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|e| format!("guards.allowlist.url {url:?}: {e}"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(format!(
                "guards.allowlist.url {url:?} must be http:// or https://"
            ));
        }
        Ok(RequestGuard {
            method,
            path,
            list: Allowlist {
                url,
                items: a.items.clone(),
                field: a.field.clone(),
                more: a.more.clone(),
                page_size: a.page_size.max(1),
                max_pages: a.max_pages.max(1),
                value: a.value.clone(),
                cache: a.cache.0,
                timeout: a.timeout.0,
                denied: a.denied.clone(),
                cached: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            },
        })
    }

    /// Whether this guard applies to the request.
    pub fn applies(&self, method: &Method, path: &str) -> bool {
        self.method == *method && self.path.is_match(path)
    }

    /// Lets the request through only when its body's value is on the list.
    pub async fn check(&self, body: Option<&Value>, pool: &Backend) -> Result<(), Refusal> {
        let l = &self.list;
        let value = body
            .and_then(|b| b.get(&l.value))
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Refusal {
                status: 400,
                message: format!("Missing string field \"{}\" in the request body", l.value),
            })?;
        let list = l.current(pool).await.map_err(|why| Refusal {
            status: 503,
            message: format!("Unable to verify plugin allowlist: {why}"),
        })?;
        if list.contains(&normalize(value)) {
            Ok(())
        } else {
            Err(Refusal {
                status: 403,
                message: l.denied.replace("{value}", value),
            })
        }
    }
}

impl Allowlist {
    fn fresh(&self) -> Option<Arc<HashSet<String>>> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.cache)
            .map(|(_, l)| l.clone())
    }

    /// The list, from the cache while fresh, else fetched (once for all waiting callers).
    async fn current(&self, pool: &Backend) -> Result<Arc<HashSet<String>>, String> {
        if let Some(l) = self.fresh() {
            return Ok(l);
        }
        let _one = self.fetching.lock().await;
        if let Some(l) = self.fresh() {
            return Ok(l);
        }
        let list = Arc::new(self.fetch(pool).await?);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), list.clone()));
        Ok(list)
    }

    async fn fetch(&self, pool: &Backend) -> Result<HashSet<String>, String> {
        let mut out = HashSet::new();
        let sep = if self.url.contains('?') { '&' } else { '?' };
        for page in 0..self.max_pages {
            let url = format!(
                "{}{sep}limit={}&offset={}",
                self.url,
                self.page_size,
                page * self.page_size
            );
            let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
            let resp = pool
                .send_outbound(Method::GET, uri, None, &[], self.timeout, 8 * 1024 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status.is_success() {
                return Err(format!("the list answered {}", resp.status.as_u16()));
            }
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("the list is not JSON: {e}"))?;
            let items = v
                .get(&self.items)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("the list has no \"{}\" array", self.items))?;
            out.extend(
                items
                    .iter()
                    .filter_map(|i| i.get(&self.field).and_then(Value::as_str))
                    .map(normalize),
            );
            if v.get(&self.more).and_then(Value::as_bool) != Some(true) {
                return Ok(out);
            }
        }
        tracing::warn!(
            pages = self.max_pages,
            "allowlist longer than max_pages; the rest is ignored"
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn urls_compare_after_normalizing() {
        let want = "github.com/daydreamlive/scope-plugin";
        for s in [
            "https://github.com/daydreamlive/scope-plugin",
            "git+https://github.com/DaydreamLive/scope-plugin.git",
            " http://github.com/daydreamlive/scope-plugin/ ",
            "github.com/daydreamlive/scope-plugin.git/",
        ] {
            assert_eq!(normalize(s), want, "{s}");
        }
        assert_ne!(normalize("https://github.com/evil/scope-plugin"), want);
    }
}

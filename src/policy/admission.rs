//! The check before a client's upgrade is accepted (`connection.admission`): an HTTP call to the backend, retried, whose JSON answer must match.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::backend::Upstream;
use crate::config::AdmissionConfig;

/// `connection.admission`, compiled at load.
#[derive(Debug, Clone)]
pub struct Admission {
    method: Method,
    path: String,
    expect: BTreeMap<String, Value>,
    attempts: u32,
    interval: Duration,
    timeout: Duration,
}

/// Most bytes of a status answer that are read.
const MAX_STATUS_BYTES: usize = 64 * 1024;

impl Admission {
    pub fn compile(cfg: &AdmissionConfig) -> Result<Admission, String> {
        if !cfg.path.starts_with('/') {
            return Err(format!("admission.path {:?} must start with '/'", cfg.path));
        }
        Ok(Admission {
            method: crate::route::method(&cfg.method)?,
            path: cfg.path.clone(),
            expect: cfg.expect.clone(),
            attempts: cfg.attempts.max(1),
            interval: cfg.interval.0,
            timeout: cfg.timeout.0,
        })
    }

    /// Checks until one passes or `attempts` have failed; the error is the last reason.
    /// `slot_free` is asked first on every attempt: while the router itself serves its
    /// last allowed connection, the backend is not asked.
    pub async fn admit(
        &self,
        upstream: &Upstream,
        slot_free: impl Fn() -> bool,
    ) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.once(upstream, &slot_free).await {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "admission check passed");
                    }
                    return Ok(());
                }
                Err(why) => {
                    tracing::debug!(attempt, reason = %why, "admission check failed");
                    last = why;
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(self.interval).await;
            }
        }
        Err(last)
    }

    async fn once(&self, upstream: &Upstream, slot_free: &impl Fn() -> bool) -> Result<(), String> {
        if !slot_free() {
            return Err("the router's connection slots are taken".to_owned());
        }
        let call = async {
            let opened = upstream.open(self.method.clone(), &self.path, None).await?;
            upstream.read_whole_within(opened, MAX_STATUS_BYTES).await
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(format!("{} timed out", self.path)),
            Ok(Err(e)) => return Err(format!("{}: {e}", self.path)),
            Ok(Ok(a)) => a,
        };
        if !answer.status.is_success() {
            return Err(format!("{} answered {}", self.path, answer.status.as_u16()));
        }
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| format!("{} answered something that is not JSON", self.path))?;
        self.matches(&body)
    }

    /// Every expected field has its value; the error names the first that does not.
    fn matches(&self, body: &Value) -> Result<(), String> {
        for (key, want) in &self.expect {
            let got = body.get(key);
            if got != Some(want) {
                let shown = got.map_or_else(|| "missing".to_owned(), short);
                return Err(format!("{} says {key}: {shown}", self.path));
            }
        }
        Ok(())
    }
}

/// A value for a log line, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_expected_field_must_match() {
        let cfg = AdmissionConfig {
            method: "GET".into(),
            path: "/internal/status".into(),
            expect: [
                ("listener_ready".to_owned(), json!(true)),
                ("connection_active".to_owned(), json!(false)),
            ]
            .into_iter()
            .collect(),
            attempts: 3,
            interval: crate::config::Dur::millis(1),
            timeout: crate::config::Dur::secs(1),
        };
        let a = Admission::compile(&cfg).unwrap();
        assert!(
            a.matches(
                &json!({"listener_ready": true, "connection_active": false, "connection_count": 0})
            )
            .is_ok()
        );
        let err = a
            .matches(&json!({"listener_ready": true, "connection_active": true}))
            .unwrap_err();
        assert!(err.contains("connection_active: true"), "{err}");
        assert!(a.matches(&json!({"connection_active": false})).is_err());
        assert!(a.matches(&json!([1, 2])).is_err());
    }

    #[test]
    fn a_relative_path_is_refused() {
        let cfg = AdmissionConfig {
            method: "GET".into(),
            path: "internal/status".into(),
            expect: BTreeMap::new(),
            attempts: 1,
            interval: crate::config::Dur::millis(1),
            timeout: crate::config::Dur::secs(1),
        };
        assert!(Admission::compile(&cfg).is_err());
    }
}

//! The connection policy of one snapshot: limits, auth, the hooks around a connection and log push, compiled at load.

pub mod admission;
pub mod auth;
pub mod cleanup;
pub mod events;
pub mod gate;
pub mod operator;

use std::time::Duration;

use crate::config::{ConnectionConfig, LogsConfig};
use crate::template::{Ctx, Scope, Template};

/// A per-connection token bucket's settings.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// WebSocket-level keepalive.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Backend log lines pushed to clients.
#[derive(Debug, Clone, Copy)]
pub struct LogPush {
    pub enabled: bool,
    /// Most lines in one `logs` message.
    pub batch: usize,
}

/// What one connection may do, and what happens around it.
#[derive(Debug)]
pub struct ConnectionPolicy {
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    pub max_duration: Option<Duration>,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub rate: Option<Rate>,
    pub idle_timeout: Option<Duration>,
    pub write_timeout: Duration,
    pub header_timeout: Duration,
    pub max_handshakes: usize,
    /// Allowed browser origins, lower-cased; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    pub keepalive: Option<Keepalive>,
    pub auth: auth::Auth,
    /// Sent right after the upgrade (`None`: `on_connect: false`).
    pub on_connect: Option<Template>,
    /// The check before an upgrade is accepted.
    pub admission: Option<std::sync::Arc<admission::Admission>>,
    /// Backend calls right after `ready`, best effort.
    pub after_connect: Vec<cleanup::HttpCall>,
    pub on_disconnect: Vec<cleanup::Step>,
    /// The user-id message and its access check.
    pub gate: Option<gate::Gate>,
    /// `${connection.info}`, read from the environment at load.
    pub info: Option<std::sync::Arc<serde_json::Value>>,
    pub events: events::Events,
    /// Upload chunks may arrive as binary frames (an `upload_chunk` transfer route exists).
    pub binary_uploads: bool,
    pub logs: LogPush,
}

impl ConnectionPolicy {
    /// Compiles the `connection` section. Errors name the field; the caller places them.
    pub fn compile(
        conn: &ConnectionConfig,
        logs: &LogsConfig,
        offer_path: Option<&str>,
        binary_uploads: bool,
        backend_env: &std::collections::BTreeMap<String, String>,
    ) -> Result<ConnectionPolicy, String> {
        if conn.max_in_flight == 0 {
            return Err("connection.max_in_flight must be at least 1".to_owned());
        }
        let on_connect_src = conn.on_connect.clone().unwrap_or_else(
            || serde_json::json!({"type": "ready", "connection_id": "${connection.id}"}),
        );
        let on_connect = match on_connect_src {
            serde_json::Value::Bool(false) => None,
            src => Some(
                Template::compile_reply(&src, Scope::CONNECTION)
                    .map_err(|e| format!("connection.on_connect: {e}"))?,
            ),
        };
        let admission = conn
            .admission
            .as_ref()
            .map(|a| admission::Admission::compile(a).map(std::sync::Arc::new))
            .transpose()
            .map_err(|e| format!("connection.{e}"))?;
        let on_disconnect = conn
            .on_disconnect
            .iter()
            .map(|s| cleanup::Step::compile(s, offer_path, backend_env))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("connection.on_disconnect: {e}"))?;
        let after_connect = conn
            .after_connect
            .iter()
            .map(|crate::config::ConnectStep::Http(h)| cleanup::HttpCall::compile(h))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("connection.after_connect: {e}"))?;
        let gate = conn
            .gate
            .as_ref()
            .map(gate::Gate::compile)
            .transpose()
            .map_err(|e| format!("connection.{e}"))?;
        let info = conn
            .info
            .as_ref()
            .map(|v| {
                let t = Template::compile(v, Scope::CONNECTION)
                    .map_err(|e| format!("connection.info: {e}"))?;
                let mut out = Vec::new();
                t.render(&Ctx::default(), &mut out);
                serde_json::from_slice::<serde_json::Value>(&out)
                    .map(std::sync::Arc::new)
                    .map_err(|e| format!("connection.info: {e}"))
            })
            .transpose()?;
        Ok(ConnectionPolicy {
            max_message_bytes: conn.max_message_bytes,
            max_in_flight: conn.max_in_flight,
            max_duration: conn.max_duration.map(|d| d.0),
            drain_timeout: conn.drain_timeout.0,
            max_connections: conn.max_connections,
            rate: conn.rate.map(|r| Rate {
                per_second: r.per_second,
                burst: r.burst,
            }),
            idle_timeout: conn.idle_timeout.map(|d| d.0),
            write_timeout: conn.write_timeout.0,
            header_timeout: conn.header_timeout.0,
            max_handshakes: conn.max_handshakes.max(1),
            allowed_origins: conn.allowed_origins.as_ref().map(|list| {
                list.iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .collect()
            }),
            keepalive: conn.keepalive.map(|k| Keepalive {
                interval: k.interval.0,
                timeout: k.timeout.0,
            }),
            auth: auth::Auth::compile(&conn.auth)?,
            on_connect,
            after_connect,
            admission,
            on_disconnect,
            gate,
            info,
            events: events::Events::compile(conn.events.as_ref())?,
            binary_uploads,
            logs: LogPush {
                enabled: logs.push_to_clients,
                batch: logs.batch.max(1),
            },
        })
    }

    /// Whether a request with this `Origin` header (if any) may open a socket. `self` in the
    /// list admits the router's own pages: an origin whose host is the request's `Host`.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(o)) => {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                let own = host.is_some_and(|h| {
                    let h = h.trim().to_ascii_lowercase();
                    o == format!("http://{h}") || o == format!("https://{h}")
                });
                list.iter().any(|a| *a == o || (a == "self" && own))
            }
        }
    }

    /// Renders the `on_connect` message for a connection (`None` with `on_connect: false`).
    pub fn connect_message(&self, connection_id: &str) -> Option<String> {
        let ctx = Ctx {
            connection_id: Some(connection_id),
            ..Ctx::default()
        };
        self.on_connect.as_ref().map(|t| t.render_to_string(&ctx))
    }

    /// How long a new connection waits for the previous user's cleanup before going on:
    /// two minutes, or longer when the disconnect steps' own timeouts add up to more.
    pub fn cleanup_hold_limit(&self) -> Duration {
        let steps: Duration = self
            .on_disconnect
            .iter()
            .map(|s| match s {
                cleanup::Step::Http(call) => call.usual_time(),
                _ => Duration::ZERO,
            })
            .sum();
        Duration::from_secs(120).max(steps + Duration::from_secs(10))
    }
}

//! The route table: each message `type` mapped to a compiled tower stack, plus `$default`.

pub(crate) mod build;
pub mod metrics;
pub mod ready;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tracing::Instrument;

pub(crate) use self::build::{compile_routes, method};
use crate::envelope::{Answer, ProtocolError, Request, refuse};

/// A type-erased route stack.
pub type RouteService = BoxCloneSyncService<Request, Answer, Infallible>;

/// Longest routing key looked up; longer ones are unknown by definition.
const MAX_ROUTE_KEY: usize = 256;

/// The name of the catch-all route.
pub const DEFAULT_ROUTE: &str = "$default";

/// One compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub service: RouteService,
    /// The request schema file name, if any.
    pub schema: Option<String>,
    /// Reply schema file names.
    pub reply_schemas: Vec<String>,
    /// What the route does, for `/admin/config` and tooling.
    pub kind: &'static str,
    /// Whether running one of its messages could change backend state.
    pub mutates: Mutates,
}

/// Whether a route's messages can change backend state (so `check` runs them only when asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutates {
    /// A local reply, or a `GET`/`HEAD` forward: safe against a live deployment.
    Never,
    /// The `api` passthrough: the message's own `method` decides.
    ByMethod,
    /// Any other forward, an offer, a transfer step.
    Always,
}

/// How the routing key is read from a message.
#[derive(Debug, Clone)]
pub enum RouteKey {
    Field(String),
    Pointer(String),
}

impl RouteKey {
    pub fn parse(s: &str) -> RouteKey {
        if s.starts_with('/') {
            RouteKey::Pointer(s.to_owned())
        } else {
            RouteKey::Field(s.to_owned())
        }
    }

    pub fn name(&self) -> &str {
        match self {
            RouteKey::Field(f) => f,
            RouteKey::Pointer(p) => p,
        }
    }

    pub fn get<'a>(&self, msg: &'a Value) -> Option<&'a str> {
        match self {
            RouteKey::Field(f) => msg.get(f.as_str()),
            RouteKey::Pointer(p) => msg.pointer(p),
        }
        .and_then(Value::as_str)
    }
}

/// Message routes by key, compiled once per load.
pub struct RouteTable {
    routes: HashMap<Box<str>, Route>,
    default: Option<Route>,
    pub key: RouteKey,
    /// The `$default` route's tunnel, when it is one: the session relays to it every frame
    /// that no named route takes.
    tunnel: Option<Arc<crate::handler::tunnel::TunnelSpec>>,
}

impl RouteTable {
    pub(crate) fn new(
        routes: HashMap<Box<str>, Route>,
        default: Option<Route>,
        key: RouteKey,
    ) -> Self {
        Self {
            routes,
            default,
            key,
            tunnel: None,
        }
    }

    /// The table with its `$default` tunnel.
    pub(crate) fn with_tunnel(
        mut self,
        tunnel: Option<Arc<crate::handler::tunnel::TunnelSpec>>,
    ) -> Self {
        self.tunnel = tunnel;
        self
    }

    /// The `$default` tunnel, if the table has one.
    pub fn tunnel(&self) -> Option<&Arc<crate::handler::tunnel::TunnelSpec>> {
        self.tunnel.as_ref()
    }

    /// Whether a route other than `$default` has this name.
    pub fn has_named_route(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// Picks the route for a decoded message and runs it.
    pub fn dispatch(&self, req: Request) -> BoxFuture<'static, Answer> {
        let refused = |req: &Request, err: ProtocolError| -> BoxFuture<'static, Answer> {
            let reply = refuse(req.request_id.as_ref(), &err);
            Box::pin(std::future::ready(Answer::Reply(reply)))
        };
        let route = match self.key.get(&req.msg) {
            // No route has a name this long: refuse without echoing megabytes back.
            Some(kind) if kind.len() > MAX_ROUTE_KEY => {
                let shown: String = kind.chars().take(64).collect();
                let err = ProtocolError::UnknownType(format!("{shown}… ({} bytes)", kind.len()));
                return refused(&req, err);
            }
            Some(kind) => match self.routes.get(kind).or(self.default.as_ref()) {
                Some(r) => r,
                None => {
                    let err = ProtocolError::UnknownType(kind.to_owned());
                    return refused(&req, err);
                }
            },
            None => {
                let err = ProtocolError::MissingRouteKey(self.key.name().to_owned());
                return refused(&req, err);
            }
        };
        let fut = route.service.clone().oneshot(req);
        // Every log line about this message carries its route (and, from the
        // connection's span, the connection id).
        let span = tracing::debug_span!("msg", route = %route.name);
        Box::pin(
            async move {
                let answer = match fut.await {
                    Ok(answer) => answer,
                    Err(never) => match never {},
                };
                tracing::debug!(result = answer.outcome().as_str(), "routed");
                answer
            }
            .instrument(span),
        )
    }

    /// The named route (for tooling and tests).
    pub fn route(&self, name: &str) -> Option<&Route> {
        if name == DEFAULT_ROUTE {
            self.default.as_ref()
        } else {
            self.routes.get(name)
        }
    }

    /// Every route, `$default` last.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        let mut named: Vec<&Route> = self.routes.values().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        named.into_iter().chain(self.default.iter())
    }
}

#[cfg(test)]
mod tests;

/// Whether a text frame goes through the tunnel: it has no routing key, or no named route
/// for it (`has_route`). Only a top-level field is looked up without parsing the frame
/// whole; a JSON pointer key parses it.
pub fn tunnels_text(text: &str, key: &RouteKey, has_route: impl Fn(&str) -> bool) -> bool {
    let kind: Option<Cow<'_, str>> = match key {
        RouteKey::Field(f) => crate::handler::tunnel::type_field(text, f),
        RouteKey::Pointer(_) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| key.get(&v).map(|s| Cow::Owned(s.to_owned()))),
    };
    kind.is_none_or(|k| !has_route(&k))
}

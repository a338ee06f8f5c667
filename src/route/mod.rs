//! The route table: each message `type` mapped to a compiled tower stack, plus `$default` and the connection hooks.

pub mod gate;
pub mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use hyper::Method;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

use self::gate::{GateLayer, Refusal};
use self::metrics::{MetricsLayer, RouteMetrics};
use crate::backend::Backend;
use crate::codec::{ProtocolError, Reply, Request, error_reply};
use crate::config::{
    ConfigError, ConnectionConfig, DisconnectStep, ForwardConfig, Loaded, ReplyValidation,
    RouteConfig, SignalingAction, SignalingConfig, SignalingDisconnect,
};
use crate::handler::forward::{ForwardHandler, ForwardSpec, Target, TimeoutRule};
use crate::handler::reply::ReplyHandler;
use crate::handler::signaling::{Action, SignalingHandler, SignalingSpec};
use crate::template::{Ctx, Scope, Template};
use crate::validate::{CompiledSchema, ReplyCheckLayer, SchemaSet, ValidateLayer};

/// A type-erased route stack.
pub type RouteService = BoxCloneSyncService<Request, Reply, Infallible>;

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
}

/// How the routing key is read from a message.
#[derive(Debug, Clone)]
pub enum RouteKey {
    Field(String),
    Pointer(String),
}

impl RouteKey {
    fn parse(s: &str) -> RouteKey {
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

    fn get<'a>(&self, msg: &'a Value) -> Option<&'a str> {
        match self {
            RouteKey::Field(f) => msg.get(f.as_str()),
            RouteKey::Pointer(p) => msg.pointer(p),
        }
        .and_then(Value::as_str)
    }
}

/// A complete, immutable routing configuration; swapped whole on reload.
pub struct RouteTable {
    routes: HashMap<Box<str>, Route>,
    default: Option<Route>,
    pub key: RouteKey,
    pub connection: ConnectionConfig,
    pub on_connect: Template,
    pub close_sessions_path: Option<String>,
    /// Upload chunks may arrive as binary frames (an `upload_chunk` transfer route exists).
    pub binary_uploads: bool,
    pub schemas: SchemaSet,
    pub version: String,
    pub loaded_at: SystemTime,
    pub source: Loaded,
}

impl RouteTable {
    /// Picks the route for a decoded message and runs it.
    pub fn dispatch(&self, req: Request) -> futures_util::future::BoxFuture<'static, Reply> {
        let route = match self.key.get(&req.msg) {
            // No route has a name this long: refuse without echoing megabytes back.
            Some(kind) if kind.len() > MAX_ROUTE_KEY => {
                let shown: String = kind.chars().take(64).collect();
                let err = ProtocolError::UnknownType(format!("{shown}… ({} bytes)", kind.len()));
                return Box::pin(std::future::ready(error_reply(
                    req.request_id.as_ref(),
                    &err,
                )));
            }
            Some(kind) => self.routes.get(kind).or(self.default.as_ref()),
            None => {
                let err = ProtocolError::MissingRouteKey(self.key.name().to_owned());
                let reply = error_reply(req.request_id.as_ref(), &err);
                return Box::pin(std::future::ready(reply));
            }
        };
        match route {
            Some(r) => {
                let fut = r.service.clone().oneshot(req);
                // Every log line about this message carries its route (and, from the
                // connection's span, the connection id).
                let span = tracing::debug_span!("msg", route = %r.name);
                Box::pin(
                    async move {
                        let reply = match fut.await {
                            Ok(reply) => reply,
                            Err(never) => match never {},
                        };
                        tracing::debug!(result = reply.outcome.as_str(), "routed");
                        reply
                    }
                    .instrument(span),
                )
            }
            None => {
                let kind = self.key.get(&req.msg).unwrap_or_default().to_owned();
                let reply = error_reply(req.request_id.as_ref(), &ProtocolError::UnknownType(kind));
                Box::pin(std::future::ready(reply))
            }
        }
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

    /// Renders the `on_connect` message for a connection.
    pub fn connect_message(&self, connection_id: &str) -> String {
        let ctx = Ctx {
            connection_id: Some(connection_id),
            ..Ctx::default()
        };
        self.on_connect.render_to_string(&ctx)
    }

    /// Compiles a loaded file: schemas, templates and route stacks, checking every cross-reference.
    pub fn compile(loaded: Loaded, backend: Arc<Backend>) -> Result<RouteTable, ConfigError> {
        let file = &loaded.file;
        let path = loaded.path.clone();
        let at = |r: &serde_saphyr::Spanned<RouteConfig>, name: &str, msg: String| {
            ConfigError::at(&path, r.referenced, format!("route `{name}`: {msg}"))
        };

        // Schemas first: every route's schema must exist and compile.
        let mut schemas = SchemaSet::default();
        let mut schema_texts: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, r) in &file.routes {
            for s in r.value.schema.iter().chain(r.value.reply_schemas.iter()) {
                if schemas.by_name.contains_key(s) {
                    continue;
                }
                let p = loaded.schema_dir.join(s);
                let compiled = CompiledSchema::load(&p)
                    .map_err(|e| at(r, name, format!("schema {}: {e}", p.display())))?;
                schema_texts.push((s.clone(), std::fs::read(&p).unwrap_or_default()));
                schemas.by_name.insert(s.clone(), Arc::new(compiled));
            }
        }
        schema_texts.sort();
        let version = crate::config::version_hash(
            &loaded.text,
            schema_texts.iter().map(|(_, t)| t.as_slice()),
        );

        // Forward specs first: transfer routes send assembled uploads through one of them.
        let mut forwards: HashMap<String, Arc<ForwardSpec>> = HashMap::new();
        for (name, r) in &file.routes {
            if let Some(fwd) = &r.value.forward {
                let spec =
                    forward_spec(&Arc::from(name.as_str()), fwd).map_err(|e| at(r, name, e))?;
                forwards.insert(name.clone(), Arc::new(spec));
            }
        }
        let binary_uploads = file.routes.values().any(|r| {
            r.value
                .transfer
                .as_ref()
                .is_some_and(|t| t.action == crate::config::TransferAction::UploadChunk)
        });

        let mut routes = HashMap::new();
        let mut default = None;
        for (name, r) in &file.routes {
            let route = build_route(
                name,
                &r.value,
                &schemas,
                &backend,
                file.validate_replies,
                &forwards,
            )
            .map_err(|e| at(r, name, e))?;
            if name == DEFAULT_ROUTE {
                default = Some(route);
            } else {
                routes.insert(name.clone().into_boxed_str(), route);
            }
        }

        let conn = &file.connection;
        if conn.max_in_flight == 0 {
            return Err(ConfigError::new(
                &path,
                "connection.max_in_flight must be at least 1",
            ));
        }
        let on_connect_src = conn.on_connect.clone().unwrap_or_else(
            || serde_json::json!({"type": "ready", "connection_id": "${connection.id}"}),
        );
        let on_connect = Template::compile_reply(&on_connect_src, Scope::CONNECTION)
            .map_err(|e| ConfigError::new(&path, format!("connection.on_connect: {e}")))?;
        for step in &conn.on_disconnect {
            match step {
                DisconnectStep::ClearDir(d) if d.trim().is_empty() || d.trim() == "/" => {
                    return Err(ConfigError::new(
                        &path,
                        format!("connection.on_disconnect: refusing to clear {d:?}"),
                    ));
                }
                DisconnectStep::Http(h) if !h.path.starts_with('/') => {
                    return Err(ConfigError::new(
                        &path,
                        format!(
                            "connection.on_disconnect: http path {:?} must start with '/'",
                            h.path
                        ),
                    ));
                }
                DisconnectStep::Http(h) => {
                    method(&h.method).map_err(|e| {
                        ConfigError::new(&path, format!("connection.on_disconnect: {e}"))
                    })?;
                }
                _ => {}
            }
        }
        let wants_close = conn.on_disconnect.contains(&DisconnectStep::Signaling(
            SignalingDisconnect::CloseSessions,
        ));
        let close_sessions_path = if wants_close { offer_path(file) } else { None };
        if wants_close && close_sessions_path.is_none() {
            return Err(ConfigError::new(
                &path,
                "connection.on_disconnect: close_sessions needs a route with `signaling: { action: offer }`",
            ));
        }

        Ok(RouteTable {
            routes,
            default,
            key: RouteKey::parse(&conn.route_on),
            connection: conn.clone(),
            on_connect,
            close_sessions_path,
            binary_uploads,
            schemas,
            version,
            loaded_at: SystemTime::now(),
            source: loaded,
        })
    }
}

fn offer_path(file: &crate::config::RoutesFile) -> Option<String> {
    file.routes.values().find_map(|r| {
        r.value
            .signaling
            .as_ref()
            .filter(|s| s.action == SignalingAction::Offer)
            .map(|s| s.path.clone())
    })
}

/// Builds one route's stack, outermost first.
fn build_route(
    name: &str,
    cfg: &RouteConfig,
    schemas: &SchemaSet,
    backend: &Arc<Backend>,
    reply_validation: ReplyValidation,
    forwards: &HashMap<String, Arc<ForwardSpec>>,
) -> Result<Route, String> {
    let name: Arc<str> = Arc::from(name);
    let handlers = [
        cfg.reply.is_some(),
        cfg.forward.is_some(),
        cfg.signaling.is_some(),
        cfg.transfer.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if handlers != 1 {
        return Err(
            "needs exactly one of `reply`, `forward`, `signaling` or `transfer`".to_owned(),
        );
    }
    let msg_scope = Scope::MESSAGE.with(Scope::CONNECTION);

    // Step 1: the handler itself.
    let (inner, kind, refusal): (RouteService, &'static str, Option<Refusal>) = if let Some(reply) =
        &cfg.reply
    {
        let t = Template::compile_reply(reply, msg_scope).map_err(|e| format!("reply: {e}"))?;
        (
            BoxCloneSyncService::new(ReplyHandler::new(t)),
            "reply",
            None,
        )
    } else if cfg.forward.is_some() {
        let spec = forwards
            .get(&*name)
            .cloned()
            .ok_or("forward spec was not compiled")?;
        let refusal = forward_refusal(&spec);
        (
            BoxCloneSyncService::new(ForwardHandler::new(backend.clone(), spec)),
            "forward",
            Some(refusal),
        )
    } else if let Some(sig) = &cfg.signaling {
        (
            BoxCloneSyncService::new(SignalingHandler::new(backend.clone(), signaling_spec(sig))),
            "signaling",
            Some(plain_refusal()),
        )
    } else if let Some(t) = &cfg.transfer {
        use crate::config::TransferAction as A;
        let needs_via = matches!(t.action, A::UploadStart | A::UploadFinish);
        let via = match &t.via {
            Some(v) => Some(
                forwards
                    .get(v)
                    .cloned()
                    .ok_or_else(|| format!("transfer.via: no forward route named `{v}`"))?,
            ),
            None if needs_via => {
                return Err(
                    "transfer: upload_start and upload_finish need `via: <forward route>`"
                        .to_owned(),
                );
            }
            None => None,
        };
        // Only the finish step calls the backend; the others are local bookkeeping.
        let refusal = (t.action == A::UploadFinish).then(plain_refusal);
        (
            BoxCloneSyncService::new(crate::transfer::handler::TransferHandler::new(
                t.action,
                backend.clone(),
                via,
            )),
            "transfer",
            refusal,
        )
    } else {
        return Err("needs a handler".to_owned());
    };

    // Step 2: the readiness gate sits right before the handler, so a refused
    // message was still validated: a bad message gets the validation error, not
    // a misleading "backend unavailable".
    let gated: RouteService = match refusal {
        Some(refusal) => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(GateLayer::new(backend.clone(), refusal))
                .service(inner),
        ),
        None => inner,
    };

    // Step 2b: reply checks (development only) see what the handler produced, refusals included.
    let gated: RouteService =
        if reply_validation == ReplyValidation::Warn && !cfg.reply_schemas.is_empty() {
            let list = cfg
                .reply_schemas
                .iter()
                .map(|s| {
                    schemas
                        .get(s)
                        .cloned()
                        .ok_or_else(|| format!("reply schema {s} was not loaded"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .layer(ReplyCheckLayer::new(name.clone(), list))
                    .service(gated),
            )
        } else {
            gated
        };

    // Step 3: validation before any work, so invalid messages never reach the backend.
    let validated: RouteService = match &cfg.schema {
        Some(s) => {
            let schema = schemas
                .get(s)
                .ok_or_else(|| format!("schema {s} was not loaded"))?;
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .layer(ValidateLayer::new(name.clone(), schema.clone()))
                    .service(gated),
            )
        }
        None => gated,
    };

    // Step 4: metrics outermost, so refusals by the inner layers are counted too.
    let service = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(MetricsLayer::new(RouteMetrics::new(&name)))
            .service(validated),
    );

    Ok(Route {
        name,
        service,
        schema: cfg.schema.clone(),
        reply_schemas: cfg.reply_schemas.clone(),
        kind,
    })
}

fn plain_refusal() -> Refusal {
    Arc::new(|req: &Request| {
        error_reply(req.request_id.as_ref(), &ProtocolError::BackendUnavailable)
    })
}

/// A forward route refuses through its own `on_error` template (a 503 `api_response` for `api`).
fn forward_refusal(spec: &Arc<ForwardSpec>) -> Refusal {
    let spec = spec.clone();
    Arc::new(move |req: &Request| spec.unavailable(req))
}

fn signaling_spec(cfg: &SignalingConfig) -> SignalingSpec {
    let (action, default_timeout) = match cfg.action {
        SignalingAction::Offer => (Action::Offer, Duration::from_secs(30)),
        SignalingAction::Icecandidate => (Action::IceCandidate, Duration::from_secs(10)),
    };
    SignalingSpec {
        action,
        path: cfg.path.trim_end_matches('/').to_owned(),
        timeout: cfg.timeout.map_or(default_timeout, |d| d.0),
        add_connection_id: cfg.add_connection_id,
    }
}

fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

fn matcher(pattern: &str) -> Result<GlobMatcher, String> {
    Ok(glob(pattern)?.compile_matcher())
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(p)?);
    }
    b.build().map_err(|e| e.to_string())
}

fn method(m: &str) -> Result<Method, String> {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("bad HTTP method {m:?}"))
}

fn forward_spec(name: &Arc<str>, cfg: &ForwardConfig) -> Result<ForwardSpec, String> {
    let msg_scope = Scope::MESSAGE.with(Scope::CONNECTION);
    let resp_scope = msg_scope.with(Scope::RESPONSE);
    let target = if cfg.from_message {
        if cfg.method.is_some() || cfg.path.is_some() || cfg.body.is_some() {
            return Err("forward: `from_message` takes method, path and body from the message; remove `method`, `path` and `body`".to_owned());
        }
        Target::FromMessage
    } else {
        let path = cfg
            .path
            .as_deref()
            .ok_or("forward: needs `path` (or `from_message: true`)")?;
        if !path.starts_with('/') {
            return Err(format!("forward: path {path:?} must start with '/'"));
        }
        Target::Fixed {
            method: method(cfg.method.as_deref().unwrap_or("GET"))?,
            path: Template::compile(&Value::from(path), msg_scope)
                .map_err(|e| format!("forward.path: {e}"))?,
            body: cfg
                .body
                .as_ref()
                .map(|b| Template::compile(b, msg_scope))
                .transpose()
                .map_err(|e| format!("forward.body: {e}"))?,
        }
    };
    let reply = Template::compile_reply(&cfg.reply, resp_scope)
        .map_err(|e| format!("forward.reply: {e}"))?;
    let reply_binary = cfg
        .reply_binary
        .as_ref()
        .map(|t| Template::compile_reply(t, resp_scope))
        .transpose()
        .map_err(|e| format!("forward.reply_binary: {e}"))?;
    let on_error_src = cfg.on_error.clone().unwrap_or_else(|| {
        serde_json::json!({"type": "error", "error": "${error.message}", "code": "${error.code}"})
    });
    let on_error = Template::compile_reply(&on_error_src, msg_scope.with(Scope::ERROR))
        .map_err(|e| format!("forward.on_error: {e}"))?;
    let needs_parsed = reply.needs_parsed_response()
        || reply_binary
            .as_ref()
            .is_some_and(Template::needs_parsed_response);
    let timeouts = cfg
        .timeouts
        .iter()
        .map(|r| {
            Ok(TimeoutRule {
                path: matcher(&r.path)?,
                method: r.method.as_deref().map(method).transpose()?,
                upload: r.upload,
                timeout: r.timeout.0,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let add_connection_id = cfg
        .add_connection_id
        .iter()
        .map(|rule| {
            let (m, p) = rule.split_once(' ').ok_or_else(|| {
                format!("add_connection_id: {rule:?} must be \"METHOD /path-glob\"")
            })?;
            Ok((method(m)?, matcher(p.trim())?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ForwardSpec {
        route: name.clone(),
        target,
        methods: cfg
            .methods
            .iter()
            .map(|m| method(m))
            .collect::<Result<_, _>>()?,
        allow: glob_set(&cfg.allow)?,
        deny: glob_set(&cfg.deny)?,
        base64_uploads: cfg.base64_uploads,
        timeout: cfg.timeout.0,
        timeouts,
        add_connection_id,
        reply,
        reply_binary,
        on_error,
        needs_parsed,
        cdn: cfg.cdn_uploads.clone(),
    })
}

/// Loads and compiles a routes file in one step.
pub fn load_table(path: &Path, backend: Arc<Backend>) -> Result<RouteTable, ConfigError> {
    let loaded = crate::config::load(path)?;
    RouteTable::compile(loaded, backend)
}

//! Compiling the `routes:` section: each route's handler and its stack of layers, built in named steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use hyper::Method;
use serde_json::Value;
use serde_saphyr::Spanned;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::metrics::{MetricsLayer, RouteMetrics};
use super::ready::{ReadyCheck, Refusal};
use super::{DEFAULT_ROUTE, Mutates, Route, RouteKey, RouteService, RouteTable};
use crate::backend::Upstream;
use crate::config::{
    ForwardConfig, HandlerConfig, ReplyValidation, RouteConfig, SignalingAction, SignalingConfig,
    TransferAction,
};
use crate::envelope::{ProtocolError, Request, refuse};
use crate::guard::GuardLayer;
use crate::handler::HandlerService;
use crate::handler::forward::{CdnSpec, ForwardHandler, ForwardSpec, Target, TimeoutRule};
use crate::handler::reply::ReplyHandler;
use crate::handler::signaling::{Action, SignalingHandler, SignalingSpec};
use crate::handler::transfer::handler::{Action as TransferStep, TransferHandler};
use crate::handler::transfer::{Settings, Uploads};
use crate::publish::{Readiness, View};
use crate::template::{Scope, Template};
use crate::validate::{ReplyCheckLayer, SchemaCheck, SchemaSet};

/// What compiled routes share with the process: the backend, the upload store, readiness.
pub(crate) struct Shared<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub uploads: &'a Arc<Uploads>,
    pub readiness: &'a View<Readiness>,
    pub transfers: &'a Arc<Settings>,
    pub schemas: &'a SchemaSet,
    pub validate_replies: ReplyValidation,
}

/// A route that failed to compile: its name and what is wrong (placed by the caller).
pub(crate) type RouteError = (String, String);

/// Compiles every route into the table; every bad route is reported, by name.
pub(crate) fn compile_routes(
    routes: &BTreeMap<String, Spanned<RouteConfig>>,
    key: RouteKey,
    shared: &Shared<'_>,
) -> Result<RouteTable, Vec<RouteError>> {
    let mut errors: Vec<RouteError> = Vec::new();
    // Forward specs first: transfer routes send assembled uploads through one of them.
    let mut forwards: HashMap<&str, Arc<ForwardSpec>> = HashMap::new();
    for (name, r) in routes {
        if let HandlerConfig::Forward(fwd) = &r.value.handler {
            match forward_spec(&Arc::from(name.as_str()), fwd, shared) {
                Ok(spec) => {
                    forwards.insert(name, Arc::new(spec));
                }
                Err(e) => errors.push((name.clone(), e)),
            }
        }
    }
    let mut table = HashMap::new();
    let mut default = None;
    let mut tunnel = None;
    for (name, r) in routes {
        if let HandlerConfig::Tunnel(t) = &r.value.handler {
            match crate::handler::tunnel::TunnelSpec::compile(t) {
                Ok(_) if name != DEFAULT_ROUTE => errors.push((
                    name.clone(),
                    "a tunnel takes every frame no other route takes, so it can only be `$default`"
                        .to_owned(),
                )),
                Ok(spec) => tunnel = Some(Arc::new(spec)),
                Err(e) => errors.push((name.clone(), e)),
            }
        }
    }
    for (name, r) in routes {
        if errors.iter().any(|(n, _)| n == name) {
            continue;
        }
        match build_route(name, &r.value, shared, &forwards) {
            Ok(route) if name == DEFAULT_ROUTE => default = Some(route),
            Ok(route) => {
                table.insert(name.clone().into_boxed_str(), route);
            }
            Err(e) => errors.push((name.clone(), e)),
        }
    }
    if errors.is_empty() {
        Ok(RouteTable::new(table, default, key).with_tunnel(tunnel))
    } else {
        Err(errors)
    }
}

/// Builds one route's stack, innermost first.
fn build_route(
    name: &str,
    cfg: &RouteConfig,
    shared: &Shared<'_>,
    forwards: &HashMap<&str, Arc<ForwardSpec>>,
) -> Result<Route, String> {
    let name: Arc<str> = Arc::from(name);
    let msg_scope = Scope::MESSAGE.with(Scope::CONNECTION);

    // Step 1: the handler itself, and how it refuses while the backend is down (local
    // replies and bookkeeping steps call no backend and are never refused).
    let (inner, refusal): (RouteService, Option<Refusal>) = match &cfg.handler {
        HandlerConfig::Reply(reply) => {
            let t = Template::compile_reply(reply, msg_scope).map_err(|e| format!("reply: {e}"))?;
            (
                BoxCloneSyncService::new(HandlerService::new(ReplyHandler::new(t))),
                None,
            )
        }
        HandlerConfig::Forward(_) => {
            let spec = forwards
                .get(&*name)
                .cloned()
                .ok_or("forward spec was not compiled")?;
            let refusal = forward_refusal(&spec);
            (
                BoxCloneSyncService::new(HandlerService::new(ForwardHandler::new(spec))),
                Some(refusal),
            )
        }
        HandlerConfig::Signaling(sig) => (
            BoxCloneSyncService::new(HandlerService::new(SignalingHandler::new(
                shared.upstream.clone(),
                signaling_spec(sig)?,
            ))),
            Some(plain_refusal()),
        ),
        // Frames reach a tunnel from the session loop; the stack is there for completeness.
        HandlerConfig::Tunnel(_) => (
            BoxCloneSyncService::new(HandlerService::new(crate::handler::tunnel::TunnelHandler)),
            None,
        ),
        HandlerConfig::Transfer(t) => {
            let needs_via = matches!(
                t.action,
                TransferAction::UploadStart | TransferAction::UploadFinish
            );
            let via = match &t.via {
                Some(v) => Some(
                    forwards
                        .get(v.as_str())
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
            let refusal = (t.action == TransferAction::UploadFinish).then(plain_refusal);
            let handler = TransferHandler::new(
                transfer_step(t.action),
                shared.uploads.clone(),
                shared.transfers.clone(),
                via,
            );
            (
                BoxCloneSyncService::new(HandlerService::new(handler)),
                refusal,
            )
        }
    };

    // Step 2: the readiness gate sits right before the handler, so a refused
    // message was still validated: a bad message gets the validation error, not
    // a misleading "backend unavailable".
    let gated: RouteService = match refusal {
        Some(refusal) => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(GuardLayer::new(ReadyCheck::new(
                    shared.readiness.clone(),
                    refusal,
                )))
                .service(inner),
        ),
        None => inner,
    };

    // Step 3: reply checks (development only) see what the handler produced, refusals included.
    let checked: RouteService =
        if shared.validate_replies == ReplyValidation::Warn && !cfg.reply_schemas.is_empty() {
            let list = cfg
                .reply_schemas
                .iter()
                .map(|s| {
                    shared
                        .schemas
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

    // Step 4: validation before any work, so invalid messages never reach the backend.
    let validated: RouteService = match &cfg.schema {
        Some(s) => {
            let schema = shared
                .schemas
                .get(s)
                .ok_or_else(|| format!("schema {s} was not loaded"))?;
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .layer(GuardLayer::new(SchemaCheck::new(
                        name.clone(),
                        schema.clone(),
                    )))
                    .service(checked),
            )
        }
        None => checked,
    };

    // Step 5: metrics outermost, so refusals by the inner layers are counted too.
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
        kind: cfg.handler.kind(),
        mutates: mutates(&cfg.handler),
    })
}

/// A case is mutating unless it is known to be safe: a local reply, or a `GET`/`HEAD` forward.
fn mutates(h: &HandlerConfig) -> Mutates {
    match h {
        HandlerConfig::Reply(_) => Mutates::Never,
        HandlerConfig::Forward(f) if f.from_message => Mutates::ByMethod,
        HandlerConfig::Forward(f) => {
            let m = f.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
            if m == "GET" || m == "HEAD" {
                Mutates::Never
            } else {
                Mutates::Always
            }
        }
        HandlerConfig::Signaling(_) | HandlerConfig::Transfer(_) | HandlerConfig::Tunnel(_) => {
            Mutates::Always
        }
    }
}

fn transfer_step(a: TransferAction) -> TransferStep {
    match a {
        TransferAction::UploadStart => TransferStep::UploadStart,
        TransferAction::UploadChunk => TransferStep::UploadChunk,
        TransferAction::UploadStatus => TransferStep::UploadStatus,
        TransferAction::UploadFinish => TransferStep::UploadFinish,
        TransferAction::DownloadAck => TransferStep::DownloadAck,
    }
}

fn plain_refusal() -> Refusal {
    Arc::new(|req: &Request| refuse(req.request_id.as_ref(), &ProtocolError::BackendUnavailable))
}

/// A forward route refuses through its own `on_error` template (a 503 `api_response` for `api`).
fn forward_refusal(spec: &Arc<ForwardSpec>) -> Refusal {
    let spec = spec.clone();
    Arc::new(move |req: &Request| spec.unavailable(req))
}

pub(crate) fn signaling_spec(cfg: &SignalingConfig) -> Result<SignalingSpec, String> {
    let (action, default_timeout) = match cfg.action {
        SignalingAction::Offer => (Action::Offer, Duration::from_secs(30)),
        SignalingAction::Icecandidate => (Action::IceCandidate, Duration::from_secs(10)),
    };
    Ok(SignalingSpec {
        action,
        path: cfg.path.trim_end_matches('/').to_owned(),
        timeout: cfg.timeout.map_or(default_timeout, |d| d.0),
        add_connection_id: cfg.add_connection_id,
        add_fields: crate::handler::AddFields::compile(cfg.add_fields.as_ref())?,
        max_sessions: cfg.max_sessions.max(1),
        refuse_over_max: cfg.when_full == crate::config::WhenFull::Refuse,
    })
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

/// An HTTP method named in the routes file (any case).
pub(crate) fn method(m: &str) -> Result<Method, String> {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("bad HTTP method {m:?}"))
}

fn forward_spec(
    name: &Arc<str>,
    cfg: &ForwardConfig,
    shared: &Shared<'_>,
) -> Result<ForwardSpec, String> {
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
    let request_rules = |field: &str, rules: &[String]| {
        rules
            .iter()
            .map(|rule| {
                let (m, p) = rule
                    .split_once(' ')
                    .ok_or_else(|| format!("{field}: {rule:?} must be \"METHOD /path-glob\""))?;
                Ok((method(m)?, matcher(p.trim())?))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let add_connection_id = request_rules("add_connection_id", &cfg.add_connection_id)?;
    let deny_requests = request_rules("deny_requests", &cfg.deny_requests)?;
    let guards = cfg
        .guards
        .iter()
        .map(|g| {
            let mut rule = request_rules("guards.request", std::slice::from_ref(&g.request))?;
            let (method, path) = rule.pop().ok_or("guards.request is empty")?;
            crate::handler::allowlist::RequestGuard::compile(method, path, g)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ForwardSpec {
        route: name.clone(),
        upstream: shared.upstream.clone(),
        transfers: shared.transfers.clone(),
        target,
        methods: cfg
            .methods
            .iter()
            .map(|m| method(m))
            .collect::<Result<_, _>>()?,
        allow: glob_set(&cfg.allow)?,
        deny: glob_set(&cfg.deny)?,
        base64_uploads: cfg.base64_uploads,
        max_response_bytes: cfg
            .max_response_bytes
            .map_or(shared.upstream.max_response_bytes(), |n| {
                n.min(shared.upstream.max_response_bytes())
            }),
        timeout: cfg.timeout.0,
        timeouts,
        add_connection_id,
        add_fields: crate::handler::AddFields::compile(cfg.add_fields.as_ref())?,
        deny_requests,
        guards,
        reply,
        reply_binary,
        on_error,
        needs_parsed,
        cdn: cfg.cdn_uploads.as_ref().map(|c| CdnSpec {
            allow_hosts: c.allow_hosts.clone(),
            allow_http: c.allow_http,
            max_bytes: c.max_bytes,
            timeout: c.timeout.0,
            follow_redirects: c.follow_redirects,
        }),
    })
}

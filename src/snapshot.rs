//! One immutable, fully compiled snapshot per load of `routes.yaml`: routes, connection policy, transfer settings.
//!
//! [`load`] is the only way from a file to a snapshot: parse (with line and column),
//! apply command-line overrides, check, compile. The data path reads nothing else;
//! the raw file goes back to the control plane beside it ([`Compiled::file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::backend::{Backend, Upstream};
use crate::config::{
    self, ConfigError, HandlerConfig, RoutesFile, SignalingAction, TransferAction,
};
use crate::handler::transfer::{Settings, Uploads};
use crate::policy::ConnectionPolicy;
use crate::policy::operator::Operator;
use crate::publish::{Readiness, View};
use crate::route::{RouteKey, RouteTable, compile_routes};
use crate::validate::{CompiledSchema, SchemaSet};

/// A complete, immutable configuration; published whole on reload, never locked.
pub struct Snapshot {
    pub table: RouteTable,
    pub policy: ConnectionPolicy,
    /// Who may read `/admin/config`, `/metrics` and the detailed `/readyz`.
    pub operator: Operator,
    pub transfers: Arc<Settings>,
    pub upstream: Arc<Upstream>,
    pub schemas: SchemaSet,
    pub meta: Meta,
}

/// Where a snapshot came from, for status documents and tooling.
#[derive(Debug, Clone)]
pub struct Meta {
    /// A short hash of the routes text and every schema it uses.
    pub version: String,
    pub loaded_at: SystemTime,
    /// The routes file.
    pub path: PathBuf,
    /// The directory schema names are resolved in.
    pub schema_dir: PathBuf,
    /// The `listen` address as written in the file.
    pub listen: String,
    /// The static files directory, resolved against the routes file.
    pub static_dir: Option<PathBuf>,
}

/// What a snapshot shares with the process: created once, handed to every load.
#[derive(Clone)]
pub struct Runtime {
    /// The one keep-alive pool to the backend (and the client for other hosts).
    pub backend: Arc<Backend>,
    /// Uploads being assembled; they outlive connections and snapshots.
    pub uploads: Arc<Uploads>,
    /// The backend's readiness, as the control plane publishes it.
    pub readiness: View<Readiness>,
}

impl Runtime {
    /// A runtime of its own with a fixed readiness (offline tools, benchmarks and tests).
    pub fn standalone(readiness: Readiness) -> Runtime {
        Runtime {
            backend: Backend::new(&crate::config::PoolConfig::default()),
            uploads: Uploads::new(),
            readiness: crate::publish::Publisher::new(readiness).view(),
        }
    }
}

/// Command-line values that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub backend_url: Option<String>,
}

/// A snapshot, and the file it was compiled from (for the control plane only).
pub struct Compiled {
    pub snapshot: Snapshot,
    pub file: RoutesFile,
}

/// Loads, checks and compiles a routes file and every schema it names.
pub fn load(path: &Path, overrides: &Overrides, rt: &Runtime) -> Result<Compiled, ConfigError> {
    from_loaded(config::load(path)?, overrides, rt)
}

/// Loads a routes file for a tool that serves nothing (`validate`, `check`, `asyncapi`).
pub fn offline(path: &Path) -> Result<Snapshot, ConfigError> {
    let rt = Runtime::standalone(Readiness::default());
    Ok(load(path, &Overrides::default(), &rt)?.snapshot)
}

/// Checks and compiles an already parsed file (the first load reads the pool settings from it).
pub fn from_loaded(
    mut loaded: config::Loaded,
    overrides: &Overrides,
    rt: &Runtime,
) -> Result<Compiled, ConfigError> {
    if let Some(url) = &overrides.backend_url {
        loaded.file.backend.url = url.clone();
    }
    let snapshot = compile(&loaded, rt)?;
    Ok(Compiled {
        snapshot,
        file: loaded.file,
    })
}

fn compile(loaded: &config::Loaded, rt: &Runtime) -> Result<Snapshot, ConfigError> {
    let file = &loaded.file;
    let path = &loaded.path;
    let at_route = |name: &str, msg: String| match file.routes.get(name) {
        Some(r) => ConfigError::at(path, r.referenced, format!("route `{name}`: {msg}")),
        None => ConfigError::new(path, format!("route `{name}`: {msg}")),
    };

    let upstream = Upstream::new(
        rt.backend.clone(),
        &file.backend.url,
        file.backend.pool.max_response_bytes,
    )
    .map(Arc::new)
    .map_err(|e| ConfigError::new(path, format!("backend.url {:?}: {e}", file.backend.url)))?;

    // Schemas first: every route's schema must exist and compile.
    let mut schemas = SchemaSet::default();
    let mut schema_texts: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, r) in &file.routes {
        for s in r.value.schema.iter().chain(r.value.reply_schemas.iter()) {
            if schemas.by_name.contains_key(s) {
                continue;
            }
            let p = loaded.schema_dir.join(s);
            // A broken schema is reported in its own file, at its own line.
            let compiled = CompiledSchema::load(&p).map_err(|e| {
                ConfigError::at_line(
                    &p,
                    e.line,
                    e.column,
                    format!("{} (schema of route `{name}`)", e.message),
                )
            })?;
            schema_texts.push((s.clone(), std::fs::read(&p).unwrap_or_default()));
            schemas.by_name.insert(s.clone(), Arc::new(compiled));
        }
    }
    schema_texts.sort();
    let version =
        config::version_hash(&loaded.text, schema_texts.iter().map(|(_, t)| t.as_slice()));

    let transfers = Arc::new(Settings::compile(&file.transfers));
    let shared = crate::route::build::Shared {
        upstream: &upstream,
        uploads: &rt.uploads,
        readiness: &rt.readiness,
        transfers: &transfers,
        schemas: &schemas,
        validate_replies: file.validate_replies,
    };
    let table = compile_routes(
        &file.routes,
        RouteKey::parse(&file.connection.route_on),
        &shared,
    )
    .map_err(|errors| {
        let placed = errors
            .into_iter()
            .map(
                |(name, e)| match expression_place(&loaded.text, file, &name, &e) {
                    Some((line, column)) => ConfigError::at_line(
                        path,
                        Some(line),
                        Some(column),
                        format!("route `{name}`: {e}"),
                    ),
                    None => at_route(&name, e),
                },
            )
            .collect();
        ConfigError::all(placed).unwrap_or_else(|| ConfigError::new(path, "routes do not compile"))
    })?;

    let offer_path = file.routes.values().find_map(|r| match &r.value.handler {
        HandlerConfig::Signaling(s) if s.action == SignalingAction::Offer => Some(s.path.as_str()),
        _ => None,
    });
    let binary_uploads = file.routes.values().any(|r| {
        matches!(&r.value.handler, HandlerConfig::Transfer(t) if t.action == TransferAction::UploadChunk)
    });
    let policy = ConnectionPolicy::compile(
        &file.connection,
        &file.backend.logs,
        offer_path,
        binary_uploads,
        &file.backend.env,
    )
    .map_err(|e| ConfigError::new(path, e))?;

    let operator = Operator::compile(file.operator.as_ref());

    let base = path.parent().unwrap_or(Path::new("."));
    Ok(Snapshot {
        table,
        policy,
        operator,
        transfers,
        upstream,
        schemas,
        meta: Meta {
            version,
            loaded_at: SystemTime::now(),
            path: path.clone(),
            schema_dir: loaded.schema_dir.clone(),
            listen: file.listen.clone(),
            static_dir: file.static_files.as_ref().map(|d| base.join(d)),
        },
    })
}

/// Where the template expression an error names is written: its first occurrence at or
/// after the route's own line (so a typo is reported where it was typed).
fn expression_place(text: &str, file: &RoutesFile, route: &str, error: &str) -> Option<(u64, u64)> {
    let start = error.find("`${")? + 1;
    let len = error.get(start..)?.find("}`")? + 1;
    let expr = error.get(start..start + len)?;
    let from_line = usize::try_from(file.routes.get(route)?.referenced.line())
        .ok()?
        .saturating_sub(1);
    text.lines()
        .enumerate()
        .skip(from_line)
        .find_map(|(i, line)| {
            let col = line.find(expr)?;
            Some((i as u64 + 1, line.get(..col)?.chars().count() as u64 + 1))
        })
}

impl Snapshot {
    /// Routes by name with what they do, for `/admin/config`.
    pub fn describe_routes(&self) -> Vec<serde_json::Value> {
        self.table
            .routes()
            .map(|r| {
                serde_json::json!({
                    "name": &*r.name, "kind": r.kind, "schema": r.schema, "reply_schemas": r.reply_schemas,
                })
            })
            .collect()
    }
}

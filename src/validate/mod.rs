//! Compiled JSON Schemas and the layer that refuses invalid messages before their handler runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;
use tower::{Layer, Service};

pub mod lint;

use crate::envelope::{Answer, ProtocolError, Reply, Request, refuse};
use crate::guard::Check;

/// A schema file compiled once at load.
pub struct CompiledSchema {
    pub file: PathBuf,
    pub source: Value,
    pub validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("file", &self.file)
            .finish()
    }
}

/// Why a schema file was refused, placed in that file where the place is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl SchemaError {
    fn new(message: String) -> Self {
        Self {
            line: None,
            column: None,
            message,
        }
    }
}

impl From<SchemaError> for String {
    fn from(e: SchemaError) -> String {
        e.to_string()
    }
}

/// The 1-based line and column of the first `"key":` in `text`.
fn key_position(text: &str, key: &str) -> Option<(u64, u64)> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = text.get(from..)?.find(&needle) {
        let at = from + i;
        let after = text.get(at + needle.len()..)?.trim_start();
        if after.starts_with(':') {
            let before = text.get(..at)?;
            let line = before.matches('\n').count() as u64 + 1;
            let column = (at - before.rfind('\n').map_or(0, |n| n + 1)) as u64 + 1;
            return Some((line, column));
        }
        from = at + needle.len();
    }
    None
}

impl CompiledSchema {
    /// Reads, lints and compiles one schema file.
    pub fn load(file: &Path) -> Result<CompiledSchema, SchemaError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| SchemaError::new(format!("cannot read: {e}")))?;
        let source: Value = serde_json::from_str(&text).map_err(|e| {
            let msg = e.to_string();
            // serde_json appends " at line L column C"; the place is reported once, up front.
            let msg = match msg.rfind(" at line ") {
                Some(i) => msg.get(..i).unwrap_or(&msg).to_owned(),
                None => msg,
            };
            SchemaError {
                line: Some(e.line() as u64),
                column: Some(e.column().max(1) as u64),
                message: format!("not JSON: {msg}"),
            }
        })?;
        if let Some(u) = lint::unknown_keywords(&source).into_iter().next() {
            let hint = lint::suggestion(&u.keyword)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let (line, column) = key_position(&text, &u.keyword).unzip();
            return Err(SchemaError {
                line,
                column,
                message: format!(
                    "unknown JSON Schema keyword `{}` at {}{hint}; it would be ignored (prefix your own annotations with `x-`)",
                    u.keyword, u.pointer
                ),
            });
        }
        let validator = jsonschema::validator_for(&source).map_err(|e| {
            SchemaError::new(format!(
                "not a valid JSON Schema: {e} (at {})",
                pointer_or_root(&e.schema_path().to_string())
            ))
        })?;
        Ok(CompiledSchema {
            file: file.to_owned(),
            source,
            validator,
        })
    }

    /// The first few problems with `instance`, each naming its field; `None` when valid.
    ///
    /// Values from the message are masked (a 5 MB string is not echoed back), and
    /// `oneOf`/`anyOf` failures list what each alternative missed.
    pub fn check(&self, instance: &Value) -> Option<String> {
        if self.validator.is_valid(instance) {
            return None;
        }
        let problems: Vec<String> = self
            .validator
            .iter_errors(instance)
            .take(3)
            .map(|e| describe(&e))
            .collect();
        Some(problems.join("; "))
    }

    /// The `examples` of the schema (valid by convention).
    pub fn examples(&self) -> &[Value] {
        self.source
            .get("examples")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The `x-invalid-examples` of the schema: `{"why", "field", "message"}` objects, each
    /// a message that must be refused with an error naming `field`.
    pub fn invalid_examples(&self) -> Vec<InvalidExample> {
        self.source
            .get("x-invalid-examples")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        Some(InvalidExample {
                            why: i.get("why")?.as_str()?.to_owned(),
                            field: i.get("field")?.as_str()?.to_owned(),
                            message: i.get("message")?.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The schema's title, else its file name.
    pub fn title(&self) -> String {
        self.source
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                self.file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
    }
}

/// A message a schema must refuse, and the field the refusal must name.
#[derive(Debug, Clone)]
pub struct InvalidExample {
    pub why: String,
    pub field: String,
    pub message: Value,
}

/// One problem as text: `/path: what`, with alternatives expanded for oneOf/anyOf.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let at = e.instance_path().to_string();
    let what = match e.kind() {
        jsonschema::error::ValidationErrorKind::OneOfNotValid { context }
        | jsonschema::error::ValidationErrorKind::AnyOf { context } => {
            let alts: Vec<String> = context
                .iter()
                .map(|branch| {
                    branch
                        .iter()
                        .take(2)
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|b| !b.is_empty())
                .collect();
            format!("fits none of the allowed forms ({})", alts.join(" | "))
        }
        _ => e.masked_with("the value").to_string(),
    };
    let mut out = if at.is_empty() {
        what
    } else {
        format!("{at}: {what}")
    };
    if out.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn pointer_or_root(p: &str) -> &str {
    if p.is_empty() { "the root" } else { p }
}

/// Schema files by name, compiled once per load and shared by the routes that use them.
#[derive(Debug, Default)]
pub struct SchemaSet {
    pub by_name: HashMap<String, Arc<CompiledSchema>>,
}

impl SchemaSet {
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledSchema>> {
        self.by_name.get(name)
    }
}

/// The schema check of one route, run by the `crate::guard` layer before any work.
#[derive(Clone)]
pub struct SchemaCheck {
    route: Arc<str>,
    schema: Arc<CompiledSchema>,
}

impl SchemaCheck {
    pub fn new(route: Arc<str>, schema: Arc<CompiledSchema>) -> Self {
        Self { route, schema }
    }
}

impl Check for SchemaCheck {
    fn check(&self, req: &Request) -> Result<(), Reply> {
        match self.schema.check(&req.msg) {
            None => Ok(()),
            Some(problem) => {
                tracing::debug!(route = %self.route, %problem, "message refused by schema");
                let err =
                    ProtocolError::Validation(format!("Invalid {} message: {problem}", self.route));
                Err(refuse(req.request_id.as_ref(), &err))
            }
        }
    }
}

/// Checks replies against the route's reply schemas and logs the ones that fit none (development aid).
#[derive(Clone)]
pub struct ReplyCheckLayer {
    route: Arc<str>,
    schemas: Arc<[Arc<CompiledSchema>]>,
}

impl ReplyCheckLayer {
    pub fn new(route: Arc<str>, schemas: Vec<Arc<CompiledSchema>>) -> Self {
        Self {
            route,
            schemas: schemas.into(),
        }
    }
}

impl<S> Layer<S> for ReplyCheckLayer {
    type Service = ReplyCheck<S>;
    fn layer(&self, inner: S) -> ReplyCheck<S> {
        ReplyCheck {
            inner,
            route: self.route.clone(),
            schemas: self.schemas.clone(),
        }
    }
}

/// The service made by [`ReplyCheckLayer`].
#[derive(Clone)]
pub struct ReplyCheck<S> {
    inner: S,
    route: Arc<str>,
    schemas: Arc<[Arc<CompiledSchema>]>,
}

impl<S> Service<Request> for ReplyCheck<S>
where
    S: Service<Request, Response = Answer, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = std::convert::Infallible;
    type Future =
        futures_util::future::BoxFuture<'static, Result<Answer, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = self.inner.call(req);
        let (route, schemas) = (self.route.clone(), self.schemas.clone());
        Box::pin(async move {
            let answer = fut.await?;
            let Answer::Reply(reply) = &answer else {
                return Ok(answer);
            };
            if let Ok(v) = serde_json::from_str::<Value>(&reply.text) {
                let is_error = v.get("type").and_then(Value::as_str) == Some("error");
                let fits = schemas.iter().any(|s| s.validator.is_valid(&v));
                if !fits && !is_error {
                    let why: Vec<String> = schemas
                        .iter()
                        .filter_map(|s| s.check(&v).map(|p| format!("{}: {p}", s.title())))
                        .collect();
                    tracing::warn!(route = %route, problems = %why.join(" | "), "reply breaks the contract");
                    metrics::counter!("scope_router_reply_contract_violations_total", "route" => route.to_string()).increment(1);
                }
            }
            Ok(answer)
        })
    }
}

//! Compiled JSON Schemas and the layer that refuses invalid messages before their handler runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use serde_json::Value;
use tower::{Layer, Service};

use crate::codec::{ProtocolError, Reply, Request, error_reply};

/// A schema file compiled once at load.
pub struct CompiledSchema {
    pub file: PathBuf,
    pub source: Value,
    pub validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema").field("file", &self.file).finish()
    }
}

impl CompiledSchema {
    /// Reads and compiles one schema file.
    pub fn load(file: &Path) -> Result<CompiledSchema, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
        let source: Value = serde_json::from_str(&text)
            .map_err(|e| format!("not JSON: {e} (line {}, column {})", e.line(), e.column()))?;
        let validator = jsonschema::validator_for(&source)
            .map_err(|e| format!("not a valid JSON Schema: {e} (at {})", pointer_or_root(&e.schema_path().to_string())))?;
        Ok(CompiledSchema {
            file: file.to_owned(),
            source,
            validator,
        })
    }

    /// The first few problems with `instance`, each naming its field; `None` when valid.
    pub fn check(&self, instance: &Value) -> Option<String> {
        if self.validator.is_valid(instance) {
            return None;
        }
        let problems: Vec<String> = self
            .validator
            .iter_errors(instance)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
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

    /// The `x-invalid-examples` of the schema (each must be rejected).
    pub fn invalid_examples(&self) -> &[Value] {
        self.source
            .get("x-invalid-examples")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
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

/// Refuses a message that fails its route's schema, with a ready error reply.
#[derive(Clone)]
pub struct ValidateLayer {
    route: Arc<str>,
    schema: Arc<CompiledSchema>,
}

impl ValidateLayer {
    pub fn new(route: Arc<str>, schema: Arc<CompiledSchema>) -> Self {
        Self { route, schema }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            route: self.route.clone(),
            schema: self.schema.clone(),
        }
    }
}

/// The service made by [`ValidateLayer`].
#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
    route: Arc<str>,
    schema: Arc<CompiledSchema>,
}

impl<S> Service<Request> for Validate<S>
where
    S: Service<Request, Response = Reply, Error = std::convert::Infallible>,
{
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = Either<Ready<Result<Reply, std::convert::Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.schema.check(&req.msg) {
            None => Either::Right(self.inner.call(req)),
            Some(problem) => {
                tracing::debug!(route = %self.route, %problem, "message refused by schema");
                let err = ProtocolError::Validation(format!("Invalid {} message: {problem}", self.route));
                Either::Left(ready(Ok(error_reply(req.request_id.as_ref(), &err))))
            }
        }
    }
}

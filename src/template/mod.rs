//! The `${…}` reply template language, compiled once at load and rendered straight into JSON text.
//!
//! A string that is exactly one `${expr}` keeps the JSON type of what it names;
//! any other string interpolates as text. An expression that names nothing (a
//! missing field) drops its object key, so optional fields stay optional.
//! `$${` writes a literal `${`. `${env.NAME}` is the router's environment variable, read at
//! load: `${env.A|B:-text}` tries `A`, then `B`, then writes `text`; `${env_json.NAME}` keeps
//! a value that parses as JSON as JSON.

mod render;

use std::fmt;

use serde_json::Value;

pub use self::render::{write_body, write_json, write_json_str};

/// Which variable roots a template may use; checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(u8);

impl Scope {
    pub const MESSAGE: Scope = Scope(1);
    pub const CONNECTION: Scope = Scope(2);
    pub const RESPONSE: Scope = Scope(4);
    pub const ERROR: Scope = Scope(8);
    /// `item.*`: one element of a list a hook step walks (`for_each`).
    pub const ITEM: Scope = Scope(16);

    pub const fn with(self, other: Scope) -> Scope {
        Scope(self.0 | other.0)
    }
    const fn has(self, other: Scope) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A template error found at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unterminated `${{` in {0:?}")]
    Unterminated(String),
    #[error("empty expression `${{}}` in {0:?}")]
    Empty(String),
    #[error("unknown variable `${{{0}}}`: {1}")]
    Unknown(String, String),
    #[error("`${{{0}}}` is not available here (available: {1})")]
    NotInScope(String, String),
    #[error("a reply template must be a JSON object, found {0}")]
    NotObject(&'static str),
}

/// A compiled template.
#[derive(Clone, PartialEq)]
pub enum Template {
    /// A value with no expressions, serialized once at load.
    Const(Box<str>),
    /// A string that is exactly one expression: keeps the value's JSON type.
    Expr(Expr),
    /// A string mixing text and expressions.
    Text(Box<[Part]>),
    /// An object; keys are stored pre-escaped as `"key":`.
    Object(Box<[(Box<str>, Template)]>),
    /// An array.
    Array(Box<[Template]>),
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Template::Const(s) => write!(f, "Const({s})"),
            Template::Expr(e) => write!(f, "Expr({e})"),
            Template::Text(p) => f.debug_list().entries(p.iter()).finish(),
            Template::Object(o) => f
                .debug_map()
                .entries(o.iter().map(|(k, v)| (k, v)))
                .finish(),
            Template::Array(a) => f.debug_list().entries(a.iter()).finish(),
        }
    }
}

/// A piece of an interpolated string.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Lit(Box<str>),
    Expr(Expr),
}

/// A variable reference such as `message.candidate.sdpMid`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Message(Box<[Box<str>]>),
    ConnectionId,
    /// The user id the connection gave (`set_user_id`), when it gave one.
    ConnectionUserId,
    /// The deployment's `connection.info` object.
    ConnectionInfo,
    /// A field of the list element a hook step walks.
    Item(Box<[Box<str>]>),
    ResponseStatus,
    /// The response body as JSON, or as a string when it is not JSON; with a sub-path, a field of it.
    ResponseJson(Box<[Box<str>]>),
    ResponseText,
    ResponseBase64,
    ResponseContentType,
    ResponseLength,
    ErrorStatus,
    ErrorMessage,
    ErrorCode,
    ErrorDetail,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, path): (&str, &[Box<str>]) = match self {
            Expr::Message(p) => ("message", p),
            Expr::ConnectionId => ("connection.id", &[]),
            Expr::ConnectionUserId => ("connection.user_id", &[]),
            Expr::ConnectionInfo => ("connection.info", &[]),
            Expr::Item(p) => ("item", p),
            Expr::ResponseStatus => ("response.status", &[]),
            Expr::ResponseJson(p) => ("response.json", p),
            Expr::ResponseText => ("response.text", &[]),
            Expr::ResponseBase64 => ("response.base64", &[]),
            Expr::ResponseContentType => ("response.content_type", &[]),
            Expr::ResponseLength => ("response.length", &[]),
            Expr::ErrorStatus => ("error.status", &[]),
            Expr::ErrorMessage => ("error.message", &[]),
            Expr::ErrorCode => ("error.code", &[]),
            Expr::ErrorDetail => ("error.detail", &[]),
        };
        f.write_str(head)?;
        for p in path {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

/// A backend response as templates see it.
#[derive(Debug, Default)]
pub struct ResponseVars<'a> {
    pub status: u16,
    pub body: &'a [u8],
    pub content_type: &'a str,
    /// The body parsed, when a template needs a field inside it.
    pub parsed: Option<Value>,
}

/// A failure as templates see it.
#[derive(Debug, Default)]
pub struct ErrorVars<'a> {
    pub status: u16,
    pub message: &'a str,
    pub code: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// Everything a template can name while rendering one reply.
#[derive(Debug, Default)]
pub struct Ctx<'a> {
    pub message: Option<&'a Value>,
    pub connection_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub connection_info: Option<&'a Value>,
    pub item: Option<&'a Value>,
    pub response: Option<&'a ResponseVars<'a>>,
    pub error: Option<&'a ErrorVars<'a>>,
}

/// What an expression resolves to.
enum Val<'a> {
    Json(&'a Value),
    Str(&'a str),
    Num(u64),
    /// A body: JSON when it parses, else text.
    Body(&'a [u8]),
    Base64(&'a [u8]),
    Absent,
}

impl Template {
    /// Compiles a reply template, which must be an object.
    pub fn compile_reply(v: &Value, scope: Scope) -> Result<Template, TemplateError> {
        if !v.is_object() {
            return Err(TemplateError::NotObject(crate::json::kind_of(v)));
        }
        Template::compile(v, scope)
    }

    /// Compiles any JSON value into a template.
    pub fn compile(v: &Value, scope: Scope) -> Result<Template, TemplateError> {
        let t = match v {
            Value::String(s) => compile_str(s, scope)?,
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let mut key = serde_json::to_string(k).unwrap_or_default();
                    key.push(':');
                    fields.push((key.into_boxed_str(), Template::compile(v, scope)?));
                }
                // Not folded: `render_reply` drops the template's own `request_id` for the
                // client's only on the `Object` form (a folded one would send it twice).
                if map.contains_key("request_id") {
                    return Ok(Template::Object(fields.into_boxed_slice()));
                }
                Template::Object(fields.into_boxed_slice())
            }
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(|i| Template::compile(i, scope))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Const(other.to_string().into_boxed_str()),
        };
        Ok(t.fold_consts())
    }

    /// Whether rendering needs the response body parsed (a `response.json.<field>` use).
    pub fn needs_parsed_response(&self) -> bool {
        self.any_expr(&|e| matches!(e, Expr::ResponseJson(p) if !p.is_empty()))
    }

    /// Whether any expression satisfies `f`.
    pub fn any_expr(&self, f: &dyn Fn(&Expr) -> bool) -> bool {
        match self {
            Template::Const(_) => false,
            Template::Expr(e) => f(e),
            Template::Text(parts) => parts.iter().any(|p| matches!(p, Part::Expr(e) if f(e))),
            Template::Object(o) => o.iter().any(|(_, t)| t.any_expr(f)),
            Template::Array(a) => a.iter().any(|t| t.any_expr(f)),
        }
    }

    /// Object fields whose key is `key` (pre-escaped form aside): used by checks.
    pub fn has_key(&self, key: &str) -> bool {
        match self {
            Template::Object(o) => o
                .iter()
                .any(|(k, _)| k.trim_end_matches(':').trim_matches('"') == key),
            Template::Const(s) => serde_json::from_str::<Value>(s)
                .ok()
                .and_then(|v| v.as_object().map(|m| m.contains_key(key)))
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Folds expression-free subtrees into pre-serialized constants.
    fn fold_consts(self) -> Template {
        match self {
            Template::Object(fields)
                if fields.iter().all(|(_, t)| matches!(t, Template::Const(_))) =>
            {
                let mut s = String::from("{");
                for (i, (k, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(k);
                    if let Template::Const(c) = t {
                        s.push_str(c);
                    }
                }
                s.push('}');
                Template::Const(s.into_boxed_str())
            }
            Template::Array(items) if items.iter().all(|t| matches!(t, Template::Const(_))) => {
                let mut s = String::from("[");
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    if let Template::Const(c) = t {
                        s.push_str(c);
                    }
                }
                s.push(']');
                Template::Const(s.into_boxed_str())
            }
            other => other,
        }
    }
}

fn compile_str(s: &str, scope: Scope) -> Result<Template, TemplateError> {
    let mut parts: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        lit.push_str(before);
        if let Some(tail) = after.strip_prefix("$${") {
            lit.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| TemplateError::Unterminated(s.to_owned()))?;
            let (inner, tail) = tail.split_at(end);
            let inner = inner.trim();
            if inner.is_empty() {
                return Err(TemplateError::Empty(s.to_owned()));
            }
            rest = tail.get(1..).unwrap_or("");
            if let Some(value) = env_expr(inner) {
                // Read once, at load: a constant from here on.
                match value {
                    EnvValue::Text(t) => lit.push_str(&t),
                    EnvValue::Json(v) if s.trim() == format!("${{{inner}}}") => {
                        return Ok(Template::Const(v.to_string().into_boxed_str()));
                    }
                    EnvValue::Json(v) => lit.push_str(&v.to_string()),
                }
                continue;
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit).into_boxed_str()));
            }
            parts.push(Part::Expr(parse_expr(inner, scope)?));
        } else {
            lit.push('$');
            rest = after.get(1..).unwrap_or("");
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit.into_boxed_str()));
    }
    Ok(match parts.as_slice() {
        [] => Template::Const("\"\"".into()),
        [Part::Expr(e)] => Template::Expr(e.clone()),
        [Part::Lit(l)] => {
            let mut out = Vec::new();
            write_json_str(l, &mut out);
            Template::Const(String::from_utf8(out).unwrap_or_default().into_boxed_str())
        }
        _ => Template::Text(parts.into_boxed_slice()),
    })
}

/// An environment expression's value, read now.
enum EnvValue {
    Text(String),
    Json(Value),
}

/// `env.A|B:-default` or `env_json.A…`: the first variable set (and not empty), else the default.
fn env_expr(src: &str) -> Option<EnvValue> {
    let (json, rest) = if let Some(r) = src.strip_prefix("env_json.") {
        (true, r)
    } else {
        (false, src.strip_prefix("env.")?)
    };
    let (names, default) = match rest.split_once(":-") {
        Some((n, d)) => (n, d),
        None => (rest, ""),
    };
    let found = names
        .split('|')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| default.to_owned());
    Some(match (json, serde_json::from_str::<Value>(&found)) {
        (true, Ok(v)) => EnvValue::Json(v),
        (true, Err(_)) => EnvValue::Json(Value::String(found)),
        (false, _) => EnvValue::Text(found),
    })
}

fn scope_names(scope: Scope) -> String {
    let mut names = Vec::new();
    if scope.has(Scope::MESSAGE) {
        names.push("message.*");
    }
    if scope.has(Scope::CONNECTION) {
        names.push("connection.id, connection.user_id, connection.info");
    }
    if scope.has(Scope::ITEM) {
        names.push("item.*");
    }
    if scope.has(Scope::RESPONSE) {
        names.push("response.*");
    }
    if scope.has(Scope::ERROR) {
        names.push("error.*");
    }
    names.join(", ")
}

fn parse_expr(src: &str, scope: Scope) -> Result<Expr, TemplateError> {
    let mut segs = src.split('.');
    let root = segs.next().unwrap_or_default();
    let rest: Vec<&str> = segs.collect();
    if rest.iter().any(|s| s.is_empty()) {
        return Err(TemplateError::Unknown(
            src.to_owned(),
            "empty path segment".to_owned(),
        ));
    }
    let path = || -> Box<[Box<str>]> { rest.iter().map(|s| Box::from(*s)).collect() };
    let unknown = |why: &str| TemplateError::Unknown(src.to_owned(), why.to_owned());
    let (needed, expr) = match (root, rest.as_slice()) {
        ("message", _) => (Scope::MESSAGE, Expr::Message(path())),
        ("connection", ["id"]) => (Scope::CONNECTION, Expr::ConnectionId),
        ("connection", ["user_id"]) => (Scope::CONNECTION, Expr::ConnectionUserId),
        ("connection", ["info"]) => (Scope::CONNECTION, Expr::ConnectionInfo),
        ("connection", _) => return Err(unknown("connection has id, user_id and info")),
        ("item", _) => (Scope::ITEM, Expr::Item(path())),
        ("response", ["status"]) => (Scope::RESPONSE, Expr::ResponseStatus),
        ("response", ["json", tail @ ..]) => (
            Scope::RESPONSE,
            Expr::ResponseJson(tail.iter().map(|s| Box::from(*s)).collect()),
        ),
        ("response", ["text"]) => (Scope::RESPONSE, Expr::ResponseText),
        ("response", ["base64"]) => (Scope::RESPONSE, Expr::ResponseBase64),
        ("response", ["content_type"]) => (Scope::RESPONSE, Expr::ResponseContentType),
        ("response", ["length"]) => (Scope::RESPONSE, Expr::ResponseLength),
        ("response", _) => {
            return Err(unknown(
                "response has status, json[.field…], text, base64, content_type, length",
            ));
        }
        ("error", ["status"]) => (Scope::ERROR, Expr::ErrorStatus),
        ("error", ["message"]) => (Scope::ERROR, Expr::ErrorMessage),
        ("error", ["code"]) => (Scope::ERROR, Expr::ErrorCode),
        ("error", ["detail"]) => (Scope::ERROR, Expr::ErrorDetail),
        ("error", _) => return Err(unknown("error has status, message, code, detail")),
        _ => {
            return Err(unknown(
                "variables start with message, connection, response, error, item, env or env_json",
            ));
        }
    };
    if !scope.has(needed) {
        return Err(TemplateError::NotInScope(
            src.to_owned(),
            scope_names(scope),
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests;

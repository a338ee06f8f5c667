//! The `${…}` reply template language, compiled once at load and rendered straight into JSON text.
//!
//! A string that is exactly one `${expr}` keeps the JSON type of what it names;
//! any other string interpolates as text. An expression that names nothing (a
//! missing field) drops its object key, so optional fields stay optional.
//! `$${` writes a literal `${`.

use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use serde_json::Value;

/// Which variable roots a template may use; checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(u8);

impl Scope {
    pub const MESSAGE: Scope = Scope(1);
    pub const CONNECTION: Scope = Scope(2);
    pub const RESPONSE: Scope = Scope(4);
    pub const ERROR: Scope = Scope(8);

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

    /// Renders a reply object into `out`, with `request_id` (raw JSON) first when given.
    pub fn render_reply(&self, ctx: &Ctx<'_>, request_id: Option<&Value>, out: &mut Vec<u8>) {
        match (self, request_id) {
            (_, None) => self.render(ctx, out),
            (Template::Object(fields), Some(rid)) => {
                out.extend_from_slice(b"{\"request_id\":");
                write_json(rid, out);
                for (k, t) in fields.iter() {
                    if k.as_ref() == "\"request_id\":" {
                        continue;
                    }
                    let mark = out.len();
                    out.push(b',');
                    out.extend_from_slice(k.as_bytes());
                    if !t.render_value(ctx, out) {
                        out.truncate(mark);
                    }
                }
                out.push(b'}');
            }
            (Template::Const(c), Some(rid)) if c.starts_with('{') => {
                let rest = c.get(1..).unwrap_or("}");
                out.extend_from_slice(b"{\"request_id\":");
                write_json(rid, out);
                if rest != "}" {
                    out.push(b',');
                }
                out.extend_from_slice(rest.as_bytes());
            }
            _ => self.render(ctx, out),
        }
    }

    /// Renders into `out`; a top-level absent value renders as `null`.
    pub fn render(&self, ctx: &Ctx<'_>, out: &mut Vec<u8>) {
        if !self.render_value(ctx, out) {
            out.extend_from_slice(b"null");
        }
    }

    /// Renders as plain text (for paths): strings are unquoted, other values are JSON text.
    pub fn render_text(&self, ctx: &Ctx<'_>) -> String {
        let mut s = String::new();
        match self {
            Template::Text(parts) => {
                for p in parts.iter() {
                    match p {
                        Part::Lit(l) => s.push_str(l),
                        Part::Expr(e) => push_text(&resolve(e, ctx), &mut s),
                    }
                }
            }
            Template::Expr(e) => push_text(&resolve(e, ctx), &mut s),
            Template::Const(c) => {
                s = serde_json::from_str::<String>(c).unwrap_or_else(|_| c.to_string());
            }
            _ => s = self.render_to_string(ctx),
        }
        s
    }

    /// Renders to a string (tests and cold paths).
    pub fn render_to_string(&self, ctx: &Ctx<'_>) -> String {
        let mut out = Vec::new();
        self.render(ctx, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Writes the value; returns false (writing nothing) when it is absent.
    fn render_value(&self, ctx: &Ctx<'_>, out: &mut Vec<u8>) -> bool {
        match self {
            Template::Const(c) => {
                out.extend_from_slice(c.as_bytes());
                true
            }
            Template::Expr(e) => write_val(&resolve(e, ctx), out),
            Template::Text(parts) => {
                let mut s = String::new();
                for p in parts.iter() {
                    match p {
                        Part::Lit(l) => s.push_str(l),
                        Part::Expr(e) => push_text(&resolve(e, ctx), &mut s),
                    }
                }
                write_json_str(&s, out);
                true
            }
            Template::Object(fields) => {
                out.push(b'{');
                let mut first = true;
                for (k, t) in fields.iter() {
                    let mark = out.len();
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(k.as_bytes());
                    if t.render_value(ctx, out) {
                        first = false;
                    } else {
                        out.truncate(mark);
                    }
                }
                out.push(b'}');
                true
            }
            Template::Array(items) => {
                out.push(b'[');
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    t.render(ctx, out);
                }
                out.push(b']');
                true
            }
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
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit).into_boxed_str()));
            }
            parts.push(Part::Expr(parse_expr(inner, scope)?));
            rest = tail.get(1..).unwrap_or("");
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

fn scope_names(scope: Scope) -> String {
    let mut names = Vec::new();
    if scope.has(Scope::MESSAGE) {
        names.push("message.*");
    }
    if scope.has(Scope::CONNECTION) {
        names.push("connection.id");
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
        ("connection", _) => return Err(unknown("connection has only `id`")),
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
                "variables start with message, connection, response or error",
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

fn lookup<'a>(mut v: &'a Value, path: &[Box<str>]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(seg.as_ref())?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn resolve<'a>(e: &'a Expr, ctx: &Ctx<'a>) -> Val<'a> {
    let absent_if_none = |o: Option<Val<'a>>| o.unwrap_or(Val::Absent);
    match e {
        Expr::Message(p) => absent_if_none(ctx.message.and_then(|m| lookup(m, p)).map(Val::Json)),
        Expr::ConnectionId => absent_if_none(ctx.connection_id.map(Val::Str)),
        Expr::ResponseStatus => absent_if_none(ctx.response.map(|r| Val::Num(u64::from(r.status)))),
        Expr::ResponseJson(p) if p.is_empty() => {
            absent_if_none(ctx.response.map(|r| Val::Body(r.body)))
        }
        Expr::ResponseJson(p) => absent_if_none(
            ctx.response
                .and_then(|r| r.parsed.as_ref())
                .and_then(|v| lookup(v, p))
                .map(Val::Json),
        ),
        Expr::ResponseText => absent_if_none(
            ctx.response
                .map(|r| Val::Str(std::str::from_utf8(r.body).unwrap_or("<binary>"))),
        ),
        Expr::ResponseBase64 => absent_if_none(ctx.response.map(|r| Val::Base64(r.body))),
        Expr::ResponseContentType => absent_if_none(ctx.response.map(|r| Val::Str(r.content_type))),
        Expr::ResponseLength => absent_if_none(ctx.response.map(|r| Val::Num(r.body.len() as u64))),
        Expr::ErrorStatus => absent_if_none(ctx.error.map(|e| Val::Num(u64::from(e.status)))),
        Expr::ErrorMessage => absent_if_none(ctx.error.map(|e| Val::Str(e.message))),
        Expr::ErrorCode => absent_if_none(ctx.error.and_then(|e| e.code).map(Val::Str)),
        Expr::ErrorDetail => absent_if_none(ctx.error.and_then(|e| e.detail).map(Val::Str)),
    }
}

/// Writes a resolved value as JSON; false when absent.
fn write_val(v: &Val<'_>, out: &mut Vec<u8>) -> bool {
    match v {
        Val::Json(j) => write_json(j, out),
        Val::Str(s) => write_json_str(s, out),
        Val::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Val::Body(b) => write_body(b, out),
        Val::Base64(b) => {
            out.push(b'"');
            let start = out.len();
            let len = base64::encoded_len(b.len(), true).unwrap_or(0);
            out.resize(start + len, 0);
            if let Some(dst) = out.get_mut(start..) {
                let _ = base64::engine::general_purpose::STANDARD.encode_slice(b, dst);
            }
            out.push(b'"');
        }
        Val::Absent => return false,
    }
    true
}

/// Appends a resolved value as text (interpolation).
fn push_text(v: &Val<'_>, s: &mut String) {
    match v {
        Val::Json(Value::String(t)) => s.push_str(t),
        Val::Str(t) => s.push_str(t),
        Val::Json(j) => s.push_str(&j.to_string()),
        Val::Num(n) => s.push_str(&n.to_string()),
        Val::Body(b) => s.push_str(&String::from_utf8_lossy(b)),
        Val::Base64(b) => s.push_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        Val::Absent => {}
    }
}

/// Writes a backend body: verbatim when it is valid JSON, else as a JSON string of its text.
pub fn write_body(body: &[u8], out: &mut Vec<u8>) {
    let trimmed = body.trim_ascii();
    if !trimmed.is_empty() && serde_json::from_slice::<StrictJson>(trimmed).is_ok() {
        out.extend_from_slice(trimmed);
    } else {
        write_json_str(&String::from_utf8_lossy(body), out);
    }
}

/// Accepts exactly the documents `serde_json::Value` accepts (UTF-8 strings, paired
/// surrogates, finite numbers) without building one. `IgnoredAny` is laxer: it skips
/// strings and numbers unchecked, so `"\xff"`, `"\ud800"` or `1e400` would pass verbatim.
struct StrictJson;

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictJson)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson {
    type Value = StrictJson;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        while map.next_entry::<StrictJson, StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }
}

pub fn write_json(v: &Value, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, v);
}

pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Scope {
        Scope::MESSAGE
            .with(Scope::CONNECTION)
            .with(Scope::RESPONSE)
            .with(Scope::ERROR)
    }

    fn render(t: &Value, ctx: &Ctx<'_>) -> Value {
        let t = Template::compile(t, all()).unwrap();
        serde_json::from_str(&t.render_to_string(ctx)).unwrap()
    }

    #[test]
    fn whole_expression_keeps_type() {
        let msg = json!({"n": 3, "o": {"a": [1, true]}, "s": "x"});
        let ctx = Ctx {
            message: Some(&msg),
            ..Default::default()
        };
        let out = render(
            &json!({"n": "${message.n}", "o": "${message.o}", "a1": "${message.o.a.1}"}),
            &ctx,
        );
        assert_eq!(out, json!({"n": 3, "o": {"a": [1, true]}, "a1": true}));
    }

    #[test]
    fn interpolation_is_text() {
        let msg = json!({"type": "nope", "n": 3});
        let ctx = Ctx {
            message: Some(&msg),
            connection_id: Some("abcd1234"),
            ..Default::default()
        };
        let out = render(
            &json!({"e": "Unknown message type: ${message.type}", "c": "${connection.id}/${message.n}!"}),
            &ctx,
        );
        assert_eq!(
            out,
            json!({"e": "Unknown message type: nope", "c": "abcd1234/3!"})
        );
    }

    #[test]
    fn absent_values_drop_their_key() {
        let msg = json!({});
        let ctx = Ctx {
            message: Some(&msg),
            ..Default::default()
        };
        let out = render(
            &json!({"type": "x", "sid": "${message.sessionId}", "t": "a${message.missing}b"}),
            &ctx,
        );
        assert_eq!(out, json!({"type": "x", "t": "ab"}));
    }

    #[test]
    fn dollar_escape_and_lone_dollar() {
        let ctx = Ctx::default();
        let out = render(&json!({"a": "$${x} costs $5"}), &ctx);
        assert_eq!(out, json!({"a": "${x} costs $5"}));
    }

    #[test]
    fn response_body_json_or_text_and_base64() {
        let r = ResponseVars {
            status: 200,
            body: b"{\"a\": 1}",
            content_type: "application/json",
            parsed: None,
        };
        let ctx = Ctx {
            response: Some(&r),
            ..Default::default()
        };
        assert_eq!(
            render(
                &json!({"d": "${response.json}", "s": "${response.status}"}),
                &ctx
            ),
            json!({"d": {"a": 1}, "s": 200})
        );
        let r = ResponseVars {
            status: 500,
            body: b"oops \"x\"",
            content_type: "text/plain",
            parsed: None,
        };
        let ctx = Ctx {
            response: Some(&r),
            ..Default::default()
        };
        assert_eq!(
            render(&json!({"d": "${response.json}"}), &ctx),
            json!({"d": "oops \"x\""})
        );
        let r = ResponseVars {
            status: 200,
            body: &[0, 1, 2, 255],
            content_type: "video/mp4",
            parsed: None,
        };
        let ctx = Ctx {
            response: Some(&r),
            ..Default::default()
        };
        assert_eq!(
            render(
                &json!({"b": "${response.base64}", "l": "${response.length}", "c": "${response.content_type}"}),
                &ctx
            ),
            json!({"b": "AAEC/w==", "l": 4, "c": "video/mp4"})
        );
    }

    #[test]
    fn request_id_goes_first_and_is_kept_verbatim() {
        let t = Template::compile(&json!({"type": "pong"}), all()).unwrap();
        assert!(matches!(t, Template::Const(_)));
        let mut out = Vec::new();
        t.render_reply(&Ctx::default(), Some(&json!({"k": [1]})), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"request_id":{"k":[1]},"type":"pong"}"#
        );
        let t = Template::compile(&json!({}), all()).unwrap();
        let mut out = Vec::new();
        t.render_reply(&Ctx::default(), Some(&json!("r1")), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"request_id":"r1"}"#);
        let msg = json!({"x": 1});
        let t = Template::compile(
            &json!({"type": "t", "x": "${message.x}", "y": "${message.y}"}),
            all(),
        )
        .unwrap();
        let mut out = Vec::new();
        t.render_reply(
            &Ctx {
                message: Some(&msg),
                ..Default::default()
            },
            Some(&json!(7)),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"request_id":7,"type":"t","x":1}"#
        );
    }

    /// Found by `cargo fuzz run template`: a backend body that `IgnoredAny` accepts but that is
    /// not JSON (bad UTF-8 in a string, a lone surrogate, an out-of-range number) was copied verbatim.
    #[test]
    fn response_json_is_always_valid_json() {
        let t = Template::compile(&json!({"d": "${response.json}"}), all()).unwrap();
        let bodies: [&[u8]; 5] = [
            b"\"\xff\"",
            b"\"\\ud800\"",
            b"1e400",
            b"{\"a\":[-1e999]}",
            b"{\"\xc3\":1}",
        ];
        for body in bodies {
            let r = ResponseVars {
                status: 200,
                body,
                content_type: "application/json",
                parsed: None,
            };
            let ctx = Ctx {
                response: Some(&r),
                ..Default::default()
            };
            let mut out = Vec::new();
            t.render(&ctx, &mut out);
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "{:?} rendered as invalid JSON ({e}): {:?}",
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(&out)
                )
            });
            assert!(v["d"].is_string(), "{v}");
        }
        // Valid JSON still passes through verbatim.
        let r = ResponseVars {
            status: 200,
            body: b" {\"a\": [1, \"\\ud83d\\ude00\", 1e300]} ",
            content_type: "",
            parsed: None,
        };
        let mut out = Vec::new();
        t.render(
            &Ctx {
                response: Some(&r),
                ..Default::default()
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"d":{"a": [1, "\ud83d\ude00", 1e300]}}"#
        );
    }

    /// Found by `cargo fuzz run template`: a constant reply template with its own `request_id`
    /// was folded, and `render_reply` then sent `request_id` twice (the template's won in most parsers).
    #[test]
    fn constant_template_request_id_is_replaced_not_duplicated() {
        let t = Template::compile(&json!({"type": "pong", "request_id": "fixed"}), all()).unwrap();
        let mut out = Vec::new();
        t.render_reply(&Ctx::default(), Some(&json!("r1")), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"request_id":"r1","type":"pong"}"#
        );
        let mut out = Vec::new();
        t.render_reply(&Ctx::default(), None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"request_id":"fixed","type":"pong"}"#
        );
    }

    #[test]
    fn load_time_errors() {
        let e = |v: Value, s: Scope| Template::compile(&v, s).unwrap_err().to_string();
        insta::assert_snapshot!(e(json!("${message.x"), all()), @r#"unterminated `${` in "${message.x""#);
        insta::assert_snapshot!(e(json!("${}"), all()), @r#"empty expression `${}` in "${}""#);
        insta::assert_snapshot!(e(json!("${foo.bar}"), all()), @"unknown variable `${foo.bar}`: variables start with message, connection, response or error");
        insta::assert_snapshot!(e(json!("${response.nope}"), all()), @"unknown variable `${response.nope}`: response has status, json[.field…], text, base64, content_type, length");
        insta::assert_snapshot!(e(json!("${response.status}"), Scope::MESSAGE.with(Scope::CONNECTION)), @"`${response.status}` is not available here (available: message.*, connection.id)");
        assert_eq!(
            Template::compile_reply(&json!("x"), all()).unwrap_err(),
            TemplateError::NotObject("a string")
        );
    }
}

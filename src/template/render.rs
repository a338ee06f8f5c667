//! Rendering compiled templates straight into JSON text, with the values of one reply.

use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use serde_json::Value;

use super::{Ctx, Expr, Part, Template, Val};
use crate::envelope::RequestId;

impl Template {
    /// Renders a reply object into `out`, with `request_id` (raw JSON) first when given.
    pub fn render_reply(&self, ctx: &Ctx<'_>, request_id: Option<&RequestId>, out: &mut Vec<u8>) {
        match (self, request_id) {
            (_, None) => self.render(ctx, out),
            (Template::Object(fields), Some(rid)) => {
                out.extend_from_slice(b"{\"request_id\":");
                rid.write_json(out);
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
                rid.write_json(out);
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
        Expr::ConnectionUserId => absent_if_none(ctx.user_id.map(Val::Str)),
        Expr::ConnectionInfo => absent_if_none(ctx.connection_info.map(Val::Json)),
        Expr::Item(p) => absent_if_none(ctx.item.and_then(|m| lookup(m, p)).map(Val::Json)),
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

//! The checks behind the fuzz targets, shared with `tests/fuzz_corpus.rs` so that
//! `cargo test` replays the committed corpus without cargo-fuzz.
//!
//! Each function takes the raw input bytes and panics when a property breaks:
//! - [`frame`]: a text frame through decode, route lookup, schema validation and
//!   the whole route stack (backend gated off, so nothing leaves the process, and
//!   `upload_start` never runs, so nothing is written to disk);
//!   every reply is JSON and echoes `request_id`.
//! - [`template`]: `template JSON \0 message JSON \0 response body`; every render is JSON.
//! - [`path`]: `pathsafe::normalize` output is canonical and idempotent.
//! - [`routes_yaml`]: routes YAML parses (or is refused) and compiles without panicking.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use scope_router::config::{self, HandlerConfig, Loaded, RoutesFile, TransferAction};
use scope_router::conn::ConnHandle;
use scope_router::envelope::{self, Answer, Request};
use scope_router::pathsafe;
use scope_router::publish::Readiness;
use scope_router::route::{DEFAULT_ROUTE, RouteKey};
use scope_router::snapshot::{self, Overrides, Runtime, Snapshot};
use scope_router::template::{Ctx, ErrorVars, ResponseVars, Scope, Template};
use serde_json::Value;

/// Inputs whose nesting (template + message + body) is deeper than this are skipped by
/// [`template`]: serde_json refuses documents over 128 levels, and the depth of such an
/// output comes from its inputs, not from the renderer.
const MAX_INPUT_DEPTH: usize = 100;

/// The repository root (the fuzz crate lives in `fuzz/`, the test crate at the root).
pub fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if dir.join("routes.yaml").is_file() {
        dir.to_owned()
    } else {
        dir.parent().unwrap_or(dir).to_owned()
    }
}

/// A runtime whose backend is never called: the readiness gate is on and it is never
/// healthy, so backend-bound routes answer with their refusal at once.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::standalone(Readiness::new(false, true, "fuzzing")))
}

/// The repository's default routes, compiled once, with the file they came from.
pub fn table() -> &'static (Snapshot, RoutesFile) {
    static TABLE: OnceLock<(Snapshot, RoutesFile)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let c = snapshot::load(
            &repo_root().join("routes.yaml"),
            &Overrides::default(),
            runtime(),
        )
        .expect("routes.yaml compiles");
        (c.snapshot, c.file)
    })
}

fn text_of(answer: Answer) -> String {
    match answer {
        Answer::Reply(r) => r.text,
        Answer::Streamed => String::new(),
    }
}

/// Panics (showing the start of the text) unless `bytes` parse as one JSON value.
pub fn assert_json(what: &str, bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v,
        Err(e) => {
            let text = String::from_utf8_lossy(bytes);
            let head: String = text.chars().take(600).collect();
            panic!("{what} is not valid JSON ({e}): {head}");
        }
    }
}

/// Polls a future that must already be complete (nothing in it may wait on I/O).
fn ready_now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("route stack did not answer at once with the backend gated off"),
    }
}

fn route_key<'a>(key: &RouteKey, msg: &'a Value) -> Option<&'a str> {
    match key {
        RouteKey::Field(f) => msg.get(f.as_str()),
        RouteKey::Pointer(p) => msg.pointer(p),
    }
    .and_then(Value::as_str)
}

/// Frame decode → route → validate → the route's whole stack.
pub fn frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // a WebSocket text frame is UTF-8 by the time it is decoded
    };
    let (snap, file) = table();
    let table = &snap.table;
    let (msg, rid) = match envelope::decode(text) {
        Ok(decoded) => decoded,
        Err(err) => {
            let reply = envelope::refuse(None, &err);
            let v = assert_json("decode error reply", reply.text.as_bytes());
            assert_eq!(v.get("type").and_then(Value::as_str), Some("error"));
            return;
        }
    };
    assert!(msg.is_object(), "decode returned a non-object");
    // The id's text is JSON, and means what the message's field means.
    let rid_value: Option<Value> = rid
        .as_ref()
        .map(|r| serde_json::from_str(&r.json_text()).expect("a request_id's text is JSON"));
    assert_eq!(
        rid_value.as_ref(),
        msg.get("request_id"),
        "request_id is taken verbatim"
    );

    // Route lookup and validation, as the stack does it.
    let mut refused_by_schema = false;
    let mut touches_disk = false;
    if let Some(kind) = route_key(&table.key, &msg) {
        let route = table.route(kind).or_else(|| table.route(DEFAULT_ROUTE));
        // upload_start creates (sparse) files on disk: validated here, never run.
        touches_disk = route
            .and_then(|r| file.routes.get(&*r.name))
            .is_some_and(|c| {
                matches!(&c.value.handler, HandlerConfig::Transfer(t) if t.action == TransferAction::UploadStart)
            });
        if let Some(schema_name) = route.and_then(|r| r.schema.as_ref()) {
            let schema = snap
                .schemas
                .get(schema_name)
                .expect("a route's schema is loaded");
            let verdict = schema.check(&msg);
            assert_eq!(
                verdict.is_none(),
                schema.validator.is_valid(&msg),
                "check() and is_valid() disagree"
            );
            if let Some(problem) = &verdict {
                assert!(!problem.is_empty(), "a refusal says why");
                refused_by_schema = true;
            }
        }
    }

    if touches_disk && !refused_by_schema {
        return;
    }
    // The whole route stack (metrics, validation, gate, handler); backend-bound routes refuse,
    // transfer steps find no upload on a fresh connection.
    let req = Request {
        msg,
        request_id: rid.clone(),
        conn: ConnHandle::new("f0zz1234"),
    };
    let text = text_of(ready_now(table.dispatch(req)));
    if text.is_empty() {
        return;
    }
    let reply = Reply { text };
    let v = assert_json("reply", reply.text.as_bytes());
    assert!(v.is_object(), "a reply is an object: {}", reply.text);
    if let Some(rid) = &rid_value {
        assert_eq!(
            v.get("request_id"),
            Some(rid),
            "request_id echoed verbatim: {}",
            reply.text
        );
    }
    if let Some(rid @ envelope::RequestId::Raw(_)) = &rid {
        assert!(
            reply.text.contains(&*rid.json_text()),
            "a raw request_id is echoed as sent: {}",
            reply.text
        );
    }
    if refused_by_schema {
        assert_eq!(
            v.get("code").and_then(Value::as_str),
            Some("VALIDATION_FAILED"),
            "{}",
            reply.text
        );
    }
}

/// A reply's text (a local stand-in, so the checks read as before).
struct Reply {
    text: String,
}

/// Nesting depth of a JSON value (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Bracket depth of raw bytes, ignoring brackets inside JSON strings.
fn raw_depth(bytes: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Splits a template input: `template \0 message \0 body` (the body may hold NULs).
pub fn split_template_input(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let tpl = parts.next().unwrap_or_default();
    let msg = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    (tpl, msg, body)
}

/// Template compile and render: every render of a compiled template is JSON.
pub fn template(data: &[u8]) {
    let (tpl, msg, body) = split_template_input(data);
    let Ok(tv) = serde_json::from_slice::<Value>(tpl) else {
        return;
    };
    let scope = Scope::MESSAGE
        .with(Scope::CONNECTION)
        .with(Scope::RESPONSE)
        .with(Scope::ERROR);
    let Ok(t) = Template::compile(&tv, scope) else {
        return;
    };
    let message: Option<Value> = serde_json::from_slice(msg).ok();
    let message_depth = message.as_ref().map_or(0, depth);
    if depth(&tv) + message_depth + raw_depth(body) > MAX_INPUT_DEPTH {
        return;
    }
    let rid_value = message.as_ref().and_then(|m| m.get("request_id")).cloned();
    let rid = rid_value.clone().map(envelope::RequestId::Value);

    let response = ResponseVars {
        status: 200,
        body,
        content_type: "application/json; charset=\"utf-8\"",
        parsed: serde_json::from_slice(body).ok(),
    };
    let error = ErrorVars {
        status: 502,
        message: "backend said \"no\"\n\t\u{1}</script>",
        code: Some("BACKEND_ERROR"),
        detail: Some("\u{2028}\\"),
    };
    let full = Ctx {
        message: message.as_ref(),
        connection_id: Some("c0ffee00"),
        response: Some(&response),
        error: Some(&error),
        ..Ctx::default()
    };

    let mut out = Vec::new();
    t.render_reply(&full, rid.as_ref(), &mut out);
    let v = assert_json("render_reply", &out);
    if let (Some(rid), true) = (&rid_value, tv.is_object()) {
        assert_eq!(v.get("request_id"), Some(rid), "request_id is echoed");
    }

    let mut out = Vec::new();
    t.render(&full, &mut out);
    let rendered = assert_json("render", &out);

    // Nothing to resolve: every expression is absent.
    let mut out = Vec::new();
    t.render_reply(&Ctx::default(), rid.as_ref(), &mut out);
    assert_json("render_reply with an empty context", &out);

    let _ = t.render_text(&full);

    // A template without expressions renders as itself (`$${` is the one rewrite).
    if !t.any_expr(&|_| true) && !tv.to_string().contains("$$") {
        assert_eq!(
            rendered, tv,
            "an expression-free template renders unchanged"
        );
    }
}

/// `pathsafe::normalize`: a path it accepts is canonical, and normalizing it again changes nothing.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = pathsafe::normalize(raw) else {
        return;
    };
    let d = &p.decoded;
    assert!(d.starts_with('/'), "{raw:?} → {d:?}: not absolute");
    assert!(
        !d.contains("/../") && !d.ends_with("/.."),
        "{raw:?} → {d:?}: dot-dot segment"
    );
    assert!(
        d.split('/').all(|s| s != "." && s != ".."),
        "{raw:?} → {d:?}: dot segment"
    );
    assert!(!d.contains("//"), "{raw:?} → {d:?}: empty segment");
    assert!(!d.contains('\\'), "{raw:?} → {d:?}: backslash");
    assert!(
        !d.chars().any(char::is_control),
        "{raw:?} → {d:?}: control character"
    );

    let (wire_path, wire_query) = match p.wire.split_once('?') {
        Some((w, q)) => (w, Some(q)),
        None => (p.wire.as_str(), None),
    };
    assert_eq!(
        wire_query,
        raw.split_once('?').map(|(_, q)| q),
        "{raw:?}: query kept as is"
    );
    assert!(
        wire_path.bytes().all(|b| b.is_ascii_graphic()),
        "{raw:?} → wire {wire_path:?}: unencoded byte"
    );
    let again = pathsafe::normalize(wire_path).unwrap_or_else(|e| {
        panic!("{raw:?} → wire {wire_path:?} is refused when normalized again: {e}")
    });
    assert_eq!(
        &again.decoded, d,
        "{raw:?}: normalizing the wire path changes it"
    );
    assert_eq!(
        again.wire, wire_path,
        "{raw:?}: the wire path is not stable"
    );
}

/// Schema file names in the repository's `schemas/`.
fn known_schemas() -> &'static BTreeSet<String> {
    static NAMES: OnceLock<BTreeSet<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        std::fs::read_dir(repo_root().join("schemas"))
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Routes YAML: parse never panics, and a file that parses (naming only the repository's
/// schemas, so that nothing else is read from disk) compiles or is refused without panicking.
pub fn routes_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = repo_root();
    let path = root.join("fuzz.routes.yaml");
    let file = match config::parse(&path, text) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let known = known_schemas();
    let only_known = file.routes.values().all(|r| {
        r.value
            .schema
            .iter()
            .chain(r.value.reply_schemas.iter())
            .all(|s| known.contains(s))
    });
    if !only_known {
        return;
    }
    let loaded = Loaded {
        file,
        path,
        schema_dir: root.join("schemas"),
        text: text.to_owned(),
    };
    if let Ok(c) = snapshot::from_loaded(loaded, &Overrides::default(), runtime()) {
        if let Some(msg) = c.snapshot.policy.connect_message("c0ffee00") {
            assert_json("on_connect message", msg.as_bytes());
        }
        let _ = c.snapshot.table.routes().count();
    }
}

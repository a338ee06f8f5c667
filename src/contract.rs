//! The schema-driven contract: cases generated from the routes and their schemas' examples, run against any live endpoint.
//!
//! A little over 500 lines with its unit tests: case generation, judging and the runner
//! share the case type and are read together.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::route::{DEFAULT_ROUTE, Mutates, Route};
use crate::snapshot::Snapshot as RouteTable;
use crate::validate::CompiledSchema;

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A reply that satisfies one of the route's reply schemas.
    Valid,
    /// An `error` reply whose text names this field; the backend is never called.
    Refused { field: String },
}

/// One message to send and what must come back.
#[derive(Debug, Clone)]
pub struct Case {
    pub route: String,
    pub name: String,
    pub message: Value,
    pub expect: Expect,
    /// Whether the case changes backend state (an offer, a non-GET api call).
    pub mutating: bool,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: Case,
    pub latency: Duration,
    pub failure: Option<String>,
}

/// The type used to reach `$default` in a contract run.
pub const UNKNOWN_TYPE: &str = "contract_check_unknown_type";

/// Signaling offers go first and ICE candidates right after, so they find a session.
fn order(route: &Route) -> u8 {
    match route.kind {
        "signaling" if route.name.contains("offer") => 0,
        "signaling" => 1,
        _ => 2,
    }
}

/// Every case the routes and schemas describe, in run order.
pub fn cases(table: &RouteTable) -> Vec<Case> {
    let mut routes: Vec<&Route> = table.table.routes().collect();
    routes.sort_by_key(|r| (order(r), r.name.to_string()));
    let key = table.table.key.name().trim_start_matches('/').to_owned();
    let mut out = Vec::new();
    for route in routes {
        if &*route.name == DEFAULT_ROUTE {
            let mut msg = json!({});
            set_key(&mut msg, &key, UNKNOWN_TYPE);
            out.push(Case {
                route: route.name.to_string(),
                name: format!("{}#unknown", route.name),
                message: msg,
                expect: Expect::Valid,
                mutating: false,
            });
            continue;
        }
        let Some(schema) = route.schema.as_ref().and_then(|s| table.schemas.get(s)) else {
            continue;
        };
        // A message that only makes sense inside a transfer (it names an upload id) has no
        // standalone valid case; its invalid examples still run.
        let stateful = schema
            .source
            .get("x-contract-stateful")
            .and_then(Value::as_bool)
            == Some(true);
        for (i, ex) in schema.examples().iter().enumerate().filter(|_| !stateful) {
            let mutating = match route.mutates {
                Mutates::Never => false,
                Mutates::Always => true,
                Mutates::ByMethod => is_mutating_api(ex),
            };
            out.push(Case {
                route: route.name.to_string(),
                name: format!("{}#{i}", route.name),
                message: ex.clone(),
                expect: Expect::Valid,
                mutating,
            });
        }
        for (i, bad) in schema.invalid_examples().into_iter().enumerate() {
            out.push(Case {
                route: route.name.to_string(),
                name: format!("{}#invalid{i} ({})", route.name, bad.why),
                message: bad.message,
                expect: Expect::Refused { field: bad.field },
                mutating: false,
            });
        }
    }
    out
}

fn set_key(msg: &mut Value, key: &str, value: &str) {
    let mut cur = msg;
    let segs: Vec<&str> = key.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == segs.len() {
            obj.insert((*seg).to_owned(), Value::from(value));
            return;
        }
        cur = obj.entry((*seg).to_owned()).or_insert_with(|| json!({}));
    }
}

fn is_mutating_api(msg: &Value) -> bool {
    msg.get("path").is_some()
        && !matches!(
            msg.get("method")
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
                .as_deref(),
            None | Some("GET") | Some("HEAD")
        )
}

/// The cases a run asks for, and how many were left out and why.
#[derive(Debug)]
pub struct Selection {
    pub cases: Vec<Case>,
    /// Left out by `--only`.
    pub filtered: usize,
    /// Left out because they change backend state (`--include-mutating` runs them).
    pub mutating_skipped: usize,
}

/// Picks the cases a run asks for: `only` names routes (an unknown name is an error that
/// lists the known ones); mutating cases need `include_mutating`.
pub fn select(
    table: &RouteTable,
    all: Vec<Case>,
    only: &[String],
    include_mutating: bool,
) -> Result<Selection, String> {
    let names: Vec<&str> = table.table.routes().map(|r| &*r.name).collect();
    let unknown: Vec<&str> = only
        .iter()
        .map(String::as_str)
        .filter(|o| !names.contains(o))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "--only names no route: {}; the routes are: {}",
            unknown.join(", "),
            names.join(", ")
        ));
    }
    let total = all.len();
    let wanted: Vec<Case> = all
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.route))
        .collect();
    let filtered = total - wanted.len();
    let before = wanted.len();
    let cases: Vec<Case> = wanted
        .into_iter()
        .filter(|c| include_mutating || !c.mutating)
        .collect();
    Ok(Selection {
        mutating_skipped: before - cases.len(),
        filtered,
        cases,
    })
}

/// Routes whose replies `check` can only check structurally (they name no `reply_schemas`).
pub fn unchecked_routes(table: &RouteTable) -> Vec<String> {
    table
        .table
        .routes()
        .filter(|r| r.reply_schemas.is_empty() && &*r.name != DEFAULT_ROUTE)
        // Only routes whose valid examples `check` sends: a stateful step (a download
        // acknowledgement) has none, and so no reply to check.
        .filter(|r| {
            r.schema
                .as_ref()
                .and_then(|s| table.schemas.get(s))
                .is_some_and(|s| {
                    !s.examples().is_empty()
                        && s.source.get("x-contract-stateful").and_then(Value::as_bool)
                            != Some(true)
                })
        })
        .map(|r| r.name.to_string())
        .collect()
}

/// Checks a reply against what the case expects.
pub fn judge(table: &RouteTable, case: &Case, rid: &str, reply: &Value) -> Result<(), String> {
    if reply.get("request_id").and_then(Value::as_str) != Some(rid) {
        return Err(format!("request_id not echoed: {reply}"));
    }
    let kind = reply.get("type").and_then(Value::as_str).unwrap_or("");
    match &case.expect {
        Expect::Valid => {
            let route = table
                .table
                .route(&case.route)
                .ok_or("route no longer exists")?;
            if kind == "error" && !route.reply_schemas.iter().any(|s| s == "error.json") {
                return Err(format!("error reply: {reply}"));
            }
            // No reply schemas: a reply arrived, echoed request_id and is not an error;
            // that is all that can be said (`check` and `validate` warn about it).
            if route.reply_schemas.is_empty() {
                return Ok(());
            }
            let mut problems = Vec::new();
            for name in &route.reply_schemas {
                let schema = table
                    .schemas
                    .get(name)
                    .ok_or_else(|| format!("{name} not loaded"))?;
                match schema.check(reply) {
                    None => return Ok(()),
                    Some(p) => problems.push(format!("{name}: {p}")),
                }
            }
            Err(format!(
                "reply matches no reply schema ({}): {reply}",
                problems.join(" | ")
            ))
        }
        Expect::Refused { field } => {
            if kind != "error" {
                return Err(format!("expected an error reply, got {reply}"));
            }
            let text = reply.get("error").and_then(Value::as_str).unwrap_or("");
            if !text.contains(field.as_str()) {
                return Err(format!("error does not name field {field:?}: {text:?}"));
            }
            error_schema_check(table, reply)
        }
    }
}

/// Validates a message by its type against `<type>.json` from the schemas directory, when there is one.
pub fn check_unsolicited(table: &RouteTable, msg: &Value) -> Result<(), String> {
    let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
    let file = table.meta.schema_dir.join(format!("{kind}.json"));
    if !file.is_file() {
        return Ok(());
    }
    let schema = CompiledSchema::load(&file)?;
    match schema.check(msg) {
        None => Ok(()),
        Some(p) => Err(format!("{kind}.json: {p}: {msg}")),
    }
}

fn error_schema_check(table: &RouteTable, reply: &Value) -> Result<(), String> {
    check_unsolicited(table, reply)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection to a live endpoint, running cases one after another.
pub struct Runner<'a> {
    table: &'a RouteTable,
    ws: Socket,
    stash: HashMap<String, Value>,
    sent: usize,
}

impl<'a> Runner<'a> {
    /// Connects, and checks the `ready` message against `ready.json`.
    pub async fn connect(table: &'a RouteTable, url: &str) -> Result<Runner<'a>, String> {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| format!("connecting to {} timed out", redact(url)))?
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
        let ready = next_json(&mut ws, Duration::from_secs(60)).await?;
        if ready.get("type").and_then(Value::as_str) != Some("ready") {
            return Err(format!("first message is not ready: {ready}"));
        }
        check_unsolicited(table, &ready).map_err(|e| format!("ready: {e}"))?;
        Ok(Runner {
            table,
            ws,
            stash: HashMap::new(),
            sent: 0,
        })
    }

    /// Sends one case and judges its reply.
    pub async fn run_case(&mut self, case: Case) -> CaseResult {
        self.sent += 1;
        let rid = format!("contract-{}", self.sent);
        let mut msg = case.message.clone();
        if let Some(o) = msg.as_object_mut() {
            o.insert("request_id".to_owned(), Value::from(rid.as_str()));
        }
        let started = Instant::now();
        let outcome = self.exchange(&rid, &msg).await;
        let latency = started.elapsed();
        let failure = match outcome {
            Ok(reply) => judge(self.table, &case, &rid, &reply).err(),
            Err(e) => Some(e),
        };
        CaseResult {
            case,
            latency,
            failure,
        }
    }

    async fn exchange(&mut self, rid: &str, msg: &Value) -> Result<Value, String> {
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(v) = self.stash.remove(rid) {
                return Ok(v);
            }
            let v = next_json(&mut self.ws, Duration::from_secs(330)).await?;
            match v.get("request_id").and_then(Value::as_str) {
                Some(r) if r == rid => return Ok(v),
                Some(r) => {
                    self.stash.insert(r.to_owned(), v);
                }
                // Unsolicited messages (logs) must satisfy their own schema too.
                None => check_unsolicited(self.table, &v)?,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Runs `cases` in order over one connection to `url`.
pub async fn run(
    table: &RouteTable,
    url: &str,
    cases: Vec<Case>,
) -> Result<Vec<CaseResult>, String> {
    let mut runner = Runner::connect(table, url).await?;
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        results.push(runner.run_case(case).await);
    }
    runner.close().await;
    Ok(results)
}

async fn next_json<S>(ws: &mut S, timeout: Duration) -> Result<Value, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| format!("no reply within {timeout:?}"))?
            .ok_or("connection closed")?
            .map_err(|e| e.to_string())?;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| format!("reply is not JSON: {e}"));
            }
            Message::Close(f) => return Err(format!("connection closed: {f:?}")),
            _ => continue,
        }
    }
}

/// The URL without its query (which may carry a token).
pub fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Adds the `fal_jwt_token` query parameter.
pub fn with_token(url: &str, token: Option<&str>) -> String {
    match token {
        None => url.to_owned(),
        Some(t) => {
            let enc: String =
                percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)
                    .collect();
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}fal_jwt_token={enc}")
        }
    }
}

/// An AsyncAPI 3.0 document of the WebSocket API, from the routes and schemas.
pub fn asyncapi(table: &RouteTable) -> Value {
    let mut messages = serde_json::Map::new();
    let mut operations = serde_json::Map::new();
    let mut channel_messages = serde_json::Map::new();
    let mut add_message = |name: &str, schema: Option<&Arc<CompiledSchema>>, summary: String| {
        let mut m = json!({"name": name, "summary": summary, "contentType": "application/json"});
        if let Some(s) = schema {
            let mut payload = s.source.clone();
            if let Some(o) = payload.as_object_mut() {
                o.remove("$id");
                o.remove("x-invalid-examples");
            }
            if let Some(o) = m.as_object_mut() {
                o.insert("payload".to_owned(), payload);
                o.insert("title".to_owned(), Value::from(s.title()));
            }
        }
        messages.insert(name.to_owned(), m);
        channel_messages.insert(
            name.to_owned(),
            json!({"$ref": format!("#/components/messages/{name}")}),
        );
    };
    for route in table.table.routes() {
        let name = if &*route.name == DEFAULT_ROUTE {
            "unknown".to_owned()
        } else {
            route.name.to_string()
        };
        let schema = route.schema.as_ref().and_then(|s| table.schemas.get(s));
        add_message(
            &name,
            schema,
            format!("`{}` ({} route)", route.name, route.kind),
        );
        let mut replies = Vec::new();
        for r in &route.reply_schemas {
            let rname = r.trim_end_matches(".json").to_owned();
            add_message(
                &rname,
                table.schemas.get(r),
                format!("reply of `{}`", route.name),
            );
            replies.push(json!({"$ref": format!("#/channels/ws/messages/{rname}")}));
        }
        let mut op = json!({
            "action": "receive",
            "title": format!("{} ({})", route.name, route.kind),
            "channel": {"$ref": "#/channels/ws"},
            "messages": [{"$ref": format!("#/channels/ws/messages/{name}")}],
        });
        if let (false, Some(o)) = (replies.is_empty(), op.as_object_mut()) {
            o.insert(
                "reply".to_owned(),
                json!({"channel": {"$ref": "#/channels/ws"}, "messages": replies}),
            );
        }
        operations.insert(name, op);
    }
    // Messages the router sends on its own: ready on connect, errors, pushed logs.
    for own in ["ready", "error", "logs"] {
        let file = table.meta.schema_dir.join(format!("{own}.json"));
        let schema = CompiledSchema::load(&file).ok().map(Arc::new);
        add_message(own, schema.as_ref(), format!("`{own}`, sent by the router"));
        operations.insert(
            format!("send_{own}"),
            json!({"action": "send", "channel": {"$ref": "#/channels/ws"}, "messages": [{"$ref": format!("#/channels/ws/messages/{own}")}]}),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "scope-router WebSocket API",
            "version": table.meta.version,
            "description": format!("Generated from {} by `scope-router asyncapi`. Every message is a JSON text frame; a message's `request_id` is echoed in its reply.", file_name(&table.meta.path)),
        },
        "servers": {
            "router": {"host": table.meta.listen, "protocol": "ws", "pathname": "/ws"},
        },
        "channels": {
            "ws": {"address": "/ws", "title": "The one WebSocket of a browser", "messages": channel_messages},
        },
        "operations": operations,
        "components": {"messages": messages},
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutating_api_calls() {
        assert!(!is_mutating_api(
            &json!({"type": "api", "method": "GET", "path": "/x"})
        ));
        assert!(!is_mutating_api(&json!({"type": "api", "path": "/x"})));
        assert!(is_mutating_api(
            &json!({"type": "api", "method": "post", "path": "/x"})
        ));
    }

    #[test]
    fn route_key_by_pointer() {
        let mut v = json!({});
        set_key(&mut v, "meta/kind", "x");
        assert_eq!(v, json!({"meta": {"kind": "x"}}));
    }

    #[test]
    fn token_goes_in_the_query_and_never_in_messages() {
        assert_eq!(
            with_token("wss://h/ws", Some("a b")),
            "wss://h/ws?fal_jwt_token=a%20b"
        );
        assert_eq!(redact("wss://h/ws?fal_jwt_token=secret"), "wss://h/ws");
    }
}

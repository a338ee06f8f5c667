//! Criterion micro-benchmark of the router's per-message hot path (decode → route → validate → template), no sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//!
//! Run with `cargo bench --bench hot_path` (about a minute). Each group isolates one step so a
//! regression points at its stage:
//! - `decode`: `envelope::decode` of the text frame;
//! - `dispatch`: the whole compiled route stack (metrics → validate → gate → handler) for messages
//!   answered without the backend: `ping`, `ping_noschema` and `icecandidate` with
//!   `candidate: null` (acknowledged locally once the connection has a session);
//! - `validate`: `CompiledSchema::check` alone, for each hot schema;
//! - `api`: what an `api` message costs the router apart from the HTTP call: decode, validate,
//!   path normalization and rendering the reply template over a backend body;
//! - `write`: writing replies as the session does, through tokio-tungstenite with the router's
//!   64 KiB write buffer over a socket that takes every byte: one reply fed and flushed, and
//!   three ready frames fed then flushed once (one write) against three sends (three writes).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use scope_router::conn::ConnHandle;
use scope_router::envelope::{Answer, Request, decode};
use scope_router::handler::signaling::Sessions;
use scope_router::publish::Readiness;
use scope_router::snapshot::{self, Overrides, Runtime, Snapshot};
use scope_router::template::{Ctx, ResponseVars, Scope, Template};
use scope_router::validate::CompiledSchema;
use serde_json::json;

const PING: &str = r#"{"type":"ping","request_id":42}"#;
const PING_NOSCHEMA: &str = r#"{"type":"ping_noschema","request_id":42}"#;
const API_GET: &str =
    r#"{"type":"api","method":"GET","path":"/api/v1/pipeline/status","request_id":42}"#;
const API_POST: &str = r#"{"type":"api","method":"POST","path":"/api/v1/models/download","body":{"pipeline_id":"passthrough"},"request_id":42}"#;
const ICE: &str = r#"{"type":"icecandidate","candidate":{"candidate":"candidate:1 1 UDP 2122252543 192.0.2.10 54400 typ host","sdpMid":"0","sdpMLineIndex":0},"request_id":42}"#;
const ICE_END: &str = r#"{"type":"icecandidate","candidate":null,"request_id":42}"#;
/// What mock-scope answers to `GET /api/v1/pipeline/status` once a pipeline is loaded.
const STATUS_BODY: &[u8] = br#"{"status":"loaded","pipeline_id":"passthrough","load_params":{"height":512,"width":512,"seed":42},"connection_id":"1a2b3c4d"}"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The benchmark's routes (`benches/routes.yaml`: the default routes plus `ping_noschema`),
/// compiled as the router compiles them, with the Prometheus recorder installed so the
/// per-route metrics cost what they cost in production.
fn table() -> Snapshot {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    let rt = Runtime::standalone(Readiness::new(true, true, "healthy"));
    snapshot::load(
        &repo().join("benches/routes.yaml"),
        &Overrides::default(),
        &rt,
    )
    .unwrap()
    .snapshot
}

fn answer_text(answer: Answer) -> String {
    match answer {
        Answer::Reply(r) => r.text,
        Answer::Streamed => String::new(),
    }
}

fn schema(name: &str) -> CompiledSchema {
    CompiledSchema::load(&repo().join("schemas").join(name)).unwrap()
}

fn request(text: &str, conn: &Arc<ConnHandle>) -> Request {
    let (msg, request_id) = decode(text).unwrap();
    Request {
        msg,
        request_id,
        conn: conn.clone(),
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, text) in [("ping", PING), ("api_get", API_GET), ("icecandidate", ICE)] {
        g.bench_function(name, |b| b.iter(|| decode(black_box(text)).unwrap()));
    }
    g.finish();
}

fn bench_dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let table = table();
    let conn = ConnHandle::new("1a2b3c4d");
    conn.state::<Sessions>()
        .add("0123456789abcdef0123456789abcdef");
    let mut g = c.benchmark_group("dispatch");
    for (name, text, expect) in [
        ("ping", PING, "pong"),
        ("ping_noschema", PING_NOSCHEMA, "pong"),
        ("icecandidate_end", ICE_END, "end_of_candidates"),
    ] {
        // The reply is what a client would get, so the bench measures the real path.
        let reply = answer_text(rt.block_on(table.table.dispatch(request(text, &conn))));
        assert!(reply.contains(expect), "{name}: {reply}");
        // decode → route → validate → handler → template, as the session loop runs it.
        g.bench_function(name, |b| {
            b.iter(|| {
                let (msg, request_id) = decode(black_box(text)).unwrap();
                let req = Request {
                    msg,
                    request_id,
                    conn: conn.clone(),
                };
                rt.block_on(table.table.dispatch(req))
            });
        });
    }
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate");
    for (name, file, text) in [
        ("ping", "ping.json", PING),
        ("api_get", "api.json", API_GET),
        ("api_post", "api.json", API_POST),
        ("icecandidate", "icecandidate.json", ICE),
    ] {
        let s = schema(file);
        let (msg, _) = decode(text).unwrap();
        assert!(s.check(&msg).is_none(), "{name} must be valid");
        g.bench_function(name, |b| b.iter(|| s.check(black_box(&msg))));
    }
    g.finish();
}

fn bench_api(c: &mut Criterion) {
    let api = schema("api.json");
    let conn = ConnHandle::new("1a2b3c4d");
    // The default `api` route's reply template.
    let reply = Template::compile_reply(
        &json!({ "type": "api_response", "status": "${response.status}", "data": "${response.json}" }),
        Scope::MESSAGE.with(Scope::CONNECTION).with(Scope::RESPONSE),
    )
    .unwrap();
    let render = |req: &Request, out: &mut Vec<u8>| {
        let rv = ResponseVars {
            status: 200,
            body: STATUS_BODY,
            content_type: "application/json",
            parsed: None,
        };
        let ctx = Ctx {
            message: Some(&req.msg),
            connection_id: Some(&req.conn.id),
            response: Some(&rv),
            ..Ctx::default()
        };
        reply.render_reply(&ctx, req.request_id.as_ref(), out);
    };
    let mut out = Vec::new();
    render(&request(API_GET, &conn), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""data":{"status":"loaded""#), "{text}");

    let mut g = c.benchmark_group("api");
    g.bench_function("render_reply", |b| {
        let req = request(API_GET, &conn);
        b.iter_batched_ref(
            || Vec::with_capacity(256),
            |out| render(black_box(&req), out),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("normalize_path", |b| {
        b.iter(|| scope_router::pathsafe::normalize(black_box("/api/v1/pipeline/status")).unwrap());
    });
    // Everything but the backend round trip: decode, validate, normalize, render.
    g.bench_function("decode_validate_normalize_render", |b| {
        b.iter(|| {
            let req = request(black_box(API_GET), &conn);
            assert!(api.check(&req.msg).is_none());
            let path = req.msg.get("path").and_then(|p| p.as_str()).unwrap_or("/");
            let safe = scope_router::pathsafe::normalize(path).unwrap();
            let mut out = Vec::with_capacity(STATUS_BODY.len() + 96);
            render(&req, &mut out);
            (safe, out)
        });
    });
    g.finish();
}

/// A socket that takes every write at once and never has anything to read; it counts writes.
#[derive(Default)]
struct NullSocket {
    writes: u64,
}

impl tokio::io::AsyncRead for NullSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for NullSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes += 1;
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn bench_write(c: &mut Criterion) {
    use futures_util::SinkExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The `api` reply a client gets for `GET /api/v1/pipeline/status` (about 200 bytes).
    let reply = Utf8Bytes::from(format!(
        r#"{{"type":"api_response","request_id":42,"status":200,"data":{}}}"#,
        std::str::from_utf8(STATUS_BODY).unwrap()
    ));
    // The router's socket settings (server.rs: 8 KiB read buffer, 64 KiB write buffer).
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024);
    let mut ws = rt.block_on(WebSocketStream::from_raw_socket(
        NullSocket::default(),
        Role::Server,
        Some(config),
    ));
    let mut g = c.benchmark_group("write");
    g.bench_function("reply_feed_flush", |b| {
        b.iter(|| {
            rt.block_on(async {
                ws.feed(Message::Text(reply.clone())).await.unwrap();
                ws.flush().await.unwrap();
            });
        });
    });
    g.bench_function("three_frames_one_flush", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..3 {
                    ws.feed(Message::Text(reply.clone())).await.unwrap();
                }
                ws.flush().await.unwrap();
            });
        });
    });
    g.bench_function("three_frames_three_sends", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..3 {
                    ws.send(Message::Text(reply.clone())).await.unwrap();
                }
            });
        });
    });
    g.finish();
    // One write per flush, whatever was fed before it: the mechanism the session relies on.
    let before = ws.get_ref().writes;
    rt.block_on(async {
        for _ in 0..3 {
            ws.feed(Message::Text(reply.clone())).await.unwrap();
        }
        ws.flush().await.unwrap();
    });
    assert_eq!(
        ws.get_ref().writes - before,
        1,
        "three fed frames, one write"
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = bench_decode, bench_dispatch, bench_validate, bench_api, bench_write
}
criterion_main!(hot_path);

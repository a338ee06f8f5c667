//! `loadgen transfer`: one large transfer at a time (a base64 upload in one message, a chunked upload, a chunked download) through the router, or the same bytes straight to the backend; MB/s, per-transfer latency and the router's peak RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_tungstenite::tungstenite::Message;

use super::{
    HIST_HIGH_NS, HIST_LOW_NS, REPLY_TIMEOUT, Target, Ws, cpu_seconds, is_logs, next_text,
    parse_cpu_pid, print_line, round2, rss_kib, ws_connect,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// `api` POST `/api/v1/assets` with the file as `_base64_content` in one message; over
    /// HTTP, a POST of the raw bytes.
    #[value(name = "b64-upload")]
    B64Upload,
    /// `upload_start`, binary chunks within the window, `upload_finish`; over HTTP, a POST of
    /// the raw bytes.
    #[value(name = "chunked-upload")]
    ChunkedUpload,
    /// `api` GET `/api/v1/mock/binary?size=N` with `_chunked` and `_binary`, every chunk
    /// acknowledged; over HTTP, the same GET read whole.
    #[value(name = "download")]
    Download,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::B64Upload => "b64-upload",
            Kind::ChunkedUpload => "chunked-upload",
            Kind::Download => "download",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// `ws://host:port/ws` through the router, or `http://host:port` straight to the backend.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Bytes per transfer.
    #[arg(long)]
    size: usize,
    /// Measured time; at least `--min-runs` transfers are made whatever it is.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 3)]
    min_runs: u64,
    /// Unmeasured transfers first.
    #[arg(long, default_value_t = 1)]
    warmup_runs: u64,
    /// Another process's CPU time over the measured transfers, as `NAME=PID` (repeatable).
    #[arg(long = "cpu-pid", value_name = "NAME=PID", value_parser = parse_cpu_pid)]
    cpu_pids: Vec<(String, u32)>,
    /// Sample this process's RSS every 5 ms during the measured transfers; report the peak.
    #[arg(long)]
    rss_pid: Option<u32>,
    /// Row name, copied into the output line.
    #[arg(long, default_value = "")]
    row: String,
    /// Configuration label, copied into the output line.
    #[arg(long, default_value = "")]
    config: String,
    #[arg(long, default_value_t = 0)]
    repeat: u32,
}

/// The file every transfer moves: a byte pattern, and its sha256.
struct File {
    bytes: Bytes,
    sha256: String,
    /// `_base64_content` message of the base64 upload, built once.
    b64_message: Option<Message>,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn run(args: TransferArgs) -> Result<()> {
    let target = Target::parse(&args.url)?;
    let ws = args.url.starts_with("ws://");
    let data: Vec<u8> = (0..args.size).map(|i| (i * 31 % 251) as u8).collect();
    let sha256 = hex(&sha2::Sha256::digest(&data));
    let b64_message = (ws && args.kind == Kind::B64Upload).then(|| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        Message::text(format!(
            r#"{{"type":"api","method":"POST","path":"/api/v1/assets?filename=bench-b64.png","body":{{"_base64_content":"{b64}","_content_type":"image/png"}},"request_id":"b"}}"#
        ))
    });
    let file = File {
        bytes: Bytes::from(data),
        sha256,
        b64_message,
    };
    let mut link = if ws {
        Link::Ws(Box::new(ws_connect(&target).await?))
    } else {
        let tcp = target.tcp().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Link::Http(sender, target.clone())
    };
    for _ in 0..args.warmup_runs {
        link.transfer(args.kind, &file).await?;
    }

    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = args.rss_pid.map(|pid| {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let mut watched: Vec<(String, Option<u32>)> = vec![("loadgen".to_owned(), None)];
    watched.extend(args.cpu_pids.iter().map(|(n, p)| (n.clone(), Some(*p))));
    let cpu_from: Vec<Option<f64>> = watched.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let mut hist = Histogram::<u32>::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3)
        .context("cannot create a histogram")?;
    let started = Instant::now();
    let mut runs = 0u64;
    while runs < args.min_runs || started.elapsed() < args.duration {
        let t = Instant::now();
        link.transfer(args.kind, &file).await?;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ = hist.record(ns.clamp(HIST_LOW_NS, HIST_HIGH_NS));
        runs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_to: Vec<Option<f64>> = watched.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    sampling.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mut cpu_per = serde_json::Map::new();
    for ((name, _), (from, to)) in watched.iter().zip(cpu_from.iter().zip(&cpu_to)) {
        let v = match (from, to) {
            (Some(a), Some(b)) => Value::from(round2((b - a) * 1e6 / runs as f64)),
            _ => Value::Null,
        };
        cpu_per.insert(name.clone(), v);
    }
    let us = |q: f64| round2(hist.value_at_quantile(q) as f64 / 1000.0);
    let line = json!({
        "row": args.row,
        "config": args.config,
        "repeat": args.repeat,
        "mode": if ws { "ws" } else { "http" },
        "mix": args.kind.name(),
        "kind": "transfer",
        "conns": 1,
        "bytes": args.size,
        "msgs": runs,
        "errors": 0,
        "worker_failures": 0,
        "duration_s": round2(secs),
        "throughput": round2(runs as f64 / secs),
        "mb_per_s": round2(args.size as f64 * runs as f64 / secs / 1e6),
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": round2(hist.max() as f64 / 1000.0),
        "cpu_us_per_msg": cpu_per,
        "rss_peak_kib": args.rss_pid.map(|_| peak.load(Ordering::Relaxed)),
    });
    print_line(&line.to_string());
    Ok(())
}

enum Link {
    Ws(Box<Ws>),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>, Target),
}

impl Link {
    async fn transfer(&mut self, kind: Kind, file: &File) -> Result<()> {
        let done = async {
            match self {
                Link::Ws(ws) => match kind {
                    Kind::B64Upload => ws_b64_upload(ws, file).await,
                    Kind::ChunkedUpload => ws_chunked_upload(ws, file).await,
                    Kind::Download => ws_download(ws, file.bytes.len()).await,
                },
                Link::Http(sender, target) => {
                    let (method, path, body) = match kind {
                        Kind::B64Upload | Kind::ChunkedUpload => (
                            Method::POST,
                            "/api/v1/assets?filename=bench-direct.png".to_owned(),
                            file.bytes.clone(),
                        ),
                        Kind::Download => (
                            Method::GET,
                            format!("/api/v1/mock/binary?size={}", file.bytes.len()),
                            Bytes::new(),
                        ),
                    };
                    let req = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(HOST, &*target.authority)
                        .header(CONTENT_TYPE, "image/png")
                        .body(Full::new(body))
                        .context("building the request")?;
                    sender.ready().await.context("connection closed")?;
                    let resp = sender.send_request(req).await.context("HTTP request")?;
                    let status = resp.status();
                    let mut body = resp.into_body();
                    let mut got = 0usize;
                    while let Some(frame) = body.frame().await {
                        if let Ok(d) = frame.context("reading the body")?.into_data() {
                            got += d.len();
                        }
                    }
                    if status != StatusCode::OK {
                        bail!("backend answered {status}");
                    }
                    if kind == Kind::Download && got != file.bytes.len() {
                        bail!("downloaded {got} of {} bytes", file.bytes.len());
                    }
                    Ok(())
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, done)
            .await
            .map_err(|_| anyhow!("no transfer within {REPLY_TIMEOUT:?}"))?
    }
}

fn ok_api_response(text: &str) -> Result<()> {
    if text.contains(r#""api_response""#) && text.contains(r#""status":200"#) {
        Ok(())
    } else {
        bail!(
            "unexpected reply: {}",
            text.chars().take(300).collect::<String>()
        )
    }
}

async fn ws_b64_upload(ws: &mut Ws, file: &File) -> Result<()> {
    let msg = file
        .b64_message
        .clone()
        .ok_or_else(|| anyhow!("no base64 message"))?;
    ws.send(msg).await.context("sending the upload")?;
    ok_api_response(next_text(ws).await?.as_str())
}

async fn ws_chunked_upload(ws: &mut Ws, file: &File) -> Result<()> {
    let start = json!({
        "type": "upload_start", "request_id": "u", "method": "POST",
        "path": "/api/v1/assets?filename=bench-chunked.mp4", "content_type": "video/mp4",
        "size": file.bytes.len(), "sha256": file.sha256,
    });
    ws.send(Message::text(start.to_string())).await?;
    let ready: Value = serde_json::from_str(next_text(ws).await?.as_str())?;
    let field = |k: &str| ready.get(k).and_then(Value::as_u64);
    let (Some(id), Some(chunk), Some(chunks), Some(window)) = (
        ready.get("upload_id").and_then(Value::as_str),
        field("chunk_size"),
        field("chunks"),
        field("window"),
    ) else {
        bail!("expected upload_ready, got {ready}");
    };
    let (chunk, window) = (usize::try_from(chunk)?.max(1), window.max(1));
    let mut sent = 0u64;
    let mut acked = 0u64;
    while acked < chunks {
        while sent < chunks && sent - acked < window {
            let from = usize::try_from(sent)? * chunk;
            let part = file
                .bytes
                .get(from..(from + chunk).min(file.bytes.len()))
                .ok_or_else(|| anyhow!("chunk {sent} out of range"))?;
            let mut frame = Vec::with_capacity(37 + part.len());
            frame.push(b'U');
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(&u32::try_from(sent)?.to_be_bytes());
            frame.extend_from_slice(part);
            ws.feed(Message::binary(frame)).await?;
            sent += 1;
        }
        ws.flush().await?;
        let ack = next_text(ws).await?;
        if !ack.as_str().contains(r#""upload_ack""#) {
            bail!("expected upload_ack, got {}", ack.as_str());
        }
        acked += 1;
    }
    let finish = json!({"type": "upload_finish", "request_id": "f", "upload_id": id});
    ws.send(Message::text(finish.to_string())).await?;
    ok_api_response(next_text(ws).await?.as_str())
}

async fn ws_download(ws: &mut Ws, size: usize) -> Result<()> {
    let ask = json!({
        "type": "api", "request_id": "d", "method": "GET",
        "path": format!("/api/v1/mock/binary?size={size}"), "_chunked": true, "_binary": true,
    });
    ws.send(Message::text(ask.to_string())).await?;
    let header: Value = serde_json::from_str(next_text(ws).await?.as_str())?;
    let Some(id) = header.get("download_id").and_then(Value::as_str) else {
        bail!("expected a chunked download header, got {header}");
    };
    let id = id.to_owned();
    let mut got = 0usize;
    loop {
        let frame = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no chunk within {REPLY_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("connection closed"))??;
        match frame {
            Message::Binary(b) => {
                let seq = b
                    .get(33..37)
                    .and_then(|s| <[u8; 4]>::try_from(s).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| anyhow!("short download chunk"))?;
                got += b.len().saturating_sub(37);
                let ack = json!({"type": "download_ack", "download_id": id, "seq": seq});
                ws.send(Message::text(ack.to_string())).await?;
            }
            Message::Text(t) if is_logs(t.as_str()) => {}
            Message::Text(t) if t.as_str().contains(r#""download_done""#) => break,
            Message::Text(t) => bail!("download failed: {}", t.as_str()),
            Message::Close(c) => bail!("server closed the connection: {c:?}"),
            _ => {}
        }
    }
    if got != size {
        bail!("downloaded {got} of {size} bytes");
    }
    Ok(())
}

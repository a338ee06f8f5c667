//! `tunnel-bench`: one Livepeer orchestrator in a closed loop of `ping`/`pong` against a runner's `/ws`, direct or through scope-router's tunnel; prints one JSON line.
//!
//! `tunnel-bench --url ws://… --duration 5s --warmup 1s --label direct`: connects, reads
//! `ready`, sends the job info, reads `started` and the two `create_channels`, then sends
//! `{"type":"ping","request_id":N,"timestamp":T}` and waits for its `pong`, again and again.
//! Prints `{"label","msgs","throughput","p50_us","p90_us","p99_us","p999_us"}`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    duration: Duration,
    warmup: Duration,
    label: String,
}

fn parse_secs(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    v.strip_suffix('s')
        .unwrap_or(v)
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        label: "run".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--duration" => a.duration = parse_secs(&value).ok_or("bad --duration")?,
            "--warmup" => a.warmup = parse_secs(&value).ok_or("bad --warmup")?,
            "--label" => a.label = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.url.is_empty() {
        return Err("--url is required".to_owned());
    }
    Ok(a)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Socket) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".to_owned()),
        }
    }
}

async fn bench(a: &Args) -> Result<serde_json::Value, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(a.url.as_str())
        .await
        .map_err(|e| format!("connect {}: {e}", a.url))?;
    let ready = next_text(&mut ws).await?;
    if !ready.contains(r#""ready""#) {
        return Err(format!("first frame is not ready: {ready}"));
    }
    let job = r#"{"manifest_id":"bench","control_url":"http://o.invalid/c","events_url":"http://o.invalid/e","params":{"daydream_user_id":"bench"}}"#;
    ws.send(Message::text(job))
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..3 {
        next_text(&mut ws).await?;
    }
    let start = Instant::now();
    let (from, end) = (start + a.warmup, start + a.warmup + a.duration);
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut n: u64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        n += 1;
        let ping = format!(r#"{{"type":"ping","request_id":{n},"timestamp":{n}}}"#);
        ws.send(Message::text(ping))
            .await
            .map_err(|e| e.to_string())?;
        let pong = next_text(&mut ws).await?;
        if !pong.contains(r#""pong""#) {
            return Err(format!("expected a pong, got {pong}"));
        }
        if sent >= from {
            lat_ns.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    let _ = ws.close(None).await;
    lat_ns.sort_unstable();
    let q = |p: f64| -> f64 {
        if lat_ns.is_empty() {
            return 0.0;
        }
        let i = ((lat_ns.len() as f64 - 1.0) * p).round() as usize;
        let v = lat_ns.get(i).copied().unwrap_or_default();
        (v as f64 / 10.0).round() / 100.0
    };
    let msgs = lat_ns.len() as f64;
    Ok(serde_json::json!({
        "label": a.label,
        "msgs": lat_ns.len(),
        "throughput": (msgs / a.duration.as_secs_f64()).round(),
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match args() {
        Ok(a) => bench(&a).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tunnel-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

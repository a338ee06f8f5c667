//! What one connection can make the router hold through backend answers and per-connection
//! objects: streamed downloads, endless streams, response caps, the response budget, the
//! backend connection cap, and the caps on downloads, uploads and WebRTC sessions.
//!
//! Memory and descriptor figures come from `/proc` of the router; each test asserts a bound.
//! Run one with `--nocapture` to see its figures (`cargo test --test hostile_streams -- --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

/// Descriptors of a process open on upload `.part` files.
fn part_files_open(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .count()
}

/// Established TCP connections whose remote end is `port` on this machine (the router's
/// connections to the mock, when `port` is the mock's).
fn connections_to(port: u16) -> usize {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&want) && f[3] == "01"
        })
        .count()
}

/// Receives a binary-frame download to its `download_done`, acknowledging every chunk; returns
/// the byte count, their sha256 and the done message.
async fn receive_binary(ws: &mut Ws, header: &Value) -> (u64, String, Value) {
    let id = header["download_id"].as_str().unwrap().to_owned();
    let mut hasher = Sha256::new();
    let (mut total, mut seq) = (0u64, 0u64);
    loop {
        let msg = tokio::time::timeout(WAIT, ws.inner.next())
            .await
            .expect("a download frame")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Binary(b) => {
                assert_eq!(b[0], b'D');
                assert_eq!(&b[1..33], id.as_bytes());
                let got = u32::from_be_bytes(b[33..37].try_into().unwrap()) as u64;
                assert_eq!(got, seq, "chunks arrive in order");
                hasher.update(&b[37..]);
                total += (b.len() - 37) as u64;
                ws.send(&json!({"type": "download_ack", "download_id": id, "seq": seq}))
                    .await;
                seq += 1;
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "download_done", "{v}");
                assert_eq!(v["chunks"], seq, "{v}");
                let digest: String = hasher
                    .finalize()
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                return (total, digest, v);
            }
            _ => {}
        }
    }
}

/// Reads `n` chunks of a download without acknowledging any beyond them.
async fn read_chunks(ws: &mut Ws, n: usize) {
    let mut seen = 0;
    while seen < n {
        let msg = tokio::time::timeout(WAIT, ws.inner.next())
            .await
            .expect("a chunk")
            .expect("socket open")
            .expect("frame");
        if matches!(msg, Message::Binary(_)) {
            seen += 1;
        }
    }
}

#[tokio::test]
async fn a_200_mib_recording_streams_through_a_few_chunks_of_memory() {
    let (_m, r) = stack();
    let pid = r.child.id();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let before = rss_kib(pid);
    let size = 200 * MIB;
    let header = ws
        .call("rec", json!({"type": "api", "method": "GET", "path": format!("/api/v1/recordings/s1?size={size}"), "_chunked": true, "_binary": true}))
        .await;
    assert_eq!(header["_chunked"], true, "{header}");
    assert_eq!(header["_content_length"], size, "{header}");
    assert_eq!(header["chunks"], size.div_ceil(262_144), "{header}");
    assert!(
        header["sha256"].is_null(),
        "sent in download_done: {header}"
    );
    let (total, sha, done) = receive_binary(&mut ws, &header).await;
    assert_eq!(total, size);
    assert_eq!(done["_content_length"], size);
    assert_eq!(done["sha256"], sha.as_str(), "{done}");
    assert_eq!(sha, sha256_hex(&pattern(size as usize)));
    let peak = peak_rss_kib(pid);
    eprintln!(
        "200 MiB chunked download: router RSS {} MiB before, peak {} MiB",
        before / 1024,
        peak / 1024
    );
    // The window is 8 chunks of 256 KiB: the body is never held whole (that alone is
    // 200 MiB); what it adds is a small multiple of the window.
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "router RSS {before} KiB before, peak {peak} KiB"
    );
}

#[tokio::test]
async fn endless_streams_are_refused_as_replies_and_paced_as_downloads() {
    let (m, r) = stack();
    let pid = r.child.id();
    let mut ws = Ws::connect(&r.ws_url()).await;
    for path in [
        "/api/v1/mock/stream",
        "/api/v1/mock/stream?type=multipart/x-mixed-replace;boundary=frame",
        "/api/v1/session/output.ts",
    ] {
        let v = ws.call("s", api("GET", path)).await;
        assert_eq!(v["status"], 502, "{path}: {v}");
        assert_eq!(v["code"], "STREAMING_RESPONSE", "{path}: {v}");
        assert!(error_text(&v).contains("_chunked"), "{path}: {v}");
    }
    // Seven more connections (all the default `max_connections` allows) each start an endless
    // download and stop acknowledging: each holds its window, not the stream.
    let mut readers = Vec::new();
    for i in 0..7 {
        let mut c = Ws::connect(&r.ws_url()).await;
        let h = c
            .call(&format!("ts{i}"), json!({"type": "api", "method": "GET", "path": "/api/v1/session/output.ts", "_chunked": true, "_binary": true}))
            .await;
        assert_eq!(h["_chunked"], true, "{h}");
        assert!(
            h["_content_length"].is_null() && h["chunks"].is_null(),
            "{h}"
        );
        read_chunks(&mut c, 8).await;
        readers.push(c);
    }
    let peak = peak_rss_kib(pid);
    let fds_busy = open_fds(pid);
    eprintln!(
        "7 endless downloads, unacknowledged: router peak RSS {} MiB, {fds_busy} fds",
        peak / 1024
    );
    assert!(peak < 96 * 1024, "router peak RSS {peak} KiB");
    // The connections end: so do their downloads and their backend streams.
    for c in readers {
        c.close().await;
    }
    let port = m.addr.port();
    eventually("the router drops its backend streams", async || {
        (connections_to(port) <= 2).then_some(())
    })
    .await;
    ws.assert_open().await;
}

#[tokio::test]
async fn a_connection_has_at_most_four_downloads_and_they_end_with_it() {
    let (m, r) = stack();
    let pid = r.child.id();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let base_fds = open_fds(pid);
    for i in 0..4 {
        let h = ws
            .call(&format!("d{i}"), json!({"type": "api", "method": "GET", "path": "/api/v1/session/output.ts", "_chunked": true, "_binary": true}))
            .await;
        assert_eq!(h["_chunked"], true, "{h}");
    }
    let v = ws
        .call("d4", json!({"type": "api", "method": "GET", "path": "/api/v1/session/output.ts", "_chunked": true, "_binary": true}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "TOO_MANY_DOWNLOADS", "{v}");
    assert_eq!(v["request_id"], "d4", "{v}");
    assert!(error_text(&v).contains("at most 4"), "{v}");
    // The attack that took the router to 944 MiB: 200 recordings of 32 MiB asked in chunks,
    // never acknowledged.
    let mut refused = 0;
    for i in 0..200 {
        let v = ws
            .call(&format!("r{i}"), json!({"type": "api", "method": "GET", "path": "/api/v1/recordings/x?size=33554432", "_chunked": true}))
            .await;
        if v["code"] == "TOO_MANY_DOWNLOADS" {
            refused += 1;
        }
    }
    assert_eq!(refused, 200, "the four downloads hold every place");
    let peak = peak_rss_kib(pid);
    eprintln!(
        "4 endless downloads + 200 refused 32 MiB downloads, never acknowledged: router peak RSS {} MiB, {} fds",
        peak / 1024,
        open_fds(pid)
    );
    // mimalloc keeps freed pages for reuse: the bound leaves room for that, and is still a
    // small fraction of the 944 MiB this attack cost before.
    assert!(peak < 128 * 1024, "router peak RSS {peak} KiB");
    ws.close().await;
    let port = m.addr.port();
    eventually("the downloads end with their connection", async || {
        // (+1: the connection-id hook's keep-alive connection may open after `base_fds`.)
        (connections_to(port) <= 2 && open_fds(pid) <= base_fds + 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn buffered_answers_are_capped_per_route_and_in_all() {
    // A route cap of 1 MiB; all answers together may hold 1 MiB.
    let (_m, r, _routes) = stack_with(&[
        (
            "      base64_uploads: true\n",
            "      base64_uploads: true\n      max_response_bytes: 1048576\n",
        ),
        (
            "  stop: { signal: SIGTERM, grace: 10s }\n",
            "  stop: { signal: SIGTERM, grace: 10s }\n  pool: { max_buffered_bytes: 524288 }\n",
        ),
    ]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("big", api("GET", "/api/v1/mock/binary?size=2000000"))
        .await;
    assert_eq!(v["status"], 502, "{v}");
    assert_eq!(v["code"], "RESPONSE_TOO_LARGE", "{v}");
    assert!(error_text(&v).contains("_chunked"), "{v}");
    // Under the route's cap, over what all answers may hold together.
    let v = ws
        .call("mid", api("GET", "/api/v1/mock/binary?size=800000"))
        .await;
    assert_eq!(v["status"], 503, "{v}");
    assert_eq!(v["code"], "ROUTER_BUSY", "{v}");
    let v = ws
        .call("small", api("GET", "/api/v1/mock/binary?size=100000"))
        .await;
    assert_eq!(v["status"], 200, "the budget is given back: {v}");
    assert_eq!(v["_content_length"], 100_000, "{v}");
}

#[tokio::test]
async fn backend_connections_are_capped() {
    let (m, r, _routes) = stack_with(&[(
        "  stop: { signal: SIGTERM, grace: 10s }\n",
        "  stop: { signal: SIGTERM, grace: 10s }\n  pool: { max_connections: 3 }\n",
    )]);
    let port = m.addr.port();
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut ws = Ws::connect(&r.ws_url()).await;
        for i in 0..8 {
            ws.send(&json!({"type": "api", "method": "GET", "path": "/api/v1/mock/slow?ms=500", "request_id": format!("c{c}-{i}")}))
                .await;
        }
        clients.push(ws);
    }
    let mut most = 0;
    let mut answered = 0;
    for (c, ws) in clients.iter_mut().enumerate() {
        for i in 0..8 {
            most = most.max(connections_to(port));
            let v = ws.reply_to(&format!("c{c}-{i}")).await;
            if v["status"] == 200 {
                answered += 1;
            }
        }
    }
    eprintln!(
        "32 slow calls, max_connections 3: at most {most} backend connections seen, {answered} answered 200"
    );
    // The cap, plus the health probe's own connection (it never waits behind client calls).
    assert!(most <= 3 + 1, "{most} backend connections open");
    assert!(answered > 0, "calls within the cap still get through");
}

#[tokio::test]
async fn uploads_are_capped_per_connection_and_wait_for_a_resume_without_a_descriptor() {
    let (_m, r) = stack();
    let pid = r.child.id();
    let start = |n: usize| {
        json!({"type": "upload_start", "method": "POST", "path": format!("/api/v1/assets?filename=z{n}.png"),
               "content_type": "image/png", "size": 0,
               "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"})
    };
    let mut ws = Ws::connect(&r.ws_url()).await;
    let base_fds = open_fds(pid);
    for n in 0..4 {
        let v = ws.call(&format!("u{n}"), start(n)).await;
        assert_eq!(v["type"], "upload_ready", "{v}");
    }
    let v = ws.call("u4", start(4)).await;
    assert_eq!(v["code"], "TOO_MANY_UPLOADS", "{v}");
    assert!(error_text(&v).contains("at most 4"), "{v}");
    let held = open_fds(pid);
    assert_eq!(part_files_open(pid), 4, "each open upload holds its file");
    // The connection ends: its uploads wait for a resume, holding no descriptor.
    ws.close().await;
    eventually("detached uploads give their descriptors back", async || {
        (part_files_open(pid) == 0).then_some(())
    })
    .await;
    eprintln!(
        "4 open uploads: router fds {base_fds} with the socket, {held} with the uploads, {} after",
        open_fds(pid)
    );
    // A second connection has its own four.
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("again", start(9)).await;
    assert_eq!(v["type"], "upload_ready", "{v}");
}

#[tokio::test]
async fn the_router_keeps_at_most_max_uploads_total() {
    let (_m, r, _routes) = stack_with(&[(
        "  download_chunk_over: 1048576\n",
        "  download_chunk_over: 1048576\n  max_uploads_total: 6\n",
    )]);
    let start = |n: usize| {
        json!({"type": "upload_start", "method": "POST", "path": format!("/api/v1/assets?filename=t{n}.png"),
               "content_type": "image/png", "size": 10,
               "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"})
    };
    let mut refused = None;
    let mut sockets = Vec::new();
    'outer: for c in 0..3 {
        let mut ws = Ws::connect(&r.ws_url()).await;
        for i in 0..3 {
            let v = ws.call(&format!("t{c}{i}"), start(c * 3 + i)).await;
            if v["type"] != "upload_ready" {
                refused = Some((c * 3 + i, v));
                break 'outer;
            }
        }
        sockets.push(ws);
    }
    let (n, v) = refused.expect("the seventh upload is refused");
    assert_eq!(n, 6, "{v}");
    assert_eq!(v["code"], "TOO_MANY_UPLOADS", "{v}");
    assert!(error_text(&v).contains("at most 6"), "{v}");
}

#[tokio::test]
async fn a_fifth_session_closes_the_oldest_or_is_refused() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(ws.offer_session(&format!("o{i}")).await);
    }
    let deleted = mock_deleted(&m).await;
    assert_eq!(
        deleted,
        vec![ids[0].clone()],
        "the oldest session made room"
    );
    // Its ICE candidates are no longer this connection's to send.
    let v = ws
        .call("ice", icecandidate_for(ids[0].as_str(), candidate()))
        .await;
    assert_eq!(v["code"], "SESSION_NOT_OWNED", "{v}");
    ws.close().await;
    eventually("the other four are closed on disconnect", async || {
        (mock_deleted(&m).await.len() == 5).then_some(())
    })
    .await;

    let (_m2, r2, _routes) = stack_with(&[(
        "add_connection_id: true }",
        "add_connection_id: true, max_sessions: 2, when_full: refuse }",
    )]);
    let mut ws = Ws::connect(&r2.ws_url()).await;
    ws.offer_session("a").await;
    ws.offer_session("b").await;
    let v = ws
        .call("c", json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "TOO_MANY_SESSIONS", "{v}");
    assert_eq!(v["request_id"], "c", "{v}");
    ws.assert_open().await;
}

#[tokio::test]
async fn the_next_user_does_not_wait_for_the_last_users_in_flight_calls() {
    // A drain that could last ten minutes: the next `ready` must not wait for it.
    let (m, r, _routes) = stack_with(&[(
        "  max_in_flight: 64\n",
        "  max_in_flight: 64\n  drain_timeout: 10m\n",
    )]);
    let mut first = Ws::connect(&r.ws_url()).await;
    for i in 0..16 {
        first
            .send(&json!({"type": "api", "method": "GET", "path": "/api/v1/mock/slow?ms=600000", "request_id": format!("slow{i}")}))
            .await;
    }
    eventually("the slow calls reach the backend", async || {
        (connections_to(m.addr.port()) >= 16).then_some(())
    })
    .await;
    first.close().await;
    // The next user connects while those calls are still in flight, and is served.
    let mut next = Ws::connect(&r.ws_url()).await;
    let v = next.call("p", json!({"type": "ping"})).await;
    assert_eq!(v["type"], "pong", "{v}");
    assert!(
        connections_to(m.addr.port()) >= 16,
        "the first user's calls were still in flight"
    );
}

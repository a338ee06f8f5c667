//! Large files over the one socket: chunked, acknowledged, resumable uploads and windowed downloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::Path;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The default routes with the transfer settings replaced (schemas made absolute).
fn routes_with_transfers(dir: &Path, transfers: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("routes.yaml")).unwrap();
    let start = text.find("transfers:\n").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let text = format!("{}transfers: {transfers}{}", &text[..start], &text[end..]).replace(
        "schemas: schemas",
        &format!("schemas: {}", repo().join("schemas").display()),
    );
    let p = dir.join("routes.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn start_upload(ws: &mut Ws, rid: &str, data: &[u8], filename: &str) -> Value {
    let v = ws
        .call(
            rid,
            json!({"type": "upload_start", "method": "POST", "path": format!("/api/v1/assets?filename={filename}"),
                   "content_type": "video/mp4", "size": data.len(), "sha256": sha256_hex(data)}),
        )
        .await;
    assert_eq!(v["type"], "upload_ready", "{v}");
    v
}

/// Sends chunks `range` of `data` with at most `window` unacknowledged, as JSON or binary frames.
async fn send_chunks(
    ws: &mut Ws,
    ready: &Value,
    data: &[u8],
    range: std::ops::Range<u64>,
    binary: bool,
) {
    let id = ready["upload_id"].as_str().unwrap().to_owned();
    let chunk = ready["chunk_size"].as_u64().unwrap() as usize;
    let window = ready["window"].as_u64().unwrap();
    let mut in_flight = std::collections::VecDeque::new();
    for seq in range {
        if in_flight.len() as u64 >= window {
            let s: u64 = in_flight.pop_front().unwrap();
            let ack = ws.reply_to(&format!("c{s}")).await;
            assert_eq!(ack["type"], "upload_ack", "{ack}");
        }
        let part = &data[seq as usize * chunk..((seq as usize + 1) * chunk).min(data.len())];
        if binary {
            let mut frame = vec![b'U'];
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(&(seq as u32).to_be_bytes());
            frame.extend_from_slice(part);
            ws.inner.send(Message::binary(frame)).await.unwrap();
            // Binary chunks are acknowledged without a request_id, in order.
            in_flight.push_back(seq);
            let ack = ws.recv().await;
            assert_eq!(ack["type"], "upload_ack", "{ack}");
            assert_eq!(ack["seq"], seq);
            in_flight.pop_back();
        } else {
            ws.send(&json!({"type": "upload_chunk", "request_id": format!("c{seq}"), "upload_id": id, "seq": seq, "data": b64(part)}))
                .await;
            in_flight.push_back(seq);
        }
    }
    for s in in_flight {
        let ack = ws.reply_to(&format!("c{s}")).await;
        assert_eq!(ack["type"], "upload_ack", "{ack}");
    }
}

/// Receives a chunked download after its header, acknowledging as it goes.
/// Receives a JSON-chunk download to its `download_done`, acknowledging each chunk; checks the
/// chunk count and length against the header's and returns the bytes and the done message.
async fn receive_download(ws: &mut Ws, header: &Value) -> (Vec<u8>, Value) {
    let id = header["download_id"].as_str().unwrap().to_owned();
    let mut out = Vec::with_capacity(header["_content_length"].as_u64().unwrap_or(0) as usize);
    let mut seq = 0u64;
    let done = loop {
        let m = ws.recv().await;
        if m["type"] == "download_done" {
            break m;
        }
        assert_eq!(m["type"], "download_chunk", "{m}");
        assert_eq!(m["seq"], seq, "chunks arrive in order");
        out.extend(unb64(&m["data"]));
        ws.send(&json!({"type": "download_ack", "download_id": id, "seq": seq}))
            .await;
        seq += 1;
    };
    assert_eq!(done["download_id"], id.as_str(), "{done}");
    assert_eq!(done["chunks"], seq, "{done}");
    assert_eq!(done["_content_length"], out.len(), "{done}");
    if header["chunks"].is_u64() {
        assert_eq!(header["chunks"], seq, "{header}");
    }
    (out, done)
}

#[tokio::test]
async fn fifty_megabytes_up_and_down_with_matching_sha256_and_bounded_memory() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let data = random_bytes(50 * 1024 * 1024);
    let ready = start_upload(&mut ws, "start", &data, "big.mp4").await;
    assert_eq!(ready["chunks"], 200);
    send_chunks(&mut ws, &ready, &data, 0..200, false).await;
    let done = ws
        .call(
            "fin",
            json!({"type": "upload_finish", "upload_id": ready["upload_id"]}),
        )
        .await;
    assert_eq!(done["type"], "api_response", "{done}");
    assert_eq!(done["status"], 200, "{done}");
    assert_eq!(done["data"]["sha256"], sha256_hex(&data));
    assert_eq!(done["data"]["size_bytes"], data.len());
    assert_eq!(done["data"]["content_type"], "video/mp4");
    drop(data);

    let size = 50 * 1024 * 1024;
    let header = ws
        .call("dl", json!({"type": "api", "method": "GET", "path": format!("/api/v1/recordings/s1?size={size}"), "_chunked": true}))
        .await;
    assert_eq!(header["_chunked"], true, "{header}");
    assert_eq!(header["_content_length"], size);
    assert_eq!(header["_content_type"], "video/mp4");
    let (got, done) = receive_download(&mut ws, &header).await;
    assert_eq!(got.len(), size);
    assert_eq!(sha256_hex(&got), done["sha256"].as_str().unwrap());
    assert!(
        got == pattern(size),
        "downloaded bytes differ from the backend's"
    );

    let peak = peak_rss_kib(r.child.id());
    eprintln!(
        "router peak RSS over a 50 MiB upload and a 50 MiB download: {} MiB",
        peak / 1024
    );
    // The upload is assembled on disk and streamed; the download is held once. Generous bound.
    assert!(peak < 400 * 1024, "router peak RSS {peak} KiB");
    // Exactly one backend request for the upload.
    let stats = mock_stats(&m).await;
    assert_eq!(stats["by_route"]["POST /api/v1/assets"], 1, "{stats}");
}

#[tokio::test]
async fn small_binaries_keep_the_single_message_form() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    // Under the threshold, even when chunks are welcome.
    let v = ws
        .call("s", json!({"type": "api", "method": "GET", "path": "/api/v1/recordings/x?size=1000", "_chunked": true}))
        .await;
    assert_eq!(v["_content_length"], 1000);
    assert!(
        v["_base64_content"].is_string() && v.get("_chunked").is_none(),
        "{v}"
    );
    // Over it, but not asked for: the original form.
    let v = ws
        .call(
            "b",
            json!({"type": "api", "method": "GET", "path": "/api/v1/recordings/x?size=3000000"}),
        )
        .await;
    assert!(v["_base64_content"].is_string() && v.get("_chunked").is_none());
}

#[tokio::test]
async fn binary_frames_carry_chunks_both_ways() {
    let (_m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let data = random_bytes(1_000_000);
    let ready = start_upload(&mut ws, "start", &data, "bin.mp4").await;
    let chunks = ready["chunks"].as_u64().unwrap();
    send_chunks(&mut ws, &ready, &data, 0..chunks, true).await;
    let done = ws
        .call(
            "fin",
            json!({"type": "upload_finish", "upload_id": ready["upload_id"]}),
        )
        .await;
    assert_eq!(done["data"]["sha256"], sha256_hex(&data), "{done}");

    let size = 3_000_000;
    let header = ws
        .call("dl", json!({"type": "api", "method": "GET", "path": format!("/api/v1/recordings/b?size={size}"), "_chunked": true, "_binary": true}))
        .await;
    assert_eq!(header["binary"], true, "{header}");
    let id = header["download_id"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    for seq in 0..header["chunks"].as_u64().unwrap() {
        let frame = loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws.inner))
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Message::Binary(b) => break b,
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a binary chunk, got {other:?}"),
            }
        };
        assert_eq!(frame[0], b'D');
        assert_eq!(&frame[1..33], id.as_bytes());
        assert_eq!(
            u32::from_be_bytes(frame[33..37].try_into().unwrap()) as u64,
            seq
        );
        got.extend_from_slice(&frame[37..]);
        ws.send(&json!({"type": "download_ack", "download_id": id, "seq": seq}))
            .await;
    }
    assert!(got == pattern(size));
}

#[tokio::test]
async fn an_interrupted_upload_resumes_on_a_new_connection() {
    let (m, r) = stack();
    let data = random_bytes(4 * 1024 * 1024);
    let mut first = Ws::connect(&r.ws_url()).await;
    let ready = start_upload(&mut first, "start", &data, "resumed.mp4").await;
    let chunks = ready["chunks"].as_u64().unwrap();
    send_chunks(&mut first, &ready, &data, 0..chunks / 2, false).await;
    first.inner.close(None).await.unwrap();
    drop(first);

    let mut second = Ws::connect(&r.ws_url()).await;
    let id = ready["upload_id"].clone();
    let status = eventually_status(&mut second, &id).await;
    assert_eq!(status["type"], "upload_progress");
    assert_eq!(status["next_seq"], chunks / 2);
    assert_eq!(status["complete"], false);
    send_chunks(&mut second, &ready, &data, chunks / 2..chunks, false).await;
    let done = second
        .call("fin", json!({"type": "upload_finish", "upload_id": id}))
        .await;
    assert_eq!(done["status"], 200, "{done}");
    assert_eq!(done["data"]["sha256"], sha256_hex(&data));
    // Exactly one complete, correct request reached the backend.
    let stats = mock_stats(&m).await;
    assert_eq!(stats["by_route"]["POST /api/v1/assets"], 1, "{stats}");
    // Finishing twice is refused: the upload is gone.
    let again = second
        .call("fin2", json!({"type": "upload_finish", "upload_id": id}))
        .await;
    assert_eq!(again["code"], "UPLOAD_UNKNOWN", "{again}");
}

/// The first connection's disconnect may not be processed yet: wait until the upload is detached.
async fn eventually_status(ws: &mut Ws, id: &Value) -> Value {
    let mut k = 0;
    eventually("the upload to be detached", async || {
        k += 1;
        let v = ws
            .call(
                &format!("st{k}"),
                json!({"type": "upload_status", "upload_id": id}),
            )
            .await;
        if v["type"] == "upload_progress" {
            return Some(v);
        }
        assert_eq!(v["code"], "UPLOAD_NOT_OWNED", "{v}");
        None
    })
    .await
}

#[tokio::test]
async fn bad_chunks_are_each_detected_and_answered() {
    let (m, r) = stack();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let data = random_bytes(10 * 262_144 + 1000);
    let ready = start_upload(&mut ws, "start", &data, "bad.mp4").await;
    let id = ready["upload_id"].clone();
    let chunk = |seq: usize| &data[seq * 262_144..((seq + 1) * 262_144).min(data.len())];
    let send = |seq: u64, bytes: &[u8], sha: Option<String>| {
        let mut m =
            json!({"type": "upload_chunk", "upload_id": id, "seq": seq, "data": b64(bytes)});
        if let Some(s) = sha {
            m["sha256"] = json!(s);
        }
        m
    };
    // Corrupted (chunk checksum given): refused, not stored.
    let mut bad = chunk(0).to_vec();
    bad[10] ^= 0xff;
    let v = ws
        .call("corrupt", send(0, &bad, Some(sha256_hex(chunk(0)))))
        .await;
    assert_eq!(v["code"], "UPLOAD_CHUNK_CORRUPT", "{v}");
    // Out of order within the window: accepted.
    let v = ws.call("ooo", send(2, chunk(2), None)).await;
    assert_eq!(v["type"], "upload_ack", "{v}");
    assert_eq!(v["next_seq"], 0);
    // Beyond the window: refused.
    let v = ws.call("far", send(9, chunk(9), None)).await;
    assert_eq!(v["code"], "UPLOAD_OUT_OF_WINDOW", "{v}");
    // Duplicated: acknowledged again, stored once.
    let v = ws.call("dup", send(2, chunk(2), None)).await;
    assert_eq!(v["duplicate"], true, "{v}");
    // Wrong size.
    let v = ws.call("short", send(1, &chunk(1)[..100], None)).await;
    assert_eq!(v["code"], "UPLOAD_BAD_CHUNK", "{v}");
    // Missing: finishing names them.
    let v = ws
        .call("missing", json!({"type": "upload_finish", "upload_id": id}))
        .await;
    assert_eq!(v["code"], "UPLOAD_INCOMPLETE", "{v}");
    assert!(v["error"].as_str().unwrap().contains("[0, 1, 3"), "{v}");
    // Unknown id.
    let v = ws
        .call(
            "unknown",
            json!({"type": "upload_status", "upload_id": "0123456789abcdef0123456789abcdef"}),
        )
        .await;
    assert_eq!(v["code"], "UPLOAD_UNKNOWN", "{v}");
    // Silent corruption (no chunk checksum) is caught by the whole-file sha256, and nothing is sent.
    for seq in [0, 1, 3, 4, 5, 6, 7, 8, 9, 10] {
        let bytes = if seq == 5 {
            vec![0u8; 262_144]
        } else {
            chunk(seq).to_vec()
        };
        let v = ws
            .call(&format!("fill{seq}"), send(seq as u64, &bytes, None))
            .await;
        assert_eq!(v["type"], "upload_ack", "{v}");
    }
    let v = ws
        .call("fin", json!({"type": "upload_finish", "upload_id": id}))
        .await;
    assert_eq!(v["code"], "UPLOAD_CHECKSUM_MISMATCH", "{v}");
    assert!(
        mock_stats(&m).await["by_route"]
            .get("POST /api/v1/assets")
            .is_none()
    );
    // Too large, and a denied target, refused before any chunk.
    let v = ws
        .call("huge", json!({"type": "upload_start", "path": "/api/v1/assets?filename=x", "size": 1u64 << 40, "sha256": "0".repeat(64)}))
        .await;
    assert_eq!(v["code"], "UPLOAD_TOO_LARGE", "{v}");
    let v = ws
        .call("denied", json!({"type": "upload_start", "path": "/api/v1/internal/x", "size": 10, "sha256": "0".repeat(64)}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("not allowed"), "{v}");
    assert_eq!(ws.call("p", json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn another_connection_cannot_take_over_a_live_upload() {
    let (_m, r) = stack();
    let data = random_bytes(1000);
    let mut a = Ws::connect(&r.ws_url()).await;
    let ready = start_upload(&mut a, "start", &data, "mine.mp4").await;
    let mut b = Ws::connect(&r.ws_url()).await;
    let v = b.call("steal", json!({"type": "upload_chunk", "upload_id": ready["upload_id"], "seq": 0, "data": b64(&data)})).await;
    assert_eq!(v["code"], "UPLOAD_NOT_OWNED", "{v}");
}

#[tokio::test]
async fn abandoned_uploads_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("uploads");
    let routes = routes_with_transfers(
        dir.path(),
        &format!(
            "{{ chunk_size: 1024, window: 4, resume_timeout: 300ms, idle_timeout: 10m, dir: {} }}",
            store.display()
        ),
    );
    let m = mock(&[]);
    let r = router(&routes, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let data = random_bytes(4096);
    let ready = start_upload(&mut ws, "start", &data, "gone.mp4").await;
    send_chunks(&mut ws, &ready, &data, 0..1, false).await;
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        1,
        "the upload is assembled on disk"
    );
    ws.inner.close(None).await.unwrap();
    drop(ws);
    eventually("the abandoned upload to be removed", || async {
        (std::fs::read_dir(&store).unwrap().count() == 0).then_some(())
    })
    .await;
    let mut again = Ws::connect(&r.ws_url()).await;
    let v = again
        .call(
            "st",
            json!({"type": "upload_status", "upload_id": ready["upload_id"]}),
        )
        .await;
    assert_eq!(v["code"], "UPLOAD_UNKNOWN", "{v}");
    r.wait_for_line("abandoned upload removed").await;
}

//! A WebSocket client written by hand over TCP (`RawWs`), for frames a client library will not send.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpStream;

use super::WAIT;

/// A WebSocket client written by hand over TCP, for what a well-behaved client library will not
/// do: stop reading, send half a frame, send invalid UTF-8, unmasked or reserved frames.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read past the last parsed frame.
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `addr`, sends the upgrade request for `target` (e.g. `/ws`) and reads the
    /// response head; returns the client and the head.
    pub async fn handshake(addr: SocketAddr, target: &str, extra_headers: &str) -> (RawWs, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake timeout")
                .unwrap();
            assert!(
                n > 0,
                "connection closed during the handshake: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let rest = buf[head_end..].to_vec();
        (RawWs { stream, buf: rest }, head)
    }

    /// Connects, upgrades and reads `ready`; returns the client and the connection id.
    pub async fn connect(addr: SocketAddr) -> (RawWs, String) {
        let (mut raw, head) = RawWs::handshake(addr, "/ws", "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let (op, payload) = raw.read_frame().await.expect("ready frame");
        assert_eq!(op, 1, "ready must be a text frame");
        let ready: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(ready["type"], "ready", "{ready}");
        let id = ready["connection_id"].as_str().unwrap().to_owned();
        (raw, id)
    }

    /// Encodes one client frame: `first` is FIN/RSV/opcode byte; masked unless `masked` is false.
    pub fn encode(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key: [u8; 4] = rand::random();
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timeout")
            .unwrap();
    }

    /// Sends one masked, final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.write(&RawWs::encode(0x81, text.as_bytes(), true))
            .await;
    }

    /// Reads the next server frame (opcode, payload); `None` when the stream ends.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("read timeout")
            {
                Ok(n) => n,
                Err(_) => return None,
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame arrives; returns its code (`None` if the stream ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.read_frame().await {
            if op == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// Parses one unmasked server frame from the front of `buf`: (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0F;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // servers never mask, but skip a key if one is there
    }
    if buf.len() < at + len {
        return None;
    }
    Some((op, buf[at..at + len].to_vec(), at + len))
}

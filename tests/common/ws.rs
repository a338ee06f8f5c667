//! The WebSocket client tests speak JSON with (`Ws`, `first_message`), and the messages they send most.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// A client WebSocket as tokio-tungstenite opens it.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking JSON text frames.
pub struct Ws {
    pub inner: Socket,
    /// Replies read while waiting for another one.
    pub stash: Vec<Value>,
    pub connection_id: String,
}

impl Ws {
    /// Connects and waits for `ready`.
    pub async fn connect(url: &str) -> Ws {
        let (inner, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let mut ws = Ws {
            inner,
            stash: Vec::new(),
            connection_id: String::new(),
        };
        let ready = ws.recv().await;
        assert_eq!(
            ready["type"], "ready",
            "first message must be ready: {ready}"
        );
        ws.connection_id = ready["connection_id"].as_str().unwrap().to_owned();
        ws
    }

    /// Wraps a socket whose first message, `ready`, has been read.
    pub fn from_ready(inner: Socket, ready: &Value) -> Ws {
        assert_eq!(ready["type"], "ready", "{ready}");
        Ws {
            inner,
            stash: Vec::new(),
            connection_id: ready["connection_id"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn send(&mut self, v: &Value) {
        self.inner.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.inner.send(Message::text(t.to_owned())).await.unwrap();
    }

    /// The next JSON message (from the stash first).
    pub async fn recv(&mut self) -> Value {
        if !self.stash.is_empty() {
            return self.stash.remove(0);
        }
        self.recv_raw().await
    }

    /// The next text frame exactly as the router wrote it (nothing may be stashed).
    pub async fn recv_text(&mut self) -> String {
        assert!(self.stash.is_empty(), "parsed messages are stashed");
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for a message")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => continue,
            }
        }
    }

    async fn recv_raw(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for a message")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the message whose `request_id` is `rid`, stashing others.
    pub async fn reply_to(&mut self, rid: &str) -> Value {
        self.reply_to_id(&json!(rid)).await
    }

    /// Waits for the message whose `request_id` is exactly `rid` (any JSON value), stashing others.
    pub async fn reply_to_id(&mut self, rid: &Value) -> Value {
        if let Some(i) = self.stash.iter().position(|v| v["request_id"] == *rid) {
            return self.stash.remove(i);
        }
        loop {
            let v = self.recv_raw().await;
            if v["request_id"] == *rid {
                return v;
            }
            self.stash.push(v);
        }
    }

    /// Sends `v` with `request_id = rid` and returns its reply.
    pub async fn call(&mut self, rid: &str, v: Value) -> Value {
        self.call_with_id(json!(rid), v).await
    }

    /// Sends `v` with an arbitrary JSON `request_id` and waits for the reply carrying that exact id.
    pub async fn call_with_id(&mut self, rid: Value, mut v: Value) -> Value {
        v["request_id"] = rid.clone();
        self.send(&v).await;
        self.reply_to_id(&rid).await
    }

    /// Proves the connection is still open and served: a ping gets its pong.
    pub async fn assert_open(&mut self) {
        let rid = format!("alive-{}", rand::random::<u32>());
        let pong = self.call(&rid, json!({"type": "ping"})).await;
        assert_eq!(
            pong,
            json!({"type": "pong", "request_id": rid}),
            "connection must stay open"
        );
    }

    /// Sends an offer and returns its `answer` (asserting success).
    pub async fn offer(&mut self, rid: &str) -> Value {
        let a = self
            .call(rid, json!({"type": "offer", "sdp": SDP_OFFER, "initialParameters": {"prompts": [{"text": "a cat", "weight": 1.0}]}}))
            .await;
        assert_eq!(a["type"], "answer", "offer failed: {a}");
        a
    }

    /// Sends an offer and returns the new session's id.
    pub async fn offer_session(&mut self, rid: &str) -> String {
        self.offer(rid).await["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned()
    }

    /// Waits for the close frame; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        close_code(&mut self.inner).await
    }

    /// Closes the socket from the client side (normal close).
    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
        // Drain until the server's close arrives or the stream ends.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.inner.next().await {}
        })
        .await;
    }
}

/// Opens a WebSocket (any request: a URL, or one with headers) and returns it with its first
/// JSON message, whatever that is (`ready`, or the error before a refusal).
pub async fn first_message<R>(req: R) -> (Socket, Value)
where
    R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
{
    let (mut s, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timeout")
        .expect("connect");
    loop {
        let m = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("timed out waiting for the first message")
            .expect("socket ended before the first message")
            .expect("socket error");
        match m {
            Message::Text(t) => return (s, serde_json::from_str(t.as_str()).unwrap()),
            Message::Close(f) => panic!("closed before any message: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame and returns its code (`None` if the stream ended without one).
pub async fn close_code(s: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, s.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The keys of a JSON object, sorted: for asserting a message's exact shape.
pub fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

/// A minimal SDP offer.
pub const SDP_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n";

/// An `api` message (no body, no request_id).
pub fn api(method: &str, path: &str) -> Value {
    json!({"type": "api", "method": method, "path": path})
}

/// A well-formed trickle ICE candidate object.
pub fn candidate() -> Value {
    json!({"candidate": "candidate:1 1 UDP 2122252543 192.0.2.10 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
}

/// An `icecandidate` message naming `session` (a string, or anything a client might send).
pub fn icecandidate_for(session: impl Into<Value>, cand: Value) -> Value {
    json!({"type": "icecandidate", "sessionId": session.into(), "candidate": cand})
}

/// The `error` text of a reply (failing the test if it has none).
pub fn error_text(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {v}"))
}

/// Standard base64, as `_base64_content` carries bytes.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes `_base64_content` (or a chunk's `data`).
pub fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("base64 text: {v}")))
        .expect("valid base64")
}

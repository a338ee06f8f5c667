//! The `/_mock/client` test client: a str0m peer in the mock that offers a synthetic video stream, so tests without a browser can prove whether the server sends frames back.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::clock::uuid4;
use crate::fastapi::{ApiError, ApiResult, lock, no_content, ok_json, parse_object, path_param};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};

use crate::peer::{Peer, PeerConfig, PeerError, PeerHandle, Role, new_rtc, spawn};
use crate::serve::Shared;

#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<String, PeerHandle>>,
}

/// `POST /_mock/client`: a new client; answers `{"id", "sdp"}` with its offer SDP.
pub async fn client_create(State(state): Shared) -> ApiResult {
    let id = uuid4();
    let (offer, handle) = start_client(&state.peers, &id)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    lock(&state.clients.map).insert(id.clone(), handle);
    Ok(ok_json(&json!({ "id": id, "sdp": offer })))
}

/// `POST /_mock/client/{id}/answer` with `{"sdp": <the server's answer>}`: 204.
pub async fn client_answer(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let id = path_param(id)?;
    let obj = parse_object(&body)?;
    let Some(sdp) = obj.get("sdp").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("sdp must be a string"));
    };
    let clients = lock(&state.clients.map);
    let Some(client) = clients.get(&id) else {
        return Err(ApiError::not_found("no such client"));
    };
    client.accept_answer(sdp).map_err(ApiError::bad_request)?;
    Ok(no_content())
}

/// `GET /_mock/client/{id}`: what the client has done (`frames_out` sent, `frames_in` received back).
pub async fn client_status(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_param(id)?;
    let clients = lock(&state.clients.map);
    match clients.get(&id) {
        Some(c) => Ok(ok_json(&c.to_json())),
        None => Err(ApiError::not_found("no such client")),
    }
}

/// `DELETE /_mock/client/{id}`: closes it.
pub async fn client_delete(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    if let Ok(id) = path_param(id) {
        lock(&state.clients.map).remove(&id);
    }
    no_content()
}

/// A test client (`/_mock/client`): its offer (one sendrecv VP8 video m-line, host candidates on
/// loopback only) and its handle; the answer comes later through [`PeerHandle::accept_answer`].
async fn start_client(cfg: &PeerConfig, id: &str) -> Result<(String, PeerHandle), PeerError> {
    let (mut rtc, sockets) = new_rtc(&[IpAddr::from([127, 0, 0, 1])]).await?;
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
    let Some((offer, pending)) = api.apply() else {
        return Err(PeerError::Rejected("no offer".to_owned()));
    };
    let role = Role::Client {
        mid,
        pending: Some(pending),
        sent: 0,
    };
    let handle = spawn(cfg, id, rtc, sockets, role);
    Ok((offer.to_sdp_string(), handle))
}

impl Peer {
    pub(crate) fn accept_answer(&mut self, answer: SdpAnswer) {
        let Role::Client { pending, .. } = &mut self.role else {
            return;
        };
        let Some(pending) = pending.take() else {
            return;
        };
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
            self.log(&format!("answer not accepted: {e}"));
            self.rtc.disconnect();
        }
    }

    /// One frame of the test client's stream: a VP8 key-frame header (so depacketizers take it
    /// for video) and filler; nothing decodes it, the server only loops it back.
    pub(crate) fn send_synthetic_frame(&mut self) {
        let Role::Client { mid, sent, .. } = &mut self.role else {
            return;
        };
        let mid = *mid;
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        let n = *sent;
        let mut data = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x10, 0x00, 0x10, 0x00];
        data.extend((0..1000u32).map(|i| ((u64::from(i) * 7 + n) % 251) as u8));
        let rtp_time = MediaTime::new(n * 3000, Frequency::NINETY_KHZ);
        let now = Instant::now();
        match writer.write(pt, now, rtp_time, data) {
            Ok(()) => {
                *sent += 1;
                self.status.frames_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.log(&format!("cannot write video: {e}")),
        }
    }
}

//! The `transfer` handler: upload_start, upload_chunk, upload_status, upload_finish and download_ack messages.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use super::download::Downloads;
use super::{Settings, Target, TransferError, Uploads};
use crate::conn::ConnHandle;
use crate::envelope::{Answer, Outcome, Reply, Request, RequestId, refuse, refuse_with};
use crate::handler::Handle;
use crate::handler::forward::ForwardSpec;

/// Which step of a transfer a route performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    UploadStart,
    UploadChunk,
    UploadStatus,
    UploadFinish,
    DownloadAck,
}

/// The transfer handler of one route.
pub struct TransferHandler {
    action: Action,
    uploads: Arc<Uploads>,
    settings: Arc<Settings>,
    /// The forward route an assembled upload goes through.
    via: Option<Arc<ForwardSpec>>,
}

impl TransferHandler {
    pub fn new(
        action: Action,
        uploads: Arc<Uploads>,
        settings: Arc<Settings>,
        via: Option<Arc<ForwardSpec>>,
    ) -> Self {
        Self {
            action,
            uploads,
            settings,
            via,
        }
    }
}

/// A transfer result as a reply: the JSON with `request_id`, or an error with its code.
pub fn result_reply(request_id: Option<&RequestId>, r: Result<Value, TransferError>) -> Reply {
    match r {
        Ok(v) => Reply::value(request_id, v, Outcome::Ok),
        Err(e) => refuse(request_id, &e),
    }
}

/// Stores a chunk that came in a binary frame. Errors name the upload and chunk, since
/// there is no request_id to match them by.
pub async fn binary_chunk(uploads: &Uploads, conn: &ConnHandle, frame: &[u8]) -> Option<Reply> {
    let (upload_id, seq, data) = super::parse_binary_chunk(frame)?;
    Some(
        match uploads.chunk(conn, upload_id, seq, data, None).await {
            Ok(v) => Reply::value(None, v, Outcome::Ok),
            Err(e) => {
                let mut extra = serde_json::Map::new();
                extra.insert("upload_id".to_owned(), Value::from(upload_id));
                extra.insert("seq".to_owned(), Value::from(seq));
                refuse_with(None, &e, extra)
            }
        },
    )
}

fn str_field<'a>(msg: &'a Value, k: &str) -> Result<&'a str, TransferError> {
    msg.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| TransferError::Invalid(format!("missing string field \"{k}\"")))
}

fn u64_field(msg: &Value, k: &str) -> Result<u64, TransferError> {
    msg.get(k).and_then(Value::as_u64).ok_or_else(|| {
        TransferError::Invalid(format!("missing non-negative integer field \"{k}\""))
    })
}

impl Handle for TransferHandler {
    async fn handle(self: Arc<Self>, req: Request) -> Answer {
        self.run(req).await
    }
}

impl TransferHandler {
    async fn run(&self, req: Request) -> Answer {
        let rid = req.request_id.as_ref();
        let msg = &req.msg;
        let transfers = &self.uploads;
        let reply = match self.action {
            Action::UploadStart => {
                let r = async {
                    let target = Target {
                        method: msg
                            .get("method")
                            .and_then(Value::as_str)
                            .unwrap_or("POST")
                            .to_owned(),
                        path: str_field(msg, "path")?.to_owned(),
                        content_type: msg
                            .get("content_type")
                            .and_then(Value::as_str)
                            .unwrap_or("application/octet-stream")
                            .to_owned(),
                        size: u64_field(msg, "size")?,
                        sha256: str_field(msg, "sha256")?.to_ascii_lowercase(),
                    };
                    // A content type that cannot be a header fails now, not after the whole upload.
                    if hyper::header::HeaderValue::from_str(&target.content_type).is_err() {
                        return Err(TransferError::Invalid(
                            "content_type is not a valid header value".to_owned(),
                        ));
                    }
                    // Refuse a target the forward route would refuse, before any byte arrives.
                    if let Some(via) = &self.via {
                        via.check_upload_target(&target.method, &target.path)
                            .map_err(TransferError::Invalid)?;
                    }
                    transfers.start(&self.settings, &req.conn, target).await
                }
                .await;
                result_reply(rid, r)
            }
            Action::UploadChunk => {
                let r = async {
                    let id = str_field(msg, "upload_id")?;
                    let seq = u64_field(msg, "seq")?;
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(str_field(msg, "data")?)
                        .map_err(|e| TransferError::Invalid(format!("data is not base64: {e}")))?;
                    let sha = msg.get("sha256").and_then(Value::as_str);
                    transfers.chunk(&req.conn, id, seq, &data, sha).await
                }
                .await;
                result_reply(rid, r)
            }
            Action::UploadStatus => {
                let r = async {
                    transfers
                        .status(&req.conn, str_field(msg, "upload_id")?)
                        .await
                }
                .await;
                result_reply(rid, r)
            }
            Action::UploadFinish => {
                let Some(via) = &self.via else {
                    return Answer::Reply(result_reply(
                        rid,
                        Err(TransferError::Invalid(
                            "route has no `via` forward route".to_owned(),
                        )),
                    ));
                };
                let assembled = async {
                    transfers
                        .finish(&req.conn, str_field(msg, "upload_id")?)
                        .await
                }
                .await;
                match assembled {
                    Ok(a) => {
                        tracing::info!(bytes = a.target.size, path = %a.target.path, "upload assembled; forwarding");
                        via.forward_upload(&req, a).await
                    }
                    Err(e) => result_reply(rid, Err(e)),
                }
            }
            Action::DownloadAck => {
                let r = (|| {
                    let id = str_field(msg, "download_id")?;
                    let seq = u64_field(msg, "seq")?;
                    if req.conn.state::<Downloads>().ack(id, seq) {
                        Ok(())
                    } else {
                        Err(TransferError::Invalid(format!("unknown download id {id}")))
                    }
                })();
                match (r, rid) {
                    // Acks are not acknowledged (no ack storm), unless the client asks with a request_id.
                    (Ok(()), None) => return Answer::Streamed,
                    (Ok(()), Some(_)) => {
                        result_reply(rid, Ok(serde_json::json!({"type": "download_ack_ok"})))
                    }
                    (Err(e), _) => result_reply(rid, Err(e)),
                }
            }
        };
        Answer::Reply(reply)
    }
}

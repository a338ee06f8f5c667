//! The `transfer` handler: upload_start, upload_chunk, upload_status, upload_finish and download_ack messages.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use serde_json::Value;
use tower::Service;

use super::{Target, TransferError};
use crate::backend::Backend;
use crate::codec::{Outcome, Reply, Request, error_json};
use crate::config::TransferAction;
use crate::handler::HandlerFuture;
use crate::handler::forward::ForwardSpec;

/// The transfer service of one route.
#[derive(Clone)]
pub struct TransferHandler {
    action: TransferAction,
    backend: Arc<Backend>,
    /// The forward route an assembled upload goes through.
    via: Option<Arc<ForwardSpec>>,
}

impl TransferHandler {
    pub fn new(
        action: TransferAction,
        backend: Arc<Backend>,
        via: Option<Arc<ForwardSpec>>,
    ) -> Self {
        Self {
            action,
            backend,
            via,
        }
    }
}

/// A transfer result as a reply: the JSON with `request_id`, or an error with its code.
pub fn result_reply(request_id: Option<&Value>, r: Result<Value, TransferError>) -> Reply {
    match r {
        Ok(mut v) => {
            if let (Some(rid), Some(o)) = (request_id, v.as_object_mut()) {
                o.insert("request_id".to_owned(), rid.clone());
            }
            Reply::from_json(serde_json::to_vec(&v).unwrap_or_default(), Outcome::Ok)
        }
        Err(e) => Reply::from_json(
            error_json(request_id, &e.to_string(), Some(e.code()), None),
            Outcome::Rejected,
        ),
    }
}

/// The answer to a chunk that came in a binary frame: errors name the upload and chunk, since
/// there is no request_id to match them by.
pub fn binary_chunk_reply(upload_id: &str, seq: u64, r: Result<Value, TransferError>) -> Reply {
    match r {
        Ok(_) => result_reply(None, r),
        Err(e) => {
            let v = serde_json::json!({"type": "error", "error": e.to_string(), "code": e.code(),
                                       "upload_id": upload_id, "seq": seq});
            Reply::from_json(
                serde_json::to_vec(&v).unwrap_or_default(),
                Outcome::Rejected,
            )
        }
    }
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

impl Service<Request> for TransferHandler {
    type Response = Reply;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(me.run(req).await) })
    }
}

impl TransferHandler {
    async fn run(&self, req: Request) -> Reply {
        let rid = req.request_id.as_ref();
        let msg = &req.msg;
        let transfers = &req.conn.transfers;
        match self.action {
            TransferAction::UploadStart => {
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
                    // Refuse a target the forward route would refuse, before any byte arrives.
                    if let Some(via) = &self.via {
                        via.check_upload_target(&target.method, &target.path)
                            .map_err(TransferError::Invalid)?;
                    }
                    transfers.start(&req.conn, target).await
                }
                .await;
                result_reply(rid, r)
            }
            TransferAction::UploadChunk => {
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
            TransferAction::UploadStatus => {
                let r = async {
                    transfers
                        .status(&req.conn, str_field(msg, "upload_id")?)
                        .await
                }
                .await;
                result_reply(rid, r)
            }
            TransferAction::UploadFinish => {
                let Some(via) = &self.via else {
                    return result_reply(
                        rid,
                        Err(TransferError::Invalid(
                            "route has no `via` forward route".to_owned(),
                        )),
                    );
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
                        via.forward_upload(&self.backend, &req, a).await
                    }
                    Err(e) => result_reply(rid, Err(e)),
                }
            }
            TransferAction::DownloadAck => {
                let r = (|| {
                    let id = str_field(msg, "download_id")?;
                    let seq = u64_field(msg, "seq")?;
                    if req.conn.ack_download(id, seq) {
                        Ok(())
                    } else {
                        Err(TransferError::Invalid(format!("unknown download id {id}")))
                    }
                })();
                match (r, rid) {
                    // Acks are not acknowledged (no ack storm), unless the client asks with a request_id.
                    (Ok(()), None) => Reply {
                        text: String::new(),
                        outcome: Outcome::Ok,
                    },
                    (Ok(()), Some(_)) => {
                        result_reply(rid, Ok(serde_json::json!({"type": "download_ack_ok"})))
                    }
                    (Err(e), _) => result_reply(rid, Err(e)),
                }
            }
        }
    }
}

//! The user-id message (Scope 0.2.3's `set_user_id`), compiled at load: its reply, and the optional HTTP access check.

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::backend::Backend;
use crate::config::GateConfig;
use crate::template::{Ctx, Scope, Template};

/// The gate of one snapshot.
#[derive(Debug)]
pub struct Gate {
    /// The message type it answers.
    pub message: String,
    field: String,
    check: Option<(Template, Duration)>,
    /// Messages before the first user-id message are refused (`AUTH_REQUIRED`).
    pub required: bool,
    reply: Template,
    /// Log lines wait for the grant.
    pub logs_after_grant: bool,
}

/// Why a user id was not let in.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("Invalid {message} message: \"{field}\" must be a non-empty string")]
    Invalid { message: String, field: String },
    #[error("the access check refused user {0:?}: status {1}")]
    Refused(String, u16),
    #[error("the access check failed: {0}")]
    Failed(String),
}

impl Gate {
    pub fn compile(cfg: &GateConfig) -> Result<Gate, String> {
        let default_reply = serde_json::json!({
            "type": "user_id_set",
            "user_id": format!("${{message.{}}}", cfg.field),
        });
        let reply = Template::compile_reply(
            cfg.reply.as_ref().unwrap_or(&default_reply),
            Scope::MESSAGE.with(Scope::CONNECTION),
        )
        .map_err(|e| format!("gate.reply: {e}"))?;
        let check = cfg
            .check
            .as_ref()
            .map(|c| {
                let t = Template::compile(&Value::from(c.url.as_str()), Scope::MESSAGE)
                    .map_err(|e| format!("gate.check.url: {e}"))?;
                Ok::<_, String>((t, c.timeout.0))
            })
            .transpose()?;
        Ok(Gate {
            message: cfg.message.clone(),
            field: cfg.field.clone(),
            check,
            required: cfg.required,
            reply,
            logs_after_grant: cfg.logs_after_grant,
        })
    }

    /// Whether user ids are checked (messages then wait for the answer).
    pub fn checks(&self) -> bool {
        self.check.is_some()
    }

    /// The user id a gate message carries.
    pub fn user_id<'m>(&self, msg: &'m Value) -> Result<&'m str, GateError> {
        msg.get(&self.field)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| GateError::Invalid {
                message: self.message.clone(),
                field: self.field.clone(),
            })
    }

    /// The reply to a granted gate message, with its `request_id`.
    pub fn reply(&self, req: &crate::envelope::Request) -> crate::envelope::Reply {
        let ctx = Ctx {
            message: Some(&req.msg),
            connection_id: Some(&req.conn.id),
            ..Ctx::default()
        };
        let mut out = Vec::with_capacity(64);
        self.reply
            .render_reply(&ctx, req.request_id.as_ref(), &mut out);
        crate::envelope::Reply::from_json(out, crate::envelope::Outcome::Ok)
    }

    /// Runs the access check for `msg`; Ok when there is none or it answered 2xx.
    pub async fn check(&self, msg: &Value, pool: &Backend) -> Result<(), GateError> {
        let Some((url, timeout)) = &self.check else {
            return Ok(());
        };
        let user = self.user_id(msg)?.to_owned();
        // The message's strings go into the URL as path segments: `../` cannot climb.
        let encoded = crate::pathsafe::encode_strings(msg);
        let ctx = Ctx {
            message: Some(&encoded),
            ..Ctx::default()
        };
        let url = url.render_text(&ctx);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| GateError::Failed(format!("bad check URL: {e}")))?;
        let resp = pool
            .send_outbound(Method::GET, uri, None, &[], *timeout, 64 * 1024)
            .await
            .map_err(|e| GateError::Failed(e.to_string()))?;
        if resp.status.is_success() {
            Ok(())
        } else {
            Err(GateError::Refused(user, resp.status.as_u16()))
        }
    }
}

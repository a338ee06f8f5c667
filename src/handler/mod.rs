//! The handler kinds a route can end in, and the one adapter that makes each a tower service.
//!
//! A handler implements [`Handle`]; [`HandlerService`] turns it into the
//! `Service<Request>` the route stack needs. A new handler kind is a new module here
//! with a `Handle` impl, and one arm in `route::build`.

pub mod allowlist;
pub mod forward;
pub mod reply;
pub mod signaling;
pub mod transfer;
pub mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::Service;

use crate::template::Ctx;

use crate::envelope::{Answer, Request};

/// What a handler does with one message: it always answers, never errors.
pub trait Handle: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request) -> impl Future<Output = Answer> + Send + 'static;
}

/// Any [`Handle`] as a cheap-to-clone tower service.
pub struct HandlerService<H> {
    handler: Arc<H>,
}

impl<H> HandlerService<H> {
    pub fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
        }
    }
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
        }
    }
}

impl<H: Handle> Service<Request> for HandlerService<H> {
    type Response = Answer;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Answer, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = self.handler.clone().handle(req);
        Box::pin(async move { Ok(fut.await) })
    }
}

/// Fields added to a request body (`add_fields`), compiled at load.
#[derive(Debug)]
pub struct AddFields(crate::template::Template);

impl AddFields {
    /// `src`, or by default the connection id, the user id (once given) and the connection
    /// info (when the routes declare one); absent values leave their key out.
    pub fn compile(src: Option<&serde_json::Value>) -> Result<AddFields, String> {
        let default = serde_json::json!({
            "connection_id": "${connection.id}",
            "user_id": "${connection.user_id}",
            "connection_info": "${connection.info}",
        });
        crate::template::Template::compile_reply(
            src.unwrap_or(&default),
            crate::template::Scope::MESSAGE.with(crate::template::Scope::CONNECTION),
        )
        .map(AddFields)
        .map_err(|e| format!("add_fields: {e}"))
    }

    /// Adds the fields, rendered for `req`, to `obj`.
    pub fn apply(
        &self,
        req: &crate::envelope::Request,
        obj: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let user = req.conn.user_id();
        let mut out = Vec::with_capacity(128);
        self.0.render(&message_ctx(req, &user), &mut out);
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&out) {
            obj.extend(fields);
        }
    }
}

/// The template context of a message: the message and its connection's id, user id and info.
/// `user` is the connection's user id, loaded by the caller (it must outlive the context).
pub(crate) fn message_ctx<'a>(
    req: &'a crate::envelope::Request,
    user: &'a Option<Arc<String>>,
) -> Ctx<'a> {
    Ctx {
        message: Some(&req.msg),
        connection_id: Some(&req.conn.id),
        user_id: user.as_deref().map(String::as_str),
        connection_info: req.conn.info(),
        ..Ctx::default()
    }
}

//! The `reply` handler: a local answer rendered from a compiled template, with no backend call.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Ready, ready};
use tower::Service;

use crate::codec::{Outcome, Reply, Request};
use crate::template::{Ctx, Template};

/// Answers every message with its template.
#[derive(Clone)]
pub struct ReplyHandler {
    template: Arc<Template>,
    outcome: Outcome,
}

impl ReplyHandler {
    pub fn new(template: Template) -> Self {
        // A local reply of type `error` (such as `$default`) refuses the message.
        let outcome = if template.has_key("error") {
            Outcome::Rejected
        } else {
            Outcome::Ok
        };
        Self {
            template: Arc::new(template),
            outcome,
        }
    }
}

impl Service<Request> for ReplyHandler {
    type Response = Reply;
    type Error = Infallible;
    type Future = Ready<Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let ctx = Ctx {
            message: Some(&req.msg),
            connection_id: Some(&req.conn.id),
            ..Ctx::default()
        };
        let mut out = Vec::with_capacity(64);
        self.template
            .render_reply(&ctx, req.request_id.as_ref(), &mut out);
        ready(Ok(Reply::from_json(out, self.outcome)))
    }
}

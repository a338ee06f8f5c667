//! The `reply` handler: a local answer rendered from a compiled template, with no backend call.

use std::future::Future;
use std::sync::Arc;

use super::Handle;
use crate::envelope::{Answer, Outcome, Reply, Request};
use crate::template::Template;

/// Answers every message with its template.
pub struct ReplyHandler {
    template: Template,
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
        Self { template, outcome }
    }

    fn render(&self, req: &Request) -> Reply {
        let user = req.conn.user_id();
        let ctx = super::message_ctx(req, &user);
        let mut out = Vec::with_capacity(64);
        self.template
            .render_reply(&ctx, req.request_id.as_ref(), &mut out);
        Reply::from_json(out, self.outcome)
    }
}

impl Handle for ReplyHandler {
    fn handle(self: Arc<Self>, req: Request) -> impl Future<Output = Answer> + Send + 'static {
        std::future::ready(Answer::Reply(self.render(&req)))
    }
}

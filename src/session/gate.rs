//! Where the user-id message stands on one connection: recorded, being checked (later messages wait, in order), or still missing.

use std::collections::VecDeque;

use serde_json::Value;

use crate::envelope::{ProtocolError, Reply, Request, refuse};
use crate::policy::gate::Gate;

/// One connection's gate.
#[derive(Default)]
pub(crate) struct GateState {
    /// A user id was recorded (and granted, when the gate checks).
    pub identified: bool,
    /// The user-id message whose check is running.
    pub checking: Option<Request>,
    /// Messages that arrived during the check, in order.
    waiting: VecDeque<Request>,
}

/// What to do with one message.
pub(crate) enum Decision {
    /// Route it as usual.
    Dispatch(Request),
    /// Answer it at once (a recorded user id, or a refusal).
    Reply(Reply),
    /// It waits for the running check.
    Held,
    /// Start the access check for this user-id message.
    Check,
}

impl GateState {
    /// Decides what `req` becomes; at most `max_waiting` messages wait for a check.
    pub fn decide(&mut self, gate: Option<&Gate>, req: Request, max_waiting: usize) -> Decision {
        let Some(gate) = gate else {
            return Decision::Dispatch(req);
        };
        if self.checking.is_some() {
            if self.waiting.len() >= max_waiting {
                return Decision::Reply(refuse(
                    req.request_id.as_ref(),
                    &ProtocolError::TooManyInFlight(max_waiting),
                ));
            }
            self.waiting.push_back(req);
            return Decision::Held;
        }
        let is_gate = req.msg.get("type").and_then(Value::as_str) == Some(gate.message.as_str());
        if !is_gate {
            if gate.required && !self.identified {
                return Decision::Reply(refuse(
                    req.request_id.as_ref(),
                    &ProtocolError::AuthRequired(gate.message.clone()),
                ));
            }
            return Decision::Dispatch(req);
        }
        let user = match gate.user_id(&req.msg) {
            Ok(u) => u.to_owned(),
            Err(e) => {
                return Decision::Reply(refuse(
                    req.request_id.as_ref(),
                    &ProtocolError::Validation(e.to_string()),
                ));
            }
        };
        if gate.checks() {
            self.checking = Some(req);
            return Decision::Check;
        }
        req.conn.set_user_id(&user);
        self.identified = true;
        Decision::Reply(granted_reply(gate, &req))
    }

    /// The check granted access: the user-id message's reply, then the waiting messages to
    /// decide again, in order.
    pub fn granted(&mut self, gate: &Gate) -> Option<(Reply, VecDeque<Request>)> {
        let req = self.checking.take()?;
        if let Ok(user) = gate.user_id(&req.msg) {
            req.conn.set_user_id(user);
        }
        self.identified = true;
        Some((granted_reply(gate, &req), std::mem::take(&mut self.waiting)))
    }

    /// Puts messages back in front of the queue (a new check started while releasing them).
    pub fn hold_front(&mut self, rest: VecDeque<Request>) {
        let mut rest = rest;
        rest.append(&mut self.waiting);
        self.waiting = rest;
    }
}

fn granted_reply(gate: &Gate, req: &Request) -> Reply {
    gate.reply(req)
}

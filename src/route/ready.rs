//! The readiness check: backend-bound messages are refused fast while the supervised backend is not ready.

use std::sync::Arc;

use crate::envelope::{Reply, Request};
use crate::guard::Check;
use crate::publish::{Readiness, View};

/// Builds the reply a refused message gets (the route decides its shape, e.g. a 503 `api_response`).
pub type Refusal = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Answers with the route's refusal instead of calling a backend that is known to be down.
#[derive(Clone)]
pub struct ReadyCheck {
    readiness: View<Readiness>,
    refusal: Refusal,
}

impl ReadyCheck {
    pub fn new(readiness: View<Readiness>, refusal: Refusal) -> Self {
        Self { readiness, refusal }
    }
}

impl Check for ReadyCheck {
    fn check(&self, req: &Request) -> Result<(), Reply> {
        if self.readiness.load().refuse_calls() {
            Err((self.refusal)(req))
        } else {
            Ok(())
        }
    }
}

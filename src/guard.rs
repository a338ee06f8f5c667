//! One generic guard layer: a check that either lets a message through or answers it at once.
//!
//! The pattern of tower-http's `ValidateRequest`: schema validation and the readiness
//! gate are both [`Check`]s, so they share this one layer instead of two copies of it.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::envelope::{Answer, Reply, Request};

/// Decides whether a message reaches the inner service.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Err` carries the ready reply that answers the message instead.
    fn check(&self, req: &Request) -> Result<(), Reply>;
}

/// Layer that runs `C` before the inner service.
#[derive(Clone)]
pub struct GuardLayer<C> {
    check: C,
}

impl<C> GuardLayer<C> {
    pub fn new(check: C) -> Self {
        Self { check }
    }
}

impl<S, C: Clone> Layer<S> for GuardLayer<C> {
    type Service = Guard<S, C>;
    fn layer(&self, inner: S) -> Guard<S, C> {
        Guard {
            inner,
            check: self.check.clone(),
        }
    }
}

/// The service made by [`GuardLayer`].
#[derive(Clone)]
pub struct Guard<S, C> {
    inner: S,
    check: C,
}

impl<S, C> Service<Request> for Guard<S, C>
where
    S: Service<Request, Response = Answer, Error = Infallible>,
    C: Check,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Either<Ready<Result<Answer, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.check.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(reply) => Either::Left(ready(Ok(Answer::Reply(reply)))),
        }
    }
}

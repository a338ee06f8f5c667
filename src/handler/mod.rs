//! The handler kinds a route can end in, and the one adapter that makes each a tower service.
//!
//! A handler implements [`Handle`]; [`HandlerService`] turns it into the
//! `Service<Request>` the route stack needs. A new handler kind is a new module here
//! with a `Handle` impl, and one arm in `route::build`.

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

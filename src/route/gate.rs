//! Refuses backend-bound messages fast while the supervised backend is not ready.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::backend::Backend;
use crate::codec::{Reply, Request};

/// Builds the reply a refused message gets (the route decides its shape, e.g. a 503 `api_response`).
pub type Refusal = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Layer: answers with the refusal instead of calling a backend that is known to be down.
#[derive(Clone)]
pub struct GateLayer {
    backend: Arc<Backend>,
    refusal: Refusal,
}

impl GateLayer {
    pub fn new(backend: Arc<Backend>, refusal: Refusal) -> Self {
        Self { backend, refusal }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            backend: self.backend.clone(),
            refusal: self.refusal.clone(),
        }
    }
}

/// The service made by [`GateLayer`].
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    backend: Arc<Backend>,
    refusal: Refusal,
}

impl<S> Service<Request> for Gate<S>
where
    S: Service<Request, Response = Reply, Error = Infallible>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = Either<Ready<Result<Reply, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if self.backend.readiness.refuse_calls() {
            Either::Left(ready(Ok((self.refusal)(&req))))
        } else {
            Either::Right(self.inner.call(req))
        }
    }
}

//! Counts and times every message per route, with handles registered once at load.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::envelope::{Answer, Outcome, Request};

/// Metric handles of one route.
pub struct RouteMetrics {
    results: [Counter; Outcome::ALL.len()],
    latency: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Arc<Self> {
        let route = route.to_owned();
        let results = Outcome::ALL.map(|o| {
            metrics::counter!("scope_router_messages_total", "route" => route.clone(), "result" => o.as_str())
        });
        let latency =
            metrics::histogram!("scope_router_message_duration_seconds", "route" => route);
        Arc::new(Self { results, latency })
    }

    pub fn record(&self, outcome: Outcome, started: Instant) {
        if let Some(c) = self.results.get(outcome.index()) {
            c.increment(1);
        }
        self.latency.record(started.elapsed().as_secs_f64());
    }
}

/// Layer: outermost, so it sees refusals by the inner layers too.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<RouteMetrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<RouteMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<RouteMetrics>,
}

impl<S> Service<Request> for Metered<S>
where
    S: Service<Request, Response = Answer, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        MeteredFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            started: Instant::now(),
        }
    }
}

/// Records the outcome when the inner future completes.
pub struct MeteredFuture<F> {
    inner: F,
    metrics: Arc<RouteMetrics>,
    started: Instant,
}

impl<F> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Answer, Infallible>> + Unpin,
{
    type Output = Result<Answer, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(Ok(answer)) => {
                this.metrics.record(answer.outcome(), this.started);
                Poll::Ready(Ok(answer))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

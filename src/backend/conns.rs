//! Backend HTTP/1.1 connections driven by the task that uses them: the idle queue, connecting, sending, and giving back.
//!
//! A backend call takes an idle connection from a lock-free queue (or opens one), then
//! polls the connection itself inside the caller's future while it waits for the answer
//! and reads the body. There is no connection task, no request channel between tasks
//! and no task spawned per call: the call's own task (a WebSocket session, a download
//! pump) makes all the progress. After the last body byte the connection goes back to the
//! queue. An idle connection is not polled, so a backend that closed it is noticed when
//! it is taken next (its socket reads end-of-file) and it is dropped then.
//!
//! A new connection is opened only when the queue is empty, and every call holds a place
//! among `pool.max_connections` while it uses a connection, so the connections open to
//! the backend never outnumber those places.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{BackendError, ReqBody, error_chain};

type Driver = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// One backend connection: the request handle and the connection state machine behind it.
pub(super) struct Conn {
    tx: http1::SendRequest<ReqBody>,
    /// `None` once the connection has finished (closed by either side, or broken). Boxed:
    /// the state machine is large, and every call's future holds its connection.
    driver: Option<Pin<Box<Driver>>>,
    authority: Authority,
    idle_since: Instant,
}

impl Conn {
    /// Runs `fut` to completion while driving this connection in the same task.
    async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        drive(&mut self.driver, fut).await
    }

    /// Whether a request can go out on it now, as far as is known without waiting: polls the
    /// connection once (an end-of-file the backend sent while it sat idle ends it here).
    fn usable(&mut self) -> bool {
        if let Some(d) = self.driver.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            if d.as_mut().poll(&mut cx).is_ready() {
                self.driver = None;
            }
        }
        self.driver.is_some() && !self.tx.is_closed()
    }
}

/// Runs `fut` to completion, polling `driver` (while it runs) whenever `fut` cannot finish
/// without it: `fut` first, so a body frame that is already in costs no connection poll.
async fn drive<F: Future>(driver: &mut Option<Pin<Box<Driver>>>, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let Some(d) = driver.as_mut() else {
            return Poll::Pending;
        };
        // Ready means the connection is over; `fut` sees why (an error, or the body's end).
        if d.as_mut().poll(cx).is_ready() {
            *driver = None;
        }
        fut.as_mut().poll(cx)
    })
    .await
}

/// The idle connections to the backend, and how to open new ones.
pub(super) struct Conns {
    idle: Arc<ArrayQueue<Conn>>,
    connector: HttpConnector,
    idle_timeout: Duration,
}

/// A connection in use by one call; given back to the idle queue when its answer was read
/// to the end, closed when it is dropped before that.
pub(super) struct Lease {
    conn: Conn,
    idle: Arc<ArrayQueue<Conn>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("authority", &self.conn.authority)
            .finish()
    }
}

impl Lease {
    /// The next body frame of the answer, driving the connection meanwhile.
    pub(super) async fn frame(
        &mut self,
        body: &mut Incoming,
    ) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        use http_body_util::BodyExt;
        self.conn.drive(body.frame()).await
    }

    /// Back to the idle queue, if the connection can carry another request (else closed).
    pub(super) fn give_back(mut self) {
        if self.conn.driver.is_some() && !self.conn.tx.is_closed() {
            self.conn.idle_since = Instant::now();
            // A full queue drops (closes) the connection.
            let _ = self.idle.push(self.conn);
        }
    }
}

impl Conns {
    pub(super) fn new(connector: HttpConnector, max_idle: usize, idle_timeout: Duration) -> Conns {
        Conns {
            idle: Arc::new(ArrayQueue::new(max_idle.max(1))),
            connector,
            idle_timeout,
        }
    }

    /// A usable idle connection to `authority`, oldest first (the queue is first in, first out,
    /// so idle connections take turns); closed or expired ones met on the way are dropped.
    fn take_idle(&self, authority: &Authority) -> Option<Conn> {
        while let Some(mut c) = self.idle.pop() {
            if c.authority == *authority && c.idle_since.elapsed() < self.idle_timeout && c.usable()
            {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self, authority: &Authority, uri: &Uri) -> Result<Conn, BackendError> {
        use tower::ServiceExt;
        let io = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(|_| BackendError::Unavailable)?;
        let (tx, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| BackendError::Failed(error_chain(&e)))?;
        Ok(Conn {
            tx,
            driver: Some(Box::pin(driver)),
            authority: authority.clone(),
            idle_since: Instant::now(),
        })
    }

    /// Sends a request to `authority` (reached at `connect_uri`) and returns the answer's head
    /// with the connection it came on. `make` builds the request; it is asked again only to
    /// repeat an idempotent request that a reused connection lost (the backend closed it as the
    /// request went out, RFC 9110 section 9.2.2), and may say no (a stream body cannot repeat).
    pub(super) async fn send(
        &self,
        authority: &Authority,
        connect_uri: &Uri,
        mut make: impl FnMut() -> Option<Request<ReqBody>>,
    ) -> Result<(Response<Incoming>, Lease), BackendError> {
        let mut req = make().ok_or_else(|| BackendError::BadRequest("no request".to_owned()))?;
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        // Reused connections that failed; past a few, only a new connection is tried.
        let mut lost = 0;
        loop {
            let idle = if lost < 3 {
                self.take_idle(authority)
            } else {
                None
            };
            let reused = idle.is_some();
            let mut conn = match idle {
                Some(c) => c,
                // Boxed: rare, and its future would otherwise make every call's larger.
                None => Box::pin(self.connect(authority, connect_uri)).await?,
            };
            let tx = &mut conn.tx;
            if let Err(e) = drive(&mut conn.driver, poll_fn(|cx| tx.poll_ready(cx))).await {
                if reused {
                    lost += 1;
                    continue;
                }
                return Err(BackendError::Failed(error_chain(&e)));
            }
            let sent = conn.tx.try_send_request(req);
            match drive(&mut conn.driver, sent).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Lease {
                            conn,
                            idle: self.idle.clone(),
                        },
                    ));
                }
                Err(mut e) => {
                    if reused {
                        lost += 1;
                        // Never written: it can go on another connection as it is.
                        if let Some(m) = e.take_message() {
                            req = m;
                            continue;
                        }
                        if idempotent && let Some(m) = make() {
                            req = m;
                            lost = 3;
                            continue;
                        }
                    }
                    return Err(BackendError::Failed(error_chain(e.error())));
                }
            }
        }
    }
}

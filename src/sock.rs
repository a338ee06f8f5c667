//! Accepted client sockets: `TCP_NODELAY` set at accept, and an optional probe that records each socket's write calls (tests read it to prove one write per frame).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the probe saw on every socket it watched.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `TCP_NODELAY` as read back from each accepted socket, in accept order.
    pub nodelay: Vec<bool>,
    /// The size of each write call the server made, in order, noted before the call ran (so
    /// a client that has read the bytes knows the call is already noted).
    pub writes: Vec<usize>,
}

/// Records what the server does to its client sockets; only tests attach one.
#[derive(Debug, Default)]
pub struct Probe(Mutex<Seen>);

impl Probe {
    /// A copy of what has been seen so far.
    #[cfg(test)]
    pub fn seen(&self) -> Seen {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// One accepted client socket, as the HTTP server and (after the upgrade) the WebSocket use it.
pub struct ClientSocket {
    tcp: TcpStream,
    probe: Option<Arc<Probe>>,
}

impl ClientSocket {
    /// Takes an accepted socket and sets `TCP_NODELAY` on it: a reply and a pushed message
    /// are separate small writes, and with Nagle's algorithm the second one waits for the
    /// client's delayed ACK (about 40 ms).
    pub fn accept(tcp: TcpStream, probe: Option<Arc<Probe>>) -> Self {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        if let Some(p) = &probe {
            let on = tcp.nodelay().unwrap_or(false);
            p.record(|s| s.nodelay.push(on));
        }
        Self { tcp, probe }
    }

    fn note_write(&self, len: usize) {
        if let Some(p) = &self.probe {
            p.record(|s| s.writes.push(len));
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.note_write(buf.len());
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.note_write(bufs.iter().map(|b| b.len()).sum());
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

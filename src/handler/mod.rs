//! The three handler kinds a route can end in: a local reply, an HTTP forward, the signaling relay.

pub mod forward;
pub mod reply;
pub mod signaling;

use std::convert::Infallible;

use futures_util::future::BoxFuture;

use crate::codec::Reply;

/// What every handler returns: replies are values, never errors.
pub type HandlerFuture = BoxFuture<'static, Result<Reply, Infallible>>;

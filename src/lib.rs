//! scope-router: a declarative WebSocket routing proxy in front of the Scope video backend.
//!
//! Data flows one way: [`session`] reads a frame, [`codec`] decodes it,
//! [`route`] picks the route's tower stack (validation from [`validate`], then a
//! [`handler`]), and the reply goes back out. [`config`] loads what [`route`]
//! compiles; the data path only reads the table it publishes.

pub mod auth;
pub mod backend;
pub mod cleanup;
pub mod cli;
pub mod codec;
pub mod config;
pub mod contract;
pub mod handler;
pub mod pathsafe;
pub mod route;
pub mod server;
pub mod session;
pub mod supervisor;
pub mod template;
pub mod transfer;
pub mod validate;

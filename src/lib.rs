//! scope-router: a declarative WebSocket routing proxy in front of the Scope video backend.
//!
//! The data plane, bottom to top (each layer uses only the ones below it):
//!
//! 1. **Envelope, templates, validation**: [`envelope`] (request, answer, the one
//!    failure-to-reply path), [`conn`] (the narrow connection handle), [`template`],
//!    [`validate`] and the generic `guard` layer; beside them the `backend` HTTP
//!    pool, [`pathsafe`] and the [`publish`] handles.
//! 2. **Handlers**: [`handler`] (reply, forward, signaling, transfer), each behind one
//!    generic service adapter, each owning its per-connection state.
//! 3. **Route table and snapshot**: [`route`] builds each route's stack; `policy`
//!    compiles the connection's limits, auth and hooks; [`snapshot`] compiles a whole
//!    routes file into one immutable [`snapshot::Snapshot`].
//! 4. **Session**: `session` runs one connection over the snapshot it reads.
//! 5. **Listener**: `server` accepts upgrades and serves the status endpoints.
//!
//! The control plane, `control`, sits beside it: the first load, reload, supervision
//! and health probing. It publishes snapshots, readiness and status through
//! [`publish::Publisher`]s; the data plane reads their [`publish::View`]s and never
//! imports it. [`config`] is pure (types and parsing); [`cli`] and [`contract`] are the
//! tools on top.

pub(crate) mod backend;
pub mod cli;
pub mod config;
pub mod conn;
pub mod contract;
pub(crate) mod control;
pub mod envelope;
pub(crate) mod guard;
pub mod handler;
pub(crate) mod json;
pub mod pathsafe;
pub(crate) mod policy;
pub mod publish;
pub mod route;
pub(crate) mod server;
pub(crate) mod session;
pub mod snapshot;
pub(crate) mod sock;
pub mod template;
pub mod validate;

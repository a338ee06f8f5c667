//! Test harness: start the real `scope-router` and `mock-scope` binaries on free ports and talk to them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design
#![allow(dead_code, unused_imports)] // every test binary compiles the whole harness and uses a part of it

mod http;
mod mock;
mod process;
mod raw_ws;
mod routes;
mod runner;
mod wait;
mod ws;

pub use http::*;
pub use mock::*;
pub use process::*;
pub use raw_ws::*;
pub use routes::*;
pub use runner::*;
pub use wait::*;
pub use ws::*;

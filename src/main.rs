//! The `scope-router` binary: command-line parsing only; the work lives in the library.

/// mimalloc instead of the system allocator: the router allocates a few small buffers per
/// message (frames, JSON, replies), and glibc malloc/free took about an eighth of its CPU.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scope_router::cli::main()
}

//! The `scope-router` binary: command-line parsing only; the work lives in the library.

fn main() -> std::process::ExitCode {
    scope_router::cli::main()
}

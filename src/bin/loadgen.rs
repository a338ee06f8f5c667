//! Load generator for the benchmark (placeholder until the benchmark lands).
fn main() {}

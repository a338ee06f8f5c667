#!/usr/bin/env bash
# real-scope.sh: the browser end-to-end test and the scope_parity protocol checks, through scope-router, against the REAL Scope server (daydream-scope 0.2.3 on the CPU) instead of mock-scope.
#
#   SCOPE_SRC=/path/to/scope ./scripts/real-scope.sh [--install-only]
#
# Not part of CI (CI cannot fetch Scope's source). What it does, in order:
#   1. builds a CPU virtual environment for SCOPE_SRC (reused while its pyproject.toml and uv.lock
#      are unchanged): torch 2.9.1 / torchvision 0.24.1 from the package registry (their default
#      build is the CUDA one; it runs on the CPU), the [project] dependencies pinned to uv.lock's
#      versions minus flash-attn, sageattention and the Windows/macOS-only packages,
#      livepeer-gateway 1.0.0 from the registry instead of its git source, then the checkout itself
#      with --no-deps. About 7 GB and a few minutes.
#   2. starts `daydream-scope --no-browser --host 127.0.0.1 --port P` with HOME and every
#      DAYDREAM_SCOPE_*_DIR in a temporary directory and HF_HUB_OFFLINE=1, and waits for /health;
#   3. starts scope-router (examples/local/routes.yaml, unsupervised) in front of it;
#   4. runs `cargo test --test scope_parity parity_` with SCOPE_PARITY_BACKEND set, so the parity
#      tests talk to the real server (each starts its own router in front of it);
#   5. runs tests/browser/e2e.mjs against the router (the page loads passthrough, streams Chromium's
#      fake camera, and must decode the returned video; then an offer without pipeline_ids must
#      connect and bring no frame back), and checks the server's log for the lines it must print;
#   6. stops everything it started, by pid.
#
# SCOPE_SRC        a directory with Scope's source at 6fcc8ebf^ (version 0.2.3). One way to get it:
#                  git clone Scope, then `git archive 6fcc8ebf^ | tar -x -C "$SCOPE_SRC"`.
# REAL_SCOPE_HOME  where the venv and the run directories go (default /tmp/real-scope).
# PYTHON           a Python 3.12 interpreter (default: python3.12 on PATH, else pyenv's 3.12.x).
# KEEP_RUN=1       keep the run directory (logs, screenshot) even when everything passed.
#
# WebRTC between Chromium and the server uses this machine's own non-loopback address: aioice leaves
# loopback candidates out, and e2e.mjs runs Chromium with --disable-features=WebRtcHideLocalIpsWithMdns
# so that its candidates are addresses, not mDNS names.

set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${REAL_SCOPE_HOME:-/tmp/real-scope}"
install_only=0
[[ "${1:-}" == "--install-only" ]] && install_only=1

log() { printf '[real-scope %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  log "FAILED: $*"
  exit 1
}
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

[[ -n "${SCOPE_SRC:-}" ]] || die "set SCOPE_SRC to a Scope checkout at 6fcc8ebf^ (see the header of $0)"
SCOPE_SRC="$(cd "$SCOPE_SRC" && pwd)"
grep -q '^name = "daydream-scope"' "$SCOPE_SRC/pyproject.toml" 2>/dev/null ||
  die "$SCOPE_SRC/pyproject.toml is not daydream-scope's"
scope_version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$SCOPE_SRC/pyproject.toml" | head -1)"
log "Scope source: $SCOPE_SRC (version $scope_version)"

# --- 1. the virtual environment -------------------------------------------------------------------

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
    return
  fi
  local p
  if p="$(command -v python3.12)" && "$p" --version >/dev/null 2>&1; then
    echo "$p"
    return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    for p in "$(pyenv root)"/versions/3.12*/bin/python3.12; do
      [[ -x "$p" ]] && {
        echo "$p"
        return
      }
    done
  fi
  return 1
}

venv="$home/venv"
stamp="$(cat "$SCOPE_SRC/pyproject.toml" "$SCOPE_SRC/uv.lock" | sha256sum | cut -c1-16)"
mkdir -p "$home"
if [[ -f "$venv/.real-scope-stamp" && "$(cat "$venv/.real-scope-stamp")" == "$stamp" ]]; then
  log "venv $venv is up to date"
else
  py="$(find_python)" || die "no Python 3.12 found (Scope requires >=3.12): install python3.12 and python3.12-venv, or set PYTHON"
  log "building $venv with $py ($("$py" --version 2>&1))"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  # [project] dependencies at uv.lock's versions; the CUDA-only, Windows/macOS-only and git ones left out.
  "$venv/bin/python" - "$SCOPE_SRC" >"$home/requirements.txt" <<'EOF'
import re, sys, tomllib
src = sys.argv[1]
lock = {p["name"]: p["version"] for p in tomllib.load(open(f"{src}/uv.lock", "rb"))["package"]
        if "registry" in p.get("source", {}) and "+" not in p["version"]}
skip = {"flash-attn", "sageattention", "triton-windows", "spoutgl", "pyopengl", "syphon-python",
        "livepeer-gateway", "torch", "torchvision"}
for dep in tomllib.load(open(f"{src}/pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip().lower().replace("_", "-")
    if name in skip:
        continue
    print(f"{name}=={lock[name]}" if name in lock else dep.split(";")[0].strip())
EOF
  log "pinned: $(tr '\n' ' ' <"$home/requirements.txt")"
  "${pip[@]}" install --quiet torch==2.9.1 torchvision==0.24.1 || die "pip install torch"
  "${pip[@]}" install --quiet -r "$home/requirements.txt" || die "pip install the pinned dependencies"
  "${pip[@]}" install --quiet livepeer-gateway==1.0.0 || die "pip install livepeer-gateway"
  "${pip[@]}" install --quiet --no-deps "$SCOPE_SRC" || die "pip install the Scope checkout"
  echo "$stamp" >"$venv/.real-scope-stamp"
  log "venv ready in $(elapsed) ($(du -sh "$venv" | cut -f1))"
fi
[[ -x "$venv/bin/daydream-scope" ]] || die "$venv/bin/daydream-scope missing"
((install_only)) && {
  log "--install-only: done in $(elapsed)"
  exit 0
}

# --- 2. the real server ---------------------------------------------------------------------------

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run="$(mktemp -d "$home/run.XXXXXX")"
scope_pid=""
router_pid=""
cleanup() {
  local rc=$?
  # Each was started with setsid, so its pid is its process group: the server's workers go too.
  for pid in $router_pid $scope_pid; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in $router_pid $scope_pid; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if ((rc == 0)) && [[ -z "${KEEP_RUN:-}" ]]; then
    rm -rf "$run"
  else
    log "logs kept in $run"
  fi
  log "finished in $(elapsed), exit $rc"
}
trap cleanup EXIT

(cd "$repo" && cargo build --bins --locked --quiet) || die "cargo build --bins"
router_bin="$repo/target/debug/scope-router"

mkdir -p "$run/home" "$run/scope"
scope_port="$(free_port)"
log "starting daydream-scope on 127.0.0.1:$scope_port"
server_started=$(date +%s.%N)
(
  cd "$run"
  export HOME="$run/home" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  export DAYDREAM_SCOPE_DIR="$run/scope" DAYDREAM_SCOPE_MODELS_DIR="$run/scope/models"
  export DAYDREAM_SCOPE_ASSETS_DIR="$run/scope/assets" DAYDREAM_SCOPE_LOGS_DIR="$run/scope/logs"
  export DAYDREAM_SCOPE_LORA_DIR="$run/scope/lora" DAYDREAM_SCOPE_PLUGINS_DIR="$run/scope/plugins"
  export DAYDREAM_SCOPE_LORA_SHARED_DIR="$run/scope/lora-shared"
  exec setsid "$venv/bin/daydream-scope" --no-browser --host 127.0.0.1 --port "$scope_port"
) >"$run/scope.log" 2>&1 &
scope_pid=$!
scope_url="http://127.0.0.1:$scope_port"
for _ in $(seq 1200); do
  curl -fsS "$scope_url/health" >"$run/health.json" 2>/dev/null && break
  kill -0 "$scope_pid" 2>/dev/null || {
    tail -40 "$run/scope.log"
    die "daydream-scope exited"
  }
  sleep 0.1
done
[[ -s "$run/health.json" ]] || die "no /health in 120 s"
log "daydream-scope healthy after $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $server_started}") s: $(cat "$run/health.json")"

# --- 3. the router --------------------------------------------------------------------------------

router_port="$(free_port)"
sed -e "s#^schemas: ../../schemas\$#schemas: $repo/schemas#" \
  -e "s#^static_files: ../browser\$#static_files: $repo/examples/browser#" \
  -e "s#/tmp/scope-router-local/assets#$run/scope/assets#" \
  "$repo/examples/local/routes.yaml" >"$run/routes.yaml"
grep -q "^schemas: $repo/schemas\$" "$run/routes.yaml" || die "examples/local/routes.yaml has no 'schemas: ../../schemas' line"
grep -q "^static_files: $repo/examples/browser\$" "$run/routes.yaml" || die "examples/local/routes.yaml has no 'static_files: ../browser' line"
RUST_LOG="info,scope_router=debug" setsid "$router_bin" serve --routes "$run/routes.yaml" \
  --listen "127.0.0.1:$router_port" --backend-url "$scope_url" --no-supervise >"$run/router.log" 2>&1 &
router_pid=$!
router_url="http://127.0.0.1:$router_port"
for _ in $(seq 200); do
  curl -fsS "$router_url/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$router_url/readyz" >/dev/null 2>&1 || die "the router is not ready: $(tail -5 "$run/router.log")"
log "scope-router on $router_url"

# --- 4. protocol checks (tests/scope_parity.rs, parity_* against the real server) -----------------

log "cargo test --test scope_parity parity_ (against the real server)"
checks_started=$(date +%s)
if (cd "$repo" && SCOPE_PARITY_BACKEND="$scope_url" SCOPE_PARITY_BACKEND_LOG="$run/scope.log" \
  cargo test --locked --test scope_parity parity_ -- --test-threads=1 2>&1) | tee "$run/parity.log" |
  grep -E '^test |test result|panicked|assertion'; then
  :
fi
grep -q "^test result: ok" "$run/parity.log" || die "the parity checks failed against the real server (see $run/parity.log)"
log "parity checks passed in $(($(date +%s) - checks_started)) s"

# --- 5. the browser -------------------------------------------------------------------------------

log "browser end to end: $router_url/?ice=none"
browser_started=$(date +%s)
set +e
E2E_REAL_SCOPE=1 node "$repo/tests/browser/e2e.mjs" "$router_url/?ice=none" \
  --screenshot "$run/real-scope.png" --timeout-ms 120000 >"$run/e2e.json" 2>"$run/e2e.stderr"
e2e_rc=$?
set -e
result="$(grep '^{' "$run/e2e.json" | tail -1)"
summary="$(echo "$result" | "$venv/bin/python" -c '
import json, sys
r = json.loads(sys.stdin.read() or "{}")
n = r.get("noPipelineIds") or {}
t = r.get("transfers") or {}
ups = ", ".join("{} {}".format(k, t[k].get("status")) for k in ("binary", "json", "resumed", "control") if k in t)
dl = (t.get("downloadBinary") or {}).get("length")
print("ok={} video={}x{} framesDecoded={} (first) {} (end) session={} | without pipeline_ids: connected={} framesDecoded={} framesSent={} | uploads: {} | download: {} bytes | error={}".format(
    r.get("ok"), r.get("videoWidth"), r.get("videoHeight"), r.get("framesDecoded"), r.get("framesDecodedAtEnd"),
    r.get("sessionId"), n.get("connected"), n.get("framesDecoded"), n.get("framesSent"), ups, dl, r.get("error")))
')"
log "browser ($(($(date +%s) - browser_started)) s): $summary"
((e2e_rc == 0)) || {
  echo "$result"
  tail -20 "$run/e2e.stderr"
  die "the browser run failed"
}

# What the server must have logged for the offer without pipeline_ids, in its own format.
grep -E '^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3} - scope.server.frame_processor - ERROR - No pipeline IDs provided, cannot start$' "$run/scope.log" |
  head -1 | sed 's/^/[real-scope] server log: /' | grep . || die "the server never logged 'No pipeline IDs provided, cannot start'"
grep -m1 "FRAME-PROCESSOR\] Started with" "$run/scope.log" | sed 's/^/[real-scope] server log: /' || true

log "PASS: frames decoded through the router from the real Scope $scope_version server"

#!/usr/bin/env bash
# The benchmark, in one command: ./scripts/bench.sh  (or ./scripts/bench.sh --quick)
#
# Measures on this machine, in one run, side by side: closed-loop workers calling the
# backend (mock-scope, release) directly over keep-alive HTTP ("direct", the limit), and
# WebSocket connections sending the equivalent messages through scope-router ("router").
# Every row runs direct then router; the whole set is repeated BENCH_REPEATS times and the
# medians are reported.
#
# Each row names the routes the router runs:
# - `shipped`: the shipped routes.yaml with its rate limit and connection caps lifted (and
#   nothing else), against `mock-scope --quiet`;
# - `fal`: examples/fal/routes.yaml, whose log push is on, with the same caps lifted and
#   `mock-scope --log-interval-ms 100` as the supervised backend (a log line pushed to
#   every client every 100 ms, as a busy Scope does);
# - `bench`: benches/routes.yaml, for `ping_noschema` (the price of validation).
#
# Rows are CONFIG:MIX-CONNS (closed loop: ping, ping_noschema, api, mix, api1k, api64k,
# api1m), CONFIG:TRANSFER (b64-upload: 10 MiB base64 in one message; chunked-upload:
# 50 MiB in binary chunks; download: 50 MiB chunked, binary chunks; each against a direct
# POST or GET of the same bytes, in MB/s, with the router's peak RSS), or `idle`
# (10,000 idle WebSockets on a fresh shipped router, for its RSS).
#
# Writes target/bench/results.md (the Markdown tables, also printed) and
# target/bench/raw.jsonl (one JSON line per measurement).
#
# --quick: one repeat of 2 s per measurement over the main rows, in under a minute: the
# regression guard before a commit that touches the hot path.
#
# Knobs (environment): BENCH_REPEATS (3), BENCH_DURATION (5s), BENCH_WARMUP (1s),
# BENCH_IDLE_CONNS (10000), BENCH_LOADGEN_THREADS (1), BENCH_ROWS (the rows, e.g.
# "shipped:api-50 fal:api-1"), BENCH_PIN_SINGLE (1: run the 1-connection rows with every
# process on CPU 0; see "Pinning" below), BENCH_NO_BUILD (1: skip cargo build),
# BENCH_ROUTER (the router binary, for A/B runs; default target/release/scope-router),
# BENCH_ROUTER_ARGS (extra router flags, e.g. "--worker-threads 2").
# BENCH_TUNNEL (1: add the tunnel row, ping/pong through the tunnel against mock-runner; off with --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [ "${1:-}" = --quick ]; then
    QUICK=1
fi
MAIN_ROWS="shipped:ping-1 shipped:api-1 shipped:api-50 shipped:mix-50 fal:api-1 fal:api-50 shipped:chunked-upload"
ALL_ROWS="shipped:ping-1 shipped:ping-50 shipped:ping-500 shipped:api-1 shipped:api-50 shipped:api-500 shipped:mix-50
fal:ping-1 fal:ping-50 fal:ping-500 fal:api-1 fal:api-50 fal:api-500 fal:mix-50
shipped:api1k-1 shipped:api64k-1 shipped:api1m-1 fal:api1k-1 fal:api64k-1 fal:api1m-1
bench:ping-1 bench:ping_noschema-1 bench:ping-100 bench:ping_noschema-100
shipped:b64-upload shipped:chunked-upload shipped:download fal:chunked-upload fal:download idle"
if [ "$QUICK" = 1 ]; then
    REPEATS="${BENCH_REPEATS:-1}"
    DURATION="${BENCH_DURATION:-2s}"
    WARMUP="${BENCH_WARMUP:-500ms}"
    ROWS="${BENCH_ROWS:-$MAIN_ROWS}"
else
    REPEATS="${BENCH_REPEATS:-3}"
    DURATION="${BENCH_DURATION:-5s}"
    WARMUP="${BENCH_WARMUP:-1s}"
    ROWS="${BENCH_ROWS:-$ALL_ROWS}"
fi
IDLE_CONNS="${BENCH_IDLE_CONNS:-10000}"
THREADS="${BENCH_LOADGEN_THREADS:-1}"
PIN_SINGLE="${BENCH_PIN_SINGLE:-1}"
ROUTER_ARGS=(${BENCH_ROUTER_ARGS:-})

OUT=target/bench
BIN=target/release
ROUTER_BIN="${BENCH_ROUTER:-$BIN/scope-router}"
mkdir -p "$OUT" "$OUT/assets"
: >"$OUT/raw.jsonl"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    cargo build --release --bins
fi

# The routes each configuration runs: the shipped files with the rate limit and the
# connection caps (max_connections, max_handshakes) lifted, schemas found from anywhere.
# Every edit is checked, so a changed file fails here rather than benchmarking the wrong thing.
lift() { # SRC DEST [SED ARGS...]
    local src="$1" dest="$2"
    shift 2
    sed -e "s|^schemas: .*|schemas: $PWD/schemas|" \
        -e 's|^  max_connections: 8$|  max_connections: 20000\n  max_handshakes: 20000|' \
        -e '/^  rate: { per_second: 200, burst: 400 }$/d' "$@" "$src" >"$dest"
    if ! grep -q '^  max_connections: 20000$' "$dest" || grep -q '^  rate:' "$dest"; then
        echo "bench: could not lift the limits of $src" >&2
        exit 1
    fi
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
lift routes.yaml "$OUT/routes-shipped.yaml"
FAL_PORT="$(free_port)"
lift examples/fal/routes.yaml "$OUT/routes-fal.yaml" \
    -e "s|^  url: http://127.0.0.1:8000$|  url: http://127.0.0.1:$FAL_PORT|" \
    -e "s|^  command: \[\"uv\", \"run\", \"daydream-scope\".*|  command: [\"$PWD/$BIN/mock-scope\", \"--host\", \"127.0.0.1\", \"--port\", \"$FAL_PORT\", \"--quiet\", \"--log-interval-ms\", \"100\", \"--pipeline\", \"passthrough\"]|"
grep -q -- '--log-interval-ms' "$OUT/routes-fal.yaml" || {
    echo "bench: could not put mock-scope into the fal routes" >&2
    exit 1
}
for f in "$OUT/routes-shipped.yaml" "$OUT/routes-fal.yaml" benches/routes.yaml; do
    "$ROUTER_BIN" validate --routes "$f" >/dev/null
done

# 10,000 idle connections need 10,000 descriptors in the router and in the load generator.
need=$((IDLE_CONNS + 2048))
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    echo "bench: the open-files hard limit is $hard; $need are needed for $IDLE_CONNS idle connections" >&2
    echo "bench: raise it (ulimit -Hn as root) or lower BENCH_IDLE_CONNS" >&2
    exit 1
fi
ulimit -n "$need"

# Pinning, as measured on the 2-core reference VM:
# - 1-connection rows run with the load generator, the backend and the router all on
#   CPU 0. Unpinned, each hop of a lone request wakes an idle vCPU, which costs ~30 µs
#   there: a direct GET /health took 74 µs at p50 instead of 10 µs, and the figure
#   swung with whatever else the machine was doing. On one CPU the rows measure the
#   software path, the same on a quiet machine and a busy one.
# - The other rows are not pinned: throughput needs both cores.
ALL_CPUS="0-$(($(nproc) - 1))"
CAN_PIN=0
if [ "$PIN_SINGLE" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then
    CAN_PIN=1
fi
# place CPUS PID...: moves the running processes (every thread) onto CPUS.
place() {
    local cpus="$1"
    shift
    if [ "$CAN_PIN" = 1 ]; then
        for p in "$@"; do
            taskset -a -p -c "$cpus" "$p" >/dev/null
        done
    fi
}

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, waits for its "listening on http://ADDR"
# line, and sets NAME_PID and NAME_ADDR.
start() {
    local name="$1"
    shift
    # Removed first: the background redirection truncates it asynchronously, and a stale
    # line from an earlier start must not be mistaken for this one.
    rm -f "$OUT/$name.out"
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    local addr=""
    for _ in $(seq 1 200); do
        addr="$(grep -m1 -o 'listening on http://[0-9.:]*' "$OUT/$name.out" 2>/dev/null | sed 's|.*http://||' || true)"
        [ -n "$addr" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    if [ -z "$addr" ]; then
        echo "bench: $name did not start:" >&2
        cat "$OUT/$name.err" >&2
        exit 1
    fi
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_ADDR" '%s' "$addr"
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_ready ADDR: the router's /readyz answers 200 once its health probe saw the backend.
wait_ready() {
    for _ in $(seq 1 100); do
        if curl -sf -o /dev/null "http://$1/readyz" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench: the router at $1 never became ready" >&2
    exit 1
}

# The processes, started for the configurations the rows use. Each sets R_PID, R_ADDR
# (router), B_PID, B_ADDR (its backend) for the config named by `use CONFIG`.
start_mock() {
    if [ -z "${backend_PID:-}" ]; then
        start backend "$BIN/mock-scope" --listen 127.0.0.1:0 --quiet --pipeline passthrough
    fi
}
# start_router NAME ROUTES: a router over the shared mock (no supervision).
start_router() {
    DAYDREAM_SCOPE_ASSETS_DIR="$PWD/$OUT/assets" RUST_LOG=warn start "$1" "$ROUTER_BIN" \
        --routes "$2" --listen 127.0.0.1:0 --backend-url "http://$backend_ADDR" \
        --no-supervise --no-watch "${ROUTER_ARGS[@]}"
    local addr_var="${1}_ADDR"
    wait_ready "${!addr_var}"
}
use() {
    case "$1" in
    shipped)
        start_mock
        [ -n "${shipped_PID:-}" ] || start_router shipped "$OUT/routes-shipped.yaml"
        R_PID="$shipped_PID" R_ADDR="$shipped_ADDR" B_PID="$backend_PID" B_ADDR="$backend_ADDR"
        ;;
    bench)
        start_mock
        [ -n "${benchr_PID:-}" ] || start_router benchr benches/routes.yaml
        R_PID="$benchr_PID" R_ADDR="$benchr_ADDR" B_PID="$backend_PID" B_ADDR="$backend_ADDR"
        ;;
    fal)
        if [ -z "${fal_PID:-}" ]; then
            # The router supervises its own mock-scope, as it supervises Scope on fal.
            RUST_LOG=warn start fal "$ROUTER_BIN" --routes "$OUT/routes-fal.yaml" \
                --listen 127.0.0.1:0 --no-watch "${ROUTER_ARGS[@]}"
            wait_ready "$fal_ADDR"
            fal_backend_PID="$(pgrep -P "$fal_PID" -f mock-scope | head -n1)"
            [ -n "$fal_backend_PID" ] || {
                echo "bench: the fal router's mock-scope is not running" >&2
                exit 1
            }
        fi
        R_PID="$fal_PID" R_ADDR="$fal_ADDR" B_PID="$fal_backend_PID" B_ADDR="127.0.0.1:$FAL_PORT"
        ;;
    *)
        echo "bench: unknown routes config $1" >&2
        exit 1
        ;;
    esac
}

# fresh CONFIG: stops that config's router (and the fal router's backend with it), so the
# next `use` starts a new one.
fresh() {
    case "$1" in
    shipped) [ -z "${shipped_PID:-}" ] || stop "$shipped_PID"; shipped_PID="" ;;
    bench) [ -z "${benchr_PID:-}" ] || stop "$benchr_PID"; benchr_PID="" ;;
    fal) [ -z "${fal_PID:-}" ] || stop "$fal_PID"; fal_PID="" ;;
    esac
}

common=(--duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS")

measure() { # CONFIG ROW REPEAT
    local config="$1" row="$2" rep="$3" mix conns
    local lg=("$BIN/loadgen")
    mix="${row%-*}"
    conns="${row##*-}"
    if [ "$conns" = 1 ] && [ "$CAN_PIN" = 1 ]; then
        place 0 "$B_PID" "$R_PID"
        lg=(taskset -c 0 "$BIN/loadgen")
    fi
    local tag=(--row "$config:$row" --config "$config" --repeat "$rep")
    if [ "$mix" != ping_noschema ]; then
        "${lg[@]}" http --url "http://$B_ADDR" --conns "$conns" --mix "$mix" \
            "${common[@]}" "${tag[@]}" --cpu-pid "backend=$B_PID" >>"$OUT/raw.jsonl"
    fi
    "${lg[@]}" ws --url "ws://$R_ADDR/ws" --conns "$conns" --mix "$mix" \
        "${common[@]}" "${tag[@]}" \
        --cpu-pid "router=$R_PID" --cpu-pid "backend=$B_PID" >>"$OUT/raw.jsonl"
    if [ "$conns" = 1 ]; then
        place "$ALL_CPUS" "$B_PID" "$R_PID"
    fi
}

measure_transfer() { # CONFIG KIND REPEAT
    local config="$1" kind="$2" rep="$3" size
    case "$kind" in
    b64-upload) size=$((10 * 1024 * 1024)) ;;
    *) size=$((50 * 1024 * 1024)) ;;
    esac
    local args=(--kind "$kind" --size "$size" --duration "$DURATION" --min-runs 3
        --row "$config:$kind" --config "$config" --repeat "$rep")
    "$BIN/loadgen" transfer --url "http://$B_ADDR" "${args[@]}" \
        --cpu-pid "backend=$B_PID" >>"$OUT/raw.jsonl"
    "$BIN/loadgen" transfer --url "ws://$R_ADDR/ws" "${args[@]}" \
        --cpu-pid "router=$R_PID" --cpu-pid "backend=$B_PID" --rss-pid "$R_PID" >>"$OUT/raw.jsonl"
}

# A fresh router, so its RSS is that of the idle connections and not of earlier load.
measure_idle() { # REPEAT
    start_mock
    start_router idle_router "$OUT/routes-shipped.yaml"
    "$BIN/loadgen" idle --url "ws://$idle_router_ADDR/ws" --conns "$IDLE_CONNS" \
        --hold 0s --rss-pid "$idle_router_PID" --row "idle-$IDLE_CONNS" --config shipped \
        --repeat "$1" --threads "$THREADS" >>"$OUT/raw.jsonl"
    stop "$idle_router_PID"
}

echo "bench: load before: $LOAD_BEFORE; router: $ROUTER_BIN ${ROUTER_ARGS[*]}" >&2
for rep in $(seq 1 "$REPEATS"); do
    for row in $ROWS; do
        echo "bench: repeat $rep/$REPEATS: $row" >&2
        if [ "$row" = idle ]; then
            measure_idle "$rep"
            continue
        fi
        config="${row%%:*}"
        what="${row#*:}"
        case "$what" in
        b64-upload | chunked-upload | download)
            # A fresh router, so its peak RSS is this transfer's and not an earlier row's.
            fresh "$config"
            use "$config"
            measure_transfer "$config" "$what" "$rep"
            fresh "$config"
            ;;
        *)
            use "$config"
            measure "$config" "$what" "$rep"
            ;;
        esac
    done
done

"$BIN/loadgen" report --raw "$OUT/raw.jsonl" \
    --note "Load average before the run: $LOAD_BEFORE (1, 5, 15 min); after: $(cut -d' ' -f1-3 /proc/loadavg). Router: $(basename "$ROUTER_BIN") ${ROUTER_ARGS[*]:-(default flags)}. Backend: mock-scope --quiet (release; with \`fal\` routes, supervised by the router with --log-interval-ms 100). Load generator: $THREADS thread(s). 1-connection rows: $([ "$CAN_PIN" = 1 ] && echo "all processes on CPU 0 (taskset)" || echo "not pinned"); other rows not pinned." \
    | tee "$OUT/results.md"

# The tunnel row: one Livepeer orchestrator's ping/pong loop (tunnel-bench) straight to
# mock-runner's /ws ("direct") and through the router's tunnel (the Livepeer profile with
# this runner's address), in the same run, medians of the repeats.
if [ "${BENCH_TUNNEL:-1}" = 1 ] && [ "$QUICK" != 1 ]; then
    start runner "$BIN/mock-runner" --listen 127.0.0.1:0
    tunnel_routes="$OUT/tunnel-routes.yaml"
    sed -e "s|127.0.0.1:8001|$runner_ADDR|g" -e '/^  command:/d' -e '/^  env_allowlist:/,/FAL_RUNNER_ID\]/d' \
        examples/livepeer/routes.yaml >"$tunnel_routes"
    RUST_LOG=warn start tunnel_router "$BIN/scope-router" --routes "$tunnel_routes" \
        --listen 127.0.0.1:0 --no-supervise --no-watch
    wait_ready "$tunnel_router_ADDR"
    : >"$OUT/tunnel.jsonl"
    for rep in $(seq 1 "$REPEATS"); do
        echo "bench: repeat $rep/$REPEATS: tunnel" >&2
        "$BIN/tunnel-bench" --url "ws://$runner_ADDR/ws" --duration "$DURATION" --warmup "$WARMUP" \
            --label direct >>"$OUT/tunnel.jsonl"
        "$BIN/tunnel-bench" --url "ws://$tunnel_router_ADDR/ws" --duration "$DURATION" --warmup "$WARMUP" \
            --label router >>"$OUT/tunnel.jsonl"
    done
    # median LABEL FIELD: the median of one field over the repeats.
    median() {
        grep "\"label\":\"$1\"" "$OUT/tunnel.jsonl" | sed -E "s/.*\"$2\":([0-9.]+).*/\1/" | sort -n |
            awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
    }
    d_t="$(median direct throughput)" r_t="$(median router throughput)"
    d_50="$(median direct p50_us)" r_50="$(median router p50_us)"
    d_99="$(median direct p99_us)" r_99="$(median router p99_us)"
    {
        echo
        echo "Tunnel (Livepeer profile; ping/pong in a closed loop, 1 orchestrator; direct: the same client straight to mock-runner's /ws; medians of $REPEATS repeats; latencies in µs):"
        echo
        echo "| workload | direct frames/s | tunnel frames/s | tunnel/direct | direct p50 / p99 | tunnel p50 / p99 | added p50 |"
        echo "|---|--:|--:|--:|--:|--:|--:|"
        awk -v dt="$d_t" -v rt="$r_t" -v d50="$d_50" -v r50="$r_50" -v d99="$d_99" -v r99="$r_99" 'BEGIN {
            printf "| tunnel `ping` → `pong` | %d | %d | %.2f | %s / %s | %s / %s | %.1f |\n", dt, rt, rt / dt, d50, d99, r50, r99, r50 - d50 }'
    } | tee -a "$OUT/results.md"
fi

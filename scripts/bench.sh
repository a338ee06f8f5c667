#!/usr/bin/env bash
# The benchmark, in one command: ./scripts/bench.sh
#
# Measures on this machine, in one run, side by side: N closed-loop workers calling
# the backend (mock-scope --quiet, release) directly over keep-alive HTTP ("direct",
# the limit), and N WebSocket connections sending the equivalent messages through
# scope-router ("router"). Every row runs direct then router; the whole set is
# repeated BENCH_REPEATS times and the medians are reported. Then 10,000 idle
# WebSocket connections are opened against a fresh router to measure its RSS.
#
# Writes target/bench/results.md (the Markdown table, also printed) and
# target/bench/raw.jsonl (one JSON line per measurement).
#
# Knobs (environment): BENCH_REPEATS (3), BENCH_DURATION (5s), BENCH_WARMUP (1s),
# BENCH_IDLE_CONNS (10000), BENCH_LOADGEN_THREADS (1), BENCH_ROWS (all rows, e.g.
# "api-50 mix-50"), BENCH_PIN_SINGLE (1: run the 1-connection rows with every
# process on CPU 0; see "Pinning" below), BENCH_NO_BUILD (1: skip cargo build),
# BENCH_TUNNEL (1: add the tunnel row, ping/pong through the tunnel against mock-runner).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS="${BENCH_REPEATS:-3}"
DURATION="${BENCH_DURATION:-5s}"
WARMUP="${BENCH_WARMUP:-1s}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-10000}"
THREADS="${BENCH_LOADGEN_THREADS:-1}"
PIN_SINGLE="${BENCH_PIN_SINGLE:-1}"
# The standard set: mix-conns. ping_noschema pairs with ping to price validation.
ROWS="${BENCH_ROWS:-ping-1 ping_noschema-1 ping-100 ping_noschema-100 api-1 api-50 api-500 mix-50 idle}"

OUT=target/bench
BIN=target/release
mkdir -p "$OUT"
: >"$OUT/raw.jsonl"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    cargo build --release --bins
fi
"$BIN/scope-router" validate --routes benches/routes.yaml >/dev/null

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
# - The other rows are not pinned: throughput needs both cores. Giving the router a
#   core of its own (the rest on the other) was worse on every row: the router's two
#   worker threads then share one CPU, and the direct runs lose a core.
ALL_CPUS="0-$(($(nproc) - 1))"
CAN_PIN=0
if [ "$PIN_SINGLE" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then
    CAN_PIN=1
fi
# place CPUS: moves the running backend and router (every thread) onto CPUS.
place() {
    if [ "$CAN_PIN" = 1 ]; then
        taskset -a -p -c "$1" "$backend_PID" >/dev/null
        taskset -a -p -c "$1" "$router_PID" >/dev/null
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

start_router() {
    RUST_LOG=warn start "$1" "$BIN/scope-router" --routes benches/routes.yaml \
        --listen 127.0.0.1:0 --backend-url "http://$backend_ADDR" --no-supervise --no-watch
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

start backend "$BIN/mock-scope" --listen 127.0.0.1:0 --quiet --pipeline passthrough
start_router router
wait_ready "$router_ADDR"
echo "bench: mock-scope (pid $backend_PID) at $backend_ADDR, scope-router (pid $router_PID) at $router_ADDR; load before: $LOAD_BEFORE" >&2

common=(--duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS")

measure() { # ROW REPEAT
    local row="$1" rep="$2" mix conns
    local lg=("$BIN/loadgen")
    mix="${row%-*}"
    conns="${row##*-}"
    if [ "$conns" = 1 ] && [ "$CAN_PIN" = 1 ]; then
        place 0
        lg=(taskset -c 0 "$BIN/loadgen")
    fi
    if [ "$mix" != ping_noschema ]; then
        "${lg[@]}" http --url "http://$backend_ADDR" --conns "$conns" --mix "$mix" \
            "${common[@]}" --row "$row" --repeat "$rep" \
            --cpu-pid "backend=$backend_PID" >>"$OUT/raw.jsonl"
    fi
    "${lg[@]}" ws --url "ws://$router_ADDR/ws" --conns "$conns" --mix "$mix" \
        "${common[@]}" --row "$row" --repeat "$rep" \
        --cpu-pid "router=$router_PID" --cpu-pid "backend=$backend_PID" >>"$OUT/raw.jsonl"
    if [ "$conns" = 1 ]; then
        place "$ALL_CPUS"
    fi
}

# A fresh router, so its RSS is that of the idle connections and not of earlier load.
measure_idle() { # REPEAT
    start_router idle_router
    wait_ready "$idle_router_ADDR"
    "$BIN/loadgen" idle --url "ws://$idle_router_ADDR/ws" --conns "$IDLE_CONNS" \
        --hold 0s --rss-pid "$idle_router_PID" --row "idle-$IDLE_CONNS" --repeat "$1" \
        --threads "$THREADS" >>"$OUT/raw.jsonl"
    stop "$idle_router_PID"
}

for rep in $(seq 1 "$REPEATS"); do
    for row in $ROWS; do
        echo "bench: repeat $rep/$REPEATS: $row" >&2
        if [ "$row" = idle ]; then
            measure_idle "$rep"
        else
            measure "$row" "$rep"
        fi
    done
done

"$BIN/loadgen" report --raw "$OUT/raw.jsonl" \
    --note "Load average before the run: $LOAD_BEFORE (1, 5, 15 min). Backend: mock-scope --quiet (release). Load generator: $THREADS thread(s). 1-connection rows: $([ "$CAN_PIN" = 1 ] && echo "all processes on CPU 0 (taskset)" || echo "not pinned"); other rows not pinned." \
    | tee "$OUT/results.md"

# The tunnel row: one Livepeer orchestrator's ping/pong loop (tunnel-bench) straight to
# mock-runner's /ws ("direct") and through the router's tunnel (the Livepeer profile with
# this runner's address), in the same run, medians of the repeats.
if [ "${BENCH_TUNNEL:-1}" = 1 ]; then
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

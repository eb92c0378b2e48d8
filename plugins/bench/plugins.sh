#!/usr/bin/env bash
# Compares the same `echo` tool as a native plugin (demo) and as a stdio MCP server
# (tests/peers/rust_server.rs), both called through POST /extensions/{name}/tools/echo of
# one daemon in the same run. Prints calls per second and p50/p99 latency.
#
# Usage: plugins/bench/plugins.sh [debug|release] [calls per client] [clients]
# Build first: `cargo build --examples` (debug) or `cargo build --release --examples`.
set -euo pipefail

profile=${1:-debug}
calls=${2:-2000}
clients=${3:-4}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/$profile"
for file in "$bin/goose-api" "$bin/examples/mcp-test-server" "$bin/libgoose_plugin_demo.so"; do
    [[ -e $file ]] || { echo "missing $file; run cargo build --examples (--release)" >&2; exit 1; }
done

work=$(mktemp -d)
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

key=bench-key-0123456789abcdef
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -m 755 "$work/extensions"
cp "$bin/libgoose_plugin_demo.so" "$work/extensions/demo.so"
chmod 644 "$work/extensions/demo.so"
cat > "$work/config.yaml" <<YAML
host: 127.0.0.1
port: $port
api_key: $key
log:
  level: warn
extensions:
  mcp:
    type: stdio
    cmd: $bin/examples/mcp-test-server
YAML
(cd "$work" && exec "$bin/goose-api" --config config.yaml >/dev/null 2>"$work/daemon.log") &
daemon_pid=$!

python3 - "$port" "$key" "$calls" "$clients" <<'PY'
import http.client, json, sys, threading, time

port, key, calls, clients = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = {"x-api-key": key, "content-type": "application/json"}

def wait_running(name):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", f"/extensions/{name}", headers=headers)
            r = c.getresponse()
            body = r.read()
            if r.status == 200 and json.loads(body)["state"] == "running":
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"extension {name} did not start")

def run(name):
    latencies, errors = [], [0]
    lock = threading.Lock()
    body = json.dumps({"text": "hello"})
    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(calls):
            start = time.perf_counter()
            c.request("POST", f"/extensions/{name}/tools/echo", body=body, headers=headers)
            r = c.getresponse()
            r.read()
            mine.append(time.perf_counter() - start)
            if r.status != 200:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"{name:6} calls={len(latencies)} errors={errors[0]} calls/s={len(latencies)/elapsed:8.0f} "
          f"p50={p(0.50):.2f} ms p99={p(0.99):.2f} ms")

for name in ("demo", "mcp"):
    wait_running(name)
for name in ("demo", "mcp"):
    run(name)
PY

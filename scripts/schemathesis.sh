#!/usr/bin/env bash
# Runs schemathesis against the daemon's own OpenAPI document and fails on any 5xx response
# and on any response that the document does not describe.
#
#   scripts/schemathesis.sh [--daemon PATH] [--plugin PATH] [--max-examples N] [--checks LIST]
#
# It installs schemathesis from PyPI into .schemathesis/venv (skipped when that version is
# already there), starts aimock from tests/peers as the provider with one fixture that
# responds to every request, and starts goose-api on a free port of 127.0.0.1 in a temporary
# directory with an admin key, a SQLite store and the calc plugin. schemathesis then reads
# GET /openapi.json with that key and sends generated requests, valid and invalid, to every
# operation. Without --daemon it builds target/debug/goose-api and the calc plugin beside
# it; --plugin defaults to libgoose_plugin_calc.so beside the daemon. The calc plugin is
# loaded instead of the demo plugin, whose tools panic and block by design. --checks takes
# schemathesis's check names, comma-separated. The default fails on any 5xx response, and on
# a status code, content type, header or body that the document does not describe.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCHEMATHESIS_VERSION="4.32.5"
VENV="${ROOT}/.schemathesis/venv"
KEY="schemathesis-admin-key-0123456789"
DAEMON=""
PLUGIN=""
# Test cases per operation and phase: about 2,900 in all, which took 35 to 45 s on two
# shared cores.
MAX_EXAMPLES=100
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"

usage() {
    echo "usage: $0 [--daemon PATH] [--plugin PATH] [--max-examples N] [--checks LIST]" >&2
    exit 64
}

while (($# > 0)); do
    case "$1" in
        --daemon) DAEMON="${2:?--daemon needs a path}"; shift 2 ;;
        --checks) CHECKS="${2:?--checks needs a list}"; shift 2 ;;
        --plugin) PLUGIN="${2:?--plugin needs a path}"; shift 2 ;;
        --max-examples) MAX_EXAMPLES="${2:?--max-examples needs a number}"; shift 2 ;;
        *) usage ;;
    esac
done

install_schemathesis() {
    local stamp="${VENV}/.installed-version"
    if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${SCHEMATHESIS_VERSION}" ]]; then
        return
    fi
    python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==${SCHEMATHESIS_VERSION}"
    echo "${SCHEMATHESIS_VERSION}" >"${stamp}"
}

# Waits until FILE has a line matching the extended regular expression PATTERN, and prints
# the first match. Fails after 30 s or when process PID exits first.
wait_for_line() {
    local file="$1" pattern="$2" pid="$3" line
    for _ in $(seq 300); do
        line=$(grep -m1 -oE "${pattern}" "${file}" || true)
        if [[ -n "${line}" ]]; then
            echo "${line}"
            return
        fi
        if ! kill -0 "${pid}" 2>/dev/null; then
            echo "process ${pid} exited before printing ${pattern}; its output:" >&2
            cat "${file}" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "no line matching ${pattern} in ${file} after 30 s" >&2
    return 1
}

install_schemathesis
bash "${ROOT}/tests/peers/install.sh"
if [[ -z "${DAEMON}" ]]; then
    # Two builds: `--bin` would also filter the plugin package down to binaries, of which
    # it has none, so one command would leave the plugin library unbuilt.
    (cd "${ROOT}" && cargo build --quiet -p goose-api --bin goose-api)
    (cd "${ROOT}" && cargo build --quiet -p goose-plugin-calc --lib)
    DAEMON="${ROOT}/target/debug/goose-api"
fi
PLUGIN="${PLUGIN:-$(dirname "${DAEMON}")/libgoose_plugin_calc.so}"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    rm -rf "${WORK}"
}
trap cleanup EXIT

cat >"${WORK}/fixtures.json" <<'JSON'
{"fixtures": [{"match": {}, "response": {"content": "An answer to every request."}}]}
JSON
node "${ROOT}/tests/peers/node_modules/@copilotkit/aimock/dist/cli.js" \
    --host 127.0.0.1 --port 0 --log-level info --fixtures "${WORK}/fixtures.json" \
    >"${WORK}/aimock.log" 2>&1 &
PIDS+=("$!")
AIMOCK_URL=$(wait_for_line "${WORK}/aimock.log" 'http://127\.0\.0\.1:[0-9]+' "${PIDS[-1]}")

# The plugin directory must not be writable by group or others, and mktemp makes 0700.
mkdir -m 0755 "${WORK}/extensions"
install -m 0644 "${PLUGIN}" "${WORK}/extensions/calc.so"
cat >"${WORK}/config.yaml" <<YAML
host: 127.0.0.1
port: 0
api_key: ${KEY}
provider: openai
model: mock-model
providers:
  openai:
    base_url: ${AIMOCK_URL}/v1
    api_key: mock-provider-key
    max_retries: 0
extensions_dir: ${WORK}/extensions
store:
  url: sqlite://sessions.db
log:
  format: json
YAML
(cd "${WORK}" && exec env -i PATH="${PATH}" "${DAEMON}" --config config.yaml) \
    >"${WORK}/daemon.log" 2>&1 &
PIDS+=("$!")
DAEMON_PID="${PIDS[-1]}"
ADDRESS=$(wait_for_line "${WORK}/daemon.log" '"address":"127\.0\.0\.1:[0-9]+"' "${DAEMON_PID}")
ADDRESS="${ADDRESS#\"address\":\"}"
ADDRESS="${ADDRESS%\"}"

status=0
# Run from the temporary directory, where schemathesis writes its report files.
(cd "${WORK}" && "${VENV}/bin/st" --no-color run "http://${ADDRESS}/openapi.json" \
    --header "x-api-key: ${KEY}" \
    --checks "${CHECKS}" \
    --max-examples "${MAX_EXAMPLES}" \
    --seed 1 \
    --workers 2 \
    --request-timeout 30 \
    --generation-database none) || status=$?

if ! kill -0 "${DAEMON_PID}" 2>/dev/null; then
    echo "goose-api exited during the run; its log:" >&2
    tail -n 50 "${WORK}/daemon.log" >&2
    exit 1
fi
if ((status != 0)); then
    echo "schemathesis failed with status ${status}; ERROR lines of goose-api:" >&2
    grep '"level":"ERROR"' "${WORK}/daemon.log" | tail -n 20 >&2 || true
fi
exit "${status}"

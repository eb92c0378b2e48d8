#!/usr/bin/env bash
# Installs the test peers in tests/peers/node_modules once. Test binaries run in parallel,
# so the install holds a lock and is skipped when package-lock.json is already satisfied.
set -euo pipefail
cd "$(dirname "$0")"
exec 9>.install.lock
flock 9
stamp=node_modules/.installed-from
if [[ -f "${stamp}" ]] && cmp -s package.json "${stamp}"; then
    exit 0
fi
if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
cp package.json "${stamp}"

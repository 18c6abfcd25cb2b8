#!/usr/bin/env bash
# Builds the browser client (client/web -> client/web/dist), which the
# router serves on --web (`tessera up`: http://127.0.0.1:8080/). Installs
# node and npm when missing; the npm packages come from the lock file.
set -euo pipefail
cd "$(dirname "$0")/../client/web"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs

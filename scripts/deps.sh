#!/usr/bin/env bash
# Installs what kiln's build and tests need on Debian 12: C libraries (-dev packages), the Python
# reference side (Debian's numpy and jinja2, used through /usr/bin/python3), Node.js + npm, and the
# npm packages of the test clients (tests/package.json). Idempotent; quiet when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(gcc make pkg-config libevent-dev libjansson-dev libpcre2-dev libutf8proc-dev
      python3 python3-numpy python3-jinja2)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm test clients: installed into tests/node_modules from tests/package-lock.json.
if [ -f tests/package.json ]; then
    if [ ! -d tests/node_modules ] || [ tests/package.json -nt tests/node_modules/.stamp ]; then
        echo "deps.sh: installing npm test packages" >&2
        (cd tests && npm install --no-audit --no-fund --loglevel=error >/dev/null)
        touch tests/node_modules/.stamp
    fi
fi

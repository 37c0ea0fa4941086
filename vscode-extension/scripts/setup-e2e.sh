#!/usr/bin/env bash
# Installs what the extension's tests need and builds its VSIX; safe to run again (each step is
# skipped when done): Debian packages (Chromium, ripgrep, libkrb5-dev for code-server's native
# modules), the npm dependencies (`npm ci`), code-server into .e2e/, offload.vsix, and the VSIX of
# the stand-in for the Python extension (test/e2e/python-extension: the real one is not on npm).
# Offline-capable beyond the npm registry, PyPI (the VSIX's bundled/libs) and Debian's mirror:
# nothing is fetched from GitHub.
set -euo pipefail
cd "$(dirname "$0")/.."

CODE_SERVER_VERSION=4.100.3
# code-server 4.100.3 pins @vscode/ripgrep 1.15.11, whose postinstall downloads ripgrep
# v13.0.0-10 from GitHub unless it finds it in its cache: we put Debian's rg there.
RIPGREP_PACKAGE=1.15.11
RIPGREP_VERSION=v13.0.0-10

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo none)
if [ "$node_major" != 20 ]; then
    echo "setup-e2e: code-server $CODE_SERVER_VERSION needs node 20 (found: $node_major)" >&2
    exit 1
fi

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup-e2e: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# node-gyp would download node's headers; the node package's own are enough.
node_prefix=$(node -p 'require("path").dirname(require("path").dirname(process.execPath))')
if [ -z "${npm_config_nodedir:-}" ] && [ -f "$node_prefix/include/node/node.h" ]; then
    export npm_config_nodedir="$node_prefix"
fi

if [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
    npm ci --no-audit --no-fund
fi

if [ ! -x .e2e/node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg ] ||
    [ "$(node -p 'require("./.e2e/node_modules/code-server/package.json").version' 2>/dev/null)" != "$CODE_SERVER_VERSION" ]; then
    case "$(uname -m)" in
        x86_64) target=x86_64-unknown-linux-musl ;;
        aarch64) target=aarch64-unknown-linux-musl ;;
        *) echo "setup-e2e: no ripgrep target for $(uname -m)" >&2; exit 1 ;;
    esac
    cache="$(node -p 'require("os").tmpdir()')/vscode-ripgrep-cache-$RIPGREP_PACKAGE"
    if [ ! -f "$cache/ripgrep-$RIPGREP_VERSION-$target.tar.gz" ]; then
        mkdir -p "$cache"
        staging=$(mktemp -d)
        cp "$(command -v rg)" "$staging/rg"
        tar -czf "$cache/ripgrep-$RIPGREP_VERSION-$target.tar.gz" -C "$staging" rg
        rm -rf "$staging"
    fi
    mkdir -p .e2e
    [ -f .e2e/package.json ] || echo '{"name": "offload-e2e", "private": true}' > .e2e/package.json
    echo "setup-e2e: installing code-server $CODE_SERVER_VERSION (about 1.5 minutes)" >&2
    # code-server's postinstall runs `npm install` for VS Code itself, whose native modules need
    # their install scripts: npm 11 skips dependencies' scripts unless allowed.
    (cd .e2e && npm_config_yes=true npm_config_dangerously_allow_all_scripts=true \
        npm install --no-audit --no-fund --unsafe-perm "code-server@$CODE_SERVER_VERSION")
fi

npm run package

# The stand-in answers the Python extension's API under its id, ms-python.python.
(cd test/e2e/python-extension && ../../../node_modules/.bin/vsce package --no-dependencies --skip-license \
    --allow-missing-repository --out ../../../.e2e/ms-python-stand-in.vsix)

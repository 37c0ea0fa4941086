#!/usr/bin/env bash
# offload.vsix for this machine's platform: the extension, its bundles and bundled/libs (the
# server and its dependencies, see bundle-libs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bundle-libs.sh
case "$(uname -m)" in
    x86_64) target=linux-x64 ;;
    aarch64) target=linux-arm64 ;;
esac
# vsce scans each file for secrets; bundled/libs is thousands of files of PyPI packages, and that
# scan took two thirds of the packaging time
vsce package --target "$target" --allow-package-all-secrets --no-dependencies --skip-license --allow-missing-repository --out offload.vsix

#!/usr/bin/env bash
# Puts the Offload server and its dependencies into bundled/libs, for the VSIX: the extension runs
# `python -m offload.server.cli serve` with that directory on PYTHONPATH, so installing the VSIX is
# all a user does. Some dependencies have compiled parts built per Python version
# (pydantic-core, jiter, …): the wheels of every supported version go into the one directory, where
# their modules sit side by side (`*.cpython-311-*.so`, `*.cpython-312-*.so`), so any Python ≥ 3.11
# of this platform finds its own. The VSIX is therefore platform-specific (see `vsce --target`).
# Needs PyPI (or the index pip is configured with); nothing is fetched when the user installs.
set -euo pipefail
cd "$(dirname "$0")/.."

# a Python with pip: the checkout's .venv (scripts/install.sh) when there is one
if [ -z "${PYTHON:-}" ]; then
    if [ -x ../.venv/bin/python ]; then PYTHON=../.venv/bin/python; else PYTHON=python3; fi
fi
VERSIONS=(3.11 3.12 3.13 3.14)
case "$(uname -m)" in
    x86_64) arch=x86_64 ;;
    aarch64) arch=aarch64 ;;
    *) echo "bundle-libs: no wheels for $(uname -m)" >&2; exit 1 ;;
esac
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_28 musllinux_1_2 linux; do platforms+=(--platform "${tag}_$arch"); done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# built from a copy: a build in the checkout would leave build/ there, and reuse it next time
mkdir "$work/source"
cp -r ../pyproject.toml ../README.md ../server ../sandbox "$work/source/"
find "$work/source" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel -q --no-deps "$work/source" -w "$work/wheel"

rm -rf bundled/libs
for version in "${VERSIONS[@]}"; do
    tag=cp${version/./}
    # every version gets the versions of packages the first one got
    constraints=()
    [ -f "$work/pinned.txt" ] && constraints=(--constraint "$work/pinned.txt")
    "$PYTHON" -m pip install -q --no-compile --disable-pip-version-check --target "$work/$tag" \
        --only-binary=:all: --implementation cp --python-version "$version" --abi "$tag" --abi abi3 --abi none \
        "${platforms[@]}" "${constraints[@]}" "$work"/wheel/*.whl
    [ -f "$work/pinned.txt" ] || "$PYTHON" -m pip freeze -q --path "$work/$tag" | grep -v "^offload" > "$work/pinned.txt"
    mkdir -p bundled/libs
    cp -rn "$work/$tag/." bundled/libs/  # the first version's files, then only what the others add
done
rm -rf bundled/libs/bin  # console scripts with this machine's interpreter in their first line
echo "bundle-libs: $(du -sh bundled/libs | cut -f1) for Python ${VERSIONS[*]} on $arch" >&2

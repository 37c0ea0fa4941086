#!/usr/bin/env bash
# Installs everything Offload needs on a Debian/Ubuntu machine and leaves it ready to use:
# system packages, a running Docker engine, the virtual environment in .venv, the sandbox image.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)  # the tests' TLS engine certificates
# the editor tests drive a real Emacs with eglot (Neovim comes with the Python test extra)
command -v emacs >/dev/null || need+=(emacs-nox)
ls -d /usr/share/emacs/site-lisp/elpa/eglot-* >/dev/null 2>&1 || need+=(elpa-eglot)
[ -x /bin/busybox ] || need+=(busybox-static)  # the tests' own image with nothing but a shell
# the tests' engine over ssh; a developer machine is not given an ssh server (that test skips there)
if [ -n "${CI:-}" ] && [ ! -x /usr/sbin/sshd ]; then need+=(openssh-server); fi
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "starting the Docker engine" >&2
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl start docker
    else
        $SUDO sh -c 'nohup setsid dockerd >/var/log/offload-dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "the Docker engine did not start; see /var/log/offload-dockerd.log" >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/offload image build

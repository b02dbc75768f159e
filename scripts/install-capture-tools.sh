#!/usr/bin/env bash
# Install tcpdump and tshark (Wireshark's command line) for `ocproxy import`'s capture
# tests, with apt-get, as root (or passwordless sudo). Run by `make test`.
#
# Idempotent and quiet: does nothing when both are on PATH. When it cannot install
# (not root, no apt-get, no network) it says why and fails.
set -u

if command -v tcpdump >/dev/null 2>&1 && command -v tshark >/dev/null 2>&1; then
    exit 0
fi
fail() {
    echo "install-capture-tools: $*" >&2
    exit 1
}
command -v apt-get >/dev/null 2>&1 || fail "tcpdump/tshark missing and there is no apt-get here"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        fail "tcpdump/tshark missing, and installing them needs root (or passwordless sudo)"
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture: the default (no) is what we want.
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq tcpdump tshark >/dev/null 2>&1 \
    || fail "apt-get install tcpdump tshark failed"

#!/usr/bin/env bash
# Install Debian's chromium (and a font, for readable screenshots) for the HTML report's
# browser tests (the tests marked `browser`), with apt-get, as root (or passwordless sudo).
#
# Run by `make test`. Idempotent and quiet: does nothing when a chromium is already on
# PATH. When it cannot install (not root, no apt-get, no network) it says why and fails,
# so that the browser tests are never skipped without anyone asking:
# `make test-nobrowser` runs everything else.
set -u

found() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
fail() {
    echo "install-browser: $* ('make test-nobrowser' runs every test but the browser's)" >&2
    exit 1
}

if found; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "chromium is not installed and there is no apt-get here"
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        fail "chromium is not installed, and installing it needs root (or passwordless sudo)"
    fi
else
    SUDO=""
fi
echo "install-browser: installing Debian's chromium with apt-get for the browser tests" >&2
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core; } >"$log" 2>&1; then
    reason="$(tail -n 1 "$log")"
    rm -f "$log"
    fail "apt-get could not install chromium: $reason"
fi
rm -f "$log"
found || fail "apt-get finished but no chromium is on PATH"

#!/usr/bin/env bash
# Install Debian's chromium (and a font, for readable screenshots) for the HTML report's
# browser test (tests/test_report_browser.py).
#
# Idempotent and quiet: does nothing when a chromium is already on PATH. Never fails the
# build: when it cannot install (not root, no apt-get, no network), it says why on stderr
# and exits 0, and the browser test then skips with that reason.
set -u

found() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if found; then
    exit 0
fi
say() { echo "install-browser: $*" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
    say "chromium not installed and there is no apt-get here: the browser test will skip"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        say "chromium not installed and not root (no passwordless sudo): the browser test will skip"
        exit 0
    fi
else
    SUDO=""
fi
say "installing Debian's chromium (apt-get) for the HTML report's browser test"
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq >"$log" 2>&1 \
    && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >>"$log" 2>&1; then
    rm -f "$log"
else
    say "apt-get could not install chromium: $(tail -n 1 "$log")"
    say "the browser test will skip"
    rm -f "$log"
    exit 0
fi
if ! found; then
    say "apt-get finished but no chromium is on PATH: the browser test will skip"
fi
exit 0

#!/usr/bin/env bash
# Headless Chromium for the kedro-viz browser test (tests/viz/test_browser.py), from Debian's
# own package: Playwright drives it at /usr/bin/chromium, so `playwright install` (which
# downloads a browser build from the internet) is never needed. Idempotent: does nothing
# when chromium is already there.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: chromium is missing and this user cannot run apt-get" >&2
        echo "(run as root, or install the Debian package 'chromium' yourself)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# fonts-liberation: readable labels in the screenshot without pulling a desktop font set.
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation
chromium --version

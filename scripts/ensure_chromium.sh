#!/usr/bin/env bash
# `make test` runs this first. The browser tests drive Debian's Chromium (Playwright never downloads a
# browser here): when it is missing, install it through apt-get as root; otherwise stop, before any test
# runs, with the one command to run.
set -euo pipefail
chromium="${PATHALIGN_CHROMIUM:-/usr/bin/chromium}"  # the path tests/conftest.py launches
[ -x "$chromium" ] && exit 0

if [ -n "${PATHALIGN_CHROMIUM:-}" ]; then
  echo "PATHALIGN_CHROMIUM=$chromium is not an executable file; unset it to use Debian's chromium." >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests (apt-get) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
  [ -x "$chromium" ] && exit 0
  echo "apt-get installed chromium, but $chromium is still missing." >&2
  exit 1
fi
echo "The browser tests need Debian's chromium at $chromium. Install it, then run make test again:" >&2
echo "    sudo sh -c 'apt-get update && apt-get install -y chromium'" >&2
exit 1
